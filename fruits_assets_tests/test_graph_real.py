"""The whole graph on real Fruits-360 images with the real MobileNetV2 weights, and class reruns."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from fruits_assets.ml import color, featurizer
from fruits_assets.storage import filesystem, layout
from fruits_assets_tests.conftest import REAL_CLASSES as CLASSES
from fruits_assets_tests.conftest import WEIGHTS_SHA256
from fruits_assets_tests.helpers import (
    assert_kept_groups_match_the_table,
    keras_features,
    materialize_graph,
)
from fruits_assets_tests.helpers import read_dataset as read_parquet

pytestmark = pytest.mark.slow
RERUN_CLASS = "Kiwi 1"


def label_dir_digest(dataset: str, label: str) -> str:
    """A digest of every file's bytes in one label folder."""
    digest = hashlib.sha256()
    folder = Path(layout.partition_dir(dataset, label))
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def test_real_graph_outputs(real_run):
    _, output, _, outcome = real_run
    assert outcome.ok, outcome.failures
    assert outcome.checks and all(outcome.checks.values())
    features = read_parquet(layout.asset_dir(output, layout.MOBILENET_FEATURES))
    assert len(features) == 600 and set(features.label) == set(CLASSES)
    # Each class of each per-class table is one file (small files cost more than their bytes).
    for dataset in (layout.RAW_IMAGES, layout.ACCEPTED_IMAGES, layout.MOBILENET_FEATURES):
        files = DeltaTable(layout.dataset_dir(output, dataset)).file_uris()
        assert sorted(f.split("/")[-2] for f in files) == sorted(
            layout.partition_dir_name(c) for c in CLASSES
        )
    # The PCA features, rewritten whole by every run, are a few files without class folders.
    files = DeltaTable(layout.dataset_dir(output, layout.PCA_FEATURES_PARQUET)).file_uris()
    assert len(files) < len(CLASSES) and not any("/label=" in f for f in files)
    meta = outcome.metadata["mobilenet_features"]
    assert meta["weights_sha256"] == WEIGHTS_SHA256
    assert_kept_groups_match_the_table(output)
    pca = outcome.metadata["pca_model"]
    assert pca["explained_variance"] >= 0.99 and 1 <= pca["k"] <= 449
    assert pca["num_rows"] == 450 and "Training split only" in pca["fit_on"]
    model = read_parquet(layout.asset_dir(output, layout.PCA_MODEL))
    assert len(model) == 1 and model.k[0] == pca["k"] and len(model.components[0]) == pca["k"]
    assert model.scree_png[0].startswith(b"\x89PNG")
    # It is the PCA of the Training features, as an independent computation finds it.
    training = features[features.path.str.contains("/Training/")]
    x = np.stack(training.features.to_numpy()).astype(np.float64)
    eigenvalues = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    ratio = eigenvalues / eigenvalues.sum()
    np.testing.assert_allclose(list(model.explained_variance_ratio[0]), ratio[:449], atol=1e-9)
    assert pca["k"] == int(np.argmax(np.cumsum(ratio) >= 0.99)) + 1
    components = np.stack(model.components[0])
    np.testing.assert_allclose(components @ components.T, np.eye(pca["k"]), atol=1e-6)
    parquet = read_parquet(layout.asset_dir(output, layout.PCA_FEATURES_PARQUET))
    csv = pd.read_csv(layout.csv_path(output))
    assert len(parquet) == len(csv) == 600
    assert csv.shape[1] == pca["k"] + 2
    joined = csv.merge(parquet, on=["path", "label"])
    np.testing.assert_allclose(
        np.stack(joined.pca_features.to_numpy()),
        joined[[f"pca_feature_{i + 1}" for i in range(pca["k"])]].to_numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_asset_features_are_keras_mobilenet_v2_features(real_run, shared_weights):
    """The asset's vectors (TFLite on Spark workers) are what Keras's MobileNetV2 computes."""
    _, output, _, _ = real_run
    features = read_parquet(layout.asset_dir(output, layout.MOBILENET_FEATURES))
    sample = features.sort_values("path").groupby("label").head(1)
    photos = [Path(filesystem.normalize_uri(p)).read_bytes() for p in sample.path]
    expected = keras_features(shared_weights, photos)
    np.testing.assert_allclose(np.stack(sample.features.to_numpy()), expected, atol=1e-3, rtol=1e-3)
    # The colour histograms, computed from the same decoded pixels, are those of the photos.
    np.testing.assert_array_equal(
        np.stack(sample.color_histogram.to_numpy()), [color.histogram(p) for p in photos]
    )
    # Each row names its weights; the model that computed them is stored beside them.
    assert set(features.weights_sha256) == {WEIGHTS_SHA256}
    model = Path(layout.featurizer_model_path(output, WEIGHTS_SHA256)).read_bytes()
    np.testing.assert_allclose(featurizer.Featurizer(model)(photos), expected, atol=1e-3, rtol=1e-3)


def test_real_features_separate_fruit_classes(real_run):
    """ImageNet features put a Test image nearest to a Training image of its own class."""
    _, output, _, _ = real_run
    parquet = read_parquet(layout.asset_dir(output, layout.PCA_FEATURES_PARQUET))
    x = np.stack(parquet.pca_features.to_numpy()).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    train = parquet.path.str.contains("/Training/").to_numpy()
    similarity = x[~train] @ x[train].T
    nearest = parquet.label.to_numpy()[train][similarity.argmax(axis=1)]
    assert (nearest == parquet.label.to_numpy()[~train]).mean() > 0.9


def test_rerun_one_class_leaves_the_others_untouched(real_run, fruits360, shared_weights):
    root, output, instance, _ = real_run
    features_dir = layout.asset_dir(output, layout.MOBILENET_FEATURES)
    before = {label: label_dir_digest(features_dir, label) for label in CLASSES}
    new_image = sorted((fruits360 / "Test" / RERUN_CLASS).glob("*.jpg"))[0]
    shutil.copy(new_image, root / "Training" / RERUN_CLASS / "added_copy.jpg")

    outcome = materialize_graph(instance, root, output, shared_weights, classes=[RERUN_CLASS])
    assert outcome.ok, outcome.failures
    assert all(outcome.checks.values())
    after = {label: label_dir_digest(features_dir, label) for label in CLASSES}
    assert after[RERUN_CLASS] != before[RERUN_CLASS]
    assert {k: v for k, v in after.items() if k != RERUN_CLASS} == {
        k: v for k, v in before.items() if k != RERUN_CLASS
    }
    features = read_parquet(features_dir)
    assert (features.label == RERUN_CLASS).sum() == 61
    assert_kept_groups_match_the_table(output)
    assert features.path.str.endswith("added_copy.jpg").sum() == 1
    # The unpartitioned assets are rebuilt from every class.
    assert len(read_parquet(layout.asset_dir(output, layout.PCA_FEATURES_PARQUET))) == 601
    assert len(pd.read_csv(layout.csv_path(output))) == 601
    # Only the rerun class's partitions were materialized by the rerun.
    assert set(outcome.partitions) == {"raw_images", "labeled_images", "mobilenet_features"}
    assert all(classes == {RERUN_CLASS} for classes in outcome.partitions.values())
