"""The MobileNetV2 featurizer: weights, preprocessing and the 1280-d penultimate layer."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fruits_assets import filesystem

FEATURE_DIM = 1280
IMAGE_SIZE = 224
RANDOM_SEED = 0

# Keras's own download location for MobileNetV2 1.0/224 with the top, as `weights="imagenet"` uses.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
WEIGHTS_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "fruits_assets", "weights")


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from and their sha256, for the asset metadata."""

    spec: str
    source: str
    sha256: str
    local_path: str | None  # None for random weights

    @property
    def is_random(self) -> bool:
        return self.local_path is None


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(spec: str) -> WeightsInfo:
    """Turn `imagenet`, `random`, a local path or an s3:// URI into a local .h5 file (or none)."""
    if spec == "random":
        return WeightsInfo(spec, f"random initialisation (seed {RANDOM_SEED})", "", None)
    if spec == "imagenet":
        import keras

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(previous or 60)  # a silent network must fail, not hang the run
        try:
            path = keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL + IMAGENET_FILE, "models")
        except Exception as exc:
            raise RuntimeError(
                "Could not download the ImageNet weights for MobileNetV2 "
                f"({IMAGENET_URL + IMAGENET_FILE}): {exc}. Offline, pass --weights PATH to a "
                "local .h5 file (include_top=True)."
            ) from exc
        finally:
            socket.setdefaulttimeout(previous)
        return WeightsInfo(spec, IMAGENET_URL + IMAGENET_FILE, _sha256_file(path), path)
    if filesystem.is_s3(spec):
        data = filesystem.read_bytes(spec)
        sha = hashlib.sha256(data).hexdigest()
        path = os.path.join(WEIGHTS_CACHE, f"{sha}.h5")
        if not os.path.exists(path):
            os.makedirs(WEIGHTS_CACHE, exist_ok=True)
            with open(path + ".tmp", "wb") as handle:
                handle.write(data)
            os.replace(path + ".tmp", path)
        return WeightsInfo(spec, filesystem.normalize_uri(spec), sha, path)
    path = filesystem.normalize_uri(spec)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weights file {path!r} not found: use 'imagenet', 'random', a .h5 path or an s3:// URI"
        )
    return WeightsInfo(spec, path, _sha256_file(path), path)


def build_model(weights_path: str | None = None):
    """MobileNetV2 (alpha 1.0, 224, include_top=True) cut at its 1280-d penultimate layer."""
    import keras

    if weights_path is None:
        keras.utils.set_random_seed(RANDOM_SEED)
    full = keras.applications.MobileNetV2(
        alpha=1.0, include_top=True, weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    if weights_path is not None:
        try:
            full.load_weights(weights_path)
        except Exception as exc:
            raise ValueError(
                f"{weights_path!r} does not hold MobileNetV2 1.0/224 weights with the top: {exc}"
            ) from exc
    full.trainable = False
    return keras.Model(inputs=full.input, outputs=full.layers[-2].output)


def load_weight_arrays(info: WeightsInfo) -> tuple[list[np.ndarray], str]:
    """The penultimate model's weights, to broadcast, and their sha256 (random weights' own)."""
    arrays = build_model(info.local_path).get_weights()
    if not info.is_random:
        return arrays, info.sha256
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return arrays, digest.hexdigest()


SERVING_WEIGHTS = "mobilenet_v2_penultimate.npz"


def save_weight_arrays(arrays: Sequence[np.ndarray], uri: str) -> None:
    """The penultimate model's weights, so a trained classifier carries its own featurizer."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    filesystem.write_bytes(uri, buffer.getvalue())


def load_weight_array_file(uri: str) -> list[np.ndarray]:
    data = np.load(io.BytesIO(filesystem.read_bytes(uri)))
    return [data[f"arr_{i}"] for i in range(len(data.files))]


def preprocess(content: bytes) -> np.ndarray:
    """Decode, resize to 224x224 (PIL's default filter, as the seed) and scale to [-1, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(content)) as image:
        resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))
    return np.asarray(resized, dtype=np.float32) / 127.5 - 1.0


class Featurizer:
    """A built model plus a compiled call with a fixed batch shape, so TensorFlow traces once."""

    def __init__(self, weights: Sequence[np.ndarray] | bytes | None, batch_size: int = 16):
        """`weights`: the penultimate model's arrays, the bytes of a Keras .h5, or None (random)."""
        import tensorflow as tf

        self.batch_size = batch_size
        if isinstance(weights, bytes):
            with tempfile.NamedTemporaryFile(suffix=".h5") as handle:
                handle.write(weights)
                handle.flush()
                self.model = build_model(handle.name)
        else:
            self.model = build_model(None)
            if weights is not None:
                self.model.set_weights(list(weights))
        self._call = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32)],
        )

    def __call__(self, contents: Sequence[bytes]) -> np.ndarray:
        out = np.empty((len(contents), FEATURE_DIM), dtype=np.float32)
        for start in range(0, len(contents), self.batch_size):
            chunk = contents[start : start + self.batch_size]
            batch = np.zeros((self.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
            for i, content in enumerate(chunk):
                batch[i] = preprocess(content)
            out[start : start + len(chunk)] = self._call(batch).numpy()[: len(chunk)]
        return out


_WORKER_FEATURIZERS: dict[str, Featurizer] = {}


def broadcast_payload(info: WeightsInfo) -> tuple[list[np.ndarray] | bytes, str]:
    """What the driver broadcasts: a weights file's bytes as they are (no TensorFlow needed on
    the driver), or the arrays of the seeded random model; and the sha256 to record."""
    if info.is_random:
        return load_weight_arrays(info)
    with open(info.local_path, "rb") as handle:
        return handle.read(), info.sha256


def worker_featurizer(sha256: str, weights, batch_size: int, threads: int) -> Featurizer:
    """One Featurizer per Python worker process and weights, reused by every task it runs."""
    key = f"{sha256}:{batch_size}"
    if key not in _WORKER_FEATURIZERS:
        import tensorflow as tf

        if threads > 0 and not _WORKER_FEATURIZERS:
            try:  # only possible before TensorFlow's runtime starts in this process
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        _WORKER_FEATURIZERS[key] = Featurizer(weights(), batch_size)
    return _WORKER_FEATURIZERS[key]
