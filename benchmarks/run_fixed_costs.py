"""Small fixed costs every run pays, each measured alone in one warm local Spark application.

    .venv/bin/python benchmarks/run_fixed_costs.py --output OUT [--reps 7]

OUT is the output root of an earlier `fruits run` (its tables are only read). For each cost,
the way a run paid it before and the way it pays it now, alternated, medians of `--reps`:

- selecting the rows of every class of mobilenet_features: `Column.isin` (one round trip to the
  JVM per class) vs `labels_filter` (one SQL expression);
- a Spark read of one class of accepted images (`Datasets.spread` where the workers cannot
  read the table's files themselves): planning the read to list its files (`inputFiles`:
  Delta filters the table's files, Spark jobs) vs not, for fewer classes than splits (the
  table's state is computed before the first repetition, as the run's own read would compute
  it anyway);
- stopping a Spark context: `SparkSession.stop` (which waits for PySpark's accumulator server)
  vs `spark_host.stop_without_waiting`; a new context is created in the same JVM before each.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402


def timed(f: Callable[[], object]) -> float:
    started = time.perf_counter()
    f()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="output root of an earlier fruits run")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from fruits_assets.resources import spark_host
    from fruits_assets.resources.spark import local_spark_config, warm_up
    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.settings import FruitsSettings
    from fruits_assets.storage import layout
    from fruits_assets.storage.datasets import Datasets, labels_filter

    config = {k: str(v) for k, v in local_spark_config(FruitsSettings.from_env()).items()}

    def session() -> SparkSession:
        spark = SparkSession.builder.config(map=config).getOrCreate()
        warm_up(spark)
        return spark

    spark = session()
    storage = FruitsStorage(images_root="/nonexistent", output_root=str(Path(args.output)))
    datasets = Datasets(spark, storage, "benchmark")
    features = datasets.read(layout.MOBILENET_FEATURES)
    classes = sorted(r[0] for r in features.select(layout.LABEL_COLUMN).distinct().collect())
    one = {classes[len(classes) // 2]}

    times: dict[str, list[float]] = {}
    cases = {
        f"select {len(classes)} classes: Column.isin": lambda: features.where(
            F.col(layout.LABEL_COLUMN).isin(classes)
        ),
        f"select {len(classes)} classes: labels_filter": lambda: features.where(
            labels_filter(classes)
        ),
        "spread one class: with inputFiles": lambda: datasets.read(
            layout.ACCEPTED_IMAGES, one
        ).inputFiles(),
        "spread one class: without": lambda: datasets.read(layout.ACCEPTED_IMAGES, one),
    }
    for _ in range(args.reps):
        for name, case in cases.items():
            times.setdefault(name, []).append(timed(case))
    for _ in range(args.reps):
        for name, stop in (
            ("stop a context: SparkSession.stop", lambda s: s.stop()),
            ("stop a context: stop_without_waiting", spark_host.stop_without_waiting),
        ):
            spark = session()
            spark.range(10).count()  # a job, so the accumulator server has a connection
            started = time.perf_counter()
            stop(spark)
            times.setdefault(name, []).append(time.perf_counter() - started)

    print(describe())
    print(f"output root: {args.output}; {len(classes)} classes; medians of {args.reps}")
    print("| cost | median s | runs s |\n| --- | ---: | --- |")
    for name, values in times.items():
        runs = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {statistics.median(values):.3f} | {runs} |")


if __name__ == "__main__":
    main()
