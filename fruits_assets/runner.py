"""Materializing the graph: partitions synced to the input root, runs per class range, outcome.

`fruits run` and the tests both go through `materialize`; the UI, sensors and backfills launch
runs of the same definitions through the Dagster instance.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from fruits_assets import dagster_sqlite, failpoints, partitions, preflight, runs
from fruits_assets.assets.checks import SUMMARY, a_few
from fruits_assets.definitions import ALL_ASSETS_JOB, build_definitions
from fruits_assets.settings import FruitsSettings
from fruits_assets.storage import datasets, discovery, layout, lock

PER_CLASS = (layout.RAW_IMAGES, layout.LABELED_IMAGES, layout.MOBILENET_FEATURES)
ALL_CLASSES = (
    layout.PCA_MODEL,
    layout.PCA_FEATURES_PARQUET,
    layout.FEATURES_CSV,
    layout.FRUIT_CLASSIFIER,
)


class UsageError(ValueError):
    """Arguments or settings that can't make a run (exit code 2, no run started)."""


OutputBusy = lock.OutputBusy  # another live run writes the output root (no run started)


@dataclass
class RunOutcome:
    """What the runs of one materialization produced, for the summary and the exit code."""

    ok: bool = True
    # asset -> its metadata; a per-class asset's numbers are summed over its classes and runs
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    checks: dict[tuple[str, str], bool] = field(default_factory=dict)  # (asset, check) -> passed
    partitions: dict[str, set[str]] = field(default_factory=dict)  # asset -> classes materialized

    def absorb(self, result: dg.ExecuteInProcessResult | Any) -> None:
        """Fold in one run's result (in-process or `execute_job`)."""
        self.ok &= result.success
        self.run_ids.append(result.run_id)
        summed: dict[str, dict[str, Any]] = {}
        for event in result.get_asset_materialization_events():
            materialization = event.materialization
            asset = materialization.asset_key.to_user_string()
            values = {k: v.value for k, v in materialization.metadata.items()}
            if materialization.partition is None:
                self.metadata[asset] = values
                continue
            self.partitions.setdefault(asset, set()).add(materialization.partition)
            # Per-class counts (`num_*`, see assets.metadata) add up; run-wide values are shared.
            into = summed.setdefault(asset, {})
            for key, value in values.items():
                into[key] = into.get(key, 0) + value if _per_class_count(key) else value
        for asset, values in summed.items():
            earlier = self.metadata.get(asset)
            self.metadata[asset] = values if earlier is None else _over_runs(earlier, values)
        for event in result.get_step_failure_events():
            self.failures.append(f"step {event.step_key} failed: {_cause(event)}")
        for evaluation in result.get_asset_check_evaluations():
            asset = evaluation.asset_key.to_user_string()
            self.checks[(asset, evaluation.check_name)] = evaluation.passed
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                self.ok = False
                details = {k: v.value for k, v in evaluation.metadata.items()}
                step, said = f"step {asset} failed: ", f"check {evaluation.check_name} failed: "
                if SUMMARY in details and any(
                    failure.startswith(step) and said in failure for failure in self.failures
                ):
                    continue  # its step's error leads with its cause already
                # Its one-line cause when it has one; the metadata's lists can be long.
                summary = details.pop(SUMMARY, None) or {
                    k: f"{len(v)} items: {a_few(v)}" if isinstance(v, list) and len(v) > 5
                    else v
                    for k, v in details.items()
                }  # fmt: skip
                self.failures.append(f"check {evaluation.check_name} on {asset} FAILED: {summary}")


# Run-wide values of a per-class asset that add up over runs of disjoint classes.
RUN_TOTALS = ("classes_in_run", "featurize_seconds")


def _per_class_count(key: str) -> bool:
    """A per-class asset's count of one class (`num_*`, see assets.metadata): counts add up."""
    return key.startswith("num_")


