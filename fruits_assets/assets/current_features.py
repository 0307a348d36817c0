"""The feature rows the all-classes assets use: those of the registered classes, nothing stale."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F

from fruits_assets.assets import checks
from fruits_assets.ml import featurizer, splits
from fruits_assets.partitions import registered_classes
from fruits_assets.storage import filesystem, layout
from fruits_assets.storage.datasets import Datasets, labels_filter

WEIGHTS_COLUMN = "weights_sha256"


@dataclass(frozen=True)
class CurrentFeatures:
    """The feature rows of the input root's classes, and what was left out and why."""

    read: Callable[[], DataFrame]  # the rows (`df`), read by Spark when a step needs them
    classes: list[str]  # the fruit_class partitions: the class folders of the input root
    stale: list[str]  # stored classes not under the input root (another dataset's leftovers)
    without_features: list[str]  # registered classes with no feature rows (not yet materialized)
    # For each featurizer in `df` (the weights column: the weights' sha256, and for the int8
    # featurizer its model's), the classes computed with it (None: not recorded).
    weights: dict[str | None, set[str]]
    rows: int  # the number of rows in `df`
    # Whether the dataset's Training/Test folders split every class of `df` (`splits.with_split`).
    folders_split: bool
    training_rows: int = -1  # the rows of `df` a model learns from (`splits.training_rows`)

    @functools.cached_property
    def df(self) -> DataFrame:
        """The rows, through Spark's Delta reader: planned on first use only, as steps that
        read the table's files themselves (`Datasets.data_files`) need no Spark snapshot of it."""
        return self.read()

    def weights_sha256(self) -> str:
        """The featurizer every current row was computed with, as the weights column names it
        (see `features_weights`), from the facts gathered with the rows: no further Spark job."""
        return _one_set_of_weights(self.weights)


def current_features(context: dg.AssetExecutionContext, datasets: Datasets) -> CurrentFeatures:
    """Read mobilenet_features for exactly the registered classes.

    The partitions are synced to the input root's class folders before every run (and shipped
    to EMR steps), so they stand for a listing of the input root.
    """
    classes = registered_classes(context.instance)
    recorded = WEIGHTS_COLUMN in datasets.columns(layout.MOBILENET_FEATURES)
    table = functools.cache(lambda: datasets.read(layout.MOBILENET_FEATURES))
    registered = set(classes)
    # One pass over the table gives its classes, the weights of each and their images on each
    # side of the folders' split: the stale classes, the weights check and the split need no job
    # of their own. The run's later steps reuse it while the table has no new commit.
    groups = datasets.remembered(
        layout.MOBILENET_FEATURES, FACTS, lambda: _kept_groups(datasets, table())
    )
    stored, weights, rows = _weights_by_class(groups, registered, recorded)
    folders = splits.folders_split(g for g in groups if g[layout.LABEL_COLUMN] in registered)
    return CurrentFeatures(
        read=lambda: table().where(labels_filter(registered)),
        classes=classes,
        stale=sorted(stored - registered),
        without_features=sorted(registered - stored),
        weights=weights,
        rows=rows,
        folders_split=folders,
        training_rows=sum(g["train"] or 0 for g in groups if g[layout.LABEL_COLUMN] in registered)
        if folders
        else rows,
    )


def other_featurizers(
    context: dg.AssetExecutionContext, datasets: Datasets, identity: str, prefix: bool = False
) -> dict[str, set[str]]:
    """The featurizers (weights column values) other than `identity` (`prefix`: not beginning
    with it) that computed the stored features of registered classes outside this run, each
    with those classes: a run of some classes must featurize them as the others were, or the
    PCA would mix two feature spaces."""
    if not datasets.exists(layout.MOBILENET_FEATURES):
        return {}
    outside = set(registered_classes(context.instance)) - set(context.partition_keys)
    if not outside:
        return {}
    groups = datasets.remembered(
        layout.MOBILENET_FEATURES,
        FACTS,
        lambda: _kept_groups(datasets, datasets.read(layout.MOBILENET_FEATURES)),
    )
    others: dict[str, set[str]] = {}
    for g in groups:
        w = g["w"]
        same = w is not None and (w.startswith(identity) if prefix else w == identity)
        if g[layout.LABEL_COLUMN] in outside and w is not None and not same:
            others.setdefault(w, set()).add(g[layout.LABEL_COLUMN])
    return others


