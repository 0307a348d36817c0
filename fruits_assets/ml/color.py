"""Colour histograms: what tells Red 1 from Red 2 apples, which ImageNet features under-weight."""

from __future__ import annotations

import io

import numpy as np

BINS_PER_CHANNEL = 8
HISTOGRAM_DIM = BINS_PER_CHANNEL**3
# Fruits-360 shoots fruit on white: the top bin of all three channels is background, not fruit.
_BACKGROUND_BIN = HISTOGRAM_DIM - 1


def histogram(content: bytes) -> np.ndarray:
    """The histogram of an encoded photo (see `histogram_of`)."""
    from PIL import Image

    with Image.open(io.BytesIO(content)) as image:
        return histogram_of(np.asarray(image.convert("RGB")))


def histogram_of(rgb: np.ndarray) -> np.ndarray:
    """Square roots of the fractions of non-background pixels in each of 8x8x8 RGB bins, from
    decoded (height, width, 3) uint8 pixels."""
    pixels = rgb.astype(np.int32) // (256 // BINS_PER_CHANNEL)
    bins = (pixels[..., 0] * BINS_PER_CHANNEL + pixels[..., 1]) * BINS_PER_CHANNEL + pixels[..., 2]
    counts = np.bincount(bins.ravel(), minlength=HISTOGRAM_DIM).astype(np.float64)
    counts[_BACKGROUND_BIN] = 0.0
    total = counts.sum()
    # The square root (Hellinger) keeps a few dominant colours from drowning the rest.
    return np.sqrt(counts / total if total else counts).astype(np.float32)
