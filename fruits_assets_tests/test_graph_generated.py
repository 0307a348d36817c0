"""The whole graph on generated images that include every kind of bad file."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance

from fruits_assets import runner
from fruits_assets.assets import checks
from fruits_assets.resources.ml_settings import ClassifierSettings
from fruits_assets.storage import layout
from fruits_assets_tests.helpers import (
    assert_kept_groups_match_the_table,
    materialize_graph,
    settings,
)
from fruits_assets_tests.helpers import read_dataset as read_parquet
from fruits_assets_tests.images import BAD_CLASS, EXPECTED, GOOD_CLASS, write_mixed_root


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_images")
    expected = write_mixed_root(root)
    output = tmp_path_factory.mktemp("mixed_out")
    instance = DagsterInstance.ephemeral()
    outcome = materialize_graph(instance, root, output, "random")
    return root, output, expected, outcome, instance


def test_graph_succeeds_and_every_check_passes(mixed_run):
    _, output, _, outcome, _ = mixed_run
    assert outcome.ok, outcome.failures
    assert len(outcome.checks) == 13
    assert all(outcome.checks.values()), outcome.checks
    assert_kept_groups_match_the_table(output)  # photos without Training/Test folders


def test_every_bad_file_is_rejected_with_its_reason(mixed_run):
    _, output, expected, outcome, _ = mixed_run
    rejected = read_parquet(layout.rejected_images_dir(str(output)))
    assert set(rejected.columns) >= {"path", "label", "reason"}
    by_name = {p.rsplit("/", 1)[-1]: r for p, r in zip(rejected.path, rejected.reason, strict=True)}
    wanted = {name: reason for name, reason in EXPECTED.items() if reason is not None}
    assert set(by_name) == set(wanted)
    for name, reason in wanted.items():
        assert by_name[name].startswith(reason)
    assert set(rejected.label.astype(str)) == {BAD_CLASS}
    meta = outcome.metadata["labeled_images"]
    assert meta["num_rejected"] == expected["rejected"]
    assert meta["num_accepted"] == expected["accepted"]
    assert meta["num_converted_to_rgb"] == 4  # CMYK, grey, RGBA, 16-bit


def test_raw_images_count_ignored_files(mixed_run):
    _, output, expected, outcome, _ = mixed_run
    raw = read_parquet(layout.asset_dir(str(output), layout.RAW_IMAGES))
    assert len(raw) == expected["images"]
    assert {"path", "label", "size", "modification_time"} <= set(raw.columns)
    meta = outcome.metadata["raw_images"]
    # hidden files and folders, a .txt, an image with no class folder
    assert meta["num_ignored_files"] + meta["ignored_outside_class_folders"] == expected["ignored"]


def test_features_pca_and_csv_agree(mixed_run):
    _, output, expected, outcome, _ = mixed_run
    features = read_parquet(layout.asset_dir(str(output), layout.MOBILENET_FEATURES))
    assert len(features) == expected["accepted"]
    assert all(len(v) == 1280 for v in features.features)
    k = outcome.metadata["pca_model"]["k"]
    assert 1 <= k <= expected["accepted"] - 1
    pca = read_parquet(layout.asset_dir(str(output), layout.PCA_FEATURES_PARQUET))
    assert len(pca) == expected["accepted"] and all(len(v) == k for v in pca.pca_features)
    csv = pd.read_csv(layout.csv_path(str(output)))
    assert list(csv.columns) == ["path", "label"] + [f"pca_feature_{i + 1}" for i in range(k)]
    assert set(csv.label) == {GOOD_CLASS, BAD_CLASS}
    keys = list(zip(csv.label.astype(str), csv.path, strict=True))
    assert keys == sorted(keys)  # sorted by label, then path
    merged = csv.merge(pca.assign(label=pca.label.astype(str)), on=["path", "label"])
    assert len(merged) == len(csv)
    for _, row in merged.head(5).iterrows():
        assert row["pca_features"][0] == pytest.approx(row["pca_feature_1"], rel=1e-5)


def test_random_weights_are_recorded(mixed_run):
    meta = mixed_run[3].metadata["mobilenet_features"]
    assert meta["weights"] == "random"
    assert len(meta["weights_sha256"]) == 64


@pytest.mark.slow
def test_classifier_cross_validates_only_when_classes_or_search_change(mixed_run):
    """A rerun with the same classes refits with the L2 strength chosen before, from the
    published coefficients; asking for it (or new classes) cross-validates again, from zero."""
    root, output, _, _, _ = mixed_run
    instance = DagsterInstance.ephemeral()
    search = ClassifierSettings(reg_params=[1e-4, 1e-3], max_iter=50, cv_folds=2)

    def rerun(classifier: ClassifierSettings) -> dict:
        outcome = runner.materialize(
            settings(root, output, "random"),
            instance,
            downstream_only=True,
            resource_overrides={"classifier_settings": classifier},
        )
        assert outcome.ok, outcome.failures
        return outcome.metadata["fruit_classifier"]

    reused = rerun(search)
    assert reused["cross_validated"] is False and reused["chosen_reg_param"] == 1e-4
    # ...starting from the published coefficients, for warm_start_iter (5) iterations, not 50
    # (L-BFGS records more entries than that when it restarts its history after failed line
    # searches, which a start at the optimum of separable data provokes: the budget is asserted).
    assert reused["fit_started_from"] == "the published classifier"
    assert reused["fit_max_iter"] == search.warm_start_iter < search.max_iter
    assert reused["fit_iterations"] >= 1
    from_zero = rerun(
        ClassifierSettings(reg_params=[1e-4, 1e-3], max_iter=50, cv_folds=2, warm_start_iter=0)
    )
    assert from_zero["fit_started_from"] == "zero" and from_zero["cross_validated"] is False
    assert from_zero["fit_max_iter"] == 50
    always = ClassifierSettings(
        reg_params=[1e-4, 1e-3], max_iter=50, cv_folds=2, cross_validate="always"
    )
    forced = rerun(always)
    assert forced["cross_validated"] is True and len(forced["cv_accuracy"]) == 2
    assert forced["fit_started_from"] == "zero"


def test_each_class_partition_carries_its_own_facts(mixed_run):
    """A class's materialization shows that class's rows and rejections, not the run's totals;
    the run's shared facts (published version) are there too."""
    instance = mixed_run[4]
    for asset, label, key, expected in (
        ("raw_images", GOOD_CLASS, "num_images", 6),
        ("labeled_images", GOOD_CLASS, "num_rejected", 0),
        ("labeled_images", BAD_CLASS, "num_rejected", 5),
        ("mobilenet_features", GOOD_CLASS, "num_rows", 6),
    ):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[label]), limit=1
        ).records
        metadata = records[0].asset_materialization.metadata
        assert metadata[key].value == expected, (asset, label, key)
        assert "published_version" in metadata


