"""Label-partitioned Parquet reads and writes: per-class reruns touch only their classes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_assets import filesystem
from fruits_assets.layout import LABEL_COLUMN, partition_dir, partition_dir_name


def stored_labels(dataset_uri: str) -> set[str]:
    """Labels that have a `label=` folder in a dataset (empty if it does not exist)."""
    from urllib.parse import unquote

    prefix = f"{LABEL_COLUMN}="
    return {
        unquote(d[len(prefix) :]) for d in filesystem.list_dirs(dataset_uri) if d.startswith(prefix)
    }


def write_label_partitions(
    df: DataFrame, dataset_uri: str, spark_path: str, labels: Iterable[str]
) -> None:
    """Replace exactly the given labels' folders and leave every other class's rows untouched."""
    # Dynamic overwrite alone would keep the old folder of a label that now has no rows.
    for label in set(labels):
        filesystem.delete_dir(partition_dir(dataset_uri, label))
    df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(
        LABEL_COLUMN
    ).parquet(spark_path)


def write_whole(df: DataFrame, spark_path: str) -> None:
    """Replace the whole dataset (unpartitioned assets rebuilt from every class)."""
    df.write.mode("overwrite").option("partitionOverwriteMode", "static").partitionBy(
        LABEL_COLUMN
    ).parquet(spark_path)


def read_labels(
    spark: SparkSession, dataset_uri: str, spark_path: str, labels: Iterable[str]
) -> DataFrame:
    """The rows of the given labels only; labels with no folder simply contribute no rows."""
    labels = sorted(set(labels) & stored_labels(dataset_uri))
    if not labels:
        raise FileNotFoundError(f"No stored rows under {dataset_uri} for the requested classes")
    paths = [filesystem.join(spark_path, partition_dir_name(label)) for label in labels]
    # Reading the label folders directly (not the whole dataset) never lists other classes' files.
    return (
        spark.read.option("basePath", spark_path)
        .parquet(*paths)
        .where(F.col(LABEL_COLUMN).isin(labels))
    )


@contextmanager
def small_splits(
    spark: SparkSession, dataset_uri: str, labels: Iterable[str], per_slot: int = 4
) -> Iterator[None]:
    """Scan the labels' files in about `per_slot` splits per task slot, without a shuffle.

    Spark's default packs small files into 128 MiB splits: a few thousand images become one task
    on one core. A few splits per slot keep every core busy to the end (a free worker takes the
    next split), and each Python worker keeps its model across them.
    """
    total = sum(
        info.size or 0
        for label in set(labels)
        if filesystem.exists(partition_dir(dataset_uri, label))
        for info in filesystem.list_files(partition_dir(dataset_uri, label))
    )
    slots = spark.sparkContext.defaultParallelism
    keys = ("spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
    previous = {key: spark.conf.get(key, None) for key in keys}
    spark.conf.set(keys[0], str(max(1 << 16, -(-total // (slots * per_slot)))))
    spark.conf.set(keys[1], "0")  # count files by their bytes only, so splits hold equal shares
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
