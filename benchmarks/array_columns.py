"""The feature vectors' array columns in one warm Spark JVM: what writing them as Parquet costs,
and what a pass over them costs through Spark's reader against Python reading the files.

    .venv/bin/python benchmarks/array_columns.py --reps 3

On generated rows shaped like the 8,460-image sample's features (141 classes, 60 rows each,
1,280 float32 values; `--classes`, `--rows-per-class`, `--width` change them), held on local
disk as a run's staged rows are, in the Spark session a run uses (`local_spark_config`), after
one unmeasured round, interleaved per repetition:

- writes: the rows as plain Parquet with Spark's standard (3-level) lists, nullable elements
  (what every table holds) or not; the 2-level lists Spark writes for non-nullable elements
  with `spark.sql.parquet.writeLegacyFormat`; and a Delta table partitioned by class, which
  stores every column nullable whatever the rows' schema (the elements' list level, as written,
  is printed);
- a pass: every vector of the Delta table handed to Python workers, by Spark's Parquet reader
  and Arrow (`mapInArrow`), or by each worker reading its share of the table's files with
  pyarrow (as the PCA's moments and projection and the CSV's lines get them where a table's
  files hold exactly its rows, `storage/table_files.py`); and, to tell the costs apart, Spark's
  reader alone (the vectors' sizes summed in the JVM) and the rows held on local disk (a run's
  staged rows) handed to the workers through Arrow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402

from fruits_assets.resources.spark import local_spark_config  # noqa: E402
from fruits_assets.settings import FruitsSettings  # noqa: E402


def _count(batches: Iterator) -> Iterator:
    import pyarrow as pa

    rows = sum(batch.num_rows for batch in batches)
    yield pa.RecordBatch.from_pydict({"rows": [rows]})


def _read_files(paths: Iterator[str]) -> Iterator[int]:
    import pyarrow.parquet as pq

    for path in paths:
        table = pq.read_table(path.removeprefix("file:"), columns=["features"])
        vectors = table.column("features").combine_chunks().flatten().to_numpy()
        yield vectors.reshape(table.num_rows, -1).shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=141)
    parser.add_argument("--rows-per-class", type=int, default=60)
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    print("machine:", json.dumps(describe()))

    import pyarrow.parquet as pq
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    config = local_spark_config(FruitsSettings.from_env())
    spark = SparkSession.builder.config(map={k: str(v) for k, v in config.items()}).getOrCreate()
    n = args.classes * args.rows_per_class
    generated = spark.range(n, numPartitions=8).select(
        F.concat(F.lit("Test/"), F.col("id").cast("string"), F.lit(".jpg")).alias("path"),
        F.concat(F.lit("Class "), (F.col("id") % args.classes).cast("string")).alias("label"),
        F.transform(
            F.array_repeat(F.lit(0), args.width), lambda _, i: (F.rand(0) + i).cast("float")
        ).alias("features"),
    )

    def held(rows):
        rows = rows.persist(StorageLevel.DISK_ONLY)
        rows.count()
        return rows

    # The generated values are never null; `when` without `otherwise` makes the elements
    # nullable, as a pandas UDF's or a Delta table's arrays are.
    not_null = held(generated)
    nullable = held(
        generated.withColumn("features", F.transform("features", lambda x: F.when(x == x, x)))
    )
    for name, rows in (("non-nullable", not_null), ("nullable", nullable)):
        print(f"{name} rows: {rows.schema['features'].dataType.simpleString()}, contains null: "
              f"{rows.schema['features'].dataType.containsNull}")  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="array-columns-"))
    delta = str(scratch / "delta")
    not_null.repartition("label").write.format("delta").partitionBy("label").save(delta)
    files = spark.read.format("delta").load(delta).inputFiles()
    stored = pq.ParquetFile(files[0].removeprefix("file:")).schema
    level = next(c.path for c in map(stored.column, range(len(stored))) if "features" in c.path)
    print(f"Delta table of non-nullable rows: elements stored as {level}")
    written = iter(range(1_000_000))

    def parquet(rows, legacy: bool) -> None:
        spark.conf.set("spark.sql.parquet.writeLegacyFormat", str(legacy).lower())
        try:
            rows.write.parquet(str(scratch / f"p{next(written)}"))
        finally:
            spark.conf.unset("spark.sql.parquet.writeLegacyFormat")

    cases: dict[str, Callable[[], object]] = {
        "write: Parquet, 3-level lists, nullable elements": lambda: parquet(nullable, False),
        "write: Parquet, 3-level lists, non-nullable": lambda: parquet(not_null, False),
        "write: Parquet, 2-level lists (non-nullable, legacy format)": lambda: parquet(
            not_null, True
        ),
        "write: Delta, a folder per class (as the per-class tables)": lambda: (
            not_null.repartition("label")
            .write.format("delta")
            .partitionBy("label")
            .save(str(scratch / f"d{next(written)}"))
        ),
        "pass: Spark's reader, then Arrow to Python workers": lambda: (
            spark.read.format("delta")
            .load(delta)
            .select("features")
            .mapInArrow(_count, "rows long")
            .collect()
        ),  # fmt: skip
        "pass: Spark's reader only (the vectors' sizes summed in the JVM)": lambda: (
            spark.read.format("delta").load(delta).agg(F.sum(F.size("features"))).collect()
        ),
        "pass: the rows held on local disk, then Arrow to Python workers": lambda: (
            not_null.select("features").mapInArrow(_count, "rows long").collect()
        ),
        "pass: Python workers read the files (pyarrow)": lambda: (
            spark.sparkContext.parallelize(files, 2 * spark.sparkContext.defaultParallelism)
            .mapPartitions(_read_files)
            .collect()
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(args.reps + 1):
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            if rep:  # the first round warms the JVM's code up
                times[name].append(time.perf_counter() - started)
    print(f"\n{n} rows x {args.width} floats, medians of {args.reps}:")
    print("| case | s | repetitions |")
    print("| --- | ---: | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")  # fmt: skip


if __name__ == "__main__":
    main()
