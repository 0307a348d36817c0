"""Dagster's own cost of a run over many fruit classes: the floor under every `fruits run`.

    .venv/bin/python benchmarks/dagster_overhead.py --classes 5 141 --reps 3

Runs, in a fresh process per run and a fresh SQLite Dagster home (what `fruits run` uses), a
graph shaped like the pipeline's: three per-class assets (single-run backfill over a range of
`fruit_class` partitions, each class with its own metadata table, one or two checks) and three
whole-table assets with their checks, but with bodies that do nothing. What remains is what
Dagster does for any run of that shape: create the run (one "planned" event per asset and
class), give each class its metadata (`add_asset_metadata`, which looks the dynamic partitions
up in the instance each time) and store one materialization event per asset and class.
`--no-class-metadata` runs the same without per-class metadata, to separate that part.
"""

import argparse
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
sys.path[:0] = [str(HERE)]

from machine import describe  # noqa: E402

EMPTY_TABLE = dg.MetadataValue.md("| path | reason |\n| --- | --- |")
PER_CLASS = ("raw_images", "labeled_images", "mobilenet_features")
WHOLE = ("pca_model", "pca_features_parquet", "features_csv")
CHECKS = {"raw_images": 0, "labeled_images": 1, "mobilenet_features": 2, "pca_model": 2,
          "pca_features_parquet": 3, "features_csv": 3}  # fmt: skip


def one_run(classes: int, class_metadata: bool) -> dict[str, float]:
    """Materialize the empty graph once over `classes` classes in this process (the Dagster
    home is $DAGSTER_HOME); seconds per part, from the run's own events."""
    partitions = dg.DynamicPartitionsDefinition(name="fruit_class")
    policy = dg.BackfillPolicy.single_run()

    def check_specs(name: str) -> list[dg.AssetCheckSpec]:
        return [dg.AssetCheckSpec(f"check_{i}", asset=name) for i in range(CHECKS[name])]

    def results(name: str) -> list[dg.AssetCheckResult]:
        return [dg.AssetCheckResult(check_name=f"check_{i}", passed=True, metadata={"n": 1})
                for i in range(CHECKS[name])]  # fmt: skip

    def per_class(name: str, upstream: list) -> dg.AssetsDefinition:
        @dg.asset(name=name, partitions_def=partitions, backfill_policy=policy, deps=upstream,
                  check_specs=check_specs(name))  # fmt: skip
        def body(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            if class_metadata:
                for label in context.partition_keys:
                    context.add_asset_metadata(
                        {"num_images": 15, "num_rejected": 0, "rejected_images": EMPTY_TABLE},
                        partition_key=label,
                    )
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
    instance.add_dynamic_partitions("fruit_class", keys)
    job = dg.Definitions(
        assets=assets, jobs=[dg.define_asset_job("all", selection="*")]
    ).resolve_job_def("all")
    started = time.time()
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },  # fmt: skip
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    wall = time.time() - started
    assert result.success
    stamps: dict[str, list[float]] = {}
    planned: list[float] = []
    for record in instance.all_logs(result.run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value.endswith("_PLANNED"):
            planned.append(record.timestamp)
        elif event.step_key:
            stamps.setdefault(event.step_key, []).append(record.timestamp)
    parts = {"run": wall, "planned events": max(planned) - started}
    parts.update({step: max(s) - min(s) for step, s in stamps.items()})
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 141])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-class-metadata", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child, not args.no_class_metadata)))
        return
    print("machine:", json.dumps(describe()))
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.classes}
    for rep in range(args.reps):
        for n in args.classes:
            with tempfile.TemporaryDirectory(prefix="dagster_overhead_") as home:
                Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
                command = [sys.executable, __file__, "--child", str(n)]
                if args.no_class_metadata:
                    command.append("--no-class-metadata")
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
