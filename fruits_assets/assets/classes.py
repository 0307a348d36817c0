"""The classes an unpartitioned asset covers: those of the configured input root, nothing stale."""

from dataclasses import dataclass

import dagster as dg
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

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


WEIGHTS_COLUMN = "weights_sha256"


def features_weights(features: DataFrame) -> str:
    """The sha256 of the weights every feature row was computed with; mixed weights (or rows
    from a version that did not record them) fail, as a PCA over them would mean nothing."""
    if WEIGHTS_COLUMN not in features.columns:
        raise dg.Failure(
            description="mobilenet_features does not record its weights (written by an older "
            "fruits_assets): rematerialize it, e.g. `fruits run` without --downstream-only"
        )
    rows = features.groupBy(WEIGHTS_COLUMN).agg(F.collect_set("label").alias("labels")).collect()
    if len(rows) != 1:
        detail = "; ".join(
            f"{r[WEIGHTS_COLUMN][:12]}…: {', '.join(sorted(r['labels'])[:5])}" for r in rows
        )
        raise dg.Failure(
            description=f"mobilenet_features mixes {len(rows)} sets of weights across classes "
            f"({detail}): rerun the classes with one --weights"
        )
    return rows[0][WEIGHTS_COLUMN]
