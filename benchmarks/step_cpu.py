"""Where each step of `fruits run` spends the machine's CPU: by process and thread kind.

    .venv/bin/python benchmarks/step_cpu.py --reps 2
    .venv/bin/python benchmarks/step_cpu.py --reps 2 --against ../old --sample

Runs `fruits run --no-classifier` on the Fruits-360 Test split (`--sample`: the 8,460-image
sample) in fresh processes, this checkout's code and, with `--against CHECKOUT`, another
checkout's (its `fruits_assets` on the same virtual environment), in alternating order. Every
0.2 s it reads the CPU time of each thread of the run's processes from `/proc`: the `fruits`
driver's Python, Spark's Python workers (and their daemon), and the JVM's threads by kind (as
`spark_jobs.py` names them). Each increase is counted in the window it was seen in: start-up
(until the first step starts, from the run's Dagster events), each step, the end. For each
window it prints the wall seconds and the CPU seconds of each kind, medians over repetitions.
Two cores fully busy for a second are 2 CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from end_to_end import DATA, TEST, WEIGHTS, fill_model_cache  # noqa: E402
from machine import describe  # noqa: E402
from spark_jobs import THREAD_KINDS, thread_times  # noqa: E402

PERIOD = 0.2
DRIVER, WORKERS, JVM_OTHER = "Python: fruits driver", "Python: Spark's workers", "JVM: other"


class Sampler:
    """The CPU seconds of every thread of the Python and Java processes under `/proc`, read
    every PERIOD while it runs, each increase counted at the time it was seen."""

    def __init__(self, driver: int) -> None:
        self.driver = driver
        self.seen: dict[tuple[str, str], float] = {}
        self.increases: list[tuple[float, str, float]] = []  # (time, kind, CPU seconds)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()

    def _kind(self, exe: str, pid: int, name: str) -> str:
        if exe.endswith("/java"):
            return next(
                (kind for prefix, kind in THREAD_KINDS if name.startswith(prefix)), JVM_OTHER
            )
        return DRIVER if pid == self.driver else WORKERS

    def _sample(self) -> None:
        def keep(exe: str) -> bool:
            return exe.endswith("/java") or "python" in os.path.basename(exe)

        while not self.done.wait(PERIOD):
            now = time.time()
            for pid, tid, exe, name, cpu in thread_times(keep):
                increase = cpu - self.seen.get((pid, tid), 0.0)
                self.seen[(pid, tid)] = cpu
                if increase > 0:
                    self.increases.append((now, self._kind(exe, int(pid), name), increase))


def step_windows(home: Path, started: float, ended: float) -> list[tuple[str, float, float]]:
    """(name, start, end) of start-up, each step of the run (its Dagster events), the end."""
    steps: dict[str, dict[str, float]] = {}
    for db in (home / "history" / "runs").glob("*.db"):
        if db.name == "index.db":
            continue
        with sqlite3.connect(db) as connection:
            for (text,) in connection.execute("SELECT event FROM event_logs ORDER BY id"):
                event = json.loads(text)
                dagster = event.get("dagster_event") or {}
                kind = dagster.get("event_type_value")
                if kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
                    steps.setdefault(dagster["step_key"], {})[kind] = event["timestamp"]
    ordered = sorted(steps.items(), key=lambda item: item[1]["STEP_START"])
    windows = [("start-up", started, ordered[0][1]["STEP_START"])]
    for name, times in ordered:
        windows.append((name, times["STEP_START"], times.get("STEP_SUCCESS", ended)))
    return [*windows, ("end", windows[-1][2], ended)]


def one_run(checkout: Path, images: Path, workdir: Path) -> dict[str, dict[str, float]]:
    """{window: {"wall": s, kind: CPU s}} of one `fruits run --no-classifier`."""
    command = [sys.executable, "-c", "from fruits_assets.cli import entry; entry()", "run",
               "--images", str(images), "--output", str(workdir / "out"),
               "--weights", str(WEIGHTS), "--no-classifier"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout), "DAGSTER_HOME": str(workdir / "home"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}  # fmt: skip
    started = time.time()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with Sampler(process.pid) as sampler:
        output = process.communicate()[0].decode(errors="replace")
    ended = time.time()
    if process.returncode != 0:
        raise RuntimeError(f"fruits run failed:\n{output[-3000:]}")
    figures: dict[str, dict[str, float]] = {}
    windows = step_windows(workdir / "home", started, ended)
    for name, start, end in windows:
        figures[name] = defaultdict(float, wall=end - start)
    for at, kind, increase in sampler.increases:
        # A sample's increase happened during the PERIOD before it was seen.
        window = next((n for n, start, end in windows if start <= at - PERIOD / 2 < end), None)
        if window is not None:
            figures[window][kind] += increase
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--against", type=Path, help="another checkout, run alike")
    parser.add_argument("--sample", action="store_true", help="the 8,460-image sample")
    args = parser.parse_args()
    images = DATA if args.sample else TEST
    print("images:", images)
    print("machine:", json.dumps(describe()))
    checkouts = {"this checkout": HERE.parent}
    if args.against:
        checkouts["--against"] = args.against.resolve()
    results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in checkouts}
    from fruits_assets.settings import FruitsSettings

    fill_model_cache(FruitsSettings.from_env().cache_dir)  # the one-off conversion, untimed
    with tempfile.TemporaryDirectory(prefix="step-cpu-") as scratch:
        for rep in range(args.reps):
            order = list(checkouts.items())
            for name, checkout in order if rep % 2 == 0 else order[::-1]:
                figures = one_run(checkout, images, Path(scratch, f"{rep}-{name[:4]}"))
                results[name].append(figures)
                total = sum(f["wall"] for f in figures.values())
                print(f"rep {rep + 1} {name:14} {total:6.1f} s")
    kinds = ["wall", DRIVER, WORKERS, *dict.fromkeys(kind for _, kind in THREAD_KINDS), JVM_OTHER]
    for name, runs in results.items():
        windows = list(dict.fromkeys(window for run in runs for window in run))
        print(f"\n{name}: seconds, medians of {len(runs)} (wall, then CPU by kind)")
        print("| window | " + " | ".join(kinds) + " | CPU, all |")
        print("| --- |" + " ---: |" * (len(kinds) + 1))
        for window in windows:
            values = [[run.get(window, {}).get(kind, 0.0) for run in runs] for kind in kinds]
            everything = [sum(v for k, v in run.get(window, {}).items() if k != "wall")
                          for run in runs]  # fmt: skip
            cells = [f"{statistics.median(v):.2f}" for v in values]
            print(f"| {window} | " + " | ".join(cells) +
                  f" | {statistics.median(everything):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
