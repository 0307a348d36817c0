"""Resources per environment: `local` (local Spark, local files) is the only one so far."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource

from fruits_assets.resources.settings import (
    ClassifierSettings,
    FeaturizerSettings,
    PcaSettings,
)
from fruits_assets.resources.spark import local_spark_config
from fruits_assets.resources.storage import FruitsStorage

DEFAULT_OUTPUT = "fruits_output"
DEMO_IMAGES = os.path.join(os.path.expanduser("~"), ".cache", "fruits_assets", "demo_images")


def settings_from_env() -> dict[str, Any]:
    """The settings every environment shares, from FRUITS_* variables (the CLI sets them)."""
    return {
        "storage": FruitsStorage(
            images_root=os.environ.get("FRUITS_IMAGES", DEMO_IMAGES),
            output_root=os.environ.get("FRUITS_OUTPUT", DEFAULT_OUTPUT),
        ),
        "featurizer_settings": FeaturizerSettings(
            weights=os.environ.get("FRUITS_WEIGHTS", "imagenet"),
            allow_random_fallback=os.environ.get("FRUITS_ALLOW_RANDOM_FALLBACK") == "1",
        ),
        "classifier_settings": ClassifierSettings(
            accuracy_floor=float(os.environ.get("FRUITS_ACCURACY_FLOOR", "0.9"))
        ),
        "pca_settings": PcaSettings(
            target_variance=float(os.environ.get("FRUITS_VARIANCE", "0.99"))
        ),
    }


def local_resources() -> dict[str, Any]:
    return {
        **settings_from_env(),
        "pyspark": PySparkResource(spark_config=local_spark_config()),
        "step_launcher": dg.ResourceDefinition.none_resource(),
    }


RESOURCES_BY_ENV = {"local": local_resources}
