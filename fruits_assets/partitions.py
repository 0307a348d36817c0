"""The fruit-class partitions: one dynamic partition per class folder found under the input root."""

from __future__ import annotations

import warnings

import dagster as dg

FRUIT_CLASS_PARTITIONS_NAME = "fruit_class"

fruit_class_partitions = dg.DynamicPartitionsDefinition(name=FRUIT_CLASS_PARTITIONS_NAME)

# A materialization of many classes is one run (one Spark job per asset), not one run per class.
# BackfillPolicy is "beta" in Dagster 1.13; we rely on it knowingly, so don't warn every import.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
ONE_RUN_FOR_ALL_CLASSES = dg.BackfillPolicy.single_run()

# The run tags Dagster documents for a run of one partition, and of a range of partitions.
PARTITION_TAG = "dagster/partition"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def range_tags(first: str, last: str) -> dict[str, str]:
    return {PARTITION_RANGE_START_TAG: first, PARTITION_RANGE_END_TAG: last}


def registered_classes(instance: dg.DagsterInstance) -> list[str]:
    """The classes of the configured input root, as the last sync registered them."""
    return list(instance.get_dynamic_partitions(FRUIT_CLASS_PARTITIONS_NAME))


def sync_requests(registered: list[str], discovered: list[str]) -> tuple[list[str], list[str]]:
    """(keys to add, keys to delete) so the instance holds exactly the input root's classes."""
    known, wanted = set(registered), set(discovered)
    return sorted(wanted - known), sorted(known - wanted)


def sync(instance: dg.DagsterInstance, discovered: list[str]) -> tuple[list[str], list[str]]:
    """Make the instance's partition keys the classes of the configured input root, no more."""
    registered = instance.get_dynamic_partitions(FRUIT_CLASS_PARTITIONS_NAME)
    added, deleted = sync_requests(registered, discovered)
    if added:
        instance.add_dynamic_partitions(FRUIT_CLASS_PARTITIONS_NAME, added)
    for key in deleted:
        instance.delete_dynamic_partition(FRUIT_CLASS_PARTITIONS_NAME, key)
    return added, deleted


def contiguous_ranges(ordered_keys: list[str], selected: set[str]) -> list[tuple[str, str]]:
    """Group `selected` into runs of neighbours in the instance's key order (one run per range)."""
    ranges: list[tuple[str, str]] = []
    start = previous = None
    for key in ordered_keys:
        if key in selected:
            start = start or key
            previous = key
        elif start is not None:
            ranges.append((start, previous))
            start = None
    if start is not None:
        ranges.append((start, previous))
    return ranges
