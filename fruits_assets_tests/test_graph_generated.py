"""The whole graph on generated images that include every kind of bad file."""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as ds
import pytest
from dagster import DagsterInstance

from fruits_assets import layout
from fruits_assets_tests.graph import check_outcomes, last_metadata, materialize_graph
from fruits_assets_tests.images import BAD_CLASS, EXPECTED, GOOD_CLASS, write_mixed_root


def read_parquet(path) -> pd.DataFrame:
    return ds.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pandas()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_images")
    expected = write_mixed_root(root)
    output = tmp_path_factory.mktemp("mixed_out")
    instance = DagsterInstance.ephemeral()
    results = materialize_graph(instance, root, output, "random")
    return root, output, expected, results


def test_graph_succeeds_and_every_check_passes(mixed_run):
    _, _, _, results = mixed_run
    assert all(r.success for r in results)
    outcomes = check_outcomes(results)
    assert len(outcomes) == 12
    assert all(outcomes.values()), outcomes


def test_every_bad_file_is_rejected_with_its_reason(mixed_run):
    _, output, expected, results = mixed_run
    rejected = read_parquet(layout.rejected_images_dir(str(output)))
    assert set(rejected.columns) >= {"path", "label", "reason"}
    by_name = {p.rsplit("/", 1)[-1]: r for p, r in zip(rejected.path, rejected.reason, strict=True)}
    wanted = {name: reason for name, reason in EXPECTED.items() if reason is not None}
    assert set(by_name) == set(wanted)
    for name, reason in wanted.items():
        assert by_name[name].startswith(reason)
    assert set(rejected.label.astype(str)) == {BAD_CLASS}
    meta = last_metadata(results, "labeled_images")
    assert meta["num_rejected"] == expected["rejected"]
    assert meta["num_accepted"] == expected["accepted"]
    assert meta["num_converted_to_rgb"] == 4  # CMYK, grey, RGBA, 16-bit


def test_raw_images_count_ignored_files(mixed_run):
    _, output, expected, results = mixed_run
    raw = read_parquet(layout.asset_dir(str(output), layout.RAW_IMAGES))
    assert len(raw) == expected["images"]
    assert {"path", "label", "size", "modification_time"} <= set(raw.columns)
    meta = last_metadata(results, "raw_images")
    assert meta["num_ignored_files"] == expected["ignored"]  # hidden, .txt, no class folder


def test_features_pca_and_csv_agree(mixed_run):
    _, output, expected, results = mixed_run
    features = read_parquet(layout.asset_dir(str(output), layout.MOBILENET_FEATURES))
    assert len(features) == expected["accepted"]
    assert all(len(v) == 1280 for v in features.features)
    k = last_metadata(results, "pca_model")["k"]
    assert 1 <= k <= expected["accepted"] - 1
    pca = read_parquet(layout.asset_dir(str(output), layout.PCA_FEATURES_PARQUET))
    assert len(pca) == expected["accepted"] and all(len(v) == k for v in pca.pca_features)
    csv = pd.read_csv(layout.csv_path(str(output)))
    assert list(csv.columns) == ["path", "label"] + [f"pca_feature_{i + 1}" for i in range(k)]
    assert set(csv.label) == {GOOD_CLASS, BAD_CLASS}
    merged = csv.merge(pca.assign(label=pca.label.astype(str)), on=["path", "label"])
    assert len(merged) == len(csv)
    for _, row in merged.head(5).iterrows():
        assert row["pca_features"][0] == pytest.approx(row["pca_feature_1"], rel=1e-5)


def test_random_weights_are_recorded(mixed_run):
    meta = last_metadata(mixed_run[3], "mobilenet_features")
    assert meta["weights"] == "random"
    assert len(meta["weights_sha256"]) == 64
