"""End to end: `fruits run` vs the seed-style script doing the same work, and memory vs size.

    .venv/bin/python benchmarks/end_to_end.py compare --reps 3
    .venv/bin/python benchmarks/end_to_end.py compare --reps 3 --against ../old/.venv/bin/fruits
    .venv/bin/python benchmarks/end_to_end.py compare --reps 3 --against ../old/.venv/bin/fruits \
        --no-seed --no-cold
    .venv/bin/python benchmarks/end_to_end.py memory --sizes 1000 4000 8000

`compare` times, back to back in fresh processes, `fruits run --no-classifier` on the Fruits-360
Test split (`--sample`: Training and Test, the 8,460-image sample; the six pipeline assets,
Dagster and the checks included; warm model cache, and once per repetition with an empty one)
and the seed notebook's script doing the same work (featurize, PCA with the same k, Parquet);
`--against` adds another `fruits` (e.g. an earlier checkout's) to the same interleaved
repetitions (`--no-seed --no-cold`: only the two, in alternating order, for a quick
before/after); `--against-env` runs it (or, alone, this `fruits`) with other settings, e.g.
`--against-env FRUITS_CLASS_ARCHIVE=false` for the JVM's class archive. Every run finds this
machine's class archive (`fruits jvm-archive`) in its model cache. For each of our runs it
prints where the seconds went: start-up (process start to the first step), each asset's step,
and the end (last step to process exit), from the run's own Dagster events.
`memory` runs `fruits run` on growing subsets of Training+Test and reports the peak RSS of the whole
process tree (driver, JVM, Python workers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import PeakMemory, describe  # noqa: E402

SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", HERE.parent.parent / "shared"))
DATA = SHARED / "data" / "fruits360"
WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_dequant.h5"
FRUITS = str(Path(sys.executable).with_name("fruits"))
TEST = DATA / "Test"  # 2,115 images
SAMPLE = DATA  # Training and Test: the 8,460-image sample, one class folder per split
STEPS = ("raw_images", "labeled_images", "mobilenet_features", "pca_model",
         "pca_features_parquet", "features_csv", "fruit_classifier")  # fmt: skip


def timed(command: list[str], env: dict | None = None) -> tuple[float, PeakMemory, str, float]:
    """(wall seconds, the peak memory sampler, stdout, start time) of one fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    wall_start = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    with PeakMemory(process.pid) as memory:
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return time.perf_counter() - started, memory, stdout, wall_start


