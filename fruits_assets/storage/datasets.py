"""The storage facade the assets use: read a dataset, replace some classes of it, or all of it.

Assets name datasets (`layout.RAW_IMAGES`, `layout.ACCEPTED_IMAGES`, …) and never build paths;
this module turns names into local or s3:// locations and Spark paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import filesystem, layout
from fruits_assets.storage.layout import LABEL_COLUMN


@dataclass(frozen=True)
class Staged:
    """Data written aside by one run, to be audited and then published (or kept for inspection)."""

    name: str
    location: str
    df: DataFrame


class Datasets:
    """Reads and writes of the label-partitioned and whole datasets under one output root."""

    def __init__(self, spark: SparkSession, storage: FruitsStorage, run_id: str = "") -> None:
        self.spark = spark
        self.storage = storage
        self.output = storage.output
        self.run_id = run_id or "adhoc"

    def stage(self, df: DataFrame, name: str, partitioned: bool = True) -> Staged:
        """Write `df` aside, under this run's staging folder, and read it back for the audit."""
        location = layout.staging_dir(self.output, self.run_id, name)
        writer = df.write.mode("overwrite")
        if partitioned:
            writer = writer.partitionBy(LABEL_COLUMN)
        writer.parquet(self.storage.spark_path(location))
        return Staged(name, location, self.spark.read.parquet(self.storage.spark_path(location)))

    def discard(self, staged: Staged) -> None:
        filesystem.delete_dir(staged.location)

    def location(self, dataset: str) -> str:
        return layout.dataset_dir(self.output, dataset)

    def spark_path(self, dataset: str) -> str:
        return self.storage.spark_path(self.location(dataset))

    def labels(self, dataset: str) -> set[str]:
        """Labels that have rows stored in a dataset (empty if it does not exist)."""
        prefix = f"{LABEL_COLUMN}="
        return {
            unquote(d[len(prefix) :])
            for d in filesystem.list_dirs(self.location(dataset))
            if d.startswith(prefix)
        }

    def read(self, dataset: str, labels: Iterable[str] | None = None) -> DataFrame:
        """The dataset's rows, or those of the given labels only (labels with no rows add none)."""
        if labels is None:
            return self.spark.read.parquet(self.spark_path(dataset))
        wanted = sorted(set(labels) & self.labels(dataset))
        if not wanted:
            raise FileNotFoundError(
                f"No stored rows under {self.location(dataset)} for the requested classes"
            )
        base = self.spark_path(dataset)
        paths = [filesystem.join(base, layout.partition_dir_name(label)) for label in wanted]
        # Reading the label folders directly (not the whole dataset) never lists other classes.
        return (
            self.spark.read.option("basePath", base)
            .parquet(*paths)
            .where(F.col(LABEL_COLUMN).isin(wanted))
        )

    def publish_partitions(self, df: DataFrame, dataset: str, labels: Iterable[str]) -> None:
        """Replace exactly the given labels' rows and leave every other class's rows untouched."""
        # Dynamic overwrite alone would keep the old folder of a label that now has no rows.
        for label in set(labels):
            filesystem.delete_dir(layout.partition_dir(self.location(dataset), label))
        df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(
            LABEL_COLUMN
        ).parquet(self.spark_path(dataset))

    def publish_whole(self, df: DataFrame, dataset: str) -> None:
        """Replace the whole dataset (unpartitioned assets rebuilt from every class)."""
        df.write.mode("overwrite").option("partitionOverwriteMode", "static").partitionBy(
            LABEL_COLUMN
        ).parquet(self.spark_path(dataset))

    @contextmanager
    def small_splits(
        self, dataset: str, labels: Iterable[str], per_slot: int = 4
    ) -> Iterator[None]:
        """Scan the labels' files in about `per_slot` splits per task slot, without a shuffle.

        Spark's default packs small files into 128 MiB splits: a few thousand images become one
        task on one core. A few splits per slot keep every core busy to the end (a free worker
        takes the next split), and each Python worker keeps its model across them.
        """
        total = sum(
            info.size or 0
            for label in set(labels)
            if filesystem.exists(folder := layout.partition_dir(self.location(dataset), label))
            for info in filesystem.list_files(folder)
        )
        split = max(1 << 16, -(-total // (self.spark.sparkContext.defaultParallelism * per_slot)))
        with spark_conf(
            self.spark,
            {
                "spark.sql.files.maxPartitionBytes": str(split),
                # Count files by their bytes only, so the splits hold equal shares.
                "spark.sql.files.openCostInBytes": "0",
            },
        ):
            yield


@contextmanager
def spark_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Session settings for the duration of a block, restored afterwards."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
