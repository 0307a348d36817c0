"""raw_images and labeled_images: find every file of a class, then decode and validate it."""

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dagster as dg
import pyarrow as pa
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import types as T

from fruits_assets.assets import checks
from fruits_assets.assets.metadata import rows_table
from fruits_assets.assets.publishing import StagedFilesPublication, publish_or_fail
from fruits_assets.ml import decoding
from fruits_assets.ml.decoding import CONVERTED, REJECTIONS
from fruits_assets.partitions import ONE_RUN_FOR_ALL_CLASSES, fruit_class_partitions
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import class_files, discovery, errors, layout
from fruits_assets.storage.datasets import ROWS_PER_CLASS, Datasets, Staged

# The table's columns; Delta declares every column nullable, as Spark writes any table.
RAW_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField(layout.LABEL_COLUMN, T.StringType()),
        T.StructField("size", T.LongType()),
        T.StructField("modification_time", T.TimestampType()),
    ]
)

# The tables of accepted photos (RGB, ready to featurize) and of rejections, as Spark declares
# them (every column nullable).
ACCEPTED_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField(layout.LABEL_COLUMN, T.StringType()),
        T.StructField("content", T.BinaryType()),
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("original_mode", T.StringType()),
        T.StructField("converted", T.BooleanType()),
    ]
)
REJECTED_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField(layout.LABEL_COLUMN, T.StringType()),
        T.StructField("reason", T.StringType()),
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


def _listing_table(files: list[discovery.ImageFile]) -> pa.Table:
    """The listing as Arrow rows, in the table's columns (times in microseconds, as Spark
    keeps them)."""
    micros = [round(f.modification_time * 1_000_000) for f in files]
    return pa.table(
        {
            "path": pa.array([f.path for f in files], pa.string()),
            layout.LABEL_COLUMN: pa.array([f.label for f in files], pa.string()),
            "size": pa.array([f.size for f in files], pa.int64()),
            "modification_time": pa.array(micros, pa.timestamp("us", tz="UTC")),
        }
    )


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
    # No check audits this listing, so it is published at once (one atomic commit). The driver
    # holds it already: it writes the table's files itself, with no Spark job.
    listing = _listing_table(files)
    staged = datasets.stage_rows(listing, layout.RAW_IMAGES)
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
        staged=[staged],
        publications=[
            StagedFilesPublication(layout.RAW_IMAGES, staged, frozenset(labels), RAW_SCHEMA)
        ],
        checks=[],
        metadata={
            "input_root": storage.images,
            "classes_in_run": len(labels),
            "ignored_outside_class_folders": len(outside),
            "ignored_outside": rows_table(outside, ("path", "reason")),
        },
        per_class=class_metadata,
    )
    # Published: labeled_images, next in this run, need not count them again.
    counts = {label: per_class[label] for label in labels}
    datasets.remember(layout.RAW_IMAGES, ROWS_PER_CLASS, counts)


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
    raw_per_class = datasets.rows_per_class(layout.RAW_IMAGES, labels)
    n_raw = sum(raw_per_class.values())
    context.log.info(f"decoding and validating {n_raw} images")
    # The decoding tasks write the accepted photos and the rejections aside themselves, a file
    # per class and task, and count what they wrote for the audit: each class's listing goes to
    # one task, or to a few when there are fewer classes than splits (a small rerun, a large
    # cluster), so every core decodes and a class takes a file or a few.
    rejected_at = datasets.staging(layout.REJECTED_IMAGES)
    with datasets.spread(layout.RAW_IMAGES, labels, ["path", layout.LABEL_COLUMN]) as raw:
        staged = datasets.stage_files(
            lambda folder: decoding.decoded_files(raw, folder, rejected_at),
            layout.ACCEPTED_IMAGES,
        )
    staged_accepted = replace(staged, files=[f for f in staged.files if not f[REJECTIONS]])
    staged_rejected = Staged(
        layout.REJECTED_IMAGES, rejected_at, [f for f in staged.files if f[REJECTIONS]]
    )
    accepted_totals = class_files.per_class(staged_accepted.files, decoding.WRITTEN_COUNTS)
    accepted_per_class = Counter({k: v[class_files.ROWS] for k, v in accepted_totals.items()})
    converted_per_class = Counter({k: v[CONVERTED] for k, v in accepted_totals.items()})
    rejected_in: dict[str, list[tuple[str, str]]] = {label: [] for label in labels}
    with errors.explained(rejected_at):
        for label, table in class_files.read_back(
            rejected_at, staged_rejected.files, decoding.REJECTED_COLUMNS
        ):
            paths, causes = (table.column(c).to_pylist() for c in ("path", "reason"))
            rejected_in.setdefault(label, []).extend(zip(paths, causes, strict=True))
    rejected_per_class = Counter({k: len(v) for k, v in rejected_in.items()})
    reasons = {
        label: Counter(reason.split(":", 1)[0] for _, reason in rejected)
        for label, rejected in rejected_in.items()
    }
    for rejected in rejected_in.values():
        rejected.sort()
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
    yield from publish_or_fail(
        context,
        datasets,
        staged=[staged_accepted, staged_rejected],
        publications=[
            StagedFilesPublication(
                layout.ACCEPTED_IMAGES, staged_accepted, frozenset(labels), ACCEPTED_SCHEMA
            ),
            StagedFilesPublication(
                layout.REJECTED_IMAGES, staged_rejected, frozenset(labels), REJECTED_SCHEMA
            ),
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
