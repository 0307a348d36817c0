"""Test helper: writes every kind of good and bad file the pipeline must handle."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_CLASS = "Pomme Dorée 2"  # spaces and non-ASCII in a class name
BAD_CLASS = "Kiwi [bio] #1"  # characters Spark escapes in partition folder names

# file name -> expected rejection reason prefix (None: accepted)
EXPECTED = {
    "empty.jpg": "empty file",
    "text.jpg": "not an image Pillow can read",
    "truncated.jpg": "corrupt or truncated image data",
    "corrupt.png": "corrupt or truncated image data",
    "huge.png": "image too large (pixels)",
    "cmyk.jpg": None,
    "grey.png": None,
    "rgba.png": None,
    "sixteen_bit.png": None,
    "upper.JPEG": None,
}


def noisy_jpeg(rgb=(200, 40, 40), size=(100, 100), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(sum(rgb))
    array = np.clip(rng.normal(rgb, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(array).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_png(width: int = 8000, height: int = 6000) -> bytes:
    """A valid 48-megapixel PNG that compresses to a few KB (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    raw = zlib.compress(b"\x00" * (width + 1) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def write_mixed_root(root: Path) -> dict[str, int]:
    """Two classes of good images, the bad files in the second; returns expected counts."""
    good, bad = root / "Training" / GOOD_CLASS, root / "Test" / BAD_CLASS
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    for i in range(6):
        (good / f"{i}_100.jpg").write_bytes(noisy_jpeg((200, 40 + 20 * i, 40)))
        (bad / f"{i}_100.jpg").write_bytes(noisy_jpeg((40, 160, 40 + 20 * i)))
    jpeg = noisy_jpeg((120, 90, 30))
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_bytes(b"this is not a picture of a kiwi\n")
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    png = _png(Image.fromarray(noise))
    middle = len(png) // 2  # header intact, pixel data garbled: opens, fails to decode
    (bad / "corrupt.png").write_bytes(png[:middle] + b"\xff" * 64 + png[middle + 64 :])
    (bad / "huge.png").write_bytes(_huge_png())
    (bad / "cmyk.jpg").write_bytes(noisy_jpeg((30, 150, 60), mode="CMYK"))
    (bad / "grey.png").write_bytes(_png(Image.new("L", (80, 90), 120)))
    (bad / "rgba.png").write_bytes(_png(Image.new("RGBA", (70, 70), (0, 255, 0, 128))))
    sixteen = Image.fromarray(np.full((50, 60), 40000, dtype=np.uint16))
    (bad / "sixteen_bit.png").write_bytes(_png(sixteen))
    (bad / "upper.JPEG").write_bytes(noisy_jpeg((50, 180, 50)))
    # Ignored but counted: hidden files, a hidden folder, a non-image, an image with no class.
    (bad / ".DS_Store").write_bytes(b"\x00\x01")
    (good / ".hidden.jpg").write_bytes(jpeg)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(jpeg)
    (bad / "notes.txt").write_text("picked on Monday")
    (root / "stray.jpg").write_bytes(jpeg)
    accepted = 12 + sum(1 for reason in EXPECTED.values() if reason is None)
    rejected = sum(1 for reason in EXPECTED.values() if reason is not None)
    return {"images": accepted + rejected, "accepted": accepted, "rejected": rejected, "ignored": 5}
