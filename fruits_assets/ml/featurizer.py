"""The MobileNetV2 featurizer: weights, the cached TFLite conversion, preprocessing, the XNNPACK
interpreter (one per Spark Python worker) and the Spark stage that runs it."""

import hashlib
import io
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fruits_assets.storage import filesystem

FEATURE_DIM = 1280
IMAGE_SIZE = 224
RANDOM_SEED = 0

# Keras's own download location for MobileNetV2 1.0/224 with the top, as `weights="imagenet"` uses.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def cache_dir(kind: str) -> str:
    """Where downloaded weights and converted models are kept (the `cache_dir` setting)."""
    from fruits_assets.settings import FruitsSettings

    return os.path.join(FruitsSettings.from_env().cache_dir, kind)


def _write_atomically(path: str, data: bytes) -> None:
    """Concurrent runs may fill the same cache entry: each writes its own file, then renames."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


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
                f"({IMAGENET_URL + IMAGENET_FILE}): {exc}. Offline, set the `weights` setting to "
                "a local .h5 file of MobileNetV2 1.0/224 with its top: `--weights PATH` (fruits "
                'run, fruits ui), FRUITS_WEIGHTS=PATH, or `weights = "PATH"` in fruits.toml.'
            ) from exc
        finally:
            socket.setdefaulttimeout(previous)
        return WeightsInfo(spec, IMAGENET_URL + IMAGENET_FILE, _sha256_file(path), path)
    if filesystem.is_s3(spec):
        data = filesystem.read_bytes(spec)
        sha = hashlib.sha256(data).hexdigest()
        path = os.path.join(cache_dir("weights"), f"{sha}.h5")
        if not os.path.exists(path):
            _write_atomically(path, data)
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


def weights_digest(model) -> str:
    """sha256 of a built model's weight arrays (what identifies random weights)."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def convert_to_tflite(model, batch_size: int, calibration: Sequence[bytes] = ()) -> bytes:
    """The Keras model as a TFLite flatbuffer with a fixed batch. Float32 by default, so XNNPACK
    computes the same features as TensorFlow (to ~1e-5), about 2.5x faster on a CPU core; with
    `calibration` photos, quantized to int8 throughout (float32 in and out)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    call = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32)
    )
    # Frozen first: with resource variables left in, the converter emits variable ops that
    # XNNPACK does not take, and the model runs several times slower than TensorFlow.
    frozen = convert_variables_to_constants_v2(call)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if calibration:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # Every op in int8: an op the converter could not quantize fails here, instead of
        # silently staying float32 in a model said to be int8.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

        def representative() -> Iterator[list[np.ndarray]]:
            batch = np.zeros((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
            for photo in calibration:
                batch[:] = preprocess(photo)  # what the model sees when featurizing
                yield [batch]

        converter.representative_dataset = representative
    with warnings.catch_warnings():
        # The converter warns that the float32 input has no quantization statistics: by design,
        # the model takes float32 pixels and quantizes them itself.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        return converter.convert()


def _tensorflow_version() -> str:
    """The converter's version, without importing TensorFlow (seconds) on a cache hit."""
    import importlib.metadata

    for name in ("tensorflow", "tensorflow-cpu", "tensorflow-gpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _converted(name: str, convert: Callable[[], bytes]) -> bytes:
    """The converted model cached as `name` (weights, batch size, converter version and any
    calibration in it), converted and cached on a miss: a hit needs no TensorFlow."""
    path = os.path.join(cache_dir("tflite"), name)
    if os.path.exists(path):
        with open(path, "rb") as handle:
            return handle.read()
    data = convert()
    _write_atomically(path, data)
    return data


def tflite_model(info: WeightsInfo, batch_size: int) -> tuple[bytes, str]:
    """The TFLite featurizer for these weights and the weights' sha256; converted once per
    weights file, converter version and batch size, then read from the cache (no TensorFlow)."""
    if info.is_random:
        model = build_model(None)
        return convert_to_tflite(model, batch_size), weights_digest(model)
    name = f"{info.sha256}-b{batch_size}-tf{_tensorflow_version()}.tflite"
    return _converted(
        name, lambda: convert_to_tflite(build_model(info.local_path), batch_size)
    ), info.sha256


# The int8 featurizer (the `precision` setting's opt-in): a full-integer quantization of the
# model, whose features differ from float32's (cosine ~0.994 on Fruits-360) and which runs in
# half the time on a core with int8 dot products (AVX-512 VNNI); on one without them (AVX2
# alone) it is no faster than float32.
# Photos it calibrates its activation ranges on: TFLite's guidance is 100 to 500; each takes the
# converter ~50 ms, once per output root.
CALIBRATION_PHOTOS = 128
# Between the weights' sha256 and the model's in an int8 featurizer's identity.
INT8_MARK = "-int8-"


# What /proc/cpuinfo calls the instructions XNNPACK's fast int8 kernels use: x86's VNNI (with
# AVX-512 or AVX), AMX, Arm's dot product.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def int8_dot_products(cpuinfo: str | None = None) -> bool | None:
    """Whether this machine's CPU has int8 dot-product instructions (`INT8_DOT_PRODUCT_FLAGS`):
    without them the int8 featurizer saves nothing. None where /proc/cpuinfo can't be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        name, _, values = line.partition(":")
        if name.strip() in ("flags", "Features"):  # x86, Arm
            return not INT8_DOT_PRODUCT_FLAGS.isdisjoint(values.split())
    return None


def workers_int8_dot_products(spark) -> bool | None:
    """`int8_dot_products` of a CPU that runs Spark's Python workers: on a cluster, an
    executor's, whose instance type may differ from the machine running the step."""
    return spark.sparkContext.parallelize([0], 1).map(lambda _: int8_dot_products()).first()


def int8_prefix(weights_sha256: str) -> str:
    """How the names of these weights' int8 models begin (`int8_identity`)."""
    return weights_sha256 + INT8_MARK


def int8_identity(weights_sha256: str, model: bytes) -> str:
    """What names an int8 model's features (the feature table's weights column, the stored model):
    the weights and the model itself, since its calibration photos shape its features too."""
    return int8_prefix(weights_sha256) + hashlib.sha256(model).hexdigest()[:16]


def int8_model(info: WeightsInfo, batch_size: int, photos: Sequence[bytes]) -> tuple[bytes, str]:
    """The model quantized to int8 (weights per channel, activations calibrated on `photos`), and
    the weights' sha256; converted once per weights, batch size, converter and set of photos (in
    whatever order they come: they are calibrated on in the order of their digests)."""
    if info.is_random:
        raise ValueError("the int8 featurizer needs trained weights, not random ones")
    if not photos:
        raise ValueError("the int8 featurizer calibrates on accepted photos, and there are none")
    by_digest = sorted((hashlib.sha256(photo).digest(), photo) for photo in photos)
    photos = [photo for _, photo in by_digest]
    calibration = hashlib.sha256(b"".join(digest for digest, _ in by_digest)).hexdigest()[:16]
    name = f"{info.sha256}-b{batch_size}-tf{_tensorflow_version()}-int8-{calibration}.tflite"
    return _converted(
        name,
        lambda: convert_to_tflite(build_model(info.local_path), batch_size, calibration=photos),
    ), info.sha256


def _decode_rgb(content: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(content)) as image:
        return image.convert("RGB")


def _scale_into(image, out: np.ndarray) -> None:
    """Resize to 224x224 (PIL's default filter, as the seed) and scale to [-1, 1] in `out`,
    in place: the same float32 arithmetic as `x / 127.5 - 1`, without two temporary arrays."""
    resized = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE)))
    np.divide(resized, np.float32(127.5), out=out, dtype=np.float32)
    out -= np.float32(1.0)


