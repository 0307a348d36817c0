"""mobilenet_features: MobileNetV2's 1280-d penultimate layer (and a colour histogram) per image."""

import time
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_assets import checks, color, featurizer, filesystem, layout, spark_io
from fruits_assets.assets.classes import WEIGHTS_COLUMN
from fruits_assets.assets.common import PARTITIONED, SPARK_RESOURCES, counts_table
from fruits_assets.assets.images import labeled_images
from fruits_assets.resources.settings import FeaturizerSettings
from fruits_assets.resources.storage import FruitsStorage

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: these features come from an untrained MobileNetV2, not ImageNet weights; "
    "they are fit for a smoke test only, not for a classifier."
)


def resolve_weights(
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


# The MobileNetV2 vector, and the colour histogram the classifier also uses (cheap next to it).
OUTPUT_TYPE = T.StructType(
    [
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("color_histogram", T.ArrayType(T.FloatType())),
    ]
)


def featurize_udf(spark, model: bytes, sha256: str, settings: FeaturizerSettings):
    """The iterator pandas UDF: the TFLite model broadcast once, one interpreter per Python
    worker process for the whole stage."""
    broadcast = spark.sparkContext.broadcast(model)
    key, threads = f"{sha256}:{settings.batch_size}", settings.threads_per_task

    @F.pandas_udf(OUTPUT_TYPE)
    def featurize(contents: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        model = featurizer.worker_featurizer(key, lambda: broadcast.value, threads)
        for batch in contents:
            images = batch.tolist()
            # The histogram rides along: the image bytes cross to Python once, not twice.
            yield pd.DataFrame(
                {
                    "features": list(model(images)),
                    "color_histogram": [color.histogram(image) for image in images],
                }
            )

    return featurize


@dg.asset(
    **PARTITIONED,
    deps=[labeled_images],
    group_name="features",
    kinds={"spark", "tensorflow", "parquet"},
    required_resource_keys=SPARK_RESOURCES | {"featurizer_settings"},
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
def mobilenet_features(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """MobileNetV2 (ImageNet, include_top=True) penultimate-layer features, one row per image."""
    storage: FruitsStorage = context.resources.storage
    spark = context.resources.pyspark.spark_session
    settings: FeaturizerSettings = context.resources.featurizer_settings
    labels = set(context.partition_keys)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", settings.arrow_batch_rows)
    info, warning = resolve_weights(context, settings)
    model, sha256 = featurizer.tflite_model(info, settings.batch_size)
    # Kept beside the features: the classifier exports the model that really computed them.
    model_path = layout.featurizer_model_path(storage.output, sha256)
    if not filesystem.exists(model_path):
        filesystem.write_bytes(model_path, model)

    images_dir = layout.accepted_images_dir(storage.output)
    images = spark_io.read_labels(spark, images_dir, storage.spark_path(images_dir), labels)
    featurize = featurize_udf(spark, model, sha256, settings)
    context.log.info(f"featurizing {len(labels)} classes with MobileNetV2 weights {info.source}")
    out = layout.asset_dir(storage.output, layout.MOBILENET_FEATURES)
    started = time.perf_counter()
    with spark_io.small_splits(spark, images_dir, labels):
        spark_io.write_label_partitions(
            images.select("path", "label", featurize("content").alias("out")).select(
                "path",
                "label",
                "out.features",
                "out.color_histogram",
                F.lit(sha256).alias(WEIGHTS_COLUMN),
            ),
            out,
            storage.spark_path(out),
            labels,
        )
    seconds = time.perf_counter() - started

    written = spark_io.read_labels(spark, out, storage.spark_path(out), labels)
    bad_vector = (
        (F.size("features") != featurizer.FEATURE_DIM)
        | F.exists("features", lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
        | (F.size("color_histogram") != color.HISTOGRAM_DIM)
    )
    # One pass over the written rows for every count the checks and metadata need.
    by_class = (
        written.groupBy("label")
        .agg(
            F.count("*").alias("rows"),
            F.sum(bad_vector.cast("int")).alias("bad"),
            F.countDistinct("path").alias("paths"),
        )
        .collect()
    )
    per_class = {r["label"]: r["rows"] for r in by_class}
    n_images = images.count()
    rows, bad = sum(per_class.values()), sum(r["bad"] or 0 for r in by_class)
    paths = sum(r["paths"] for r in by_class)
    metadata = {
        "num_rows": rows,
        "feature_dim": featurizer.FEATURE_DIM,
        "color_histogram_dim": color.HISTOGRAM_DIM,
        "weights": info.spec,
        "weights_source": info.source,
        "weights_sha256": sha256,
        "runtime": f"TFLite float32 on XNNPACK, batch {settings.batch_size}, "
        f"{settings.threads_per_task} thread(s) per task",
        "featurize_seconds": round(seconds, 2),
        "images_per_second": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "rows_per_class": counts_table(per_class),
        "path": dg.MetadataValue.path(out),
    }
    if warning:
        metadata["WARNING"] = warning
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            checks.result(
                checks.FEATURES_ONE_PER_IMAGE,
                rows == n_images and paths == n_images,
                accepted_images=n_images,
                feature_rows=rows,
                distinct_paths=paths,
            ),
            checks.result(checks.FEATURES_DIMENSION, bad == 0, bad_vectors=bad),
        ],
    )
