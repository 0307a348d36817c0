"""Decodes and validates image bytes: every file ends up either an RGB image or a rejection."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
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
# On S3 a photo is two requests (its size, then its bytes): a task reads this many at once, so
# that S3's round trips overlap instead of following one another (the bytes of at most a batch
# of photos are held, as the batch holds them anyway).
S3_READS_IN_FLIGHT = 16

# The columns of the two tables the decode writes (the class is each file's folder), and what it
# counts of each file it writes for the audit: the accepted photos converted to RGB, and the
# rejections (every row of a file of rejections, none of a file of accepted photos).
ACCEPTED_COLUMNS = ["path", "content", "width", "height", "original_mode", "converted"]
REJECTED_COLUMNS = ["path", "reason"]
CONVERTED, REJECTIONS = "converted", "rejections"
WRITTEN_COUNTS = (CONVERTED, REJECTIONS)


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


def read_file(path: str) -> bytes | Decoded:
    """One file's bytes, or its rejection: it vanished or cannot be read, or it is larger than
    `MAX_FILE_BYTES` (its size is known before it is read)."""
    try:
        where = filesystem.Location.of(path)
        with where.fs.open_input_file(where.path) as handle:
            size = handle.size()
            if size > MAX_FILE_BYTES:
                return Decoded(None, f"{REJECT_TOO_BIG_FILE}: {size} bytes")
            return handle.read()
    except Exception as exc:
        return Decoded(None, f"{REJECT_MISSING}: {exc}")


def _outcomes_batch(batch: Any, outcomes: list[Decoded]) -> Any:
    """A listing's batch (`path`, `label`) with each file's outcome."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [
            batch.column("path"),
            batch.column("label"),
            pa.array([d.content for d in outcomes], pa.binary()),
            pa.array([d.width for d in outcomes], pa.int32()),
            pa.array([d.height for d in outcomes], pa.int32()),
            pa.array([d.original_mode for d in outcomes], pa.string()),
            pa.array([d.converted for d in outcomes], pa.bool_()),
            pa.array([d.reason for d in outcomes], pa.string()),
        ],
        names=["path", "label", *ACCEPTED_COLUMNS[1:], "reason"],
    )


def decoded_files(listing: Any, accepted_folder: str, rejected_folder: str) -> Any:
    """Each file of `listing` (`table_files.Rows` of its `path` and `label`) read and decoded
    by Spark's Python workers, which write the outcome themselves (`class_files.written`): the
    accepted photos under `accepted_folder` (`ACCEPTED_COLUMNS`), the rejections under
    `rejected_folder` (`REJECTED_COLUMNS`), a Parquet file per class and task each. The rows of
    the job: one per file written (`class_files.manifest_schema(WRITTEN_COUNTS)`); a file of
    rejections is one whose `REJECTIONS` are its rows, a file of accepted photos has none."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from fruits_assets.storage import class_files

    def decoded(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with ThreadPoolExecutor(S3_READS_IN_FLIGHT) as pool:  # threads start on first use
            for batch in batches:
                paths = batch.column("path").to_pylist()
                # One root: every path alike. A local read has no wait to overlap. Only the
                # reads run side by side: the photos are decoded here, one at a time.
                remote = bool(paths) and filesystem.is_s3(paths[0])
                contents = pool.map(read_file, paths) if remote else map(read_file, paths)
                outcomes = [c if isinstance(c, Decoded) else decode(c) for c in contents]
                yield _outcomes_batch(batch, outcomes)

    def converted(batch: pa.RecordBatch) -> dict[str, int]:
        return {CONVERTED: pc.sum(batch.column("converted").cast(pa.int64())).as_py() or 0}

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rejected: list[pa.RecordBatch] = []  # few, and without their bytes: held to the end

        def accepted() -> Iterator[pa.RecordBatch]:
            for batch in decoded(batches):
                ok = pc.is_null(batch.column("reason"))
                if batch.num_rows and not pc.all(ok).as_py():
                    rejected.append(batch.filter(pc.invert(ok)).select(["path", "label", "reason"]))
                yield batch.filter(ok)

        # A task that fails while writing its rejections leaves its accepted files, complete
        # but in no manifest: never published, swept with the run's staging folder.
        yield from class_files.written(
            accepted(), accepted_folder, ACCEPTED_COLUMNS, converted, WRITTEN_COUNTS
        )
        if rejected:
            yield from class_files.written(
                iter(rejected),
                rejected_folder,
                REJECTED_COLUMNS,
                lambda batch: {REJECTIONS: batch.num_rows},
                WRITTEN_COUNTS,
            )

    schema = class_files.manifest_schema(WRITTEN_COUNTS)
    return listing.map_in_arrow(write, schema)