def preprocess(content: bytes) -> np.ndarray:
    """Decode, resize to 224x224 (PIL's default filter, as the seed) and scale to [-1, 1]."""
    out = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    _scale_into(_decode_rgb(content), out)
    return out


def _interpreter_class():
    try:  # LiteRT: the interpreter alone, imported in milliseconds
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the same runtime inside TensorFlow (seconds to import)
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter


class BatchedFeaturizer:
    """Photos in, 1280-d vectors out, through a model that takes fixed-size batches."""

    batch_size: int

    def __call__(self, contents: Sequence[bytes]) -> np.ndarray:
        return self._featurize(contents, None)

    def with_histograms(self, contents: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Features and, from the same decoded pixels, colour histograms (each photo is
        decoded once)."""
        from fruits_assets.ml import color

        histograms = np.empty((len(contents), color.HISTOGRAM_DIM), dtype=np.float32)
        return self._featurize(contents, histograms), histograms

    def _featurize(self, contents: Sequence[bytes], histograms: np.ndarray | None) -> np.ndarray:
        """Features of `contents`; fills `histograms` (one row per photo) when given."""
        from fruits_assets.ml import color

        out = np.empty((len(contents), FEATURE_DIM), dtype=np.float32)
        batch = np.zeros((self.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
        for start in range(0, len(contents), self.batch_size):
            chunk = contents[start : start + self.batch_size]
            for i, content in enumerate(chunk):
                image = _decode_rgb(content)
                _scale_into(image, batch[i])
                if histograms is not None:
                    histograms[start + i] = color.histogram_of(np.asarray(image))
            out[start : start + len(chunk)] = self.run_batch(batch)[: len(chunk)]
        return out

    def run_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Features of exactly `batch_size` preprocessed images (a copy the caller may keep)."""
        raise NotImplementedError


class Featurizer(BatchedFeaturizer):
    """The TFLite MobileNetV2 penultimate model on XNNPACK, fed with preprocessed photos."""

    def __init__(self, model: bytes, threads: int = 1):
        self._interpreter = _interpreter_class()(model_content=model, num_threads=max(threads, 1))
        self._interpreter.allocate_tensors()
        (inp,) = self._interpreter.get_input_details()
        (out,) = self._interpreter.get_output_details()
        shapes = tuple(inp["shape"][1:]), int(out["shape"][-1])
        if shapes != ((IMAGE_SIZE, IMAGE_SIZE, 3), FEATURE_DIM):
            raise ValueError(f"not a MobileNetV2 penultimate model: {shapes}")
        self.batch_size = int(inp["shape"][0])
        self._input, self._output = inp["index"], out["index"]

    def run_batch(self, pixels: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input, pixels)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)


