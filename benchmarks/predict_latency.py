"""Wall time of `fruits predict` for one photo, as a user runs it (a fresh process each time).

.venv/bin/python benchmarks/predict_latency.py OUTPUT_ROOT PHOTO [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("photo")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    fruits = str(Path(sys.executable).with_name("fruits"))
    command = [fruits, "predict", args.photo, "--model", args.output]
    walls = []
    for _ in range(args.reps):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - started)
    print(describe())
    print(done.stdout.strip())
    print(f"fruits predict, 1 photo: median {statistics.median(walls):.2f} s over {args.reps} runs "
          f"(min {min(walls):.2f}, max {max(walls):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