def refuse_other_featurizers(
    context: dg.AssetExecutionContext, datasets: Datasets, identity: str, prefix: bool = False
) -> None:
    """Fail, before anything is featurized, a run of some classes whose featurizer (weights or
    precision; `prefix`: any whose identity begins with `identity`) is not the one the other
    classes' stored features were computed with."""
    others = other_featurizers(context, datasets, identity, prefix)
    if not others:
        return
    detail = "; ".join(
        f"{_featurizer_name(sha)}: {len(labels)} class{'' if len(labels) == 1 else 'es'} "
        f"({checks.a_few(sorted(labels))})"
        for sha, labels in sorted(others.items())
    )
    raise dg.Failure(
        description=f"this run featurizes with {_featurizer_name(identity)}, but the other "
        f"classes' features were computed with {detail}. Nothing was featurized: rerun these "
        "classes with the other classes' --weights and --precision, or run every class (`fruits "
        "run` without --classes) to change them"
    )


def features_weights(features: DataFrame) -> str:
    """The featurizer every feature row was computed with (the weights column's value); mixed
    featurizers (or rows from a version that did not record them) fail, as a PCA over them
    would mean nothing."""
    _, weights, _ = _weights_by_class(_groups(features), None, WEIGHTS_COLUMN in features.columns)
    return _one_set_of_weights(weights)


FACTS = "rows per class and weights"
COUNTS = ("count", "train", "test", "none")  # what `_groups` counts of each group of rows


def group_counts() -> list[Column]:
    """The aggregates of `COUNTS`: the rows, and those on each side of the folders' split."""
    return [F.count("*").alias("count"), *splits.split_counts(F.col("path"))]


def _groups(table: DataFrame) -> list[dict]:
    """One aggregate over `table`: per class and set of weights, its rows and their split."""
    weights = F.col(WEIGHTS_COLUMN) if WEIGHTS_COLUMN in table.columns else F.lit(None)
    rows = table.groupBy(layout.LABEL_COLUMN, weights.cast("string").alias("w")).agg(
        *group_counts()
    )
    return [r.asDict() for r in rows.collect()]


def _kept_groups(datasets: Datasets, table: DataFrame) -> list[dict]:
    """`_groups` of the table, kept on disk with its commit: the next run (a new process)
    updates them from the data files the log says were taken out and put in since (counts
    add up: a rerun's few files are read on the driver) instead of aggregating every row."""
    commit = datasets.commit(layout.MOBILENET_FEATURES)
    groups = None
    try:
        since, kept = _read_kept_groups(datasets)
        changes = (
            datasets.file_changes(layout.MOBILENET_FEATURES, since, commit)
            if commit is not None
            else None
        )
        # A rerun of most classes: aggregating every row is as quick as reading their files.
        if changes is not None and len(changes[0]) + len(changes[1]) <= len(kept):
            groups = _updated_groups(datasets, kept, *changes)
    except Exception:  # none kept, or unreadable (a truncated write): aggregate every row
        groups = None
    if groups is None:
        groups = _groups(table)
    _write_kept_groups(datasets, commit, groups)
    return groups


def _read_kept_groups(datasets: Datasets) -> tuple[tuple[int, int], list[dict]]:
    """The groups kept on disk and the commit they are of (raises when none or unreadable)."""
    kept = json.loads(filesystem.read_bytes(layout.feature_groups_path(datasets.output)))
    return (int(kept["commit"][0]), int(kept["commit"][1])), kept["groups"]


def _write_kept_groups(
    datasets: Datasets, commit: tuple[int, int] | None, groups: list[dict]
) -> None:
    """Keep `groups` on disk as those of `commit` (best effort: only a shortcut is lost)."""
    if commit is None:
        return
    try:
        filesystem.write_bytes(
            layout.feature_groups_path(datasets.output),
            json.dumps({"commit": list(commit), "groups": groups}).encode(),
        )
    except OSError:  # only the next run's shortcut is lost
        pass


def groups_now(datasets: Datasets) -> tuple[tuple[int, int] | None, list[dict] | None]:
    """The table's latest commit (None: no table yet) and its `_groups` where known without
    reading rows: as this process or the file kept with them has them for that commit, `[]`
    when there is no table yet, None when not known."""
    commit = datasets.commit(layout.MOBILENET_FEATURES)
    if commit is None:
        return None, []
    known = datasets.recall(layout.MOBILENET_FEATURES, FACTS)
    if known is not None:
        return commit, known
    try:
        since, kept = _read_kept_groups(datasets)
    except Exception:  # none kept, or unreadable: not known
        return commit, None
    return commit, kept if since == commit else None


