"""The moments (rows, mean, scatter) of the rows the PCA is fit on, kept between runs.

The covariance of every class's training rows is most of `pca_model`'s work, and after a rerun
of a few classes most of those rows are the ones it saw last time. The moments are kept next
to the feature table with the commit they describe; the next fit reads from the table's log
which data files were taken out and put in since, removes the rows of the first and adds those
of the second (a few files, read on the driver), and reads whole only the classes that joined
or left the registered ones. Anything the log cannot vouch for (a rewritten table, other
weights, another split, more than half the classes touched, a file gone, a commit that only
rearranges files) computes them anew, and so do updated moments whose row count is not the
table's (as its per-class counts say).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import dagster as dg
import numpy as np

from fruits_assets.assets.current_features import CurrentFeatures
from fruits_assets.ml import pca, splits
from fruits_assets.storage import filesystem, layout
from fruits_assets.storage.datasets import Datasets, labels_filter

FEATURES_COLUMN = "features"


@dataclass(frozen=True)
class Kept:
    """Moments of the training rows of `classes` as of a commit of mobilenet_features."""

    commit: tuple[int, int]  # (version, commit file time in ns), as `Datasets.commit` gives it
    classes: frozenset[str]
    fit_on: str
    weights_sha256: str
    moments: pca.Moments

    def to_bytes(self) -> bytes:
        about = {
            "commit": list(self.commit),
            "classes": sorted(self.classes),
            "fit_on": self.fit_on,
            "weights_sha256": self.weights_sha256,
        }
        buffer = io.BytesIO()
        m = self.moments
        np.savez(buffer, about=np.array(json.dumps(about)), n=m.n, mean=m.mean, scatter=m.scatter)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Kept:
        with np.load(io.BytesIO(data)) as kept:
            about = json.loads(str(kept["about"]))
            moments = pca.Moments(int(kept["n"]), kept["mean"], kept["scatter"])
        return cls(
            (int(about["commit"][0]), int(about["commit"][1])),
            frozenset(about["classes"]),
            about["fit_on"],
            about["weights_sha256"],
            moments,
        )


def training_moments(
    context: dg.AssetExecutionContext, datasets: Datasets, current: CurrentFeatures
) -> tuple[pca.Moments | None, str]:
    """The moments of `current`'s training rows and where its training rows come from (as
    `splits.training_rows` says); updated from the kept ones where the log allows, then kept."""
    commit = datasets.commit(layout.MOBILENET_FEATURES)
    weights_sha256 = current.weights_sha256()
    classes = frozenset(c for labels in current.weights.values() for c in labels)
    fit_on = splits.training_source(current.folders_split)
    kept = _load(datasets.output)
    moments: pca.Moments | None = None
    how = "computed over every class"
    if kept is not None and commit is not None:
        if kept.fit_on == fit_on and kept.weights_sha256 == weights_sha256:
            try:
                updated = _updated(datasets, kept, commit, classes, current)
            except Exception as error:  # e.g. the old rows' files were vacuumed
                updated = None
                how += f" (the kept ones could not be updated: {error})".splitlines()[0]
            if updated is not None and _rows(updated[0]) == current.training_rows:
                moments, touched = updated
                how = f"updated from the kept ones for {touched} changed classes"
            elif updated is not None:  # not the rows the table's counts say: trust neither
                how += " (the kept ones, updated, did not match the table's row count)"
    if moments is None:
        moments, read = _all_moments(datasets, current)
        how += f" ({read})"
    context.log.info(f"PCA training moments {how}")
    if commit is not None and moments is not None:
        try:
            filesystem.write_bytes(
                layout.training_moments_path(datasets.output),
                Kept(commit, classes, fit_on, weights_sha256, moments).to_bytes(),
            )
        except OSError as error:  # only the next fit's shortcut is lost
            context.log.warning(f"PCA training moments not kept: {error}")
    return moments, fit_on


def _all_moments(datasets: Datasets, current: CurrentFeatures) -> tuple[pca.Moments | None, str]:
    """The moments of every current training row, and how the rows were read: by the Python
    workers from the table's files where they hold exactly its rows, else by Spark's reader."""
    files = datasets.data_files(layout.MOBILENET_FEATURES, current.classes)
    if files is not None:
        moments = pca.moments_of_files(
            datasets.spark, files, FEATURES_COLUMN, training_only=current.folders_split
        )
        return moments, f"the workers read the classes' {len(files)} data files"
    fit_rows, _ = splits.training_rows(current.df, current.folders_split)
    return pca.moments(fit_rows, FEATURES_COLUMN), "through Spark's reader"


def _rows(moments: pca.Moments | None) -> int:
    return moments.n if moments is not None else 0


def _updated(
    datasets: Datasets,
    kept: Kept,
    commit: tuple[int, int],
    classes: frozenset[str],
    current: CurrentFeatures,
) -> tuple[pca.Moments | None, int] | None:
    """The kept moments without the rows of the files taken out since, with those of the files
    put in (read on the driver: a rerun's few files), and the classes that joined or left the
    registered ones read whole; with the number of classes touched. None: start over."""
    changes = datasets.file_changes(layout.MOBILENET_FEATURES, kept.commit, commit)
    if changes is None:
        return None
    out, put = changes
    joined, left = classes - kept.classes, kept.classes - classes
    changed = (set(out.values()) | set(put.values())) & (classes | kept.classes)
    touched = changed | joined | left
    # Removing most of the rows would leave the rest to rounding: computing them is as cheap.
    if 2 * len(touched) > len(classes):
        return None
    folders, width = current.folders_split, len(kept.moments.mean)
    removed = [p for p, label in out.items() if label in kept.classes and label not in left]
    added = [p for p, label in put.items() if label in classes and label not in joined]
    moments: pca.Moments | None = kept.moments
    for part, sign in (
        (_file_moments(datasets, removed, folders, width), -1),
        (_class_moments(datasets, left, current, kept.commit[0]), -1),
        (_file_moments(datasets, added, folders, width), 1),
        (_class_moments(datasets, joined, current, None), 1),
    ):
        if part is not None:
            moments = (
                (moments - part) if sign < 0 else (part if moments is None else moments + part)
            )
    return moments, len(touched)


def _file_moments(
    datasets: Datasets, paths: list[str], folders: bool, width: int
) -> pca.Moments | None:
    """The training rows' moments of these data files of mobilenet_features (vectors of
    `width` values: any other fails)."""
    rows = []
    for table in datasets.read_files(layout.MOBILENET_FEATURES, paths, ["path", FEATURES_COLUMN]):
        features = table.column(FEATURES_COLUMN).combine_chunks()
        if len(features) == 0:
            continue
        if set(features.value_lengths().to_pylist()) != {width}:
            raise ValueError(f"a data file holds feature vectors of another width than {width}")
        x = features.flatten().to_numpy().reshape(len(features), -1).astype(np.float64)
        if folders:
            paths_ = table.column("path").to_pylist()
            x = x[np.array([splits.split_of_path(p) == splits.TRAIN for p in paths_], dtype=bool)]
        if len(x):
            rows.append(x)
    return pca.Moments.of(np.concatenate(rows)) if rows else None


def _class_moments(
    datasets: Datasets, labels: set[str], current: CurrentFeatures, version: int | None
) -> pca.Moments | None:
    """The training rows' moments of these classes, as of `version` (None: now), by Spark."""
    if not labels:
        return None
    rows = (
        current.df.where(labels_filter(labels))
        if version is None
        else datasets.read(layout.MOBILENET_FEATURES, labels, version=version)
    )
    fit_rows, _ = splits.training_rows(rows, current.folders_split)
    return pca.moments(fit_rows, FEATURES_COLUMN)


def _load(output_root: str) -> Kept | None:
    """The kept moments; None if there are none or they cannot be read (a run killed while
    writing them leaves a truncated file: the fit then computes them anew)."""
    try:
        return Kept.from_bytes(filesystem.read_bytes(layout.training_moments_path(output_root)))
    except Exception:
        return None
