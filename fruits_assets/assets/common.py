"""What every Spark asset shares: its partitions, backfill policy, step launcher and tables."""

import warnings
from collections.abc import Mapping

import dagster as dg

from fruits_assets.partitions import fruit_class_partitions

# Every asset runs where the step launcher sends it: locally it is a no-op, on EMR an EMR step.
# BackfillPolicy is "beta" in Dagster 1.13; we rely on it knowingly, so don't warn every import.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

STEP_LAUNCHER_KEY = "step_launcher"
SPARK_RESOURCES = {"storage", "pyspark", STEP_LAUNCHER_KEY}

PARTITIONED = {
    "partitions_def": fruit_class_partitions,
    # A full materialization is one Spark job over every class, not one run per class.
    "backfill_policy": dg.BackfillPolicy.single_run(),
}


def counts_table(counts: Mapping[str, int], header: str = "images") -> dg.MetadataValue:
    """A small markdown table of per-class counts, largest first."""
    lines = [f"| class | {header} |", "| --- | ---: |"]
    lines += [f"| {label} | {n} |" for label, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return dg.MetadataValue.md("\n".join(lines))


def rows_table(rows: list[tuple], columns: tuple[str, ...], limit: int = 50) -> dg.MetadataValue:
    """A markdown table of the first `limit` rows (with the total when cut)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more")
    return dg.MetadataValue.md("\n".join(lines))
