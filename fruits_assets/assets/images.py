"""raw_images and labeled_images: find every file of a class, then decode and validate it."""

from collections import Counter
from datetime import datetime, timezone

import dagster as dg
from pyspark import StorageLevel
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_assets import checks, decoding, discovery, layout, spark_io
from fruits_assets.assets.common import PARTITIONED, SPARK_RESOURCES, counts_table, rows_table
from fruits_assets.resources.storage import FruitsStorage

RAW_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType(), False),
        T.StructField("label", T.StringType(), False),
        T.StructField("size", T.LongType(), False),
        T.StructField("modification_time", T.TimestampType(), False),
    ]
)

DECODED_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType(), False),
        T.StructField("label", T.StringType(), False),
        T.StructField("content", T.BinaryType(), True),
        T.StructField("width", T.IntegerType(), False),
        T.StructField("height", T.IntegerType(), False),
        T.StructField("original_mode", T.StringType(), False),
        T.StructField("converted", T.BooleanType(), False),
        T.StructField("reason", T.StringType(), True),
    ]
)


def _missing_classes_failure(missing: set[str], root: str) -> dg.Failure:
    return dg.Failure(
        description=(
            f"Fruit classes {sorted(missing)} have no images under {root}. Their partition keys "
            "come from another input root or a deleted folder: run `fruits sync` (or `fruits run`) "
            "to make the partitions match the configured input root."
        )
    )


@dg.asset(
    **PARTITIONED,
    group_name="images",
    kinds={"spark", "parquet"},
    required_resource_keys=SPARK_RESOURCES,
)
def raw_images(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every .jpg/.jpeg/.png file of the selected classes, with path, size and modification time."""
    storage: FruitsStorage = context.resources.storage
    spark = context.resources.pyspark.spark_session
    labels = set(context.partition_keys)
    scan = discovery.scan(storage.images)
    missing = labels - set(scan.classes)
    if missing:
        raise _missing_classes_failure(missing, storage.images)
    files = scan.images_of(labels)
    context.log.info(f"{len(files)} images in {len(labels)} classes under {storage.images}")
    rows = [
        (f.path, f.label, f.size, datetime.fromtimestamp(f.modification_time, tz=timezone.utc))
        for f in files
    ]
    out = layout.asset_dir(storage.output, layout.RAW_IMAGES)
    spark_io.write_label_partitions(
        spark.createDataFrame(rows, RAW_SCHEMA), out, storage.spark_path(out), labels
    )
    # An ignored file belongs to its folder's class; ones outside any class are reported by all.
    classes = set(scan.classes)
    ignored = [
        (p, r)
        for p, r in scan.ignored
        if (folder := p.rsplit("/", 2)[-2]) in labels or folder not in classes
    ]
    return dg.MaterializeResult(
        metadata={
            "num_images": len(files),
            "num_classes": len(labels),
            "num_ignored_files": len(ignored),
            "ignored_by_reason": dict(Counter(r for _, r in ignored)),
            "ignored_files": rows_table(ignored, ("path", "reason")),
            "images_per_class": counts_table(Counter(f.label for f in files)),
            "input_root": storage.images,
            "path": dg.MetadataValue.path(out),
        }
    )


@dg.asset(
    **PARTITIONED,
    deps=[raw_images],
    group_name="images",
    kinds={"spark", "parquet"},
    required_resource_keys=SPARK_RESOURCES,
    check_specs=[
        checks.spec(
            checks.RAW_VS_LABELED_BALANCE,
            "labeled_images",
            "Every raw image is either labeled or rejected: the counts balance exactly.",
        )
    ],
)
def labeled_images(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Each image labeled by its class folder, decoded to RGB, or rejected with a reason."""
    storage: FruitsStorage = context.resources.storage
    spark = context.resources.pyspark.spark_session
    labels = set(context.partition_keys)
    raw_dir = layout.asset_dir(storage.output, layout.RAW_IMAGES)
    raw = spark_io.read_labels(spark, raw_dir, storage.spark_path(raw_dir), labels)
    n_raw = raw.count()
    context.log.info(f"decoding and validating {n_raw} images")
    # Spread the (tiny) path rows over every core before the expensive decode.
    parallelism = max(spark.sparkContext.defaultParallelism, n_raw // 2000 + 1)
    decoded = (
        raw.select("path", "label")
        .repartition(parallelism)
        .mapInPandas(decoding.decode_batches, DECODED_SCHEMA)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        accepted_dir = layout.accepted_images_dir(storage.output)
        rejected_dir = layout.rejected_images_dir(storage.output)
        spark_io.write_label_partitions(
            decoded.where(F.col("reason").isNull()).drop("reason"),
            accepted_dir,
            storage.spark_path(accepted_dir),
            labels,
        )
        spark_io.write_label_partitions(
            decoded.where(F.col("reason").isNotNull()).select("path", "label", "reason"),
            rejected_dir,
            storage.spark_path(rejected_dir),
            labels,
        )
        summary = (
            decoded.groupBy("label", "converted", F.substring_index("reason", ":", 1).alias("kind"))
            .count()
            .collect()
        )
        rejected = (
            decoded.where(F.col("reason").isNotNull())
            .select("path", "label", "reason")
            .orderBy("label", "path")
            .limit(200)
            .collect()
        )
    finally:
        decoded.unpersist()

    accepted, reasons, n_converted = Counter(), Counter(), 0
    for row in summary:
        if row["kind"] is None:
            accepted[row["label"]] += row["count"]
            n_converted += row["count"] if row["converted"] else 0
        else:
            reasons[row["kind"]] += row["count"]
    n_accepted, n_rejected = sum(accepted.values()), sum(reasons.values())
    return dg.MaterializeResult(
        metadata={
            "num_raw_images": n_raw,
            "num_accepted": n_accepted,
            "num_rejected": n_rejected,
            "num_converted_to_rgb": n_converted,
            "rejected_by_reason": dict(reasons),
            "rejected_images": rows_table(
                [(r["path"], r["label"], r["reason"]) for r in rejected],
                ("path", "label", "reason"),
            ),
            "accepted_per_class": counts_table(accepted),
            "path": dg.MetadataValue.path(accepted_dir),
            "rejected_path": dg.MetadataValue.path(rejected_dir),
        },
        check_results=[
            checks.result(
                checks.RAW_VS_LABELED_BALANCE,
                n_accepted + n_rejected == n_raw,
                raw=n_raw,
                accepted=n_accepted,
                rejected=n_rejected,
            )
        ],
    )
