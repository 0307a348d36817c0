"""Plain TensorFlow (Keras, tf.function): the featurization benchmark's ceiling (c)."""

from __future__ import annotations

import numpy as np

from fruits_assets.ml import featurizer


class TensorFlowFeaturizer(featurizer.BatchedFeaturizer):
    """MobileNetV2's penultimate layer called through a tf.function with a fixed batch shape."""

    def __init__(self, weights_path: str, batch_size: int, model=None):
        """`model`: an already built `featurizer.build_model(weights_path)`, to reuse."""
        import tensorflow as tf

        self.batch_size = batch_size
        self.model = model if model is not None else featurizer.build_model(weights_path)
        shape = (batch_size, featurizer.IMAGE_SIZE, featurizer.IMAGE_SIZE, 3)
        self._call = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec(shape, tf.float32)],
        )

    def run_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Features of exactly `batch_size` preprocessed images."""
        return self._call(pixels).numpy()
