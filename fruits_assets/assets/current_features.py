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
    # For each set of weights in `df`, the classes computed with it (None: not recorded).
    weights: dict[str | None, set[str]]
    rows: int  # the number of rows in `df`

    def weights_sha256(self) -> str:
        """The sha256 of the weights every current row was computed with (see
        `features_weights`), from the facts gathered with the rows: no further Spark job."""
        return _one_set_of_weights(self.weights)


def current_features(context: dg.AssetExecutionContext, datasets: Datasets) -> CurrentFeatures:
    """Read mobilenet_features for exactly the registered classes.

    The partitions are synced to the input root's class folders before every run (and shipped
    to EMR steps), so they stand for a listing of the input root.
    """
    classes = registered_classes(context.instance)
    table = datasets.read(layout.MOBILENET_FEATURES)
    # One pass over the table gives its classes and the weights of each: the stale classes and
    # the weights check need no job of their own.
    registered = set(classes)
    stored, weights, rows = _weights_by_class(table, registered)
    return CurrentFeatures(
        df=table.where(F.col(layout.LABEL_COLUMN).isin(sorted(registered))),
        classes=classes,
        stale=sorted(stored - registered),
        without_features=sorted(registered - stored),
        weights=weights,
        rows=rows,
    )


def features_weights(features: DataFrame) -> str:
    """The sha256 of the weights every feature row was computed with; mixed weights (or rows
    from a version that did not record them) fail, as a PCA over them would mean nothing."""
    _, weights, _ = _weights_by_class(features, None)
    return _one_set_of_weights(weights)


def _weights_by_class(
    table: DataFrame, classes: set[str] | None
) -> tuple[set[str], dict[str | None, set[str]], int]:
    """One aggregate over `table`: the classes it holds, then for `classes` (None: all) the
    classes of each set of weights (all under None when the table does not record them) and
    their number of rows."""
    recorded = WEIGHTS_COLUMN in table.columns
    weights_column = F.col(WEIGHTS_COLUMN) if recorded else F.lit(None).cast("string")
    pairs = table.groupBy(layout.LABEL_COLUMN, weights_column.alias("w")).count().collect()
    stored = {r[layout.LABEL_COLUMN] for r in pairs}
    weights: dict[str | None, set[str]] = {} if recorded else {None: set()}
    rows = 0
    for r in pairs:
        if classes is None or r[layout.LABEL_COLUMN] in classes:
            weights.setdefault(r["w"], set()).add(r[layout.LABEL_COLUMN])
            rows += r["count"]
    return stored, weights, rows


def _one_set_of_weights(weights: dict[str | None, set[str]]) -> str:
    if None in weights:
        raise dg.Failure(
            description="mobilenet_features does not record its weights (written by an older "
            "fruits_assets): rematerialize it, e.g. `fruits run` without --downstream-only"
        )
    if len(weights) != 1:
        detail = "; ".join(
            f"{sha[:12]}…: {', '.join(sorted(labels)[:5])}" for sha, labels in weights.items()
        )
        raise dg.Failure(
            description=f"mobilenet_features mixes {len(weights)} sets of weights across classes "
            f"({detail}): rerun the classes with one --weights"
        )
    return next(iter(weights))
