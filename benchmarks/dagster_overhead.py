"""Dagster's own cost of a run over many fruit classes: the floor under every `fruits run`.

    .venv/bin/python benchmarks/dagster_overhead.py --classes 5 141 --reps 3

Runs, in a fresh process per run and a fresh SQLite Dagster home (what `fruits run` uses), a
graph shaped like the pipeline's: three per-class assets (single-run backfill over a range of
`fruit_class` partitions, each class with its own metadata table, one or two checks) and three
whole-table assets with their checks, but with bodies that do nothing. What remains is what
Dagster does for any run of that shape: create the run (one "planned" event per asset and
class), give each class its metadata as the pipeline's steps do (`adding_per_class`: Dagster's
`add_asset_metadata`, which checks each class against the instance's dynamic partitions, read
once per step by the event log `fruits` sets up, once per class with `--unbatched`) and store one
materialization event per asset and class.
`--no-class-metadata` runs the same without per-class metadata, to separate that part.
Runs execute as `fruits run` executes them, with Dagster's SQLite databases kept open
(`fruits_assets.dagster_sqlite`); `--plain-sqlite` runs them without.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from end_to_end import step_spans  # noqa: E402
from machine import describe  # noqa: E402

from fruits_assets import dagster_sqlite, partitions  # noqa: E402
from fruits_assets.assets.publishing import adding_per_class  # noqa: E402
from fruits_assets.cli import INSTANCE_CONFIG, instance_config  # noqa: E402
from fruits_assets.runner import ALL_CLASSES, PER_CLASS, RUN_CONFIG  # noqa: E402
from fruits_assets.storage import layout  # noqa: E402

EMPTY_TABLE = dg.MetadataValue.md("| path | reason |\n| --- | --- |")
WHOLE = tuple(name for name in ALL_CLASSES if name != layout.FRUIT_CLASSIFIER)
# The instance `fruits` sets up, with Dagster's own event log instead of the batched one.
UNBATCHED_CONFIG = INSTANCE_CONFIG.split("event_log_storage:")[0]
CHECKS = {"raw_images": 0, "labeled_images": 1, "mobilenet_features": 2, "pca_model": 2,
          "pca_features_parquet": 3, "features_csv": 3}  # fmt: skip


def one_run(classes: int, class_metadata: bool, kept_open: bool = True) -> dict[str, float]:
    """Materialize the empty graph once over `classes` classes in this process (the Dagster
    home is $DAGSTER_HOME); seconds per part, from the run's own events."""

    def check_specs(name: str) -> list[dg.AssetCheckSpec]:
        return [dg.AssetCheckSpec(f"check_{i}", asset=name) for i in range(CHECKS[name])]

    def results(name: str) -> list[dg.AssetCheckResult]:
        return [dg.AssetCheckResult(check_name=f"check_{i}", passed=True, metadata={"n": 1})
                for i in range(CHECKS[name])]  # fmt: skip

    def per_class(name: str, upstream: list) -> dg.AssetsDefinition:
        @dg.asset(name=name, partitions_def=partitions.fruit_class_partitions,
                  backfill_policy=partitions.ONE_RUN_FOR_ALL_CLASSES, deps=upstream,
                  check_specs=check_specs(name))  # fmt: skip
        def body(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            if class_metadata:
                values = {"num_images": 15, "num_rejected": 0, "rejected_images": EMPTY_TABLE}
                with adding_per_class(context, dict.fromkeys(context.partition_keys, values)):
                    pass  # the pipeline's steps publish their tables meanwhile
            return dg.MaterializeResult(metadata={"classes_in_run": 1},
                                        check_results=results(name))  # fmt: skip

        return body

    def whole(name: str, upstream: list) -> dg.AssetsDefinition:
        @dg.asset(name=name, deps=upstream, check_specs=check_specs(name))
        def body() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"num_rows": 1}, check_results=results(name))

        return body

    assets: list[dg.AssetsDefinition] = []
    for name in PER_CLASS:
        assets.append(per_class(name, assets[-1:]))
    for name in WHOLE:
        assets.append(whole(name, assets[-1:]))
    instance = dg.DagsterInstance.get()
    keys = [f"Class {i:04d}" for i in range(classes)]
    partitions.sync(instance, keys)
    job = dg.Definitions(
        assets=assets, jobs=[dg.define_asset_job("all", selection="*")]
    ).resolve_job_def("all")
    started = time.time()
    with dagster_sqlite.kept_open() if kept_open else contextlib.nullcontext():
        result = job.execute_in_process(
            instance=instance,
            tags=partitions.range_tags(keys[0], keys[-1]),
            run_config=RUN_CONFIG,
        )
    wall = time.time() - started
    assert result.success
    planned = [
        record.timestamp
        for record in instance.all_logs(result.run_id)
        if record.dagster_event and record.dagster_event.event_type_value.endswith("_PLANNED")
    ]
    parts = {"run": wall, "planned events": max(planned) - started}
    # Steps timed as `end_to_end.py` times a real run's: from STEP_START to STEP_SUCCESS.
    home = Path(os.environ["DAGSTER_HOME"])
    parts.update({step: end - start for step, [(start, end)] in step_spans(home).items()})
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 141])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-class-metadata", action="store_true")
    parser.add_argument("--plain-sqlite", action="store_true", help="without kept_open()")
    parser.add_argument(
        "--unbatched", action="store_true", help="Dagster's own SQLite event log, event by event"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child, not args.no_class_metadata, not args.plain_sqlite)))
        return
    print("machine:", json.dumps(describe()))
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.classes}
    for rep in range(args.reps):
        for n in args.classes:
            with tempfile.TemporaryDirectory(prefix="dagster_overhead_") as home:
                config = UNBATCHED_CONFIG if args.unbatched else instance_config(home)
                Path(home, "dagster.yaml").write_text(config)
                command = [sys.executable, __file__, "--child", str(n)]
                command += ["--no-class-metadata"] * args.no_class_metadata
                command += ["--plain-sqlite"] * args.plain_sqlite
                env = {**os.environ, "DAGSTER_HOME": home}
                out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
                parts = json.loads(out.stdout.strip().splitlines()[-1])
            runs[n].append(parts)
            print(f"rep {rep + 1} classes {n:4d}: run {parts['run']:.2f} s", flush=True)
    names = ["run", "planned events", *PER_CLASS, *WHOLE]
    print("\n| part (median s) | " + " | ".join(f"{n} classes" for n in args.classes) + " |")
    print("| --- |" + " ---: |" * len(args.classes))
    for name in names:
        values = [statistics.median(r.get(name, 0.0) for r in runs[n]) for n in args.classes]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
