"""Resources per environment: `local` (local Spark) and `emr` (every asset an EMR step)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource

from fruits_assets.resources.local_spark import LocalSpark
from fruits_assets.resources.ml_settings import (
    ClassifierSettings,
    FeaturizerSettings,
    PcaSettings,
)
from fruits_assets.resources.spark import (
    COMMON_SPARK_CONFIG,
    emr_spark_config,
    local_spark_config,
)
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.settings import FruitsSettings
from fruits_assets.storage import filesystem


def shared_resources(settings: FruitsSettings, check_weights: bool = True) -> dict[str, Any]:
    """The resources every environment binds from the settings (the launch config may override)."""
    return {
        "storage": FruitsStorage(
            images_root=settings.images,
            output_root=settings.output,
            hold_lock=not settings.remote_step,
            lock_wait_seconds=settings.lock_wait_seconds,
        ),
        "featurizer_settings": FeaturizerSettings(
            weights=settings.weights,
            allow_random_fallback=settings.allow_random_fallback,
            precision=settings.precision,
            check_on_start=check_weights,
        ),
        "classifier_settings": ClassifierSettings(
            accuracy_floor=settings.accuracy_floor,
            max_iter=settings.classifier_max_iter,
            warm_start_iter=settings.classifier_warm_start_iter,
        ),
        "pca_settings": PcaSettings(target_variance=settings.variance),
    }


def local_resources(settings: FruitsSettings) -> dict[str, Any]:
    """Local Spark in this process, started on first use; s3:// data goes through Hadoop S3A."""
    return {
        **shared_resources(settings),
        "pyspark": LocalSpark(spark_config=local_spark_config(settings, s3=settings.uses_s3)),
        "step_launcher": dg.ResourceDefinition.none_resource(),
    }


def _required(settings: FruitsSettings, name: str) -> str:
    value = getattr(settings, name)
    if not value:
        raise ValueError(
            f"FRUITS_ENV=emr needs {FruitsSettings.env_name(name)} (see `fruits cluster create` "
            "and the README's 'Run on AWS EMR')"
        )
    return value


def emr_resources(settings: FruitsSettings) -> dict[str, Any]:
    """Every asset runs as an EMR step; data and outputs are s3:// URIs read natively (EMRFS)."""
    from fruits_assets.emr.launcher import FruitsEmrStepLauncher
    from fruits_assets.emr.pricing import cluster_price
    from fruits_assets.emr.spec import ClusterSpec

    for label, uri in (("images", settings.images), ("output", settings.output)):
        if not filesystem.is_s3(uri):
            raise ValueError(f"FRUITS_ENV=emr: the {label} root must be an s3:// URI, not {uri!r}")
    if settings.weights not in ("imagenet", "random") and not filesystem.is_s3(settings.weights):
        raise ValueError(
            f"FRUITS_ENV=emr: weights must be imagenet or an s3:// URI, not {settings.weights!r}"
        )
    spec = ClusterSpec.load(
        settings.emr_spec or None,
        staging_bucket=_required(settings, "emr_staging_bucket"),
        region=settings.emr_region or None,
    )
    launcher = FruitsEmrStepLauncher(
        region_name=spec.region,
        cluster_id=_required(settings, "emr_cluster_id"),
        staging_bucket=spec.staging_bucket,
        staging_prefix=spec.staging_prefix,
        spark_config=emr_spark_config(spec.python),
        forwarded_env=settings.to_env(forwarded_only=True),
        poll_seconds=settings.emr_poll_seconds,
        log_wait_seconds=settings.emr_log_wait_seconds,
        price=cluster_price(spec.region, spec.instances),
    )
    # A resource that fails to start in an EMR step loses its message on the way back: the
    # featurizer's own step reports bad weights (naming them) instead.
    shared = shared_resources(settings, check_weights=False)
    return {
        **shared,
        "storage": shared["storage"].model_copy(update={"native_s3": True}),
        # The launching process never starts Spark; the EMR step's driver does.
        "pyspark": LazyPySparkResource(spark_config=COMMON_SPARK_CONFIG),
        "step_launcher": dg.ResourceDefinition.hardcoded_resource(launcher),
    }


RESOURCES_BY_ENV = {"local": local_resources, "emr": emr_resources}
