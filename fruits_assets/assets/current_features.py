"""The feature rows the all-classes assets use: those of the registered classes, nothing stale."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits_assets.partitions import registered_classes
from fruits_assets.storage import layout
from fruits_assets.storage.datasets import Datasets

WEIGHTS_COLUMN = "weights_sha256"


@dataclass(frozen=True)
class CurrentFeatures:
    """The feature rows of the input root's classes, and what was left out and why."""

    df: DataFrame
    classes: list[str]  # the fruit_class partitions: the class folders of the input root
    stale: list[str]  # stored classes not under the input root (another dataset's leftovers)
    without_features: list[str]  # registered classes with no feature rows (not yet materialized)


def current_features(context: dg.AssetExecutionContext, datasets: Datasets) -> CurrentFeatures:
    """Read mobilenet_features for exactly the registered classes.

    The partitions are synced to the input root's class folders before every run (and shipped
    to EMR steps), so they stand for a listing of the input root.
    """
    classes = registered_classes(context.instance)
    stored = datasets.labels(layout.MOBILENET_FEATURES)
    return CurrentFeatures(
        df=datasets.read(layout.MOBILENET_FEATURES, classes),
        classes=classes,
        stale=sorted(stored - set(classes)),
        without_features=sorted(set(classes) - stored),
    )


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
