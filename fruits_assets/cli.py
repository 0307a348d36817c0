"""The `fruits` command: arguments and printing; the work is in `runner` and the assets."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from fruits_assets.quick_exit import exit_now
from fruits_assets.settings import FruitsSettings
from fruits_assets.storage import layout

if TYPE_CHECKING:
    from fruits_assets.storage.discovery import Scan

DEFAULT_DAGSTER_HOME = os.path.join(os.path.expanduser("~"), ".fruits_assets", "dagster_home")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ALL_ASSET_NAMES = [
    layout.RAW_IMAGES, layout.LABELED_IMAGES, layout.MOBILENET_FEATURES, layout.PCA_MODEL,
    layout.PCA_FEATURES_PARQUET, layout.FEATURES_CSV, layout.FRUIT_CLASSIFIER,
]  # fmt: skip


# The Dagster instance `fruits` creates. A run the UI launches waits in Dagster's queue until the
# daemon next looks at it: every second rather than Dagster's default five, a sizeable share of a
# one-class rerun that takes tens of seconds. Its process is one that has already imported Dagster
# and the pipeline's libraries (`fruits_assets.launcher`). Its event log stores a step's per-class
# events, a few hundred in a run over every class, in one transaction rather than one each
# (`fruits_assets.dagster_sqlite`). `instance_config` fills in the home's own folder.
INSTANCE_CONFIG = """\
telemetry:
  enabled: false
run_queue:
  dequeue_interval_seconds: 1
run_launcher:
  module: fruits_assets.launcher
  class: StandbyRunLauncher
event_log_storage:
  module: fruits_assets.dagster_sqlite
  class: BatchedSqliteEventLogStorage
  config:
    base_dir: {events}
