"""Per-class tables written through Hadoop's local file system, with and without the drop-in
that sets permissions through Java's file API instead of starting a `chmod` process per file.

    .venv/bin/python benchmarks/local_writes.py --output OUT [--pairs 2] [--reps 4]

OUT is the output root of an earlier `fruits run` (its raw_images and labeled_images tables are
only read). Per pair, two fresh local Spark applications as a run starts them (the file system
is chosen when the JVM starts): one with Hadoop's own local file system, one with the drop-in,
alternated. In each, the rows of raw_images and of labeled_images' accepted images are cached,
then written `--reps` times as a Delta table with one folder per class (as a publish writes
them) and counted back; medians per application, and the processes the machine created while
each application ran (`/proc/stat`, threads included).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402

VARIANTS = ("hadoop", "drop-in")


def processes_created() -> int:
    with open("/proc/stat") as stat:
        return next(int(line.split()[1]) for line in stat if line.startswith("processes "))


def child(variant: str, output: str, reps: int) -> dict[str, list[float]]:
    """One Spark application: seconds per write-and-count of each table."""
    from pyspark.sql import SparkSession

    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings
    from fruits_assets.storage import layout

    config = local_spark_config(FruitsSettings.from_env(), spark_ml=False)
    if variant == "hadoop":
        config.pop("spark.hadoop.fs.file.impl", None)
    elif "spark.hadoop.fs.file.impl" not in config:
        raise SystemExit("the drop-in's jar is not in the jars cache: run scripts/fetch_jars.sh")
    spark = SparkSession.builder.config(map={k: str(v) for k, v in config.items()}).getOrCreate()
    seconds: dict[str, list[float]] = {}
    for table in (layout.RAW_IMAGES, layout.ACCEPTED_IMAGES):
        rows = spark.read.format("delta").load(f"file://{layout.dataset_dir(output, table)}")
        rows = rows.cache()
        expected = rows.count()
        for _ in range(reps):
            scratch = tempfile.mkdtemp(prefix="local_writes_")
            started = time.perf_counter()
            target = f"file://{scratch}/table"
            rows.repartition("label").write.format("delta").partitionBy("label").save(target)
            assert spark.read.format("delta").load(target).count() == expected
            seconds.setdefault(table, []).append(time.perf_counter() - started)
            shutil.rmtree(scratch)
        rows.unpersist()
    spark.stop()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="output root of an earlier fruits run")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, os.path.abspath(args.output), args.reps)))
        return
    print("machine:", json.dumps(describe()))
    results: list[tuple[str, dict[str, list[float]], int]] = []
    for pair in range(args.pairs):
        for variant in VARIANTS if pair % 2 == 0 else VARIANTS[::-1]:
            before = processes_created()
            done = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--output", args.output,
                 "--reps", str(args.reps)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            created = processes_created() - before
            seconds = json.loads(done.stdout.strip().splitlines()[-1])
            results.append((variant, seconds, created))
            medians = ", ".join(f"{t} {statistics.median(s):.2f} s" for t, s in seconds.items())
            print(f"pair {pair + 1} {variant:8} {medians}; {created} processes", flush=True)
    print("\n| table, write + count back (median s) | " + " | ".join(VARIANTS) + " |")
    print("| --- |" + " ---: |" * len(VARIANTS))
    for table in results[0][1]:
        cells = [
            " / ".join(f"{statistics.median(s[table]):.2f}" for v, s, _ in results if v == variant)
            for variant in VARIANTS
        ]
        print(f"| {table} | " + " | ".join(cells) + " |")
    cells = [" / ".join(str(c) for v, _, c in results if v == variant) for variant in VARIANTS]
    print("| processes created per application | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
