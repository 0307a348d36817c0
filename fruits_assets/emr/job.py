"""The asset job as a reconstructable target: an EMR step re-creates it from this pointer."""

from __future__ import annotations

import dagster as dg


def fruits_job() -> dg.JobDefinition:
    """The job of every asset, its definitions built from the environment's settings."""
    from fruits_assets.definitions import ALL_ASSETS_JOB, build_definitions

    return build_definitions().resolve_job_def(ALL_ASSETS_JOB)


def reconstructable_job():  # a dagster ReconstructableJob
    """A pointer to `fruits_job` that the step launcher ships and the EMR step imports."""
    return dg.reconstructable(fruits_job)
