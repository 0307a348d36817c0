"""The all-classes tables in one warm Spark JVM: how `pca_features_parquet` is laid out, and how
`features_csv` builds its k columns.

    .venv/bin/python benchmarks/whole_tables.py --reps 6

On generated rows shaped like the Test split's PCA features (141 classes x 15 rows, k = 674
floats; `--classes`, `--rows-per-class`, `--k` change them), in the Spark session a run uses
(`local_spark_config`), after two unmeasured rounds, interleaved per repetition:

- layout: the whole table overwritten as a Delta table split into one folder and file per class
  (`partitionBy(label)`, as the per-class tables are) or as it comes (a few files), then read
  back as the next assets read it (rows per class, every vector's length);
- columns: the CSV's k columns from the array, built as k Column objects (several calls into
  the JVM each) or as k SQL expressions in one `selectExpr` call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402

from fruits_assets.resources.spark import local_spark_config  # noqa: E402
from fruits_assets.settings import FruitsSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--classes", type=int, default=141)
    parser.add_argument("--rows-per-class", type=int, default=15)
    parser.add_argument("--k", type=int, default=674)
    args = parser.parse_args()
    print("machine:", json.dumps(describe()))

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    config = local_spark_config(FruitsSettings.from_env())
    spark = SparkSession.builder.config(map={k: str(v) for k, v in config.items()}).getOrCreate()
    rows = (
        spark.range(args.classes * args.rows_per_class)
        .select(
            F.concat(F.lit("Test/"), F.col("id").cast("string"), F.lit(".jpg")).alias("path"),
            F.concat(F.lit("Class "), (F.col("id") % args.classes).cast("string")).alias("label"),
            F.transform(
                F.array_repeat(F.lit(0), args.k), lambda _, i: F.rand(0) + i.cast("float")
            ).alias("pca_features"),
        )
        .cache()
    )
    rows.count()
    workdir = tempfile.mkdtemp(prefix="whole_tables_")

    def write(layout: str) -> None:
        path = f"file://{workdir}/{layout}"
        if layout == "per class":
            writer = rows.repartition("label").write.partitionBy("label")
        else:
            writer = rows.write
        writer.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)

    def read(layout: str) -> None:
        table = spark.read.format("delta").load(f"file://{workdir}/{layout}")
        table.groupBy("label").agg(F.count("*"), F.sum(F.size("pca_features"))).collect()

    def columns(how: str) -> None:
        if how == "Column objects":
            built = [F.col("pca_features")[i].alias(f"pca_feature_{i + 1}") for i in range(args.k)]
            rows.select("path", "label", *built).orderBy("label", "path")
        else:
            exprs = [f"pca_features[{i}] AS pca_feature_{i + 1}" for i in range(args.k)]
            rows.selectExpr("path", "label", *exprs).orderBy("label", "path")

    cases = {
        ("layout", "write"): ("per class", "a few files"),
        ("layout", "read"): ("per class", "a few files"),
        ("columns", "build"): ("Column objects", "one selectExpr"),
    }
    actions = {"write": write, "read": read, "build": columns}
    seconds: dict[tuple[str, str, str], list[float]] = {}
    for rep in range(args.reps + 2):
        for (what, action), variants in cases.items():
            for variant in variants if rep % 2 == 0 else variants[::-1]:
                started = time.perf_counter()
                actions[action](variant)
                if rep >= 2:  # the first two rounds load and compile the code paths
                    key = (what, action, variant)
                    seconds.setdefault(key, []).append(time.perf_counter() - started)
    print(f"\n{args.classes} classes x {args.rows_per_class} rows, k = {args.k}, "
          f"{args.reps} repetitions\n")  # fmt: skip
    print("| what | variant | median s | per repetition |")
    print("| --- | --- | ---: | --- |")
    for (what, action, variant), times in seconds.items():
        each = " / ".join(f"{t:.2f}" for t in times)
        print(f"| {what}: {action} | {variant} | {statistics.median(times):.2f} | {each} |")
    spark.stop()


if __name__ == "__main__":
    main()
