"""raw_images and labeled_images: find every file of a class, then decode and validate it."""

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import pandas as pd
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_assets.assets import checks
from fruits_assets.assets.metadata import rows_table
from fruits_assets.assets.publishing import Publication, publish_or_fail
from fruits_assets.ml import decoding
from fruits_assets.partitions import ONE_RUN_FOR_ALL_CLASSES, fruit_class_partitions
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import discovery, layout
from fruits_assets.storage.datasets import ROWS_PER_CLASS, Datasets, labels_filter

# A fact raw_images keeps of its commit for labeled_images (`Datasets.remember`): the classes it
# published, the Spark application and the DataFrame of their listing, equal to the table's rows
# of those classes at that commit.
LISTING = "listing"

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


def _listing_frame(spark: SparkSession, files: list[discovery.ImageFile]) -> DataFrame:
    """The listing as a DataFrame, handed to the JVM through Arrow: from a list of tuples, Spark
    would unpickle them in a Python worker of its own kind (started for that one job, most of a
    second in a new Spark context) rather than in the JVM."""
    frame = pd.DataFrame(
        {
            "path": pd.Series([f.path for f in files], dtype=object),
            "label": pd.Series([f.label for f in files], dtype=object),
            "size": pd.array([f.size for f in files], dtype="int64"),
            "modification_time": pd.to_datetime(
                [datetime.fromtimestamp(f.modification_time, tz=timezone.utc) for f in files],
                utc=True,
            ),
        }
    )
    return spark.createDataFrame(frame, RAW_SCHEMA)


@dg.asset(
    partitions_def=fruit_class_partitions,
    backfill_policy=ONE_RUN_FOR_ALL_CLASSES,
    group_name="images",
    kinds={"spark", "parquet"},
)
def raw_images(
    context: dg.AssetExecutionContext,
    storage: FruitsStorage,
    pyspark: LazyPySparkResource,
    step_launcher: dg.ResourceParam[Any],
) -> Iterator[dg.MaterializeResult]:
    """Every .jpg/.jpeg/.png file of the selected classes, with path, size and modification time."""
    labels = set(context.partition_keys)
    scan = discovery.scan(storage.images, reuse=True)  # the listing `fruits run` just made
    missing = labels - set(scan.classes)
    if missing:
        raise _missing_classes_failure(missing, storage.images)
    files = scan.images_of(labels)
    context.log.info(f"{len(files)} images in {len(labels)} classes under {storage.images}")
    datasets = Datasets(pyspark.spark_session, storage, context.run.run_id)
    # No check audits this listing, so it is published at once (one atomic commit).
    listing = _listing_frame(pyspark.spark_session, files)
    # An ignored file belongs to its folder's class; the others are the run's.
    classes = set(scan.classes)
    per_class = Counter(f.label for f in files)
    outside = [(p, r) for p, r in scan.ignored if p.rsplit("/", 2)[-2] not in classes]
    ignored_in: dict[str, list[tuple[str, str]]] = {label: [] for label in labels}
    for path, reason in scan.ignored:
        folder = path.rsplit("/", 2)[-2]
        if folder in ignored_in:
            ignored_in[folder].append((path, reason))
    class_metadata = {
        label: {
            "num_images": per_class[label],
            "num_ignored_files": len(ignored),
            "ignored_by_reason": dict(Counter(r for _, r in ignored)),
            "ignored_files": rows_table(ignored, ("path", "reason")),
        }
        for label, ignored in ignored_in.items()
    }
    yield from publish_or_fail(
        context,
        datasets,
        staged=[],
        publications=[Publication(layout.RAW_IMAGES, listing, frozenset(labels))],
        checks=[],
        metadata={
            "input_root": storage.images,
            "classes_in_run": len(labels),
            "ignored_outside_class_folders": len(outside),
            "ignored_outside": rows_table(outside, ("path", "reason")),
        },
        per_class=class_metadata,
    )
    # Published: labeled_images, next in this run, need not count them again, nor read them.
    commit = datasets.commit(layout.RAW_IMAGES)
    counts = {label: per_class[label] for label in labels}
    datasets.remember(layout.RAW_IMAGES, ROWS_PER_CLASS, counts, commit=commit)
    application = pyspark.spark_session.sparkContext.applicationId
    kept = (frozenset(labels), application, listing)
    datasets.remember(layout.RAW_IMAGES, LISTING, kept, commit=commit)


