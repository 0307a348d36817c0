"""The classes an unpartitioned asset covers: those of the configured input root, nothing stale."""

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession

from fruits_assets import discovery, layout, spark_io
from fruits_assets.resources.storage import FruitsStorage


@dataclass(frozen=True)
class CurrentFeatures:
    """The feature rows of the input root's classes, and what was left out and why."""

    df: DataFrame
    discovered: list[str]
    stale: list[str]  # stored classes not under the input root (another dataset's leftovers)
    without_features: list[str]  # discovered classes with no feature rows (not yet materialized?)


def current_features(spark: SparkSession, storage: FruitsStorage) -> CurrentFeatures:
    """Read mobilenet_features for exactly the classes now under the input root."""
    discovered = discovery.scan(storage.images).classes
    features_dir = layout.asset_dir(storage.output, layout.MOBILENET_FEATURES)
    stored = spark_io.stored_labels(features_dir)
    df = spark_io.read_labels(spark, features_dir, storage.spark_path(features_dir), discovered)
    return CurrentFeatures(
        df=df,
        discovered=discovered,
        stale=sorted(stored - set(discovered)),
        without_features=sorted(set(discovered) - stored),
    )
