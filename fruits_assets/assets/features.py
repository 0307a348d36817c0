"""mobilenet_features: MobileNetV2's 1280-d penultimate layer (and a colour histogram) per image."""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_assets.assets import checks
from fruits_assets.assets.current_features import (
    WEIGHTS_COLUMN,
    groups_now,
    keep_published_groups,
    refuse_other_featurizers,
)
from fruits_assets.assets.images import labeled_images
from fruits_assets.assets.publishing import StagedFilesPublication, publish_or_fail
from fruits_assets.ml import color, featurizer
from fruits_assets.partitions import ONE_RUN_FOR_ALL_CLASSES, fruit_class_partitions
from fruits_assets.preflight import quiet_stderr
from fruits_assets.resources.ml_settings import FeaturizerSettings
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import class_files, filesystem, layout
from fruits_assets.storage.datasets import Datasets

# The published table's columns (the class column is its files' folders). Delta declares every
# column nullable, as Spark writes any table.
FEATURES_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField(layout.LABEL_COLUMN, T.StringType()),
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("color_histogram", T.ArrayType(T.FloatType())),
        T.StructField(WEIGHTS_COLUMN, T.StringType()),
    ]
)

PATHS = "paths"  # the audit's count of distinct paths per class

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: these features come from an untrained MobileNetV2, not ImageNet weights; "
    "they are fit for a smoke test only, not for a classifier."
)


def weights_with_demo_fallback(
    context: dg.AssetExecutionContext, settings: FeaturizerSettings
) -> tuple[featurizer.WeightsInfo, str | None]:
    """The weights to use and, in demo mode when ImageNet is out of reach, a loud warning."""
    try:
        return featurizer.resolve_weights(settings.weights), None
    except Exception as exc:
        if not settings.allow_random_fallback:
            raise
        warning = f"{RANDOM_WEIGHTS_WARNING} ({settings.weights!r} unavailable: {exc})"
        context.log.warning(warning)
        return featurizer.resolve_weights("random"), warning


def kept_int8_model(
    context: dg.AssetExecutionContext,
    datasets: Datasets,
    info: featurizer.WeightsInfo,
    batch_size: int,
) -> tuple[bytes, str]:
    """The int8 model this output root's features are computed with, and its identity (trained
    weights only).

    Its quantization depends on the photos it was calibrated on, so every class of an output root
    is featurized with one model: the one kept beside the features by the first int8 run, else
    one calibrated now on a fixed sample of the accepted photos (chosen by a hash of their bytes:
    the same photos give the same model, wherever they are stored)."""
    if info.is_random:
        raise dg.Failure(
            description="the int8 featurizer needs trained weights: an untrained MobileNetV2 "
            "quantized to int8 gives every photo the same features. Use ImageNet's weights or a "
            ".h5 file (--weights), or --precision float32"
        )
    sha256 = info.sha256
    # A run of some classes is refused before any calibration when the other classes' features
    # are not int8 ones of these weights (the exact model is checked once it is known).
    refuse_other_featurizers(context, datasets, featurizer.int8_prefix(sha256), prefix=True)
    folder = layout.featurizer_models_dir(datasets.output)
    kept = max(  # one, unless a file was replaced by hand: the latest
        (
            i
            for i in filesystem.list_entries(folder)
            if i.base_name.startswith(featurizer.int8_prefix(sha256))
            and i.base_name.endswith(".tflite")
        ),
        key=lambda i: i.mtime_ns or 0,
        default=None,
    )
    if kept is not None:
        identity = kept.base_name[: -len(".tflite")]
        model = filesystem.read_bytes(filesystem.join(folder, kept.base_name))
        if featurizer.int8_identity(sha256, model) == identity:
            context.log.info(f"int8 featurizer: the model kept in {folder} ({identity})")
            return model, identity
        # A write cut short: the same photos calibrate the same model again, under this name.
        context.log.warning(f"int8 featurizer: {identity}.tflite is damaged; calibrating anew")
    photos = [
        row["content"]
        for row in datasets.read(layout.ACCEPTED_IMAGES)
        .select("content")
        .orderBy(F.xxhash64("content"), "content")
        .limit(featurizer.CALIBRATION_PHOTOS)
        .collect()
    ]
    started = time.perf_counter()
    with quiet_stderr():  # TensorFlow's import and the converter's chatter
        model, sha256 = featurizer.int8_model(info, batch_size, photos)
    identity = featurizer.int8_identity(sha256, model)
    context.log.info(
        f"int8 featurizer: quantized, calibrated on {len(photos)} accepted photos "
        f"({time.perf_counter() - started:.1f} s): {identity}"
    )
    return model, identity