def _featurizer_with_a_nan() -> bytes:
    """A TFLite model with the featurizer's shapes (a photo in, 1,280 values out) whose 8th
    value is NaN for every photo."""
    import keras
    import numpy as np

    from fruits_assets.ml import featurizer

    photo = keras.Input((featurizer.IMAGE_SIZE, featurizer.IMAGE_SIZE, 3))
    dense = keras.layers.Dense(featurizer.FEATURE_DIM)
    model = keras.Model(photo, dense(keras.layers.GlobalAveragePooling2D()(photo)))
    kernel, bias = dense.get_weights()
    bias[7] = np.nan
    dense.set_weights([kernel, bias])
    return featurizer.convert_to_tflite(model, 1)


def test_vectors_that_are_not_all_finite_fail_their_check_and_publish_nothing(
    tmp_path, monkeypatch
):
    """Features holding a NaN fail the dimension check: no feature is published, the staged
    rows are kept aside as the table's files would have held them (NaN included), and nothing
    downstream runs."""
    from fruits_assets.ml import featurizer

    root, output = tmp_path / "images", tmp_path / "out"
    root.mkdir()
    expected = write_mixed_root(root)
    model = _featurizer_with_a_nan()
    monkeypatch.setattr(featurizer, "tflite_model", lambda info, batch_size: (model, "0" * 64))
    outcome = materialize_graph(DagsterInstance.ephemeral(), root, output, "random")
    assert not outcome.ok
    assert outcome.checks[("mobilenet_features", checks.FEATURES_DIMENSION)] is False
    assert outcome.checks[("mobilenet_features", checks.FEATURES_ONE_PER_IMAGE)] is True
    assert any(checks.FEATURES_DIMENSION in failure for failure in outcome.failures)
    assert not (output / layout.MOBILENET_FEATURES / "_delta_log").exists()
    assert "pca_model" not in outcome.metadata
    (kept,) = [p.parent for p in (output / "_staging").rglob("_AUDIT_FAILED.json")]
    assert kept.name == layout.MOBILENET_FEATURES
    rows = pd.read_parquet(kept)
    assert len(rows) == expected["accepted"]
    assert not any(np.isfinite(vector).all() for vector in rows.features)
