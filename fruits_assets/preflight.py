"""Checks run before any asset rewrites data: the weights, the output root, the free space.

Each failure is one line that names the cause and the place, e.g.
`No space left on device: /data/out has 12 MiB free, this run needs about 130 MiB`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fruits_assets.storage import filesystem

if TYPE_CHECKING:
    from fruits_assets.settings import FruitsSettings

MIB = 1 << 20
# What a run writes per image, beyond the image bytes themselves (copied into labeled_images and
# its staging area): features and histogram twice (staged, published), PCA features, a CSV row.
BYTES_PER_IMAGE = 40 * 1024
SLACK_BYTES = 16 * MIB


class PreflightError(ValueError):
    """The run would fail (or fill the disk): nothing was started."""


def space_needed(image_bytes: int, n_images: int) -> int:
    return 3 * image_bytes + BYTES_PER_IMAGE * n_images + SLACK_BYTES


def check_run(
    settings: FruitsSettings, image_bytes: int, n_images: int, downstream_only: bool
) -> None:
    """A run's checks once its images are known: the output root's room for them and, for a
    run that featurizes locally, the weights."""
    if downstream_only:
        image_bytes = n_images = 0
    check_output_root(settings.output, space_needed(image_bytes, n_images))
    if not downstream_only and settings.env == "local" and not settings.allow_random_fallback:
        check_weights(settings.weights, batch_size=1)


def check_output_root(output_root: str, needed_bytes: int = 0) -> None:
    """The output root is a folder (or can be made one), writable, with room for the run."""
    if filesystem.is_s3(output_root):
        return  # S3 has no free space to check; access is checked by the first write
    if os.path.exists(output_root) and not os.path.isdir(output_root):
        raise PreflightError(f"Not a folder (a file is in the way): {output_root}")
    try:
        os.makedirs(output_root, exist_ok=True)
        probe = os.path.join(output_root, f".probe-{uuid.uuid4().hex}")
        with open(probe, "wb") as handle:
            handle.write(b"fruits")
        os.remove(probe)
    except OSError as exc:
        raise PreflightError(f"{exc.strerror or exc}: {output_root}") from exc
    free = shutil.disk_usage(output_root).free
    if needed_bytes and free < needed_bytes:
        raise PreflightError(
            f"No space left on device: {output_root} has {free // MIB} MiB free, this run needs "
            f"about {needed_bytes // MIB} MiB"
        )


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """TensorFlow writes start-up chatter to the process's stderr (file descriptor 2, below
    Python): keep it out of the terminal while it converts or checks weights, so that a failure's
    first line is its cause (its exception carries it)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def check_weights(spec: str, batch_size: int, convert: bool = True) -> None:
    """The weights resolve to MobileNetV2 weights (converted once to the cached TFLite model)."""
    from fruits_assets.ml import featurizer

    try:
        with quiet_stderr():
            info = featurizer.resolve_weights(spec)
            if convert:
                featurizer.tflite_model(info, batch_size)
    except Exception as exc:  # any reason the featurizer could not be built
        raise PreflightError(f"weights {spec!r}: {exc}") from exc
