"""The JVM's compilers: a run's local Spark JVM with the optimizing compiler (C2) for Spark ML's
code only (`spark_jit = ml`, the default) or for everything (`all`, the JVM's default).

    .venv/bin/python benchmarks/jit.py --reps 2

Per repetition and setting, interleaved, on a copy of the Fruits-360 Test split (2,115 images,
141 classes) with the shared weights: a full `fruits run` with the classifier into a fresh output
root, then two photos added to one class and that class rerun with `fruits run --classes`. Prints
each run's wall time and where its seconds went (start-up, each asset's step, end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from end_to_end import step_budget  # noqa: E402
from machine import describe  # noqa: E402
from reruns import ALL_ASSETS, CLASS, DATA, WEIGHTS, add_photos, run  # noqa: E402

SETTINGS = ("ml", "all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    print("machine:", json.dumps(describe()))
    walls: dict[tuple[str, str], list[float]] = {}
    budgets: dict[tuple[str, str], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        for jit in SETTINGS:
            with tempfile.TemporaryDirectory(prefix="jit_") as tmp:
                images, output, home = Path(tmp) / "images", Path(tmp) / "out", Path(tmp) / "home"
                shutil.copytree(DATA / "Test", images)
                env = {**os.environ, "DAGSTER_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3",
                       "FRUITS_SPARK_JIT": jit}  # fmt: skip
                common = ["--images", str(images), "--output", str(output),
                          "--weights", str(WEIGHTS)]  # fmt: skip
                for kind, extra in (("full run", []), ("one-class rerun", ["--classes", CLASS])):
                    if extra:
                        add_photos(images, 2)
                    since = time.time()
                    wall = run("run", *common, *extra, env=env)
                    walls.setdefault((jit, kind), []).append(wall)
                    budgets.setdefault((jit, kind), []).append(step_budget(home, since, wall))
                    print(f"rep {rep + 1} spark_jit={jit:3} {kind:15} {wall:6.1f} s", flush=True)
    print("\n| run (with the classifier) | " + " | ".join(f"`{j}` s" for j in SETTINGS) + " |")
    print("| --- |" + " ---: |" * len(SETTINGS))
    for kind in ("full run", "one-class rerun"):
        cells = [f"{statistics.median(walls[(jit, kind)]):.1f}" for jit in SETTINGS]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for kind in ("full run", "one-class rerun"):
        print(f"\nWhere the seconds went, {kind} (medians):\n")
        print("| part | " + " | ".join(f"`{j}` s" for j in SETTINGS) + " |")
        print("| --- |" + " ---: |" * len(SETTINGS))
        for part in ["start-up", *ALL_ASSETS, "end"]:
            cells = [
                f"{statistics.median(b.get(part, 0.0) for b in budgets[(jit, kind)]):.1f}"
                for jit in SETTINGS
            ]
            print(f"| {part} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