"""
PREVIOUS_INSTANCE_CONFIGS = (
    "telemetry:\n  enabled: false\n",
    "telemetry:\n  enabled: false\nrun_queue:\n  dequeue_interval_seconds: 1\n",
    "telemetry:\n  enabled: false\nrun_queue:\n  dequeue_interval_seconds: 1\n"
    "run_launcher:\n  module: fruits_assets.launcher\n  class: StandbyRunLauncher\n",
)


def instance_config(home: str) -> str:
    """INSTANCE_CONFIG for the Dagster home `home`: its event log where Dagster's own would be
    (a YAML string: JSON's quoting is YAML's)."""
    events = os.path.join(os.path.abspath(home), "history", "runs", "")
    return INSTANCE_CONFIG.format(events=json.dumps(events, ensure_ascii=False))


def _written_by_fruits(config: str) -> bool:
    """Whether `config` is a dagster.yaml this command wrote, now or in an earlier version (for
    this home or, moved since, another: its event log in that home's own folder)."""
    events = '"[^"\n]*' + re.escape(os.path.join("history", "runs", "")) + '"'
    current = re.escape(INSTANCE_CONFIG).replace(re.escape("{events}"), events)
    return config in PREVIOUS_INSTANCE_CONFIGS or re.fullmatch(current, config) is not None


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _instance():  # a DagsterInstance, imported lazily
    """The Dagster instance of `$DAGSTER_HOME` (`INSTANCE_CONFIG` on first use); runs
    that a killed process left STARTED are marked FAILED first."""
    import dagster as dg

    from fruits_assets import runs

    os.environ.setdefault("DAGSTER_HOME", DEFAULT_DAGSTER_HOME)
    home = os.environ["DAGSTER_HOME"]
    os.makedirs(home, exist_ok=True)
    config = os.path.join(home, "dagster.yaml")
    # A user's own dagster.yaml is left as it is; the one this command wrote before is updated.
    wanted = instance_config(home)
    existing = _read(config) if os.path.exists(config) else None
    if existing is None or (existing != wanted and _written_by_fruits(existing)):
        # Written aside, then renamed: a Dagster process starting meanwhile reads either file.
        aside = f"{config}.{os.getpid()}"
        with open(aside, "w") as handle:
            handle.write(wanted)
        os.replace(aside, config)
    instance = dg.DagsterInstance.get()
    for run_id in runs.fail_dead_runs(instance):
        print(f"run {run_id} was left unfinished by a process that is gone: marked FAILED")
    return instance


def _settings(args: argparse.Namespace, reads_images: bool = True) -> FruitsSettings:
    """Command-line options over the environment and fruits.toml; demo data when no input root
    (for the commands that read images)."""
    from fruits_assets.ml import demo_data
    from fruits_assets.settings import DEMO_IMAGES

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = FruitsSettings.from_env(
        images=args.images,
        output=args.output,
        weights=getattr(args, "weights", None),
        precision=getattr(args, "precision", None),
        variance=getattr(args, "variance", None),
    )
    if settings.demo and reads_images:
        if not os.path.isdir(DEMO_IMAGES):
            demo_data.generate(DEMO_IMAGES)
        print(
            f"No --images given: DEMO MODE on {len(demo_data.DEMO_CLASSES)} classes of synthetic "
            f"100x100 fruit-like images in {DEMO_IMAGES}. Pass --images to use real photos."
        )
        # Only the demo may fall back to random weights, and only when no weights were asked for.
        if "weights" not in settings.model_fields_set:
            settings = settings.model_copy(update={"allow_random_fallback": True})
    return settings


def run(args: argparse.Namespace) -> int:
    """Materialize the whole graph (or some classes and everything downstream) in Dagster runs."""
    from fruits_assets import preflight
    from fruits_assets.storage import lock

    settings = _settings(args)
    try:
        preflight.check_output_root(settings.output)  # a folder we can write: then lock it
        # Held from before Spark starts: a run finding the output root busy starts nothing.
        with lock.hold(settings.output, lock.holder(command="fruits run")):
            return _run(args, settings)
    except preflight.PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except lock.OutputBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace, settings: FruitsSettings) -> int:
    started = _checked_and_spark_started(settings, args)
    from fruits_assets import runner

    instance = _instance()

    def say_plan(plan: runner.Plan) -> None:
        if plan.added or plan.deleted:
            print(
                f"partitions: {len(plan.added)} classes registered, "
                f"{len(plan.deleted)} stale ones removed"
            )
        if not started.checked:  # said before Spark started
            _say_materializing(settings, len(plan.selected), len(plan.classes))

    try:
        outcome = runner.materialize(
            settings,
            instance,
            classes=args.classes,
            downstream_only=args.downstream_only,
            with_classifier=not args.no_classifier,
            on_plan=say_plan,
            listing=started.listing,
            checked=started.checked,
            spark_ready=started.spark_ready,
        )
    except runner.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _print_summary(outcome, settings.output)
    return EXIT_OK if outcome.ok else EXIT_FAILED


class _Started(NamedTuple):
    """What `fruits run` did before handing the run to the runner."""

    listing: Scan | None  # the input root's listing (None: it could not be listed)
    checked: bool  # the output root's room and the weights passed their checks
    spark_ready: threading.Event | None  # set once local Spark is up (None: not started)


def _checked_and_spark_started(settings: FruitsSettings, args: argparse.Namespace) -> _Started:
    """The run's first checks, then local Spark's JVM started in the background before Dagster
    is imported, so that it boots (seconds of a fresh run) while the run is set up. Raises the
    failed check's PreflightError (the output root's room, the weights): nothing has started,
    and its cause is the first thing the user reads. An input root that cannot be listed, or
    lacks the classes asked for, starts nothing either: the runner reports it."""
    from fruits_assets import preflight
    from fruits_assets.storage import discovery

    try:
        listing = discovery.scan(settings.images)
    except (OSError, ValueError):
        return _Started(None, False, None)
    selected = set(args.classes or listing.classes)
    if not selected or not selected <= set(listing.classes):
        return _Started(listing, False, None)
    images = listing.images_of(selected)
    preflight.check_run(settings, sum(i.size for i in images), len(images), args.downstream_only)
    # Said before the JVM prints its own first lines.
    _say_materializing(settings, len(selected), len(listing.classes))
    if settings.env != "local":
        return _Started(listing, True, None)
    from fruits_assets.resources.spark import local_spark_config, start_in_background

    config = local_spark_config(settings, s3=settings.uses_s3, spark_ml=not args.no_classifier)
    return _Started(listing, True, start_in_background(config))