def _raw_listing(datasets: Datasets, labels: set[str]) -> DataFrame:
    """Path and label of these classes' published raw images. When raw_images published them
    in this process and its commit is still the table's latest, its own listing: the same rows,
    without planning a read of the table (a fresh JVM's Delta log replay and file listing)."""
    kept = datasets.recall(layout.RAW_IMAGES, LISTING)
    application = datasets.spark.sparkContext.applicationId
    if kept is not None and labels <= kept[0] and kept[1] == application:
        published, _, listing = kept
        rows = listing if labels == published else listing.where(labels_filter(labels))
        return rows.select("path", "label")
    return datasets.read(layout.RAW_IMAGES, labels).select("path", "label")


@dg.asset(
    partitions_def=fruit_class_partitions,
    backfill_policy=ONE_RUN_FOR_ALL_CLASSES,
    deps=[raw_images],
    group_name="images",
    kinds={"spark", "parquet"},
    check_specs=[
        checks.spec(
            checks.RAW_VS_LABELED_BALANCE,
            "labeled_images",
            "Every raw image is either labeled or rejected: the counts balance exactly.",
        )
    ],
)
def labeled_images(
    context: dg.AssetExecutionContext,
    storage: FruitsStorage,
    pyspark: LazyPySparkResource,
    step_launcher: dg.ResourceParam[Any],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Each image labeled by its class folder, decoded to RGB, or rejected with a reason."""
    spark = pyspark.spark_session
    labels = set(context.partition_keys)
    datasets = Datasets(spark, storage, context.run.run_id)
    raw = _raw_listing(datasets, labels)
    raw_per_class = datasets.rows_per_class(layout.RAW_IMAGES, labels)
    n_raw = sum(raw_per_class.values())
    context.log.info(f"decoding and validating {n_raw} images")
    # Spread the (tiny) path rows over every core before the expensive decode.
    parallelism = max(spark.sparkContext.defaultParallelism, n_raw // 2000 + 1)
    decoded = raw.repartition(parallelism).mapInPandas(decoding.decode_batches, DECODED_SCHEMA)
    # Accepted and rejected images are written aside together, audited, then published apart.
    staged = datasets.stage(
        decoded,
        layout.LABELED_IMAGES,
        audit=lambda rows: rows.groupBy(
            "label", "converted", F.substring_index("reason", ":", 1).alias("kind")
        ).count(),
    )
    summary = staged.audit
    accepted_per_class, rejected_per_class = Counter(), Counter()
    converted_per_class, reasons = Counter(), {label: Counter() for label in labels}
    for row in summary:
        if row["kind"] is None:
            accepted_per_class[row["label"]] += row["count"]
            converted_per_class[row["label"]] += row["count"] if row["converted"] else 0
        else:
            rejected_per_class[row["label"]] += row["count"]
            reasons[row["label"]][row["kind"]] += row["count"]
    rejected = staged.df.where(F.col("reason").isNotNull()).select("path", "label", "reason")
    rejections = rejected.orderBy("label", "path").collect() if rejected_per_class else []
    rejected_in: dict[str, list[tuple[str, str]]] = {label: [] for label in labels}
    for r in rejections:
        rejected_in.setdefault(r["label"], []).append((r["path"], r["reason"]))
    class_metadata = {
        label: {
            "num_raw_images": raw_per_class.get(label, 0),
            "num_accepted": accepted_per_class[label],
            "num_rejected": rejected_per_class[label],
            "num_converted_to_rgb": converted_per_class[label],
            "rejected_by_reason": dict(reasons[label]),
            "rejected_images": rows_table(rejected_in[label], ("path", "reason")),
        }
        for label in labels
    }
    n_accepted, n_rejected = sum(accepted_per_class.values()), sum(rejected_per_class.values())
    accepted = staged.df.where(F.col("reason").isNull()).drop("reason")
    yield from publish_or_fail(
        context,
        datasets,
        staged=[staged],
        publications=[
            Publication(layout.ACCEPTED_IMAGES, accepted, frozenset(labels)),
            Publication(layout.REJECTED_IMAGES, rejected, frozenset(labels), rows=n_rejected),
        ],
        checks=[
            checks.result(
                checks.RAW_VS_LABELED_BALANCE,
                n_accepted + n_rejected == n_raw,
                raw=n_raw,
                accepted=n_accepted,
                rejected=n_rejected,
            )
        ],
        metadata={
            "classes_in_run": len(labels),
            "rejected_path": dg.MetadataValue.path(datasets.location(layout.REJECTED_IMAGES)),
        },
        per_class=class_metadata,
    )
    datasets.remember(
        layout.ACCEPTED_IMAGES,
        ROWS_PER_CLASS,
        {label: accepted_per_class[label] for label in labels},
    )
