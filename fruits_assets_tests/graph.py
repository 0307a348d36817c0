"""Test helper: materialize the asset graph with dagster's `materialize` over real resources."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from dagster_pyspark import PySparkResource

from fruits_assets import discovery, partitions
from fruits_assets.assets import ALL_ASSETS, PARTITIONED_ASSETS, UNPARTITIONED_ASSETS
from fruits_assets.resources.settings import ClassifierSettings, FeaturizerSettings, PcaSettings
from fruits_assets.resources.spark import local_spark_config
from fruits_assets.resources.storage import FruitsStorage


def resources(images: str, output: str, weights: str, variance: float = 0.99) -> dict:
    return {
        "storage": FruitsStorage(images_root=str(images), output_root=str(output)),
        "featurizer_settings": FeaturizerSettings(weights=str(weights)),
        "pca_settings": PcaSettings(target_variance=variance),
        "classifier_settings": ClassifierSettings(reg_params=[1e-4], max_iter=100, cv_folds=2),
        "pyspark": PySparkResource(spark_config=local_spark_config()),
        "step_launcher": dg.ResourceDefinition.none_resource(),
    }


def materialize_graph(
    instance: dg.DagsterInstance,
    images,
    output,
    weights,
    classes: Iterable[str] | None = None,
    variance: float = 0.99,
) -> list[dg.ExecuteInProcessResult]:
    """Sync partitions to the input root, then materialize the selected classes and downstream."""
    found = discovery.scan(str(images)).classes
    partitions.sync(instance, found)
    ordered = instance.get_dynamic_partitions(partitions.FRUIT_CLASS_PARTITIONS_NAME)
    ranges = partitions.contiguous_ranges(ordered, set(classes or found))
    res = resources(images, output, weights, variance)
    results = []
    for start, end in ranges:
        last = len(ranges) == 1
        results.append(
            dg.materialize(
                ALL_ASSETS,
                instance=instance,
                resources=res,
                selection=ALL_ASSETS if last else PARTITIONED_ASSETS,
                tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
                raise_on_error=False,
            )
        )
    if len(ranges) > 1:
        results.append(
            dg.materialize(
                ALL_ASSETS,
                instance=instance,
                resources=res,
                selection=UNPARTITIONED_ASSETS,
                raise_on_error=False,
            )
        )
    return results


def check_outcomes(results: list[dg.ExecuteInProcessResult]) -> dict[tuple[str, str], bool]:
    """(asset, check name) -> passed, over every run."""
    outcomes = {}
    for result in results:
        for evaluation in result.get_asset_check_evaluations():
            key = (evaluation.asset_key.to_user_string(), evaluation.check_name)
            outcomes[key] = evaluation.passed
    return outcomes


def last_metadata(results: list[dg.ExecuteInProcessResult], asset: str) -> dict:
    meta = {}
    for result in results:
        for event in result.get_asset_materialization_events():
            if event.asset_key.to_user_string() == asset:
                meta = {k: v.value for k, v in event.materialization.metadata.items()}
    return meta
