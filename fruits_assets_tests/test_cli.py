"""The `fruits` command as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import os
import signal
import subprocess

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from fruits_assets import cli
from fruits_assets.ml import featurizer
from fruits_assets_tests.helpers import FRUITS, copy_classes, fruits, read_dataset
from fruits_assets_tests.images import noisy_jpeg


@pytest.mark.slow
def test_demo_run_works_offline_and_lands_in_the_instance(tmp_path, monkeypatch):
    home, output = tmp_path / "dagster_home", tmp_path / "out"
    done = fruits("run", "--output", str(output), home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "DEMO MODE" in done.stdout
    assert "status:             OK" in done.stdout
    if "RANDOM WEIGHTS" not in done.stdout:  # only a machine with internet gets ImageNet
        assert "keras-applications" in done.stdout
    csv = pd.read_csv(output / "features_csv" / "features.csv")
    assert len(csv) == 48 and csv.label.nunique() == 4
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert instance.get_latest_materialization_event(dg.AssetKey("features_csv")) is not None


@pytest.mark.slow
def test_no_classifier_runs_the_seed_pipeline_only(tmp_path, fruits360, shared_weights):
    """--no-classifier materializes the six pipeline assets, CSV included, and no classifier."""
    images = copy_classes(fruits360 / "Test", tmp_path / "images", ["Banana 1", "Kiwi 1"])
    home, output = tmp_path / "dagster_home", tmp_path / "out"
    done = fruits("run", "--images", str(images), "--output", str(output), "--weights",
                  str(shared_weights), "--no-classifier", home=home)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(pd.read_csv(output / "features_csv" / "features.csv")) == 30
    assert not (output / "fruit_classifier").exists()
    instance = dg.DagsterInstance.from_config(str(home))
    materialized = {key.to_user_string() for key in instance.get_asset_keys()}
    assert "features_csv" in materialized and "fruit_classifier" not in materialized
    # The summary names what the run wrote, and no classifier. Spark logs warnings and errors
    # only, and says nothing of the session `fruits run` started ahead of the run.
    outputs = done.stdout.split("\noutputs:\n", 1)[1].split("\ndagster instance:", 1)[0]
    assert f"  features_csv:         {output / 'features_csv' / 'features.csv'}" in outputs
    assert "pca_model:" in outputs and "fruit_classifier" not in outputs, outputs
    for line in (
        "Using an existing Spark session",
        "Setting default log level",
        "NativeCodeLoader",
    ):
        assert line not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_classes_run_on_a_new_output_says_the_other_classes_need_features(
    tmp_path, fruits360, shared_weights
):
    """--classes on an output root that no full run has filled: the chosen class is featurized
    and kept; the PCA's output fails its label check, and the error's first line says which
    classes have no features and how to make them. The run it suggests succeeds. Classes that
    are not neighbours run in a run each: the summary counts the images of all of them."""
    images = copy_classes(
        fruits360 / "Test", tmp_path / "images", ["Banana 1", "Kiwi 1", "Lemon 1"]
    )
    home, output = tmp_path / "dagster_home", tmp_path / "out"
    args = ("run", "--images", str(images), "--output", str(output), "--weights",
            str(shared_weights), "--no-classifier")  # fmt: skip
    done = fruits(*args, "--classes", "Kiwi 1", home=home)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    failures = done.stdout.split("\nFAILED:\n", 1)[1].splitlines()[:-1]
    assert failures[0].startswith(
        "  - step pca_features_parquet failed: check label_set_equals_discovered_classes failed: "
        "2 of the input root's 3 classes have no rows (Banana 1, Lemon 1); mobilenet_features "
        "has none of their rows: featurize them with `fruits run` without --classes"
    ), failures
    assert len(failures) == 1, failures  # the check's own line would only repeat it
    assert set(read_dataset(output / "mobilenet_features").label) == {"Kiwi 1"}
    assert not (output / "features_csv").exists()
    outputs = done.stdout.split("\noutputs:\n", 1)[1].split("\ndagster instance:", 1)[0]
    assert "labeled_images:" in outputs and "features_csv" not in outputs, outputs
    done = fruits(*args, home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(pd.read_csv(output / "features_csv" / "features.csv")) == 45
    done = fruits(*args, "--classes", "Banana 1", "Lemon 1", home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(dg.DagsterInstance.from_config(str(home)).get_runs()) == 2 + 3
    summary = done.stdout.split("== fruits run summary ==", 1)[1]
    assert "images read:        30\n" in summary and "features:           30 (" in summary
    assert "classes:            3\n" in summary


@pytest.mark.slow
def test_int8_runs_keep_one_quantized_model_and_refuse_to_mix_precisions(
    tmp_path, fruits360, shared_weights
):
    """--precision int8: the features name the quantized model, which is kept beside them and
    featurizes the output root's later class runs (a kept copy cut short is made again). A class
    run at the other precision is refused before it featurizes anything: the class keeps its
    int8 features."""
    images = copy_classes(fruits360 / "Test", tmp_path / "images", ["Banana 1", "Kiwi 1"])
    home, output = tmp_path / "dagster_home", tmp_path / "out"
    args = ("run", "--images", str(images), "--output", str(output), "--weights",
            str(shared_weights), "--no-classifier")  # fmt: skip
    done = fruits(*args, "--precision", "int8", home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "(int8 featurizer)" in done.stdout
    # Said where int8 saves nothing: on workers whose CPU has no int8 dot products (AVX2 alone).
    slow_cpu = featurizer.int8_dot_products() is False  # local Spark: this machine's workers
    said = "WARNING:            int8 featurizer on Spark workers whose CPU has no int8 dot products"
    assert (said in done.stdout) is slow_cpu
    features = read_dataset(output / "mobilenet_features")
    (identity,) = set(features.weights_sha256)
    assert "-int8-" in identity
    models = output / "mobilenet_features" / "_featurizer"
    assert [m.name for m in models.iterdir()] == [f"{identity}.tflite"]
    model = (models / f"{identity}.tflite").read_bytes()
    kiwi = features[features.label == "Kiwi 1"].set_index("path").features

    done = fruits(*args, "--classes", "Kiwi 1", home=home)  # float32, the default
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    failures = done.stdout.split("\nFAILED:\n", 1)[1].splitlines()[:-1]
    assert failures[0].startswith(
        "  - step mobilenet_features failed: this run featurizes with weights "
        f"{identity[:12]}…, float32, but the other classes' features were computed with weights "
        f"{identity[:12]}…, int8 model {identity.split('-int8-')[1][:8]}…: 1 class (Banana 1). "
        "Nothing was featurized"
    ), failures
    after = read_dataset(output / "mobilenet_features")
    assert set(after.weights_sha256) == {identity}
    kept = after[after.label == "Kiwi 1"].set_index("path").features
    assert all(np.array_equal(kept[p], kiwi[p]) for p in kiwi.index)

    done = fruits(*args, "--classes", "Kiwi 1", "--precision", "int8", home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "int8 featurizer: the model kept in" in done.stdout + done.stderr
    assert set(read_dataset(output / "mobilenet_features").weights_sha256) == {identity}

    (models / f"{identity}.tflite").write_bytes(model[: len(model) // 2])  # a write cut short
    done = fruits(*args, "--classes", "Kiwi 1", "--precision", "int8", home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "is damaged; calibrating anew" in done.stdout + done.stderr
    assert set(read_dataset(output / "mobilenet_features").weights_sha256) == {identity}
    assert [m.name for m in models.iterdir()] == [f"{identity}.tflite"]
    assert (models / f"{identity}.tflite").read_bytes() == model


@pytest.mark.slow
def test_bad_weights_are_refused_before_anything_is_written(tmp_path, fruits360):
    """Missing or garbage weights: a one-line cause naming the file, at once, and no output."""
    images = copy_classes(fruits360 / "Test", tmp_path / "images", ["Banana 1", "Lemon 1"])
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"these are not weights" * 100)
    for weights, cause in ((tmp_path / "missing.h5", "not found"), (garbage, "does not hold")):
        output = tmp_path / f"out-{weights.stem}"
        done = fruits(
            "run", "--images", str(images), "--output", str(output), "--weights", str(weights),
            home=tmp_path / "home",
        )  # fmt: skip
        assert done.returncode == 2
        first = done.stderr.strip().splitlines()[0]
        assert first.startswith(f"error: weights '{weights}'") and cause in first, done.stderr
        assert not (output / "raw_images").exists()


def test_an_output_root_that_is_a_file_is_refused_first(tmp_path):
    images = tmp_path / "images" / "Kiwi"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(noisy_jpeg())
    output = tmp_path / "out.txt"
    output.write_text("a file, not a folder")
    done = fruits("run", "--images", str(images.parent), "--output", str(output),
                  "--weights", "random", home=tmp_path / "home", timeout=300)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == f"error: Not a folder (a file is in the way): {output}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "/nonexistent/fruits"], "does not exist"),
        (["--classes", "Durian 9"], "are not folders under"),
        (["--variance", "1.5"], "--variance must be in (0, 1]"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, fruits360, extra, message):
    images = copy_classes(fruits360 / "Test", tmp_path / "images", ["Banana 1"])
    args = ["run", "--images", str(images), "--output", str(tmp_path / "out"), *extra]
    done = fruits(*args, home=tmp_path / "home", timeout=300)
    assert done.returncode == 2
    # The cause comes first: no Spark JVM was started to print its own lines before it.
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("error:") and message in first, done.stderr


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (e.g. a test's own DAGSTER_HOME)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    "existing",
    [None, *cli.PREVIOUS_INSTANCE_CONFIGS, cli.instance_config("/moved/é 😀"), "mine",
     "events elsewhere"],
)  # fmt: skip
def test_the_instance_takes_queued_runs_every_second(tmp_path, monkeypatch, existing):
    """The Dagster home `fruits` creates (or created before, or created elsewhere before the
    home was moved) launches queued runs, as the UI queues them, within a second, in ready
    processes, and stores events in batches in its own folder; a user's own dagster.yaml is
    left as it is."""
    from fruits_assets.dagster_sqlite import BatchedSqliteEventLogStorage
    from fruits_assets.launcher import StandbyRunLauncher

    home = tmp_path / "home"
    home.mkdir()
    config = home / "dagster.yaml"
    mine = "telemetry:\n  enabled: true\nrun_queue:\n  max_concurrent_runs: 3\n"
    # Like the one `fruits` writes, but with its event log moved by the user.
    elsewhere = cli.INSTANCE_CONFIG.format(events=f'"{tmp_path}/events/"')
    if existing is not None:
        config.write_text({"mine": mine, "events elsewhere": elsewhere}.get(existing, existing))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    if existing == "events elsewhere":
        with cli._instance():
            assert config.read_text() == elsewhere
        return
    with cli._instance() as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, dg.QueuedRunCoordinator)
        if existing == "mine":
            assert config.read_text() == mine
            assert coordinator.dequeue_interval_seconds == 5  # Dagster's default
            assert coordinator.get_run_queue_config().max_concurrent_runs == 3
        else:
            assert config.read_text() == cli.instance_config(str(home))
            assert coordinator.dequeue_interval_seconds == 1
            assert isinstance(instance.run_launcher, StandbyRunLauncher)
            assert isinstance(instance.event_log_storage, BatchedSqliteEventLogStorage)
            instance.add_dynamic_partitions("fruit", ["Kiwi"])  # a write to the event index
            assert (home / "history" / "runs" / "index.db").exists()


def test_ui_serves_the_lineage_and_stops_on_sigterm(tmp_path):
    """`fruits ui` serves the Dagster UI on these definitions, and SIGTERM to it (as a service
    manager sends) stops it with the webserver, daemon and code server it started."""
    import json
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "HOME": str(tmp_path)}
    server = subprocess.Popen(
        [FRUITS, "ui", "--port", str(port), "--output", str(tmp_path / "out")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    query = b'{"query": "{ assetNodes { assetKey { path } dependencyKeys { path } } }"}'
    try:
        deadline, nodes = time.monotonic() + 300, None
        while time.monotonic() < deadline and nodes is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=query,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                with urllib.request.urlopen(request, timeout=10) as response:
                    nodes = json.load(response)["data"]["assetNodes"]
            except (OSError, KeyError, TypeError):
                time.sleep(2)
        assert nodes, "the UI did not answer within 5 minutes"
        lineage = {
            n["assetKey"]["path"][0]: {d["path"][0] for d in n["dependencyKeys"]} for n in nodes
        }
        assert lineage["labeled_images"] == {"raw_images"}
        assert lineage["pca_model"] == {"mobilenet_features"}
        assert lineage["features_csv"] == {"pca_features_parquet"}
        assert _processes_with(str(home)), "no process of the UI found"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0
        deadline = time.monotonic() + 30
        while _processes_with(str(home)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not _processes_with(str(home)), "processes of the UI outlived it"
    finally:
        if server.poll() is None:
            server.kill()
        for pid in _processes_with(str(home)):
            os.kill(pid, signal.SIGKILL)
