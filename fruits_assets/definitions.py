"""The Dagster definitions; FRUITS_ENV picks the resources (local Spark now, EMR next)."""

from __future__ import annotations

import os

import dagster as dg

from fruits_assets.assets import ALL_ASSETS
from fruits_assets.resources import RESOURCES_BY_ENV
from fruits_assets.sensors import fruit_class_sensor


def build_definitions(env: str | None = None) -> dg.Definitions:
    env = env or os.environ.get("FRUITS_ENV", "local")
    if env not in RESOURCES_BY_ENV:
        raise ValueError(f"FRUITS_ENV={env!r}: expected one of {sorted(RESOURCES_BY_ENV)}")
    return dg.Definitions(
        assets=ALL_ASSETS,
        sensors=[fruit_class_sensor],
        resources=RESOURCES_BY_ENV[env](),
    )


defs = build_definitions()
