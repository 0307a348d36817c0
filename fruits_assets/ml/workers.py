"""Run in Spark's Python workers ahead of the first stage that needs them (see `warm_up`)."""

from collections.abc import Iterator
from typing import Any


def warm(batches: Iterator[Any]) -> Iterator[Any]:
    """Import what the image, featurizer and PCA stages use, then pass the rows through."""
    import pyarrow  # noqa: F401  (every Arrow stage's batches)

    from fruits_assets.ml import color, decoding, featurizer, pca  # noqa: F401

    featurizer._interpreter_class()  # LiteRT's interpreter (or TensorFlow's)
    yield from batches