def _over_runs(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """A per-class asset's metadata over two runs of different classes (`fruits run --classes`
    of classes that are not neighbours): counts and run totals add up, the featurizing speed is
    that of both runs, a warning of either is kept; other values are the later run's."""
    merged = {**earlier, **later}
    for key, value in later.items():
        if key in earlier and (_per_class_count(key) or key in RUN_TOTALS):
            merged[key] = earlier[key] + value
    if merged.get("featurize_seconds") and "num_rows" in merged:
        merged["images_per_second"] = round(merged["num_rows"] / merged["featurize_seconds"], 1)
    warnings = [earlier.get("WARNING"), later.get("WARNING")]
    kept = list(dict.fromkeys(w for w in warnings if w))
    if kept:
        merged["WARNING"] = "; ".join(kept)
    return merged


def _cause(failure_event: Any) -> str:
    """The user code's own error under Dagster's wrappers; a Failure's description as it is."""
    error = failure_event.step_failure_data.error
    while error is not None and error.cls_name.startswith("Dagster") and error.cause is not None:
        error = error.cause
    if error is None:
        return "unknown error"
    message = error.message.strip()
    head, _, rest = message.partition(": ")
    return rest if error.cls_name == "Failure" and head.endswith("Failure") else message


@dataclass(frozen=True)
class Plan:
    """The classes to run and the class ranges (in partition order) the runs cover."""

    classes: list[str]  # every class folder of the input root
    selected: list[str]
    ranges: list[tuple[str, str]]
    added: list[str]
    deleted: list[str]
    image_bytes: int = 0  # of the selected classes' images
    image_count: int = 0


def plan(
    settings: FruitsSettings,
    instance: dg.DagsterInstance,
    classes: Iterable[str] | None = None,
    listing: discovery.Scan | None = None,
) -> Plan:
    """List the input root once (unless given its `listing`, just made), sync the partitions to
    its class folders, group the selection."""
    try:
        scan = listing or discovery.scan(settings.images)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UsageError(str(exc)) from exc
    if not scan.classes:
        raise UsageError(f"no class folder with .jpg/.jpeg/.png images under {settings.images}")
    selected = sorted(set(classes or scan.classes))
    unknown = sorted(set(selected) - set(scan.classes))
    if unknown:
        raise UsageError(
            f"classes {unknown} are not folders under {settings.images}; "
            f"known: {', '.join(scan.classes)}"
        )
    discovery.remember(scan)
    added, deleted = partitions.sync(instance, scan.classes)
    ranges = partitions.contiguous_ranges(partitions.registered_classes(instance), set(selected))
    images = scan.images_of(set(selected))
    return Plan(
        scan.classes, selected, ranges, added, deleted,
        image_bytes=sum(i.size for i in images), image_count=len(images),
    )  # fmt: skip


def materialize(
    settings: FruitsSettings,
    instance: dg.DagsterInstance,
    classes: Iterable[str] | None = None,
    downstream_only: bool = False,
    with_classifier: bool = True,
    resource_overrides: dict[str, Any] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    listing: discovery.Scan | None = None,
    checked: bool = False,
    spark_ready: threading.Event | None = None,
) -> RunOutcome:
    """Materialize the selected classes' per-class assets, then every all-classes asset.

    One run when the classes are neighbours in the partition order; otherwise one run per range
    of neighbours, then one run of the all-classes assets. The output root's lock is held for
    all of them (another writer: OutputBusy at once), and the weights, the output root and its
    free space are checked before any of them starts.

    What `fruits run` did before: the input root's `listing`, the output root's room and the
    weights `checked`, local Spark started (`spark_ready`, set once it is up).
    """
    try:
        preflight.check_output_root(settings.output)  # a folder we can write: then lock it
    except preflight.PreflightError as exc:
        raise UsageError(str(exc)) from exc
    with (
        lock.hold(settings.output, lock.holder(command="fruits run")),
        dagster_sqlite.kept_open(instance.root_directory),
    ):
        datasets.clean_staging(settings.output)
        return _materialize(
            settings, instance, classes, downstream_only, with_classifier, resource_overrides,
            on_plan, listing, checked, spark_ready,
        )  # fmt: skip


def _materialize(
    settings: FruitsSettings,
    instance: dg.DagsterInstance,
    classes: Iterable[str] | None,
    downstream_only: bool,
    with_classifier: bool,
    resource_overrides: dict[str, Any] | None,
    on_plan: Callable[[Plan], None] | None,
    listing: discovery.Scan | None,
    checked: bool,
    spark_ready: threading.Event | None,
) -> RunOutcome:
    from fruits_assets.resources.spark import local_spark_config, start_in_background

    run_plan = plan(settings, instance, classes, listing)
    try:
        if not checked:
            preflight.check_run(
                settings, run_plan.image_bytes, run_plan.image_count, downstream_only
            )
    except preflight.PreflightError as exc:
        raise UsageError(str(exc)) from exc
    if on_plan is not None:
        on_plan(run_plan)
    if spark_ready is None and settings.env == "local" and not resource_overrides:
        # Checks passed: the JVM boots (seconds) while the definitions and the run are set up.
        spark_ready = start_in_background(
            local_spark_config(settings, s3=settings.uses_s3, spark_ml=with_classifier)
        )
    try:
        defs = build_definitions(settings, **(resource_overrides or {}))
    except ValueError as exc:  # e.g. FRUITS_ENV=emr without a cluster id
        raise UsageError(str(exc)) from exc
    per_class = [dg.AssetKey(name) for name in PER_CLASS]
    downstream = [
        dg.AssetKey(name)
        for name in ALL_CLASSES
        if with_classifier or name != layout.FRUIT_CLASSIFIER
    ]
    outcome = RunOutcome()
    if spark_ready is not None:
        spark_ready.wait()

    def execute(selection: list[dg.AssetKey], keys: tuple[str, str] | None) -> None:
        # Where the run executes: a run left STARTED by a killed process is found by these.
        tags = {**runs.this_process_tags(), **(partitions.range_tags(*keys) if keys else {})}
        _execute(settings, defs, instance, selection, tags, outcome)

    if downstream_only:  # refit PCA, exports and classifier from the stored features
        execute(downstream, None)
    elif len(run_plan.ranges) == 1:
        execute(per_class + downstream, run_plan.ranges[0])
    else:
        for keys in run_plan.ranges:
            execute(per_class, keys)
            if not outcome.ok:
                break
        if outcome.ok:
            execute(downstream, None)
    return outcome


RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def rehearse(settings: FruitsSettings, images_per_class: int = 8, reruns: int = 2) -> bool:
    """Run the whole graph once on a few generated photos, in a scratch folder and instance, in
    this process's Spark JVM, then rerun one class after a new photo `reruns` times, as the UI
    launches such runs: what `fruits ui` does so that its JVM has loaded and compiled the code of
    every asset (Delta, Spark ML, CSV, Arrow), and of a rerun's own paths (a partial overwrite
    of each per-class table, the PCA's kept moments, a refit from the published classifier),
    before a user's first run. Quiet; whether every step succeeded."""
    import shutil
    import tempfile

    from fruits_assets.ml import demo_data

    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    with (
        tempfile.TemporaryDirectory(prefix="fruits-rehearsal-") as scratch,
        failpoints.suspended(),
    ):
        images = demo_data.generate(os.path.join(scratch, "images"), images_per_class)
        # float32 whatever the setting: the rehearsal warms code paths, and an int8 model is
        # calibrated on a user's own photos, once per output root.
        rehearsal = settings.model_copy(
            update={
                "images": str(images),
                "output": os.path.join(scratch, "output"),
                "precision": "float32",
            }
        )
        defs = build_definitions(rehearsal)
        job = defs.resolve_job_def(ALL_ASSETS_JOB)
        with dg.DagsterInstance.ephemeral() as instance:
            classes = discovery.scan(rehearsal.images).classes
            partitions.sync(instance, classes)
            result = job.execute_in_process(
                instance=instance,
                tags=partitions.range_tags(classes[0], classes[-1]),
                raise_on_error=False,
                run_config=quiet,
            )
            for round_ in range(reruns):
                if not result.success:
                    break
                # A photo the class did not have (another seed), as a user adds one.
                new = demo_data.generate(os.path.join(scratch, f"new-{round_}"), 1, seed=round_ + 1)
                shutil.move(
                    str(new / classes[0] / "0_100.jpg"),
                    str(images / classes[0] / f"new-{round_}_100.jpg"),
                )
                result = job.execute_in_process(
                    instance=instance,
                    tags={partitions.PARTITION_TAG: classes[0]},
                    raise_on_error=False,
                    run_config=quiet,
                )
        return result.success


def _execute(
    settings: FruitsSettings,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: list[dg.AssetKey],
    tags: dict[str, str],
    outcome: RunOutcome,
) -> None:
    if settings.env == "emr":
        from fruits_assets.emr.job import reconstructable_job

        # The step launcher ships a job it can re-create remotely: a reconstructable one, which
        # builds its definitions from the environment's settings; these settings, then.
        os.environ.update(settings.to_env())
        with dg.execute_job(
            reconstructable_job(),
            instance,
            run_config=RUN_CONFIG,
            tags=tags,
            asset_selection=selection,
        ) as result:
            outcome.absorb(result)
        return
    result = defs.resolve_job_def(ALL_ASSETS_JOB).execute_in_process(
        instance=instance,
        asset_selection=selection,
        tags=tags,
        raise_on_error=False,
        run_config=RUN_CONFIG,
    )
    outcome.absorb(result)
