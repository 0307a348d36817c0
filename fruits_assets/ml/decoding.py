"""Decodes and validates image bytes: every file ends up either an RGB image or a rejection."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from fruits_assets.storage import filesystem

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~ a 7,000 x 6,000 photo; past that a fruit photo is an accident or a bomb
MIN_SIDE = 8
EXIF_ORIENTATION = 0x0112

REJECT_EMPTY = "empty file"
REJECT_TOO_BIG_FILE = "file larger than 50 MiB"
REJECT_NOT_IMAGE = "not an image Pillow can read"
REJECT_TOO_MANY_PIXELS = "image too large (pixels)"
REJECT_TOO_SMALL = "image too small"
REJECT_CORRUPT = "corrupt or truncated image data"
REJECT_MISSING = "file could not be read"

# The columns decode_batches yields (the Spark schema lives with the labeled_images asset).
DECODED_COLUMNS = [
    "path",
    "label",
    "content",
    "width",
    "height",
    "original_mode",
    "converted",
    "reason",
]


@dataclass(frozen=True)
class Decoded:
    """One file's outcome: `content` (RGB, ready to featurize) or the `reason` it was rejected."""

    content: bytes | None
    reason: str | None
    width: int = 0
    height: int = 0
    original_mode: str = ""
    converted: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit greyscale: scale to 8 bits instead of letting Pillow clip at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array / peak * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Fruits-360 photos sit on white: composite transparency onto white, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode(content: bytes | None) -> Decoded:
    """Validate one file's bytes; never raises for bad data."""
    if content is None:
        return Decoded(None, REJECT_MISSING)
    if len(content) == 0:
        return Decoded(None, REJECT_EMPTY)
    if len(content) > MAX_FILE_BYTES:
        return Decoded(None, f"{REJECT_TOO_BIG_FILE}: {len(content)} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(content))
            width, height = image.size
            if width * height > MAX_PIXELS:
                return Decoded(None, f"{REJECT_TOO_MANY_PIXELS}: {width}x{height}", width, height)
            if min(width, height) < MIN_SIDE:
                return Decoded(None, f"{REJECT_TOO_SMALL}: {width}x{height}", width, height)
            mode, fmt = image.mode, image.format
            image.load()
    except UnidentifiedImageError:
        return Decoded(None, REJECT_NOT_IMAGE)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Decoded(None, f"{REJECT_TOO_MANY_PIXELS}: {exc}")
    except Exception as exc:  # any decoder failure is a rejection, not a crash
        return Decoded(None, f"{REJECT_CORRUPT}: {type(exc).__name__}: {exc}")
    try:
        # Phone photos carry their rotation in EXIF; apply it so features see the fruit upright.
        rotated = image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)
        rgb = _to_rgb(ImageOps.exif_transpose(image) if rotated else image)
    except Exception as exc:  # likewise
        return Decoded(None, f"{REJECT_CORRUPT}: {type(exc).__name__}: {exc}", width, height, mode)
    if rgb is image and fmt in ("JPEG", "PNG"):
        # Already 8-bit RGB in a format every reader has: keep the original bytes untouched.
        return Decoded(content, None, width, height, mode, converted=False)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")  # lossless: the conversion is the only change
    return Decoded(buffer.getvalue(), None, rgb.width, rgb.height, mode, converted=True)


def decode_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Read and decode each file on the executors; a failure becomes a rejection row."""
    for batch in batches:
        out = []
        for path, label in zip(batch["path"], batch["label"], strict=True):
            try:
                content = filesystem.read_bytes(path)
                decoded = decode(content)
            except Exception as exc:  # vanished or unreadable files are rejections
                decoded = Decoded(None, f"{REJECT_MISSING}: {exc}")
            out.append(
                (
                    path,
                    label,
                    decoded.content,
                    decoded.width,
                    decoded.height,
                    decoded.original_mode,
                    decoded.converted,
                    decoded.reason,
                )
            )
        yield pd.DataFrame(out, columns=DECODED_COLUMNS)
