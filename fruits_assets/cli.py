"""The `fruits` command: run the asset graph, sync partitions, open the Dagster UI."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from fruits_assets import layout

DEFAULT_DAGSTER_HOME = os.path.join(os.path.expanduser("~"), ".fruits_assets", "dagster_home")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _prepare_environment(args: argparse.Namespace) -> None:
    """Settings travel to the definitions (and to the UI) as FRUITS_* environment variables."""
    from fruits_assets import demo_data, filesystem
    from fruits_assets.resources import DEMO_IMAGES

    os.environ.setdefault("DAGSTER_HOME", DEFAULT_DAGSTER_HOME)
    home = os.environ["DAGSTER_HOME"]
    os.makedirs(home, exist_ok=True)
    if not os.path.exists(os.path.join(home, "dagster.yaml")):
        with open(os.path.join(home, "dagster.yaml"), "w") as handle:
            handle.write("telemetry:\n  enabled: false\n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    demo = getattr(args, "images", None) is None
    if demo:
        if not os.path.isdir(DEMO_IMAGES):
            demo_data.generate(DEMO_IMAGES)
        print(
            f"No --images given: DEMO MODE on {len(demo_data.DEMO_CLASSES)} classes of synthetic "
            f"100x100 fruit-like images in {DEMO_IMAGES}. Pass --images to use real photos."
        )
    os.environ["FRUITS_IMAGES"] = DEMO_IMAGES if demo else filesystem.normalize_uri(args.images)
    os.environ["FRUITS_OUTPUT"] = filesystem.normalize_uri(args.output)
    weights = getattr(args, "weights", None)
    os.environ["FRUITS_WEIGHTS"] = weights or "imagenet"
    # Only the demo may fall back to random weights, and only when no weights were asked for.
    os.environ["FRUITS_ALLOW_RANDOM_FALLBACK"] = "1" if demo and weights is None else "0"
    if getattr(args, "variance", None) is not None:
        os.environ["FRUITS_VARIANCE"] = str(args.variance)


@dataclass
class RunOutcome:
    """What the runs of one `fruits run` produced, for the summary and the exit code."""

    ok: bool = True
    metadata: dict[str, dict] = field(default_factory=dict)  # asset -> metadata of its last event
    failures: list[str] = field(default_factory=list)

    def absorb(self, result) -> None:
        import dagster as dg

        self.ok &= result.success
        for event in result.get_asset_materialization_events():
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            self.metadata[event.asset_key.to_user_string()] = meta
        for event in result.all_events:
            if event.is_step_failure:
                error = event.step_failure_data.error
                while error is not None and error.cause is not None:  # the user code's own error
                    error = error.cause
                message = error.message.strip() if error else "unknown error"
                self.failures.append(f"step {event.step_key} failed: {message}")
            if event.event_type_value == "ASSET_CHECK_EVALUATION":
                evaluation = event.event_specific_data
                if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                    self.ok = False
                    self.failures.append(
                        f"check {evaluation.check_name} on "
                        f"{evaluation.asset_key.to_user_string()} FAILED: "
                        f"{ {k: v.value for k, v in evaluation.metadata.items()} }"
                    )


def _execute(job, instance, selection, keys: tuple[str, str] | None, outcome: RunOutcome) -> None:
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    tags = {}
    if keys is not None:
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[1]}
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableJob

    run_config: dict = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if isinstance(job, ReconstructableJob):
        # EMR: the step launcher ships a job it can re-create remotely; steps go one at a time.
        run_config["execution"] = {"config": {"in_process": {}}}
        with dg.execute_job(
            job, instance, run_config=run_config, tags=tags, asset_selection=selection
        ) as result:
            outcome.absorb(result)
        return
    result = job.execute_in_process(
        instance=instance,
        asset_selection=selection,
        tags=tags,
        raise_on_error=False,
        run_config=run_config,
    )
    outcome.absorb(result)


def run(args: argparse.Namespace) -> int:
    """Materialize the whole graph (or some classes and everything downstream) in Dagster runs."""
    _prepare_environment(args)
    import dagster as dg

    from fruits_assets import discovery, partitions
    from fruits_assets.assets import PARTITIONED_ASSETS, UNPARTITIONED_ASSETS
    from fruits_assets.definitions import build_definitions

    images, output = os.environ["FRUITS_IMAGES"], os.environ["FRUITS_OUTPUT"]
    try:
        scan = discovery.scan(images)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not scan.classes:
        print(f"error: no class folder with .jpg/.jpeg/.png images under {images}", file=sys.stderr)
        return EXIT_USAGE
    selected = set(args.classes or scan.classes)
    unknown = selected - set(scan.classes)
    if unknown:
        print(
            f"error: classes {sorted(unknown)} are not folders under {images}; "
            f"known: {', '.join(scan.classes)}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    instance = dg.DagsterInstance.get()
    added, deleted = partitions.sync(instance, scan.classes)
    if added or deleted:
        print(f"partitions: {len(added)} classes registered, {len(deleted)} stale ones removed")
    ordered = instance.get_dynamic_partitions(partitions.FRUIT_CLASS_PARTITIONS_NAME)
    ranges = partitions.contiguous_ranges(ordered, selected)
    try:
        job = build_definitions().resolve_implicit_global_asset_job_def()
    except ValueError as exc:  # e.g. FRUITS_ENV=emr without a cluster id
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if os.environ.get("FRUITS_ENV") == "emr":
        from fruits_assets.jobs import reconstructable_job

        job = reconstructable_job()
    partitioned = [a.key for a in PARTITIONED_ASSETS]
    downstream = [a.key for a in UNPARTITIONED_ASSETS]
    if args.no_classifier:
        downstream = [key for key in downstream if key.to_user_string() != layout.FRUIT_CLASSIFIER]
    outcome = RunOutcome()
    print(f"materializing {len(selected)} of {len(scan.classes)} classes from {images} -> {output}")
    if args.downstream_only:  # refit PCA, exports and classifier from the stored features
        _execute(job, instance, downstream, None, outcome)
    elif len(ranges) == 1:
        _execute(job, instance, partitioned + downstream, ranges[0], outcome)
    else:  # classes that are not neighbours in the partition order: one run per range
        for keys in ranges:
            _execute(job, instance, partitioned, keys, outcome)
            if not outcome.ok:
                break
        if outcome.ok:
            _execute(job, instance, downstream, None, outcome)
    _print_summary(outcome, output)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _print_summary(outcome: RunOutcome, output: str) -> None:
    meta = outcome.metadata
    raw, labeled = meta.get(layout.RAW_IMAGES, {}), meta.get(layout.LABELED_IMAGES, {})
    features, pca = meta.get(layout.MOBILENET_FEATURES, {}), meta.get(layout.PCA_MODEL, {})
    print("\n== fruits run summary ==")
    print(f"images read:        {raw.get('num_images', '-')}")
    print(f"rejected:           {labeled.get('num_rejected', '-')}")
    print(f"ignored files:      {raw.get('num_ignored_files', '-')}")
    print(f"classes:            {pca.get('num_classes', raw.get('num_classes', '-'))}")
    print(
        f"features:           {features.get('num_rows', '-')} "
        f"({features.get('images_per_second', '-')} images/s)"
    )
    print(f"weights:            {features.get('weights_source', '-')}")
    if "WARNING" in features:
        print(f"WARNING:            {features['WARNING']}")
    if pca:
        print(
            f"PCA k:              {pca.get('k')} (explained variance "
            f"{pca.get('explained_variance', 0):.4f}, target {pca.get('target_variance')})"
        )
    print("outputs:")
    for name in (
        layout.PCA_FEATURES_PARQUET,
        layout.PCA_MODEL,
        layout.LABELED_IMAGES,
        layout.FRUIT_CLASSIFIER,
    ):
        print(f"  {name + ':':22}{layout.asset_dir(output, name)}")
    print(f"  {'features_csv:':22}{layout.csv_path(output)}")
    print(f"  {'rejected images:':22}{layout.rejected_images_dir(output)}")
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
    _prepare_environment(args)
    import dagster as dg

    from fruits_assets import discovery, partitions

    classes = discovery.scan(os.environ["FRUITS_IMAGES"]).classes
    added, deleted = partitions.sync(dg.DagsterInstance.get(), classes)
    print(f"{len(classes)} classes; added {added or 'none'}; removed {deleted or 'none'}")
    return EXIT_OK


def predict(args: argparse.Namespace) -> int:
    """Top-3 fruit classes for each photo, from a trained output root alone (no Spark)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import json

    import numpy as np

    from fruits_assets import classifier, color, decoding, featurizer, filesystem

    root = filesystem.normalize_uri(args.model)
    try:
        predictor = classifier.Predictor.load(root)
        model_uri = filesystem.join(
            layout.asset_dir(root, layout.FRUIT_CLASSIFIER), featurizer.SERVING_MODEL
        )
        if not filesystem.exists(model_uri):
            raise FileNotFoundError(
                f"{model_uri} not found: this output root was trained by an older version; "
                "rematerialize fruit_classifier (fruits run --downstream-only)"
            )
        model = featurizer.Featurizer(filesystem.read_bytes(model_uri))
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    answers: list[dict] = []
    good: list[tuple[int, bytes]] = []
    for index, path in enumerate(args.images):
        try:
            decoded = decoding.decode(filesystem.read_bytes(path))
            error = decoded.reason
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable file is one answer
            decoded, error = None, f"{decoding.REJECT_MISSING}: {exc}"
        answers.append({"path": path, "error": error} if error else {"path": path})
        if not error:
            good.append((index, decoded.content))
    if good:
        contents = [content for _, content in good]
        histograms = np.stack([color.histogram(content) for content in contents])
        probabilities = predictor.probabilities(model(contents), histograms)
        for (index, _), row in zip(good, probabilities, strict=True):
            top = row.argsort()[::-1][: args.top]
            answers[index]["top"] = [
                {"label": predictor.labels[c], "probability": round(float(row[c]), 4)} for c in top
            ]
    for answer in answers:
        if args.json:
            print(json.dumps(answer, ensure_ascii=False))
        elif "error" in answer:
            print(f"{answer['path']}: error: {answer['error']}")
        else:
            guesses = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in answer["top"])
            print(f"{answer['path']}: {guesses}")
    return EXIT_FAILED if any("error" in a for a in answers) else EXIT_OK


def ui(args: argparse.Namespace) -> int:
    """Open the Dagster UI on this project, with the same instance and settings as `fruits run`."""
    _prepare_environment(args)
    command = ["dagster", "dev", "-m", "fruits_assets.definitions", "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}")
    bindir = os.path.dirname(sys.executable)
    os.execvp(os.path.join(bindir, "dagster"), command)
    return EXIT_FAILED  # pragma: no cover - execvp does not return


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

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--images", help="input root: <root>/<class>/<image> (path or s3://)")
        sub.add_argument("--output", default="fruits_output", help="output root (path or s3://)")

    run_parser = commands.add_parser("run", help="materialize the asset graph")
    common(run_parser)
    run_parser.add_argument("--weights", help="imagenet (default) | random | PATH or s3:// .h5")
    run_parser.add_argument("--variance", type=float, help="target explained variance (0.99)")
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
    common(sync_parser)
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

    ui_parser = commands.add_parser("ui", help="open the Dagster UI on this project")
    common(ui_parser)
    ui_parser.add_argument("--port", type=int, default=3000)
    ui_parser.set_defaults(func=ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "variance", None) is not None and not 0 < args.variance <= 1:
        print("error: --variance must be in (0, 1]", file=sys.stderr)
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