def run_timings(
    home: Path, since: float = 0.0
) -> tuple[dict[str, list[tuple[float, float]]], list[float]]:
    """From one read of the events of each run in the Dagster home `home` created at or after
    `since` (epoch seconds): (start, end) of each step in each run (a `fruits run` of classes
    that are not neighbours is several Dagster runs), and the seconds each queued run waited
    until the daemon launched it (runs the UI launches; `fruits run` launches its own)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    spans: dict[str, list[tuple[float, float]]] = {}
    waits: list[float] = []
    for run in instance.get_run_records():
        if run.create_timestamp.timestamp() < since:
            continue
        times: dict[str, list[float]] = {}
        queue: dict[str, float] = {}
        for record in instance.all_logs(run.dagster_run.run_id):
            event = record.dagster_event
            if event is None:
                continue
            kind = event.event_type_value
            if kind in ("PIPELINE_ENQUEUED", "PIPELINE_STARTING"):
                queue.setdefault(kind, record.timestamp)
            elif event.step_key and kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
                times.setdefault(event.step_key, []).append(record.timestamp)
        for step, stamps in times.items():
            spans.setdefault(step, []).append((min(stamps), max(stamps)))
        if len(queue) == 2:
            waits.append(queue["PIPELINE_STARTING"] - queue["PIPELINE_ENQUEUED"])
    return spans, waits


def step_spans(home: Path, since: float = 0.0) -> dict[str, list[tuple[float, float]]]:
    """(start, end) of each step in each run created at or after `since` (`run_timings`)."""
    return run_timings(home, since)[0]


def step_budget(home: Path, started: float, wall: float) -> dict[str, float]:
    """Seconds per part of a `fruits run`, from the Dagster events of its runs in `home`
    (`queued`, where a run waited in the run queue, is part of `start-up`)."""
    spans, waits = run_timings(home, since=started)
    budget = {step: sum(end - start for start, end in runs) for step, runs in spans.items()}
    every = [span for runs in spans.values() for span in runs]
    if every:
        budget["start-up"] = min(start for start, _ in every) - started
        budget["end"] = started + wall - max(end for _, end in every)
    if waits:
        budget["queued"] = sum(waits)
    return budget


def fruits_run(
    images: Path, workdir: Path, *extra: str, fruits: str = FRUITS, env: dict | None = None
) -> tuple[float, PeakMemory, int, dict[str, float]]:
    output, home = workdir / "out", workdir / "home"
    command = [fruits, "run", "--images", str(images), "--output", str(output),
               "--weights", str(WEIGHTS), *extra]  # fmt: skip
    wall, peak, stdout, started = timed(command, env={"DAGSTER_HOME": str(home), **(env or {})})
    k = int(stdout.split("PCA k:", 1)[1].split()[0])
    return wall, peak, k, step_budget(home, started, wall)


def seed_run(images: Path, workdir: Path, k: int) -> tuple[float, PeakMemory]:
    script = str(HERE / "seed_style.py")
    output = str(workdir / "seed_out")
    wall, peak, _, _ = timed([sys.executable, script, str(images), str(WEIGHTS), str(k), output])
    return wall, peak


def mib(memory: PeakMemory) -> str:
    kinds = {k: v / 2**20 for k, v in memory.peak_by_kind.items()}
    java, python, other = (kinds.get(k, 0) for k in ("java", "python", "other"))
    total = memory.peak / 2**20
    return f"{total:6.0f} MiB (JVM {java:.0f}, python* {python:.0f}, other {other:.0f})"


def fill_model_cache(cache: str) -> None:
    """Convert the weights to the TFLite model once into `cache`, untimed, as `fruits run` does
    (`FeaturizerSettings().batch_size`): every "warm model cache" run then finds it."""
    code = (
        "from fruits_assets import preflight\n"
        "from fruits_assets.resources.ml_settings import FeaturizerSettings\n"
        f"preflight.check_weights({str(WEIGHTS)!r}, FeaturizerSettings().batch_size)\n"
    )
    env = {**os.environ, "FRUITS_CACHE_DIR": cache, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def machine_cache(cache: str) -> str:
    """`cache` with this machine's class archive (`fruits jvm-archive`, part of its set-up like
    the jars) linked in, so that a run with a fresh model cache still finds it."""
    from fruits_assets.resources.class_archive import ARCHIVE_DIR
    from fruits_assets.settings import FruitsSettings

    archives = Path(FruitsSettings.from_env().cache_dir) / ARCHIVE_DIR
    if archives.is_dir() and not (Path(cache) / ARCHIVE_DIR).exists():
        (Path(cache) / ARCHIVE_DIR).symlink_to(archives, target_is_directory=True)
    return cache


def compare(
    reps: int,
    against: str | None,
    seed: bool = True,
    cold: bool = True,
    images: Path = TEST,
    against_env: dict[str, str] | None = None,
) -> None:
    """`fruits run --no-classifier` (and `against`'s) vs the seed-style script; without `seed`
    and `cold`, only the `fruits` runs, in alternating order, against the first one."""
    print(f"images: {images}")
    print("machine:", json.dumps(describe()))
    walls: dict[str, list[float]] = {"fruits run": []}
    if cold:
        walls["fruits run, empty model cache"] = []
    if seed:
        walls["seed-style"] = []
    if against or against_env:
        walls["--against"] = []
    budgets: dict[str, list[dict[str, float]]] = {"fruits run": [], "--against": []}
    cache = machine_cache(tempfile.mkdtemp(prefix="e2e_cache_"))
    fill_model_cache(cache)
    for rep in range(reps):
        with tempfile.TemporaryDirectory(prefix="e2e_") as tmp:
            runs = [("fruits run", FRUITS, cache)]
            if cold:
                runs.append(("fruits run, empty model cache", FRUITS, None))
            if against or against_env:
                runs.append(("--against", against or FRUITS, cache))
            if not seed and rep % 2:
                runs.reverse()
            for name, fruits, run_cache in runs:
                workdir = Path(tmp) / name.replace(" ", "_").replace(",", "")
                model_cache = run_cache or machine_cache(tempfile.mkdtemp(prefix="e2e_cold_"))
                env = {"FRUITS_CACHE_DIR": model_cache}
                if name == "--against":
                    env.update(against_env or {})
                wall, peak, k, budget = fruits_run(
                    images, workdir, "--no-classifier", fruits=fruits, env=env
                )
                walls[name].append(wall)
                if name in budgets:
                    budgets[name].append(budget)
                print(f"rep {rep + 1} {name:30} {wall:7.1f} s  peak {mib(peak)}  k={k}",
                      flush=True)  # fmt: skip
            if seed:
                wall, peak = seed_run(images, Path(tmp), k)
                walls["seed-style"].append(wall)
                print(f"rep {rep + 1} {'seed-style':30} {wall:7.1f} s  peak {mib(peak)}",
                      flush=True)  # fmt: skip
    shutil.rmtree(cache, ignore_errors=True)
    reference = "seed-style" if seed else "fruits run"
    base = statistics.median(walls[reference])
    print(f"\n| run | median s | of the {reference} wall time |")
    print("| --- | ---: | ---: |")
    for name, values in walls.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / base:.0%} |")
    for name, runs in budgets.items():
        if runs:
            print_budget(name, runs)


def print_budget(name: str, budgets: list[dict[str, float]]) -> None:
    """Where the seconds of one kind of run went, medians over its repetitions."""
    parts = ["start-up", *[s for s in STEPS if any(s in b for b in budgets)], "end"]
    total = statistics.median(sum(b.values()) for b in budgets)
    print(f"\nwhere the seconds of `{name}` go (medians over repetitions):")
    print("| part | s | share |")
    print("| --- | ---: | ---: |")
    for part in parts:
        median = statistics.median(b.get(part, 0.0) for b in budgets)
        print(f"| {part} | {median:.1f} | {median / total:.0%} |")
    other = [p for p in parts if p not in ("start-up", "mobilenet_features", "end")]
    rest = statistics.median(sum(b.get(p, 0.0) for p in other) for b in budgets)
    print(f"\nassets other than mobilenet_features: {rest:.1f} s, {rest / total:.0%} of the run")


GC_LINE = re.compile(r"^\[(?P<time>[^\]]+)\].* \d+M->(?P<after>\d+)M\(\d+M\)")


def heap_after_gc(gc_dir: Path) -> list[tuple[float, int]]:
    """(time, MiB of JVM heap still in use right after a collection) for every collection the
    JVMs logged: an upper bound of the live data then, whatever the heap's own size."""
    points = []
    for log in gc_dir.glob("gc-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            match = GC_LINE.match(line)
            if match:
                when = datetime.strptime(match["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                points.append((when, int(match["after"])))
    return points


def memory(sizes: list[int], against: str | None) -> None:
    files = sorted(DATA.glob("*/*/*.jpg"))
    print("machine:", json.dumps(describe()))
    print(f"driver heap: {os.environ.get('FRUITS_DRIVER_MEMORY', '4g (default)')}")
    print("| fruits | images | wall s | images/s end to end | peak RSS MiB: whole tree | JVM "
          "| JVM heap after GC | Spark Python workers | `fruits` driver |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs = [("this", FRUITS)] + ([("against", against)] if against else [])
    by_step: dict[tuple[str, int], dict[str, tuple[float, float, float]]] = {}
    for size in sizes:
        step = len(files) / size
        chosen = [files[int(i * step)] for i in range(min(size, len(files)))]
        for which, fruits in runs:
            with tempfile.TemporaryDirectory(prefix="mem_") as tmp:
                root, gc_dir = Path(tmp) / "images", Path(tmp) / "gc"
                gc_dir.mkdir()
                for file in chosen:  # keep split and class folders
                    target = root / file.parent.parent.name / file.parent.name / file.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(file, target)
                # Every JVM of the run logs its collections (the heap in use after each).
                env = {"JAVA_TOOL_OPTIONS": f"-Xlog:gc:file={gc_dir}/gc-%p.log:time"}
                wall, peak, _, _ = fruits_run(root, Path(tmp), fruits=fruits, env=env)
                spans = step_spans(Path(tmp) / "home")
                heap = heap_after_gc(gc_dir)
            by_step[(which, len(chosen))] = {
                name: (
                    max(peak.peak_between(*span, "java") for span in runs) / 2**20,
                    max((mib for t, mib in heap for a, b in runs if a <= t <= b), default=0),
                    max(peak.peak_between(*span, "other") for span in runs) / 2**20,
                )
                for name, runs in spans.items()
            }
            kinds = {k: v / 2**20 for k, v in peak.peak_by_kind.items()}
            print(f"| {which} | {len(chosen)} | {wall:.1f} | {len(chosen) / wall:.1f} "
                  f"| {peak.peak / 2**20:.0f} | {kinds.get('java', 0):.0f} "
                  f"| {max((mib for _, mib in heap), default=0)} "
                  f"| {kinds.get('python', 0):.0f} | {kinds.get('other', 0):.0f} |",
                  flush=True)  # fmt: skip
    print("\npeak MiB during each step: JVM RSS / JVM heap after GC / `fruits` driver RSS:")
    columns = list(by_step)
    print("| step | " + " | ".join(f"{w} {n}" for w, n in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name in STEPS:
        cells = [by_step[c].get(name) for c in columns]
        if any(cells):
            print(f"| {name} | " + " | ".join(
                " / ".join(f"{v:.0f}" if v else "-" for v in cell) if cell else "-"
                for cell in cells) + " |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    compare_parser = sub.add_parser("compare")
    compare_parser.add_argument("--reps", type=int, default=3)
    compare_parser.add_argument("--against", help="another `fruits` executable to time alike")
    compare_parser.add_argument(
        "--against-env",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the --against runs (without --against: this `fruits`), e.g. "
        "FRUITS_CLASS_ARCHIVE=false",
    )
    compare_parser.add_argument(
        "--no-seed", action="store_true", help="without the seed-style script (before/after)"
    )
    compare_parser.add_argument(
        "--no-cold", action="store_true", help="without the run with an empty model cache"
    )
    compare_parser.add_argument(
        "--sample", action="store_true", help="the 8,460-image sample instead of the Test split"
    )
    memory_parser = sub.add_parser("memory")
    memory_parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 8000])
    memory_parser.add_argument("--against", help="another `fruits` executable to measure alike")
    args = parser.parse_args()
    if args.mode == "compare":
        compare(args.reps, args.against, seed=not args.no_seed, cold=not args.no_cold,
                images=SAMPLE if args.sample else TEST,
                against_env=dict(item.split("=", 1) for item in args.against_env))  # fmt: skip
    else:
        memory(args.sizes, args.against)


if __name__ == "__main__":
    main()
