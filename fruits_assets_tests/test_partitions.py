"""Partition keys follow the input root: new classes register, stale ones never mix in."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from fruits_assets.definitions import build_definitions
from fruits_assets.ml import demo_data
from fruits_assets.partitions import FRUIT_CLASS_PARTITIONS_NAME, range_tags
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.sensors import fruit_class_sensor
from fruits_assets.storage import layout
from fruits_assets_tests.helpers import materialize_graph, read_dataset, settings


def test_definitions_hold_the_assets_and_the_sensor():
    defs = build_definitions(settings("/tmp", "/tmp/out", "random"))
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "raw_images", "labeled_images", "mobilenet_features",
        "pca_model", "pca_features_parquet", "features_csv", "fruit_classifier",
    }  # fmt: skip
    assert defs.resolve_sensor_def("fruit_class_sensor").default_status.value == "RUNNING"
    assert defs.resolve_sensor_def("all_classes_follow")


def test_sensor_registers_new_classes_and_drops_stale_ones(tmp_path):
    demo_data.generate(tmp_path, images_per_class=1)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(FRUIT_CLASS_PARTITIONS_NAME, ["Apple Demo", "Ghost"])
    with dg.build_sensor_context(
        instance=instance,
        resources={"storage": FruitsStorage(images_root=str(tmp_path), output_root="unused")},
    ) as context:
        result = fruit_class_sensor(context)
    added, deleted = result.dynamic_partitions_requests
    assert sorted(added.partition_keys) == ["Banana Demo", "Lime Demo", "Plum Demo"]
    assert deleted.partition_keys == ["Ghost"]
    # One run for the batch: the new classes' range, every asset (the all-classes ones follow).
    (run,) = result.run_requests
    assert run.tags == range_tags("Banana Demo", "Plum Demo")
    assert len(run.asset_selection) == 7


def test_stale_partition_key_fails_clearly(tmp_path):
    demo_data.generate(tmp_path / "images", images_per_class=2)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(FRUIT_CLASS_PARTITIONS_NAME, ["Ghost"])
    defs = build_definitions(settings(tmp_path / "images", tmp_path / "out", "random"))
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        partition_key="Ghost",
        asset_selection=[dg.AssetKey("raw_images")],
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no images under" in failure.step_failure_data.error.message


@pytest.mark.slow
def test_another_input_root_never_mixes_into_outputs(tmp_path):
    """Two datasets through one output root: the second run's outputs hold only its classes."""
    first, second = tmp_path / "first", tmp_path / "second"
    demo_data.generate(first, images_per_class=4)
    demo_data.generate(second, images_per_class=4, seed=1)
    for name in ("Apple Demo", "Banana Demo"):
        (second / name).rename(second / f"{name} B")
    for name in ("Lime Demo", "Plum Demo"):
        for file in (second / name).iterdir():
            file.unlink()
        (second / name).rmdir()
    instance = dg.DagsterInstance.ephemeral()
    output = tmp_path / "out"
    assert materialize_graph(instance, first, output, "random").ok
    outcome = materialize_graph(instance, second, output, "random")
    assert outcome.ok, outcome.failures
    assert sorted(instance.get_dynamic_partitions(FRUIT_CLASS_PARTITIONS_NAME)) == [
        "Apple Demo B", "Banana Demo B",
    ]  # fmt: skip
    table = read_dataset(layout.asset_dir(str(output), layout.PCA_FEATURES_PARQUET))
    assert set(table.label) == {"Apple Demo B", "Banana Demo B"}
    assert set(pd.read_csv(layout.csv_path(str(output))).label) == {"Apple Demo B", "Banana Demo B"}
    stale = outcome.metadata["pca_model"]["stale_classes_ignored"]
    assert sorted(stale) == ["Apple Demo", "Banana Demo", "Lime Demo", "Plum Demo"]
