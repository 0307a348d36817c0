"""The asset job as a reconstructable target: an EMR step re-creates it from this pointer."""

from __future__ import annotations

import dagster as dg


def fruits_job() -> dg.JobDefinition:
    """The global asset job of the definitions, built from the environment's settings."""
    from fruits_assets.definitions import build_definitions

    return build_definitions().resolve_implicit_global_asset_job_def()


def reconstructable_job():  # dagster's ReconstructableJob
    """A pointer to `fruits_job` that the step launcher ships and the EMR step imports."""
    return dg.reconstructable(fruits_job)