@dg.asset(
    partitions_def=fruit_class_partitions,
    backfill_policy=ONE_RUN_FOR_ALL_CLASSES,
    deps=[labeled_images],
    group_name="features",
    kinds={"spark", "tensorflow", "parquet"},
    check_specs=[
        checks.spec(
            checks.FEATURES_ONE_PER_IMAGE,
            "mobilenet_features",
            "Exactly one feature row per accepted image.",
        ),
        checks.spec(
            checks.FEATURES_DIMENSION,
            "mobilenet_features",
            f"Every vector has {featurizer.FEATURE_DIM} finite values (and every colour "
            f"histogram {color.HISTOGRAM_DIM}).",
        ),
    ],
)
def mobilenet_features(
    context: dg.AssetExecutionContext,
    storage: FruitsStorage,
    pyspark: LazyPySparkResource,
    featurizer_settings: FeaturizerSettings,
    step_launcher: dg.ResourceParam[Any],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """MobileNetV2 (ImageNet, include_top=True) penultimate-layer features, one row per image."""
    spark = pyspark.spark_session
    settings = featurizer_settings
    labels = set(context.partition_keys)
    info, warning = weights_with_demo_fallback(context, settings)
    datasets = Datasets(spark, storage, context.run.run_id)
    if settings.precision == "int8":
        model, sha256 = kept_int8_model(context, datasets, info, settings.batch_size)
    else:
        model, sha256 = featurizer.tflite_model(info, settings.batch_size)
    refuse_other_featurizers(context, datasets, sha256)
    # Asked of a worker once the run is known to featurize: a refused run's cause leads alone.
    if settings.precision == "int8" and featurizer.workers_int8_dot_products(spark) is False:
        slow = (
            "int8 featurizer on Spark workers whose CPU has no int8 dot products (AVX-512 VNNI, "
            "AVX-VNNI, AMX or Arm's dot product): expect it no faster than float32 there, and "
            "its features differ"
        )
        context.log.warning(slow)
        warning = f"{warning}; {slow}" if warning else slow
    # Kept beside the features: the classifier exports the model that really computed them,
    # and later int8 runs on this output root featurize with the same quantized model. Written
    # again when a write was cut short (a model's size is fixed by its graph).
    model_path = layout.featurizer_model_path(storage.output, sha256)
    if not filesystem.exists(model_path) or filesystem.size(model_path) != len(model):
        filesystem.write_bytes(model_path, model)

    context.log.info(f"featurizing {len(labels)} classes with MobileNetV2 weights {info.source}")
    started = time.perf_counter()
    with datasets.spread(layout.ACCEPTED_IMAGES, labels, ["path", "label", "content"]) as images:
        # Each featurizing task writes its rows' data files itself, and counts for the audit
        # what it wrote: the checks need no pass over the vectors of their own.
        staged = datasets.stage_files(
            lambda folder: featurizer.featurized_files(
                images,
                model,
                sha256,
                settings.batch_size,
                settings.threads_per_task,
                folder,
                columns=[f.name for f in FEATURES_SCHEMA if f.name != layout.LABEL_COLUMN],
                constants={WEIGHTS_COLUMN: sha256},
            ),
            layout.MOBILENET_FEATURES,
        )
    audit = _per_class(staged.files)
    seconds = time.perf_counter() - started
    by_class = {r[layout.LABEL_COLUMN]: r for r in audit}
    images_per_class = datasets.rows_per_class(layout.ACCEPTED_IMAGES, labels)
    class_metadata = {
        label: {
            "num_rows": by_class[label]["count"] if label in by_class else 0,
            "accepted_images": images_per_class.get(label, 0),
        }
        for label in labels
    }
    n_images = sum(images_per_class.values())
    rows = sum(r["count"] for r in by_class.values())
    bad = sum(r[featurizer.BAD] for r in by_class.values())
    paths = sum(r[PATHS] for r in by_class.values())
    metadata = {
        "feature_dim": featurizer.FEATURE_DIM,
        "color_histogram_dim": color.HISTOGRAM_DIM,
        "weights": info.spec,
        "weights_source": info.source,
        "weights_sha256": sha256,
        "precision": settings.precision,
        "runtime": f"TFLite {settings.precision} on XNNPACK, batch {settings.batch_size}, "
        f"{settings.threads_per_task} thread(s) per task",
        "classes_in_run": len(labels),
        "featurize_seconds": round(seconds, 2),
        "images_per_second": round(rows / seconds, 1) if seconds > 0 else 0.0,
    }
    if warning:
        metadata["WARNING"] = warning
    # The other classes' groups of rows as the table holds them before this publish, when known.
    groups_before = groups_now(datasets)
    yield from publish_or_fail(
        context,
        datasets,
        staged=[staged],
        publications=[
            StagedFilesPublication(
                layout.MOBILENET_FEATURES, staged, frozenset(labels), FEATURES_SCHEMA
            )
        ],
        checks=[
            checks.result(
                checks.FEATURES_ONE_PER_IMAGE,
                rows == n_images and paths == n_images,
                accepted_images=n_images,
                feature_rows=rows,
                distinct_paths=paths,
            ),
            checks.result(checks.FEATURES_DIMENSION, bad == 0, bad_vectors=bad),
        ],
        metadata=metadata,
        per_class=class_metadata,
    )
    keep_published_groups(datasets, groups_before, labels, sha256, audit)


def _per_class(files: list[Row]) -> list[dict[str, Any]]:
    """The audit's counts per class, from the data files the featurizing tasks wrote
    (`featurizer.featurized_files`): `count` (the rows, as `current_features.COUNTS` names
    them), the `WRITTEN_COUNTS` and the distinct paths (`PATHS`). The photos reach the tasks
    as whole files of accepted photos or pieces of them cut by a hash of the path
    (`Datasets.spread`), so a path is never in two files."""
    totals = class_files.per_class(files, featurizer.WRITTEN_COUNTS)
    return [
        {layout.LABEL_COLUMN: label, "count": total.pop(class_files.ROWS)}
        | {PATHS: total.pop(class_files.DISTINCT)}
        | total
        for label, total in totals.items()
    ]
