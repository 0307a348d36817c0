"""The plain-TensorFlow featurizer that defines the issue's ceiling (c): Keras, tf.function."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fruits_assets import featurizer


class TensorFlowFeaturizer:
    """MobileNetV2's penultimate layer called through a tf.function with a fixed batch shape."""

    def __init__(self, weights_path: str, batch_size: int, model=None):  # noqa: ANN001
        """`model`: an already built `featurizer.build_model(weights_path)`, to reuse."""
        import tensorflow as tf

        self.batch_size = batch_size
        self.model = model if model is not None else featurizer.build_model(weights_path)
        shape = (batch_size, featurizer.IMAGE_SIZE, featurizer.IMAGE_SIZE, 3)
        self._call = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec(shape, tf.float32)],
        )

    def __call__(self, contents: Sequence[bytes]) -> np.ndarray:
        out = np.empty((len(contents), featurizer.FEATURE_DIM), dtype=np.float32)
        size = featurizer.IMAGE_SIZE
        for start in range(0, len(contents), self.batch_size):
            chunk = contents[start : start + self.batch_size]
            batch = np.zeros((self.batch_size, size, size, 3), dtype=np.float32)
            for i, content in enumerate(chunk):
                batch[i] = featurizer.preprocess(content)
            out[start : start + len(chunk)] = self.run_batch(batch)[: len(chunk)]
        return out

    def run_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Features of exactly `batch_size` preprocessed images."""
        return self._call(pixels).numpy()