def _say_materializing(settings: FruitsSettings, selected: int, classes: int) -> None:
    print(
        f"materializing {selected} of {classes} classes from {settings.images} -> "
        f"{settings.output}",
        flush=True,
    )


def _print_summary(outcome, output: str) -> None:  # a runner.RunOutcome
    meta = outcome.metadata
    raw, labeled = meta.get(layout.RAW_IMAGES, {}), meta.get(layout.LABELED_IMAGES, {})
    features, pca = meta.get(layout.MOBILENET_FEATURES, {}), meta.get(layout.PCA_MODEL, {})
    print("\n== fruits run summary ==")
    print(f"images read:        {raw.get('num_images', '-')}")
    print(f"rejected:           {labeled.get('num_rejected', '-')}")
    ignored = raw.get("num_ignored_files", 0) + raw.get("ignored_outside_class_folders", 0)
    print(f"ignored files:      {ignored if raw else '-'}")
    print(f"classes:            {pca.get('num_classes', raw.get('classes_in_run', '-'))}")
    print(
        f"features:           {features.get('num_rows', '-')} "
        f"({features.get('images_per_second', '-')} images/s)"
    )
    precision = " (int8 featurizer)" if features.get("precision") == "int8" else ""
    print(f"weights:            {features.get('weights_source', '-')}{precision}")
    if "WARNING" in features:
        print(f"WARNING:            {features['WARNING']}")
    if pca:
        print(
            f"PCA k:              {pca.get('k')} (explained variance "
            f"{pca.get('explained_variance', 0):.4f}, target {pca.get('target_variance')})"
        )
    # Only what this run wrote: an output it did not materialize (`--no-classifier`, a failed
    # step) is either absent or older than the run's features.
    folders = (
        layout.PCA_FEATURES_PARQUET,
        layout.PCA_MODEL,
        layout.LABELED_IMAGES,
        layout.FRUIT_CLASSIFIER,
    )
    outputs = [
        *((name, name, layout.asset_dir(output, name)) for name in folders),
        (layout.FEATURES_CSV, layout.FEATURES_CSV, layout.csv_path(output)),
        (layout.LABELED_IMAGES, "rejected images", layout.rejected_images_dir(output)),
    ]
    written = [(label, path) for asset, label, path in outputs if asset in meta]
    print("outputs:" if written else "outputs:            none written by this run")
    for label, path in written:
        print(f"  {label + ':':22}{path}")
    classifier = meta.get(layout.FRUIT_CLASSIFIER, {})
    if classifier:
        print(
            f"classifier:         top-1 {classifier['top1_accuracy']:.2%}, top-5 "
            f"{classifier['top5_accuracy']:.2%} on {classifier['test_images']} held-out images"
        )
    print(f"dagster instance:   {os.environ['DAGSTER_HOME']} (see it with `fruits ui`)")
    if outcome.failures:
        print("\nFAILED:")
        for failure in outcome.failures:
            print(f"  - {failure}")
    print("status:             " + ("OK" if outcome.ok else "FAILED"))


def sync(args: argparse.Namespace) -> int:
    """Register the input root's classes as partitions and drop keys it no longer has."""
    from fruits_assets import partitions
    from fruits_assets.storage import discovery

    settings = _settings(args)
    try:
        classes = discovery.scan(settings.images).classes
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    added, deleted = partitions.sync(_instance(), classes)
    print(f"{len(classes)} classes; added {added or 'none'}; removed {deleted or 'none'}")
    return EXIT_OK


