"""A fresh local Spark JVM with and without the class archive (`fruits jvm-archive`).

    .venv/bin/python benchmarks/class_archive.py [--reps 5]

Each repetition starts two fresh processes, in alternating order: one whose JVM maps the archive
recorded for this machine, one with `class_archive = false`. Each times what every `fruits run`
does first in its JVM: the Spark session's start, then a first Delta write of a listing of 8,460
files in 141 class folders and a first read of it back (the JVM loading the classes of those
code paths). Records the archive first if there is none.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402

CHILD = """
import json, sys, tempfile, time
started = time.perf_counter()
import pandas as pd
from pyspark.sql import SparkSession
from fruits_assets.resources.spark import local_spark_config
from fruits_assets.settings import FruitsSettings
config = local_spark_config(FruitsSettings.from_env(), spark_ml=False)
spark = SparkSession.builder.config(map={k: str(v) for k, v in config.items()}).getOrCreate()
session = time.perf_counter()
listing = pd.DataFrame({"path": [f"/photos/c{i % 141}/{i}.jpg" for i in range(8460)],
                        "label": [f"c{i % 141}" for i in range(8460)]})
table = "file://" + tempfile.mkdtemp(prefix="class_archive_bench_") + "/listing"
spark.createDataFrame(listing).repartition("label").write.format("delta").partitionBy(
    "label").save(table)
rows = spark.read.format("delta").load(table).where("label IN ('c1', 'c2')").count()
done = time.perf_counter()
print(json.dumps({"mapped": "SharedArchiveFile" in config["spark.driver.extraJavaOptions"],
                  "session": session - started, "first_delta": done - session}))
"""


def one(archive: bool) -> dict:
    env = {**os.environ, "FRUITS_CLASS_ARCHIVE": str(archive).lower()}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print("machine:", json.dumps(describe()))
    fruits = str(Path(sys.executable).with_name("fruits"))
    subprocess.run([fruits, "jvm-archive"], check=True)
    times: dict[bool, list[dict]] = {True: [], False: []}
    for rep in range(args.reps):
        for archive in (True, False) if rep % 2 == 0 else (False, True):
            result = one(archive)
            assert result["mapped"] == archive, result
            times[archive].append(result)
            total = result["session"] + result["first_delta"]
            print(f"rep {rep + 1} archive={archive!s:5} session {result['session']:5.2f} s  "
                  f"first Delta write and read {result['first_delta']:5.2f} s  "
                  f"total {total:5.2f} s", flush=True)  # fmt: skip
    print("\n| JVM | session s | first Delta write and read s | total s |")
    print("| --- | ---: | ---: | ---: |")
    for archive, label in ((True, "with the class archive"), (False, "without")):
        runs = times[archive]
        session = statistics.median(r["session"] for r in runs)
        delta = statistics.median(r["first_delta"] for r in runs)
        total = statistics.median(r["session"] + r["first_delta"] for r in runs)
        print(f"| {label} | {session:.2f} | {delta:.2f} | {total:.2f} |")


if __name__ == "__main__":
    main()
