"""Published versions of each asset's outputs, and going back to one (`fruits restore`).

Tables keep every version as Delta versions (until a VACUUM); single files keep their last
`files.KEEP_VERSIONS`. A restore publishes the chosen version again as a new version, so it can
itself be undone, and it is recorded in the Dagster instance as a materialization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from fruits_assets.storage import files, layout
from fruits_assets.storage.datasets import Datasets


@dataclass(frozen=True)
class Output:
    """One published output of an asset: a Delta table, or a single file."""

    asset: str
    table: str | None = None  # dataset name under the output root
    file: str | None = None  # layout function name of a single file


OUTPUTS: dict[str, list[Output]] = {
    layout.RAW_IMAGES: [Output(layout.RAW_IMAGES, table=layout.RAW_IMAGES)],
    layout.LABELED_IMAGES: [
        Output(layout.LABELED_IMAGES, table=layout.ACCEPTED_IMAGES),
        Output(layout.LABELED_IMAGES, table=layout.REJECTED_IMAGES),
    ],
    layout.MOBILENET_FEATURES: [Output(layout.MOBILENET_FEATURES, table=layout.MOBILENET_FEATURES)],
    layout.PCA_MODEL: [Output(layout.PCA_MODEL, table=layout.PCA_MODEL)],
    layout.PCA_FEATURES_PARQUET: [
        Output(layout.PCA_FEATURES_PARQUET, table=layout.PCA_FEATURES_PARQUET)
    ],
    layout.FEATURES_CSV: [Output(layout.FEATURES_CSV, file="csv")],
    layout.FRUIT_CLASSIFIER: [Output(layout.FRUIT_CLASSIFIER, file="classifier")],
}


def _file_target(output_root: str, kind: str) -> str:
    return layout.csv_path(output_root) if kind == "csv" else layout.classifier_file(output_root)


def history(datasets: Datasets, asset: str) -> list[dict[str, Any]]:
    """The versions of an asset's main output, newest first."""
    main = OUTPUTS[asset][0]
    if main.table:
        if not datasets.exists(main.table):
            return []
        return datasets.history(main.table)
    target = _file_target(datasets.output, main.file or "")
    published = files.published_version(target)
    return [{"version": v, "published": v == published} for v in reversed(files.versions(target))]


def restore(datasets: Datasets, asset: str, version: int) -> dict[str, int]:
    """Publish `version` of the asset's outputs again; returns each output's new version."""
    if asset not in OUTPUTS:
        raise ValueError(f"unknown asset {asset!r}: one of {', '.join(OUTPUTS)}")
    main, *others = OUTPUTS[asset]
    done: dict[str, int] = {}
    if main.file:
        target = _file_target(datasets.output, main.file)
        files.publish(target, version)
        return {target: version}
    assert main.table
    known = {h["version"]: h for h in datasets.history(main.table)}
    if version not in known:
        raise ValueError(
            f"{asset} has no version {version} (versions: {sorted(known)}); see "
            f"`fruits restore {asset} --list`"
        )
    run_id = known[version]["run_id"]
    done[main.table] = datasets.restore(main.table, version)
    for other in others:  # published by the same run as the chosen version
        assert other.table
        sibling = [h["version"] for h in datasets.history(other.table) if h["run_id"] == run_id]
        if not sibling:
            raise ValueError(f"no version of {other.table} was published by run {run_id}")
        done[other.table] = datasets.restore(other.table, max(sibling))
    return done


def record(
    instance: dg.DagsterInstance,
    asset: str,
    version: int,
    new: dict[str, int],
    partitions: list[str] | None = None,
) -> None:
    """Tell the instance (and so the UI) that a restore published an earlier version; a
    per-class asset's restore concerns every class (`partitions`)."""
    for partition in partitions or [None]:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=asset,
                partition=partition,
                description=f"restored version {version} (`fruits restore`)",
                metadata={"restored_version": version, "published_versions": new},
            )
        )