def jvm_archive(args: argparse.Namespace) -> int:
    """Record the classes local Spark loads, so that later local JVMs start sooner."""
    from fruits_assets.resources import class_archive
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings

    settings = FruitsSettings.from_env()
    # The recording JVM maps no archive of its own.
    recording = settings.model_copy(update={"class_archive": False})
    config = local_spark_config(recording, spark_ml=False)
    path = class_archive.archive_path(config, settings.cache_dir)
    if path is not None and path.is_file() and not args.again:
        print(f"class archive: {path} (recorded before; --again records it anew)")
        return EXIT_OK
    try:
        path = class_archive.record(config, settings.cache_dir)
    except class_archive.ArchiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    size = path.stat().st_size / 2**20
    print(f"class archive: {path} ({size:.0f} MiB); local Spark JVMs map it from now on")
    return EXIT_OK


def restore(args: argparse.Namespace) -> int:
    """List an asset's published versions, or publish an earlier one again."""
    from dagster_pyspark import LazyPySparkResource

    from fruits_assets import partitions, versions
    from fruits_assets.resources.environments import shared_resources
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.storage import filesystem, lock
    from fruits_assets.storage.datasets import Datasets

    settings = _settings(args, reads_images=False)
    instance = _instance()
    spark = None
    if versions.OUTPUTS[args.asset][0].table:  # tables need Spark (Delta); files do not
        config = local_spark_config(settings, s3=filesystem.is_s3(settings.output), spark_ml=False)
        spark = LazyPySparkResource(spark_config=config).spark_session
    datasets = Datasets(spark, shared_resources(settings)["storage"], run_id="restore")
    if args.list or args.version is None:
        rows = versions.history(datasets, args.asset)
        if not rows:
            print(f"{args.asset}: nothing published under {settings.output} yet")
        for row in rows:
            print("  ".join(f"{key}={value}" for key, value in row.items()))
        return EXIT_OK
    try:
        with lock.hold(settings.output, lock.holder(command="fruits restore")):
            new = versions.restore(datasets, args.asset, args.version)
    except (ValueError, FileNotFoundError, lock.OutputBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    per_class = args.asset in (layout.RAW_IMAGES, layout.LABELED_IMAGES, layout.MOBILENET_FEATURES)
    versions.record(
        instance,
        args.asset,
        args.version,
        new,
        partitions.registered_classes(instance) if per_class else None,
    )
    print(f"{args.asset}: version {args.version} published again as {new}")
    return EXIT_OK


def predict(args: argparse.Namespace) -> int:
    """Top classes for each photo, from a trained output root alone (no Spark, no TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import json

    from fruits_assets.ml.serving import FruitPredictor

    try:
        predictor = FruitPredictor(args.model)
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    answers = predictor.answer(list(args.images), top=args.top)
    for answer in answers:
        if args.json:
            print(json.dumps(answer.as_json(), ensure_ascii=False))
        elif answer.error:
            print(f"{answer.path}: error: {answer.error}")
        else:
            print(f"{answer.path}: " + ", ".join(f"{label} {p:.1%}" for label, p in answer.top))
    return EXIT_FAILED if any(a.error for a in answers) else EXIT_OK


def ui(args: argparse.Namespace) -> int:
    """The Dagster UI on this project: same settings as `fruits run` for every run it launches."""
    from fruits_assets import partitions
    from fruits_assets.storage import discovery

    settings = _settings(args)
    instance = _instance()
    try:
        added, deleted = partitions.sync(instance, discovery.scan(settings.images).classes)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if added or deleted:
        print(f"partitions: {len(added)} classes registered, {len(deleted)} stale ones removed")
    command = [
        os.path.join(os.path.dirname(sys.executable), "dagster"),
        "dev", "-m", "fruits_assets.definitions", "-h", args.host, "-p", str(args.port),
    ]  # fmt: skip
    env = {**os.environ, **settings.to_env()}
    host = _spark_host(settings)
    if host is not None:
        env.update(host.env())
    print(f"Dagster UI on http://{args.host}:{args.port} (images {settings.images}, output "
          f"{settings.output}, weights {settings.weights}); Ctrl-C stops it")  # fmt: skip
    # `dagster dev` treats SIGTERM as it treats SIGINT; started as a background job, SIGINT is
    # ignored and the child would inherit that: give it the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Its own process group, so that a stop reaches the webserver and daemon it starts.
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
    except BaseException:
        if host is not None:
            host.close()
        raise

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(child.pid, signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        code = child.wait()
    finally:
        try:  # whatever dagster dev left behind in its group
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if host is not None:
            host.close()
    return EXIT_OK if code in (0, -signal.SIGTERM, -signal.SIGINT, 130, 143) else EXIT_FAILED


def _spark_host(settings: FruitsSettings):  # a spark_host.SparkHost, or None
    """The warm Spark JVM of the UI's local runs, when they run on local[N] Spark."""
    if settings.env != "local" or settings.spark_master or not settings.ui_warm_spark:
        return None
    from fruits_assets import runner
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.resources.spark_host import SparkHost

    try:
        host = SparkHost(
            local_spark_config(settings, s3=settings.uses_s3, long_lived=True),
            # The whole graph once on generated photos: every asset's JVM code compiled.
            rehearsal=lambda: runner.rehearse(settings),
            # As the runs' LocalSpark resource has it: their contexts are prepared ahead.
            run_config=local_spark_config(settings, s3=settings.uses_s3),
        )
    except Exception as exc:  # runs then start their own Spark, and report what is wrong
        print(f"warning: no warm Spark for the UI's runs: {exc}", file=sys.stderr)
        return None

    def say_warm() -> None:
        started = time.monotonic()
        host.warm.wait()
        seconds = time.monotonic() - started
        if host.rehearsed:
            print(f"Spark: warm for the UI's runs ({seconds:.0f} s)", flush=True)
        else:  # e.g. offline with ImageNet weights: the runs say why
            print(f"Spark: started, not warmed up ({seconds:.0f} s)", flush=True)

    threading.Thread(target=say_warm, daemon=True).start()
    return host


def cluster(args: argparse.Namespace) -> int:
    """Create or terminate the EMR cluster of the spec, print its bootstrap script or IAM
    policies, or secure the account's EMR settings."""
    from fruits_assets.emr import bootstrap
    from fruits_assets.emr import cluster as emr_cluster
    from fruits_assets.emr.spec import ClusterSpec

    if args.action in ("terminate", "secure-account"):
        region = args.region or ClusterSpec.load(args.spec, staging_bucket="-").region
        if args.action == "secure-account":
            emr_cluster.secure_account(region)
            return EXIT_OK
        if not args.cluster_id:
            print("error: fruits cluster terminate CLUSTER_ID", file=sys.stderr)
            return EXIT_USAGE
        emr_cluster.terminate(args.cluster_id, region, wait=args.wait)
        return EXIT_OK
    try:
        spec = ClusterSpec.load(
            args.spec,
            staging_bucket=args.staging_bucket,
            region=args.region,
            tls_certificates=args.tls_certificates,
            in_transit_encryption=False if args.no_in_transit_encryption else None,
        )
        if args.action == "create":
            spec.check_encryption()
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cluster spec: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "bootstrap":
        print(bootstrap.bootstrap_script(spec), end="")
        return EXIT_OK
    if args.action == "iam":
        import json

        from fruits_assets.emr.policies import render_all

        needed = {"--account-id": args.account_id, "--data-bucket": args.data_bucket}
        if not all(needed.values()):
            print(f"error: fruits cluster iam needs {' and '.join(needed)}", file=sys.stderr)
            return EXIT_USAGE
        policies = render_all(spec, args.account_id, args.data_bucket, args.output_prefix)
        print(json.dumps(policies, indent=2))
        return EXIT_OK
    cluster_id = emr_cluster.create(spec, wait=args.wait)
    print("\nto run the asset graph on it:")
    for line in emr_cluster.env_lines(spec, cluster_id):
        print(f"  {line}")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruits", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def roots(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--images", help="input root: <root>/<class>/<image> (path or s3://)")
        sub.add_argument("--output", help="output root (path or s3://; default ./fruits_output)")

    def pipeline(sub: argparse.ArgumentParser) -> None:
        roots(sub)
        sub.add_argument("--weights", help="imagenet (default) | random | PATH or s3:// .h5")
        sub.add_argument(
            "--precision",
            choices=["float32", "int8"],
            help="the featurizer's arithmetic: float32 (default, Keras's features) or int8 "
            "(faster on CPUs with int8 dot products; different features)",
        )
        sub.add_argument("--variance", type=float, help="target explained variance (0.99)")

    run_parser = commands.add_parser("run", help="materialize the asset graph")
    pipeline(run_parser)
    run_parser.add_argument("--classes", nargs="+", help="rerun only these fruit classes")
    run_parser.add_argument(
        "--downstream-only",
        action="store_true",
        help="keep the stored per-class features; refit the PCA and everything after it",
    )
    run_parser.add_argument(
        "--no-classifier",
        action="store_true",
        help="the feature pipeline only (the seed notebook's work), without fruit_classifier",
    )
    run_parser.set_defaults(func=run)

    sync_parser = commands.add_parser("sync", help="register the input root's classes")
    roots(sync_parser)
    sync_parser.set_defaults(func=sync)

    predict_parser = commands.add_parser("predict", help="top fruit classes for photos")
    predict_parser.add_argument("images", nargs="+", help="image files (paths or s3://)")
    predict_parser.add_argument("--model", required=True, help="the --output root of a fruits run")
    predict_parser.add_argument("--top", type=int, default=3)
    predict_parser.add_argument("--json", action="store_true", help="one JSON object per line")
    predict_parser.set_defaults(func=predict)

    cluster_parser = commands.add_parser("cluster", help="create or terminate the EMR cluster")
    cluster_parser.add_argument(
        "action", choices=["create", "terminate", "bootstrap", "iam", "secure-account"]
    )
    cluster_parser.add_argument("cluster_id", nargs="?", help="for terminate: j-XXXXXXXX")
    cluster_parser.add_argument("--spec", help="cluster spec TOML (default: the packaged one)")
    cluster_parser.add_argument("--staging-bucket", help="private S3 bucket for steps and logs")
    cluster_parser.add_argument("--region", help="AWS region (default: the spec's, eu-west-3)")
    cluster_parser.add_argument("--wait", action="store_true", help="wait until ready / ended")
    cluster_parser.add_argument(
        "--tls-certificates", help="create: zip of the PEM files for TLS between nodes"
    )
    cluster_parser.add_argument(
        "--no-in-transit-encryption",
        action="store_true",
        help="create: without TLS between nodes (no certificates; not recommended)",
    )
    cluster_parser.add_argument("--account-id", help="iam: your AWS account id")
    cluster_parser.add_argument("--data-bucket", help="iam: the bucket of images and outputs")
    cluster_parser.add_argument(
        "--output-prefix", default="fruits_output", help="iam: the output root's key prefix"
    )
    cluster_parser.set_defaults(func=cluster)

    restore_parser = commands.add_parser(
        "restore", help="list an asset's published versions, or publish an earlier one again"
    )
    restore_parser.add_argument("asset", choices=ALL_ASSET_NAMES)
    roots(restore_parser)
    restore_parser.add_argument("--version", type=int, help="the version to publish again")
    restore_parser.add_argument("--list", action="store_true", help="list the versions")
    restore_parser.set_defaults(func=restore)

    archive_parser = commands.add_parser(
        "jvm-archive",
        help="record the classes local Spark loads (class-data sharing): later runs start sooner",
    )
    archive_parser.add_argument(
        "--again", action="store_true", help="record it even if it was recorded before"
    )
    archive_parser.set_defaults(func=jvm_archive)

    ui_parser = commands.add_parser("ui", help="open the Dagster UI on this project")
    pipeline(ui_parser)
    ui_parser.add_argument("--host", default="127.0.0.1")
    ui_parser.add_argument("--port", type=int, default=3000)
    ui_parser.set_defaults(func=ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "variance", None) is not None and not 0 < args.variance <= 1:
        print("error: --variance must be in (0, 1]", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # settings that don't validate, a bad file
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def entry() -> NoReturn:
    """The `fruits` command: `main`, then the process ends without the interpreter's teardown
    (about a second after a run's summary, `quick_exit`)."""
    exit_now(main())


if __name__ == "__main__":
    entry()
