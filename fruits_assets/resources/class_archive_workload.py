"""Run by spark-submit while the class archive is recorded (`class_archive.record`): a few rows
through the kinds of Spark work a run and `fruits restore` do (Delta's reads, writes and
history, Arrow to Python workers, rows held on disk, text), so that the JVM has loaded their
classes when it exits and writes the archive. Touches nothing but a scratch folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def _same(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield from batches


def main() -> None:
    from delta.tables import DeltaTable

    from fruits_assets.resources.spark import warm_up

    spark = SparkSession.builder.getOrCreate()
    scratch = tempfile.mkdtemp(prefix="fruits-class-archive-")
    try:
        warm_up(spark)  # the Python workers, Spark ML's Python side
        table = f"file://{scratch}/table"
        listing = spark.createDataFrame(
            pd.DataFrame(
                {
                    "path": [f"/photos/{label}/{i}.jpg" for label in "ab" for i in range(4)],
                    "label": [label for label in "ab" for _ in range(4)],
                    "size": pd.array(range(8), dtype="int64"),
                    "modification_time": [datetime.now(timezone.utc)] * 8,
                }
            )
        ).withColumn("features", F.array(*(F.rand().cast("float") for _ in range(4))))
        listing.repartition("label").write.format("delta").partitionBy("label").save(table)
        listing.where("label = 'a'").repartition("label").write.format("delta").mode(
            "overwrite"
        ).option("replaceWhere", "label IN ('a')").option("userMetadata", "{}").save(table)
        rows = spark.read.format("delta").load(table).where("label IN ('a', 'b')")
        held = rows.mapInArrow(_same, rows.schema).persist(StorageLevel.DISK_ONLY)
        held.groupBy("label").agg(F.count("*"), F.countDistinct("path")).collect()
        held.select(F.concat_ws(",", "path", "label").alias("line"), "label").repartition(
            1, "label"
        ).sortWithinPartitions("label").select("line").write.text(f"file://{scratch}/text")
        held.write.mode("overwrite").parquet(f"file://{scratch}/parquet")
        held.unpersist()
        spark.read.format("delta").option("versionAsOf", 0).load(table).count()
        DeltaTable.forPath(spark, table).history().collect()
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
