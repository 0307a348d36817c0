"""End to end: `fruits run` vs the seed-style script doing the same work, and memory vs size.

    .venv/bin/python benchmarks/end_to_end.py compare --reps 3
    .venv/bin/python benchmarks/end_to_end.py memory --sizes 1000 4000 8000

`compare` times, back to back in fresh processes, `fruits run --no-classifier` on the Fruits-360
Test split (the six pipeline assets, Dagster and the checks included) and the seed notebook's
script doing the same work (featurize, PCA with the same k, Parquet).
`memory` runs `fruits run` on growing subsets of Training+Test and reports the peak RSS of the whole
process tree (driver, JVM, Python workers).
"""

from __future__ import annotations

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

from machine import PeakMemory, describe  # noqa: E402

SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", HERE.parent.parent / "shared"))
DATA = SHARED / "data" / "fruits360"
WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_dequant.h5"
FRUITS = str(Path(sys.executable).with_name("fruits"))


def timed(command: list[str], env: dict | None = None) -> tuple[float, PeakMemory, str]:
    """(wall seconds, the peak memory sampler, stdout) of one command in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    with PeakMemory(process.pid) as memory:
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return time.perf_counter() - started, memory, stdout


def fruits_run(images: Path, workdir: Path, *extra: str) -> tuple[float, PeakMemory, int]:
    output, home = workdir / "out", workdir / "home"
    wall, peak, stdout = timed(
        [
            FRUITS,
            "run",
            "--images",
            str(images),
            "--output",
            str(output),
            "--weights",
            str(WEIGHTS),
            *extra,
        ],
        env={"DAGSTER_HOME": str(home)},
    )
    k = int(stdout.split("PCA k:", 1)[1].split()[0])
    return wall, peak, k


def seed_run(images: Path, workdir: Path, k: int) -> tuple[float, PeakMemory]:
    script = str(HERE / "seed_style.py")
    output = str(workdir / "seed_out")
    wall, peak, _ = timed([sys.executable, script, str(images), str(WEIGHTS), str(k), output])
    return wall, peak


def mib(memory: PeakMemory) -> str:
    kinds = {k: v / 2**20 for k, v in memory.peak_by_kind.items()}
    java, python, other = (kinds.get(k, 0) for k in ("java", "python", "other"))
    total = memory.peak / 2**20
    return f"{total:6.0f} MiB (JVM {java:.0f}, python* {python:.0f}, other {other:.0f})"


def compare(reps: int) -> None:
    images = DATA / "Test"
    print("machine:", json.dumps(describe()))
    ours, seeds = [], []
    for rep in range(reps):
        with tempfile.TemporaryDirectory(prefix="e2e_") as tmp:
            wall, peak, k = fruits_run(images, Path(tmp), "--no-classifier")
            ours.append(wall)
            print(f"rep {rep + 1} fruits run   {wall:7.1f} s  peak {mib(peak)}  k={k}", flush=True)
            wall, peak = seed_run(images, Path(tmp), k)
            seeds.append(wall)
            print(f"rep {rep + 1} seed-style   {wall:7.1f} s  peak {mib(peak)}", flush=True)
    a, b = statistics.median(ours), statistics.median(seeds)
    print(f"\nmedian fruits run {a:.1f} s, seed-style {b:.1f} s: fruits run takes {a / b:.0%} "
          f"of the seed-style wall time")  # fmt: skip


def memory(sizes: list[int]) -> None:
    files = sorted(DATA.glob("*/*/*.jpg"))
    print("machine:", json.dumps(describe()))
    print(f"driver heap: {os.environ.get('FRUITS_DRIVER_MEMORY', '4g (default)')}")
    print("| images | wall s | images/s end to end | peak RSS MiB: whole tree | JVM | Spark Python "
          "workers | `fruits` driver |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        step = len(files) / size
        chosen = [files[int(i * step)] for i in range(min(size, len(files)))]
        with tempfile.TemporaryDirectory(prefix="mem_") as tmp:
            root = Path(tmp) / "images"
            for file in chosen:  # keep split and class folders
                target = root / file.parent.parent.name / file.parent.name / file.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, target)
            wall, peak, _ = fruits_run(root, Path(tmp))
        kinds = peak.peak_by_kind
        print(f"| {len(chosen)} | {wall:.1f} | {len(chosen) / wall:.1f} | {peak.peak / 2**20:.0f} "
              f"| {kinds.get('java', 0) / 2**20:.0f} | {kinds.get('python', 0) / 2**20:.0f} "
              f"| {kinds.get('other', 0) / 2**20:.0f} |",
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("compare").add_argument("--reps", type=int, default=3)
    sub.add_parser("memory").add_argument(
        "--sizes", type=int, nargs="+", default=[1000, 4000, 8000]
    )
    args = parser.parse_args()
    compare(args.reps) if args.mode == "compare" else memory(args.sizes)


if __name__ == "__main__":
    main()
