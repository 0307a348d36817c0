"""The Spark jobs of `fruits run`: Spark's own event log of each run, and what it says.

    .venv/bin/python benchmarks/spark_jobs.py --reps 3
    .venv/bin/python benchmarks/spark_jobs.py --reps 5 --against ../old --sample

Runs `fruits run --no-classifier` on the Fruits-360 Test split (`--sample`: the 8,460-image
sample) in fresh processes with Spark's event log on, this checkout's code and, with
`--against CHECKOUT`, another checkout's (its `fruits_assets` on the same virtual environment),
in alternating order. For each run it prints the wall time and the jobs around the
featurizing stage (the longest job): the stage, the audit's jobs after it, the wait from its
end to the publish's job, the publish (none when the featurizing tasks write the table's files
themselves); how many times Spark warned of a task of a very large size; and the CPU seconds
of the run's JVM by thread kind (tasks, calls from the driver's Python, the JIT compilers, GC,
the threads that feed Python workers). Medians at the end. With `--keep`, the event logs stay
in the work folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from end_to_end import DATA, TEST, WEIGHTS, fill_model_cache  # noqa: E402
from machine import describe  # noqa: E402

# `fruits run` with the event log added to the local Spark settings: the product has no setting
# for it (a run's JVM writes nothing it does not need).
LAUNCH = """
import sys
from fruits_assets.resources import spark
spark.COMMON_SPARK_CONFIG.update(
    {"spark.eventLog.enabled": "true", "spark.eventLog.dir": "file://" + sys.argv.pop(1)}
)
from fruits_assets.cli import main
sys.argv[0] = "fruits"
sys.exit(main())
"""
LARGE_TASK_WARNING = "contains a task of very large size"
# The JVM's threads by what they do (their names, as `/proc` shows them, cut to 15 characters).
THREAD_KINDS = (
    ("Executor task", "JVM CPU: tasks"),
    ("Thread-", "JVM CPU: driver calls from Python"),
    ("C1 CompilerThre", "JVM CPU: JIT compilers"),
    ("C2 CompilerThre", "JVM CPU: JIT compilers"),
    ("GC Thread", "JVM CPU: GC"),
    ("G1 ", "JVM CPU: GC"),
    ("stdout writer", "JVM CPU: feeding Python workers"),
)
OTHER_THREADS, ALL_THREADS = "JVM CPU: other threads", "JVM CPU: all"
KINDS = (*dict.fromkeys(kind for _, kind in THREAD_KINDS), OTHER_THREADS, ALL_THREADS)


def thread_times(keep: Callable[[str], bool]) -> Iterator[tuple[str, str, str, str, float]]:
    """(pid, thread id, executable, thread name, CPU seconds so far) of every thread of the
    other processes under `/proc` whose executable's path `keep` accepts."""
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            threads = os.listdir(f"/proc/{pid}/task") if keep(exe) else []
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as handle:
                    name = handle.read().strip()
                with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            yield pid, tid, exe, name, (int(fields[11]) + int(fields[12])) / tick


class JvmCpu:
    """CPU seconds of the JVMs under `/proc` while it runs, by thread kind: the last value seen
    of each thread, sampled every 0.25 s (a thread that ends between samples loses its last
    quarter second)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[str, float]] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> JvmCpu:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()

    def _sample(self) -> None:
        while not self.done.wait(0.25):
            for pid, tid, _, name, cpu in thread_times(lambda exe: exe.endswith("/java")):
                self.seen[(pid, tid)] = (name, cpu)

    def by_kind(self) -> dict[str, float]:
        """CPU seconds for each of `KINDS` (0 for a kind no thread had)."""
        kinds = dict.fromkeys(KINDS, 0.0)
        for name, cpu in self.seen.values():
            kind = next((k for prefix, k in THREAD_KINDS if name.startswith(prefix)), None)
            kinds[kind or OTHER_THREADS] += cpu
            kinds[ALL_THREADS] += cpu
        return kinds


def jobs_of(event_log: Path) -> dict[int, tuple[float, float, str]]:
    """{job id: (submitted, completed, call site)}, seconds, from one application's event log."""
    jobs: dict[int, list] = {}
    with open(event_log) as handle:
        for line in handle:
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerJobStart":
                stages = [stage["Stage Name"] for stage in event["Stage Infos"]]
                site = event.get("Properties", {}).get("callSite.short") or "".join(stages[-1:])
                jobs[event["Job ID"]] = [event["Submission Time"] / 1000, 0.0, site]
            elif kind == "SparkListenerJobEnd" and event["Job ID"] in jobs:
                jobs[event["Job ID"]][1] = event["Completion Time"] / 1000
    return {job: (start, end, site) for job, (start, end, site) in jobs.items() if end}


