"""The asset job as a reconstructable target: an EMR step re-creates it from this pointer."""

import os

from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository


def reconstructable_job() -> ReconstructableJob:
    """The global asset job of `fruits_assets.definitions:defs`, as the Dagster UI loads it."""
    repository = ReconstructableRepository.for_module(
        "fruits_assets.definitions", "defs", working_directory=os.getcwd()
    )
    return repository.get_reconstructable_job(IMPLICIT_ASSET_JOB_NAME)