_WORKER_FEATURIZERS: dict[str, Featurizer] = {}


def worker_featurizer(key: str, model, threads: int) -> Featurizer:
    """One Featurizer per Python worker process and model, reused by every task it runs;
    `model` is called only on a miss (it reads the broadcast)."""
    if key not in _WORKER_FEATURIZERS:
        _WORKER_FEATURIZERS[key] = Featurizer(model(), threads)
    return _WORKER_FEATURIZERS[key]


# Per photo, whether its vectors hold only finite values (`all_finite`).
ALL_FINITE = "all_finite"


def all_finite(features: np.ndarray, histograms: np.ndarray) -> np.ndarray:
    """Per photo, whether its feature vector and its colour histogram hold only finite values.

    Computed where the vectors are made, from the very values written: in the JVM, the test of
    1,280 values a row (a lambda per value, interpreted) needed a pass of its own over the
    staged rows."""
    return np.isfinite(features).all(axis=1) & np.isfinite(histograms).all(axis=1)


# The counts of the feature rows a featurizing task writes (`featurized_files`), per file:
# vectors of the wrong length or not all finite, and the photos on each side of the folders' split.
BAD = "bad"
WRITTEN_COUNTS = (BAD, "train", "test", "none")


def featurized_files(
    photos,
    model: bytes,
    sha256: str,
    batch_size: int,
    threads: int,
    folder: str,
    columns: Sequence[str],
    constants: dict[str, str],
):
    """Each photo of `photos` (`table_files.Rows` of its `path`, `label` and `content`, the
    photo's bytes) featurized: MobileNetV2's `features`, the `color_histogram` (which the
    classifier also uses) and an `all_finite` flag, computed by one interpreter per Python
    worker process for the whole stage (the TFLite model broadcast once). From and to Arrow
    batches (`mapInArrow`): the vectors stay contiguous values, never a Python object per
    value.

    Each task writes its rows under `folder` itself, one Parquet file per class
    (`class_files.written`): the feature table's `columns`, with `constants` added (name:
    value). The rows of the job: one per file written, with its `WRITTEN_COUNTS` and its
    number of distinct paths (`class_files.DISTINCT`)."""
    import pyarrow as pa

    from fruits_assets.ml.arrow_vectors import list_array
    from fruits_assets.storage import class_files

    broadcast = photos.frame.sparkSession.sparkContext.broadcast(model)
    key = f"{sha256}:{batch_size}"
    columns = list(columns)

    def featurize(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = worker_featurizer(key, lambda: broadcast.value, threads)
        for batch in batches:
            # The histogram rides along: the image bytes cross to Python and are decoded once.
            features, histograms = model.with_histograms(batch.column("content").to_pylist())
            n = batch.num_rows
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("path"),
                    batch.column("label"),
                    list_array(features),
                    list_array(histograms),
                    pa.array(all_finite(features, histograms)),
                    *(pa.array([value] * n, pa.string()) for value in constants.values()),
                ],
                names=["path", "label", "features", "color_histogram", ALL_FINITE, *constants],
            )

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from class_files.written(
            featurize(batches), folder, columns, written_counts, WRITTEN_COUNTS, distinct="path"
        )

    schema = class_files.manifest_schema(WRITTEN_COUNTS)
    return photos.map_in_arrow(write, schema)


def written_counts(batch) -> dict[str, int]:
    """`WRITTEN_COUNTS` of a batch of featurized rows."""
    import pyarrow.compute as pc

    from fruits_assets.ml import color, splits

    lengths_ok = pc.and_(
        pc.equal(pc.list_value_length(batch.column("features")), FEATURE_DIM),
        pc.equal(pc.list_value_length(batch.column("color_histogram")), color.HISTOGRAM_DIM),
    )
    good = pc.fill_null(pc.and_kleene(lengths_ok, batch.column(ALL_FINITE)), False)
    paths = batch.column("path").to_pylist()
    sides = [splits.split_of_path(p) for p in paths]
    return {
        BAD: pc.sum(pc.cast(pc.invert(good), "int64")).as_py() or 0,
        "train": sides.count(splits.TRAIN),
        "test": sides.count(splits.TEST),
        "none": sides.count(None),
    }