def featurizing_tail(jobs: dict[int, tuple[float, float, str]]) -> dict[str, float]:
    """The featurizing stage (the run's longest job), the audit's jobs that follow it (those of
    the same call: the aggregate collected with the rows), the wait from its end to the
    publish's start, and the publish: the next job, when it is a write. When the featurizing
    tasks write the table's files themselves, no Spark job publishes them: 0 for both."""
    longest = max(jobs, key=lambda job: jobs[job][1] - jobs[job][0])
    after = [job for job in sorted(jobs) if job > longest]
    audit = list(itertools.takewhile(lambda job: jobs[job][2] == jobs[longest][2], after))
    rest = after[len(audit) :]
    publish = rest[0] if rest and jobs[rest[0]][2].startswith("save at") else None
    return {
        "featurizing job": jobs[longest][1] - jobs[longest][0],
        "audit jobs": sum(jobs[job][1] - jobs[job][0] for job in audit),
        "featurizing end to publish": jobs[publish][0] - jobs[longest][1] if publish else 0.0,
        "publish job": jobs[publish][1] - jobs[publish][0] if publish else 0.0,
    }


def one_run(checkout: Path, images: Path, workdir: Path) -> dict[str, float]:
    events = workdir / "events"
    events.mkdir(parents=True)
    command = [sys.executable, "-c", LAUNCH, str(events), "run", "--images", str(images),
               "--output", str(workdir / "out"), "--weights", str(WEIGHTS),
               "--no-classifier"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout), "DAGSTER_HOME": str(workdir / "home"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}  # fmt: skip
    started = time.perf_counter()
    with JvmCpu() as jvm:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"fruits run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    # The JVM renames its log from `.inprogress` as it exits, after the driver has.
    for _ in range(100):
        logs = [p for p in events.iterdir() if not p.name.endswith(".inprogress")]
        if logs:
            break
        time.sleep(0.1)
    else:
        logs = list(events.iterdir())
    figures = featurizing_tail(jobs_of(logs[0]))
    figures["large-task warnings"] = (done.stdout + done.stderr).count(LARGE_TASK_WARNING)
    return {"wall": wall, **figures, **jvm.by_kind()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout, run alike")
    parser.add_argument("--sample", action="store_true", help="the 8,460-image sample")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders")
    args = parser.parse_args()
    images = DATA if args.sample else TEST
    print(f"images: {images}")
    print("machine:", json.dumps(describe()))
    checkouts = {"this checkout": HERE.parent}
    if args.against:
        checkouts["--against"] = args.against.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    work = Path(tempfile.mkdtemp(prefix="spark_jobs_"))
    from fruits_assets.settings import FruitsSettings

    fill_model_cache(FruitsSettings.from_env().cache_dir)  # the one-off conversion, untimed
    for rep in range(args.reps):
        order = list(checkouts.items())
        if rep % 2:
            order.reverse()
        for name, checkout in order:
            figures = one_run(checkout, images, work / f"{rep}-{name.replace(' ', '_')}")
            results[name].append(figures)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
            print(f"rep {rep + 1} {name:14} {shown}", flush=True)
    print(f"\n| seconds, medians of {args.reps} | " + " | ".join(checkouts) + " |")
    print("| --- |" + " ---: |" * len(checkouts))
    for key in results["this checkout"][0]:
        medians = [statistics.median(r[key] for r in results[name]) for name in checkouts]
        print(f"| {key} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    if args.keep:
        print(f"\nevent logs under {work}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
