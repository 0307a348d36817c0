"""Write, audit, publish: an asset's staged data is published only when its ERROR checks pass."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pyspark.sql import DataFrame

from fruits_assets.storage.datasets import Datasets, Staged


@dataclass(frozen=True)
class Publication:
    """Rows to publish into a dataset: for some classes only (`labels`), or the whole of it."""

    dataset: str
    df: DataFrame
    labels: frozenset[str] | None = None


def publish_or_fail(
    datasets: Datasets,
    staged: list[Staged],
    publications: list[Publication],
    checks: list[dg.AssetCheckResult],
    metadata: Mapping[str, Any],
) -> Iterator[dg.MaterializeResult]:
    """Publish the audited data and report it."""
    for publication in publications:
        if publication.labels is None:
            datasets.publish_whole(publication.df, publication.dataset)
        else:
            datasets.publish_partitions(publication.df, publication.dataset, publication.labels)
    for item in staged:
        datasets.discard(item)
    yield dg.MaterializeResult(metadata=dict(metadata), check_results=checks)
