"""The TFLite featurizer computes Keras MobileNetV2's own penultimate features, and is cached."""

from __future__ import annotations

import numpy as np
import pytest

from fruits_assets.ml import featurizer
from fruits_assets_tests.helpers import keras_features
from fruits_assets_tests.images import noisy_jpeg


@pytest.fixture(scope="module")
def photos(fruits360) -> list[bytes]:
    """Eight real photos of four different fruits."""
    classes = ["Apple Golden 2", "Banana 1", "Kiwi 1", "Strawberry 1"]
    paths = [p for c in classes for p in sorted((fruits360 / "Test" / c).glob("*.jpg"))[:2]]
    return [p.read_bytes() for p in paths]


def test_tflite_features_equal_keras_features(shared_weights, photos, tmp_path, monkeypatch):
    """Same 1280 values per photo as Keras (float32 round-off only), for any batch size."""
    monkeypatch.setenv("FRUITS_CACHE_DIR", str(tmp_path))
    info = featurizer.resolve_weights(str(shared_weights))
    expected = keras_features(shared_weights, photos)
    for batch_size in (1, 3):
        model, sha256 = featurizer.tflite_model(info, batch_size)
        assert sha256 == info.sha256
        ours = featurizer.Featurizer(model)(photos)  # 8 photos: the last batch of 3 is padded
        assert ours.shape == (8, featurizer.FEATURE_DIM)
        np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-3)
        assert np.abs(ours - expected).max() < 1e-3 * np.abs(expected).max()
    # Different photos give different vectors: the comparison above is not vacuous.
    assert np.linalg.norm(expected[0] - expected[2]) > 1.0


def test_conversion_is_cached_per_weights(shared_weights, tmp_path, monkeypatch):
    """The second request reads the converted model back instead of converting again."""
    monkeypatch.setenv("FRUITS_CACHE_DIR", str(tmp_path))
    info = featurizer.resolve_weights(str(shared_weights))
    first, _ = featurizer.tflite_model(info, 1)
    (cached,) = (tmp_path / "tflite").iterdir()
    assert cached.name.startswith(info.sha256) and cached.read_bytes() == first

    def fail(*_):
        raise AssertionError("converted again")

    monkeypatch.setattr(featurizer, "convert_to_tflite", fail)
    assert featurizer.tflite_model(info, 1)[0] == first


def test_int8_features_stay_close_to_float32_and_are_cached_per_calibration(
    shared_weights, photos, fruits360, tmp_path, monkeypatch
):
    """The int8 model, calibrated on real photos, gives other photos' vectors close to float32's
    (not equal: an opt-in); the same calibration photos give the same model from the cache."""
    monkeypatch.setenv("FRUITS_CACHE_DIR", str(tmp_path))
    info = featurizer.resolve_weights(str(shared_weights))
    calibration = [p.read_bytes() for p in sorted((fruits360 / "Training" / "Lemon 1").glob("*"))]
    int8, sha256 = featurizer.int8_model(info, 1, calibration[:8])
    assert sha256 == info.sha256
    identity = featurizer.int8_identity(sha256, int8)
    assert identity.startswith(featurizer.int8_prefix(info.sha256)) and identity != sha256
    float32, _ = featurizer.tflite_model(info, 1)
    assert len(int8) < len(float32) // 3  # int8 weights: a quarter of float32's bytes
    ours, theirs = (featurizer.Featurizer(m)(photos) for m in (int8, float32))
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.97, cosine
    assert np.abs(ours - theirs).max() > 1e-3  # a different model, not float32 under a new name

    def fail(*_, **__):
        raise AssertionError("converted again")

    monkeypatch.setattr(featurizer, "convert_to_tflite", fail)
    assert featurizer.int8_model(info, 1, calibration[:8])[0] == int8
    with pytest.raises(AssertionError, match="converted again"):  # other photos: another model
        featurizer.int8_model(info, 1, calibration[8:16])
    with pytest.raises(ValueError, match="calibrates on accepted photos"):
        featurizer.int8_model(info, 1, [])
    with pytest.raises(ValueError, match="needs trained weights"):  # they quantize to constants
        featurizer.int8_model(featurizer.resolve_weights("random"), 1, calibration[:8])


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("flags\t\t: fpu sse avx fma avx2 sha_ni\n", False),  # AVX2 alone (Zen 2)
        ("model name\t: AMD EPYC\nflags\t\t: avx2 avx512f avx512_vnni\nflags\t\t: avx2\n", True),
        ("flags\t\t: avx2 avx_vnni\n", True),  # AVX-VNNI without AVX-512
        ("Features\t: fp asimd asimdrdm asimddp sve\n", True),  # Arm with its dot product
        ("Features\t: fp asimd\n", False),
        ("processor\t: 0\n", None),  # no flags line: unknown, nothing said
    ],
)
def test_the_cpu_s_int8_dot_products_are_read_from_its_flags(cpuinfo, expected):
    assert featurizer.int8_dot_products(cpuinfo) is expected


def test_random_weights_are_reproducible(tmp_path, monkeypatch):
    """The demo's random model is seeded: same digest, same features, run after run."""
    monkeypatch.setenv("FRUITS_CACHE_DIR", str(tmp_path))
    info = featurizer.resolve_weights("random")
    (model_a, sha_a), (model_b, sha_b) = (featurizer.tflite_model(info, 1) for _ in range(2))
    assert sha_a == sha_b
    photo = [noisy_jpeg()]
    np.testing.assert_array_equal(
        featurizer.Featurizer(model_a)(photo), featurizer.Featurizer(model_b)(photo)
    )


def test_a_model_that_is_not_the_featurizer_is_refused(shared_weights, tmp_path):
    """Garbage bytes fail loudly instead of producing vectors."""
    with pytest.raises(ValueError):
        featurizer.Featurizer(b"not a tflite model")


def test_a_row_with_any_value_that_is_not_finite_is_flagged():
    """NaN or an infinity anywhere in a photo's vector or histogram flags that photo only."""
    features = np.ones((5, featurizer.FEATURE_DIM), dtype=np.float32)
    histograms = np.full((5, 64), 0.5, dtype=np.float32)
    features[1, 1279], features[2, 0], histograms[3, 10] = np.nan, np.inf, -np.inf
    assert featurizer.all_finite(features, histograms).tolist() == [True, False, False, False, True]


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_vectors_reach_arrow_as_one_list_per_row_in_order(rows):
    """The featurizer's (and the projection's) vectors as Arrow lists: row for row, every value."""
    from fruits_assets.ml.arrow_vectors import list_array
    from fruits_assets.ml.pca import vectors

    matrix = np.arange(rows * 4, dtype=np.float64).reshape(rows, 4) / 3
    column = list_array(matrix)
    assert str(column.type) == "list<item: float>" and len(column) == rows
    assert column.to_pylist() == [list(np.float32(row)) for row in matrix]
    assert np.array_equal(vectors(column, width=4, dtype=np.float32), matrix.astype(np.float32))
