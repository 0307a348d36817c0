"""The Dagster definitions, built on first use from the settings; FRUITS_ENV picks the resources."""

from __future__ import annotations

import functools

import dagster as dg

from fruits_assets.settings import FruitsSettings

# Every asset, as one job: what `fruits run` executes (an asset selection of it per run) and what
# an EMR step re-creates by name.
ALL_ASSETS_JOB = "all_fruits_assets"


def build_definitions(
    settings: FruitsSettings | None = None, **resource_overrides: object
) -> dg.Definitions:
    """Assets, checks and the sensor, with the resources of the settings' environment."""
    from fruits_assets.assets import ALL_ASSETS
    from fruits_assets.resources.environments import RESOURCES_BY_ENV
    from fruits_assets.sensors import downstream_automation, fruit_class_sensor

    settings = settings or FruitsSettings.from_env()
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[dg.define_asset_job(ALL_ASSETS_JOB, selection=dg.AssetSelection.all())],
        sensors=[fruit_class_sensor, downstream_automation],
        resources={**RESOURCES_BY_ENV[settings.env](settings), **resource_overrides},
        # One process, one Spark session per run; on EMR each asset is still its own step.
        executor=dg.in_process_executor,
    )


@functools.cache
def _from_environment() -> dg.Definitions:
    return build_definitions()


@dg.definitions
def defs() -> dg.Definitions:
    """What `dagster dev` and the UI load (`workspace.yaml`): the settings of the environment."""
    return _from_environment()