def keep_published_groups(
    datasets: Datasets,
    before: tuple[tuple[int, int] | None, list[dict] | None],
    labels: set[str],
    identity: str,
    audit: list[Row],
) -> None:
    """After a publish of these classes' feature rows, all computed by the featurizer
    `identity`: their groups (`_groups`) from the `audit` of the rows published (per class,
    `group_counts`) with the other classes' as they were `before` it (`groups_now`), kept for
    the publish's own commit, so that the steps after it need no aggregate over the table.

    Nothing when the groups before it are not known, or when the table's latest commit is not
    the one that follows them (another writer's); never fails: the data is published."""
    commit_before, groups_before = before
    if groups_before is None:
        return
    try:
        commit = datasets.commit(layout.MOBILENET_FEATURES)
        follows = commit_before[0] + 1 if commit_before is not None else 0
        if commit is None or (commit != commit_before and commit[0] != follows):
            return
        published = [
            {layout.LABEL_COLUMN: r[layout.LABEL_COLUMN], "w": identity} | {c: r[c] for c in COUNTS}
            for r in audit
        ]
        groups = [g for g in groups_before if g[layout.LABEL_COLUMN] not in labels] + published
        datasets.remember(layout.MOBILENET_FEATURES, FACTS, groups, commit=commit)
        _write_kept_groups(datasets, commit, groups)
    except Exception:  # a shortcut for the next steps only: they aggregate instead
        pass


def _updated_groups(
    datasets: Datasets, groups: list[dict], out: dict[str, str], put: dict[str, str]
) -> list[dict]:
    """`groups` without the rows of the `out` files, with those of the `put` ones."""
    totals = {(g[layout.LABEL_COLUMN], g["w"]): [g[c] or 0 for c in COUNTS] for g in groups}
    for files, sign in ((out, -1), (put, 1)):
        tables = datasets.read_files(layout.MOBILENET_FEATURES, files, ["path", WEIGHTS_COLUMN])
        for label, table in zip(files.values(), tables, strict=True):
            paths = table.column("path").to_pylist()
            weights = (
                table.column(WEIGHTS_COLUMN).to_pylist()
                if WEIGHTS_COLUMN in table.column_names
                else [None] * len(paths)
            )
            for image, w in zip(paths, weights, strict=True):
                side = splits.split_of_path(image)
                counts = totals.setdefault((label, w), [0, 0, 0, 0])
                for i, hit in enumerate((True, side == splits.TRAIN, side == splits.TEST)):
                    counts[i] += sign * hit
                counts[3] += sign * (side is None)
    if any(n < 0 for counts in totals.values() for n in counts):
        raise ValueError("the kept groups do not match the table's files")
    return [
        {layout.LABEL_COLUMN: label, "w": w, **dict(zip(COUNTS, counts, strict=True))}
        for (label, w), counts in totals.items()
        if counts[0] > 0
    ]


def _weights_by_class(
    groups: list[dict], classes: set[str] | None, recorded: bool
) -> tuple[set[str], dict[str | None, set[str]], int]:
    """From `_groups`: the classes the table holds, then for `classes` (None: all) the classes of
    each set of weights (all under None when the table does not record them) and their number
    of rows."""
    stored = {g[layout.LABEL_COLUMN] for g in groups}
    weights: dict[str | None, set[str]] = {} if recorded else {None: set()}
    rows = 0
    for g in groups:
        if classes is None or g[layout.LABEL_COLUMN] in classes:
            weights.setdefault(g["w"], set()).add(g[layout.LABEL_COLUMN])
            rows += g["count"]
    return stored, weights, rows


def _one_set_of_weights(weights: dict[str | None, set[str]]) -> str:
    if None in weights:
        raise dg.Failure(
            description="mobilenet_features does not record its weights (written by an older "
            "fruits_assets): rematerialize it, e.g. `fruits run` without --downstream-only"
        )
    if len(weights) != 1:
        detail = "; ".join(
            f"{_featurizer_name(sha)}: {', '.join(sorted(labels)[:5])}"
            for sha, labels in sorted(weights.items())
        )
        raise dg.Failure(
            description=f"mobilenet_features mixes {len(weights)} featurizers across classes "
            f"({detail}): rerun the classes with one --weights and one --precision"
        )
    return next(iter(weights))


def _featurizer_name(identity: str) -> str:
    """A featurizer's identity (the weights column) as a user reads it: weights and precision."""
    weights, int8, model = identity.partition(featurizer.INT8_MARK)
    if not int8:
        return f"weights {weights[:12]}…, float32"
    return f"weights {weights[:12]}…, int8" + (f" model {model[:8]}…" if model else "")
