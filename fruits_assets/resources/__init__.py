"""Resources per environment: `local` (local Spark) and `emr` (every asset an EMR step)."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource, PySparkResource

from fruits_assets import filesystem
from fruits_assets.resources.settings import (
    ClassifierSettings,
    FeaturizerSettings,
    PcaSettings,
)
from fruits_assets.resources.spark import COMMON_SPARK_CONFIG, emr_spark_config, local_spark_config
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
            accuracy_floor=float(os.environ.get("FRUITS_ACCURACY_FLOOR", "0.9")),
            max_iter=int(os.environ.get("FRUITS_CLASSIFIER_MAX_ITER", "200")),
        ),
        "pca_settings": PcaSettings(
            target_variance=float(os.environ.get("FRUITS_VARIANCE", "0.99"))
        ),
    }


def _uses_s3() -> bool:
    uris = [os.environ.get(k, "") for k in ("FRUITS_IMAGES", "FRUITS_OUTPUT", "FRUITS_WEIGHTS")]
    return any(filesystem.is_s3(uri) for uri in uris)


def local_resources() -> dict[str, Any]:
    """Local Spark in this process; s3:// data goes through Hadoop S3A."""
    return {
        **settings_from_env(),
        "pyspark": PySparkResource(spark_config=local_spark_config(s3=_uses_s3())),
        "step_launcher": dg.ResourceDefinition.none_resource(),
    }


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ValueError(
            f"FRUITS_ENV=emr needs {name} (see `fruits cluster create` and the README's "
            "'Run on AWS EMR')"
        )
    return value


def emr_resources() -> dict[str, Any]:
    """Every asset runs as an EMR step; data and outputs are s3:// URIs read natively (EMRFS)."""
    from fruits_assets.emr.launcher import FruitsEmrStepLauncher
    from fruits_assets.emr.pricing import cluster_price
    from fruits_assets.emr.spec import ClusterSpec

    settings = settings_from_env()
    storage: FruitsStorage = settings["storage"]
    for label, uri in (("images", storage.images_root), ("output", storage.output_root)):
        if not filesystem.is_s3(uri):
            raise ValueError(f"FRUITS_ENV=emr: the {label} root must be an s3:// URI, not {uri!r}")
    weights = settings["featurizer_settings"].weights
    if weights not in ("imagenet", "random") and not filesystem.is_s3(weights):
        raise ValueError(
            f"FRUITS_ENV=emr: weights must be imagenet or an s3:// URI, not {weights!r}"
        )
    spec = ClusterSpec.load(
        os.environ.get("FRUITS_EMR_SPEC"),
        staging_bucket=_required("FRUITS_EMR_STAGING_BUCKET"),
        region=os.environ.get("FRUITS_EMR_REGION"),
    )
    launcher = FruitsEmrStepLauncher(
        region_name=spec.region,
        cluster_id=_required("FRUITS_EMR_CLUSTER_ID"),
        staging_bucket=spec.staging_bucket,
        staging_prefix=spec.staging_prefix,
        spark_config=emr_spark_config(spec.python),
        poll_seconds=float(os.environ.get("FRUITS_EMR_POLL_SECONDS", "15")),
        log_wait_seconds=float(os.environ.get("FRUITS_EMR_LOG_WAIT_SECONDS", "330")),
        price=cluster_price(spec.region, spec.instances),
    )
    return {
        **settings,
        "storage": storage.model_copy(update={"native_s3": True}),
        # Lazy: the launching process never starts Spark; the EMR step's driver does.
        "pyspark": LazyPySparkResource(spark_config=COMMON_SPARK_CONFIG),
        "step_launcher": dg.ResourceDefinition.hardcoded_resource(launcher),
    }


RESOURCES_BY_ENV = {"local": local_resources, "emr": emr_resources}
