"""Metadata shown in the UI: small markdown tables and inline PNG images.

A per-class asset gives each class (partition) its own counts, named `num_*`, and the whole run
shared values under other names; summaries add the `num_*` values up over the classes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import dagster as dg


def counts_table(counts: Mapping[str, int], header: str = "images") -> dg.MetadataValue:
    """A small markdown table of per-class counts, largest first."""
    lines = [f"| class | {header} |", "| --- | ---: |"]
    lines += [f"| {label} | {n} |" for label, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return dg.MetadataValue.md("\n".join(lines))


def rows_table(rows: list[tuple], columns: tuple[str, ...], limit: int = 50) -> dg.MetadataValue:
    """A markdown table of the first `limit` rows (with the total when cut)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more")
    return dg.MetadataValue.md("\n".join(lines))


def _cell(value: object) -> str:
    # A pipe or a line break inside a value would end the cell or the row.
    return str(value).replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG the UI shows inline (a data: URI, so it needs no file server)."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
