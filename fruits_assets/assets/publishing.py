"""Write, audit, publish: an asset's staged data is published only when its ERROR checks pass."""

import contextvars
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pyspark.sql.types import StructType

from fruits_assets import failpoints
from fruits_assets.assets.checks import SUMMARY
from fruits_assets.dagster_sqlite import partitions_read_once
from fruits_assets.storage import files, filesystem
from fruits_assets.storage.datasets import Datasets, Staged


@dataclass(frozen=True)
class StagedFilesPublication:
    """Data files a step wrote aside (its Python workers, `Datasets.stage_files`; its driver,
    `Datasets.stage_rows`), to publish as these classes' rows (None: as the whole table) of a
    table whose columns are `schema`."""

    dataset: str
    staged: Staged
    labels: frozenset[str] | None
    schema: StructType


@dataclass(frozen=True)
class FilePublication:
    """A staged file to publish at a fixed path (`target`), as its next kept version."""

    source: str
    target: str


def _publish_file(item: FilePublication) -> int:
    version, path = files.next_version_path(item.target)
    filesystem.move(item.source, path)
    files.publish(item.target, version)
    return version


def failed_error_checks(checks: list[dg.AssetCheckResult]) -> list[str]:
    return [
        c.check_name or ""
        for c in checks
        if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    ]


def _unpublished(checks: list[dg.AssetCheckResult], failed: list[str]) -> str:
    """The failed checks, each with its one-line `SUMMARY` where it has one: the cause leads."""
    summaries = {
        c.check_name: c.metadata[SUMMARY].value
        for c in checks
        if c.check_name in failed and SUMMARY in c.metadata
    }
    if not summaries:
        return f"check {', '.join(failed)} failed, so nothing was published"
    causes = (f"check {name} failed: {summaries[name]}" if name in summaries else
              f"check {name} failed" for name in failed)  # fmt: skip
    return "; ".join(causes) + ". Nothing was published"


@contextmanager
def adding_per_class(
    context: dg.AssetExecutionContext, per_class: Mapping[str, Mapping[str, Any]] | None
) -> Iterator[None]:
    """Give each class (partition) its own metadata while the block runs, in a thread.

    Dagster checks each partition key against the instance's partitions (read once for the
    block where the instance's storage allows, `partitions_read_once`), while a publish mostly
    waits for Spark: done side by side, the step waits for the longer of the two only. Any
    error is raised when the block ends."""
    if not per_class:
        yield
        return
    failures: list[BaseException] = []

    def add() -> None:
        try:
            with partitions_read_once():
                for label, values in per_class.items():
                    context.add_asset_metadata(dict(values), partition_key=label)
        except BaseException as error:  # raised in the step's own thread below
            failures.append(error)

    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(add,), name="fruits-class-metadata"
    )
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failures:
        raise failures[0]


def publish_or_fail(
    context: dg.AssetExecutionContext,
    datasets: Datasets,
    staged: list[Staged],
    publications: list[StagedFilesPublication | FilePublication],
    checks: list[dg.AssetCheckResult],
    metadata: Mapping[str, Any],
    per_class: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Publish the audited data (one commit per table) and report the versions; when an ERROR
    check failed, publish nothing, keep the staged data aside and fail with where it is.

    `per_class`: each class's own metadata (`adding_per_class`), added while publishing."""
    failed = failed_error_checks(checks)
    if failed:
        kept = [datasets.keep_failed(item, failed) for item in staged]
        where = {"failed_data": dg.MetadataValue.path(kept[0])} if kept else {}
        for check in checks:
            yield dg.AssetCheckResult(
                check_name=check.check_name,
                passed=check.passed,
                severity=check.severity,
                metadata={**check.metadata, **(where if not check.passed else {})},
            )
        raise dg.Failure(
            description=_unpublished(checks, failed)
            + ": the previous version stays in place"
            + (f"; the new data is kept for inspection at {', '.join(kept)}" if kept else ""),
            metadata=where,
        )
    failpoints.reached(context.asset_key.to_user_string(), datasets.output)
    versions = {}
    with adding_per_class(context, per_class):
        for publication in publications:
            if isinstance(publication, FilePublication):
                versions[publication.target] = _publish_file(publication)
            else:
                versions[publication.dataset] = datasets.publish_files(
                    publication.staged, publication.dataset, publication.labels, publication.schema
                )
    for item in staged:
        datasets.discard(item)
    first = publications[0]
    main = first.target if isinstance(first, FilePublication) else datasets.location(first.dataset)
    main_version = versions[first.target if isinstance(first, FilePublication) else first.dataset]
    yield dg.MaterializeResult(
        metadata={
            **metadata,
            "published_version": main_version,
            **(
                {"published_versions": {name: v for name, v in versions.items()}}
                if len(versions) > 1
                else {}
            ),
            "path": dg.MetadataValue.path(main),
        },
        check_results=checks,
    )
