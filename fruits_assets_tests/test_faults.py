"""Nothing lost when things go wrong: real `fruits run` processes killed, out of disk, failing
checks, concurrent writers, readers during a rerun, hostile file names and links.

Each test starts from a published baseline (3 real classes x 15 photos) and compares every
published output, by content, before and after.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from fruits_assets.storage import layout
from fruits_assets_tests.helpers import FRUITS, copy_classes, fruits, local_spark, read_dataset

pytestmark = pytest.mark.slow

CLASSES = ["Banana 1", "Kiwi 1", "Lemon 1"]
RERUN = "Kiwi 1"
ASSETS = [
    layout.RAW_IMAGES, layout.LABELED_IMAGES, layout.MOBILENET_FEATURES, layout.PCA_MODEL,
    layout.PCA_FEATURES_PARQUET, layout.FEATURES_CSV, layout.FRUIT_CLASSIFIER,
]  # fmt: skip
TABLES = [
    layout.RAW_IMAGES, layout.ACCEPTED_IMAGES, layout.REJECTED_IMAGES, layout.MOBILENET_FEATURES,
    layout.PCA_MODEL, layout.PCA_FEATURES_PARQUET,
]  # fmt: skip


# The outputs each asset publishes, in the order a run publishes them.
OUTPUTS = {
    layout.RAW_IMAGES: [layout.RAW_IMAGES],
    layout.LABELED_IMAGES: [layout.ACCEPTED_IMAGES, layout.REJECTED_IMAGES],
    layout.MOBILENET_FEATURES: [layout.MOBILENET_FEATURES],
    layout.PCA_MODEL: [layout.PCA_MODEL],
    layout.PCA_FEATURES_PARQUET: [layout.PCA_FEATURES_PARQUET],
    layout.FEATURES_CSV: ["features.csv"],
    layout.FRUIT_CLASSIFIER: ["predictor.npz"],
}


def assert_killed_at(asset: str, before: dict[str, str], output: Path) -> None:
    """The asset killed (or failed) while publishing, and every one after it, hold exactly the
    previous version; the assets the run had finished hold their new, complete version."""
    after = snapshot(output)
    position = ASSETS.index(asset)
    for later in ASSETS[position:]:
        for name in OUTPUTS[later]:
            assert after[name] == before[name], f"{name} changed although {asset} was killed"
    if position > ASSETS.index(layout.MOBILENET_FEATURES):
        assert (read_dataset(output / layout.MOBILENET_FEATURES).label == RERUN).sum() == 16


def _digest_frame(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    keys = [c for c in ("label", "path") if c in frame]
    for row in frame.sort_values(keys).itertuples(index=False) if keys else frame.itertuples():
        for value in row:
            if isinstance(value, np.ndarray | list):
                value = np.asarray(
                    [np.asarray(v, dtype=np.float64) for v in value]
                    if len(value) and isinstance(value[0], np.ndarray | list)
                    else value
                ).tobytes()
            digest.update(repr(value).encode() if not isinstance(value, bytes) else value)
    return digest.hexdigest()


def snapshot(output: Path) -> dict[str, str]:
    """Every published output of an output root, by content: what a reader sees."""
    found = {}
    for table in TABLES:
        path = output / table
        found[table] = _digest_frame(read_dataset(path)) if (path / "_delta_log").exists() else "-"
    for name, path in (
        ("features.csv", output / layout.FEATURES_CSV / layout.CSV_FILE_NAME),
        ("predictor.npz", output / layout.FRUIT_CLASSIFIER / layout.PREDICTOR_FILE),
    ):
        found[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"
    return found


def start(*args: str, home: Path, env: dict | None = None, log: Path) -> subprocess.Popen:
    """`fruits` in its own process group (so a kill reaches its Spark JVM and Python workers)."""
    full = {**os.environ, "DAGSTER_HOME": str(home), "HOME": str(home.parent), **(env or {})}
    with log.open("w") as out:
        return subprocess.Popen(
            [FRUITS, *args], env=full, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"fruits ended ({process.returncode}) first:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def paused(output: Path, asset: str) -> Path:
    return output / "_staging" / f"PAUSED-{asset}"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, fruits360, shared_weights):
    """A published output root of 3 classes, and its snapshot."""
    root = tmp_path_factory.mktemp("faults")
    images = copy_classes(fruits360 / "Test", root / "images", CLASSES)
    output = root / "out"
    done = fruits("run", "--images", str(images), "--output", str(output),
                  "--weights", str(shared_weights), home=root / "home")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return images, output, snapshot(output), shared_weights


@pytest.fixture
def workspace(baseline, tmp_path, fruits360):
    """A copy of the baseline (input root with one more photo of RERUN, output root)."""
    images, output, before, weights = baseline
    work_images = tmp_path / "images"
    shutil.copytree(images, work_images)
    extra = sorted((fruits360 / "Training" / RERUN).glob("*.jpg"))[0]
    shutil.copy(extra, work_images / RERUN / "added.jpg")
    work_output = tmp_path / "out"
    shutil.copytree(output, work_output, symlinks=True)
    assert snapshot(work_output) == before
    return work_images, work_output, before, weights


def run_args(images: Path, output: Path, weights: Path, *extra: str) -> list[str]:
    return ["run", "--images", str(images), "--output", str(output), "--weights", str(weights),
            *extra]  # fmt: skip


def kill_at(asset: str, args: list[str], output: Path, home: Path, log: Path) -> None:
    """Run `fruits`, stop it just before `asset` publishes, `kill -9` its whole process group."""
    run = start(*args, home=home, env={"FRUITS_FAILPOINT": f"{asset}:pause"}, log=log)
    try:
        wait_for(paused(output, asset), run, log)
    finally:  # paused or not, nothing of it outlives the test
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)


@pytest.mark.parametrize("asset", ASSETS)
def test_kill_at_each_write_of_a_class_rerun_publishes_nothing(workspace, tmp_path, asset):
    """`kill -9` of the whole process group while an asset is about to publish: its outputs and
    those of every asset after it are still exactly the previous version (the assets the run had
    finished are complete new versions), and the killed run is not left STARTED."""
    images, output, before, weights = workspace
    home = tmp_path / "home"
    args = run_args(images, output, weights, "--classes", RERUN)
    kill_at(asset, args, output, home, tmp_path / "killed.log")
    assert_killed_at(asset, before, output)
    synced = fruits("sync", "--images", str(images), "--output", str(output), home=home)
    assert "left unfinished by a process that is gone: marked FAILED" in synced.stdout
    (run,) = dg.DagsterInstance.from_config(str(home)).get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE


def test_after_a_kill_the_next_run_completes_and_publishes(workspace, tmp_path):
    images, output, before, weights = workspace
    home = tmp_path / "home"
    args = run_args(images, output, weights, "--classes", RERUN)
    kill_at(layout.MOBILENET_FEATURES, args, output, home, tmp_path / "killed.log")
    done = fruits(*args, home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "left unfinished by a process that is gone: marked FAILED" in done.stdout
    after = snapshot(output)
    assert all(after[name] != before[name] for name in after if name != layout.REJECTED_IMAGES)
    assert (read_dataset(output / layout.MOBILENET_FEATURES).label == RERUN).sum() == 16
    statuses = sorted(r.status.value for r in dg.DagsterInstance.from_config(str(home)).get_runs())
    assert statuses == ["FAILURE", "SUCCESS"]
    assert not list((output / "_staging").iterdir()), "staging left behind"


@pytest.mark.parametrize("asset", [layout.MOBILENET_FEATURES, layout.PCA_FEATURES_PARQUET])
def test_kill_during_a_full_run_publishes_nothing(workspace, tmp_path, asset):
    images, output, before, weights = workspace
    args = run_args(images, output, weights)
    kill_at(asset, args, output, tmp_path / "home", tmp_path / "killed.log")
    assert_killed_at(asset, before, output)


def test_readers_never_see_a_missing_empty_or_partial_version(workspace, tmp_path):
    """While a class is rerun, readers (deltalake, Python's csv) see the old or the new version
    of pca_features_parquet, features_csv and the rerun class's features: nothing in between."""
    images, output, _, weights = workspace
    seen: dict[str, set] = {"pca": set(), "csv": set(), "kiwi": set()}
    problems: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                pca = read_dataset(output / layout.PCA_FEATURES_PARQUET)
                seen["pca"].add((len(pca), pca.label.nunique()))
                kiwi = read_dataset(output / layout.MOBILENET_FEATURES)
                seen["kiwi"].add(int((kiwi.label == RERUN).sum()))
                with (output / layout.FEATURES_CSV / layout.CSV_FILE_NAME).open(newline="") as f:
                    rows = list(csv.reader(f))
                widths = {len(r) for r in rows[1:]}
                seen["csv"].add((len(rows) - 1, len(widths), len(rows[0]) in widths))
            except Exception as exc:  # a reader that fails is what this test is about
                problems.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        done = fruits(*run_args(images, output, weights, "--classes", RERUN),
                      home=tmp_path / "home")  # fmt: skip
    finally:
        stop.set()
        reader.join()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not problems, problems[:5]
    assert seen["pca"] <= {(45, 3), (46, 3)} and (46, 3) in seen["pca"], seen["pca"]
    assert seen["kiwi"] <= {15, 16}, seen["kiwi"]
    assert seen["csv"] <= {(45, 1, True), (46, 1, True)}, seen["csv"]


def test_a_failing_check_keeps_the_previous_version_and_the_failed_data(workspace, tmp_path):
    """A class whose every file is rejected leaves pca_features_parquet without that class: its
    label check fails, nothing downstream is published, the new rows are kept aside."""
    images, output, before, weights = workspace
    broken = images / "Broken 1"
    broken.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (broken / name).write_bytes(b"not a photo")
    done = fruits(*run_args(images, output, weights), home=tmp_path / "home")
    assert done.returncode == 1
    # The first line of the run's errors names the check, the class and what to look at.
    first = done.stdout.split("\nFAILED:\n", 1)[1].splitlines()[0]
    assert first.startswith(
        "  - step pca_features_parquet failed: check label_set_equals_discovered_classes failed: "
        "1 of the input root's 4 classes has no rows (Broken 1); mobilenet_features has none of "
        "their rows"
    ), first
    assert "labeled_images/rejected" in first and "Nothing was published" in first, first
    after = snapshot(output)
    for name in (layout.PCA_FEATURES_PARQUET, "features.csv", "predictor.npz"):
        assert after[name] == before[name], name
    kept = [p.parent for p in (output / "_staging").rglob("_AUDIT_FAILED.json")]
    assert len(kept) == 1 and kept[0].name == layout.PCA_FEATURES_PARQUET
    assert str(kept[0]) in done.stdout
    rows = pd.read_parquet(kept[0])
    assert len(rows) == 46 and "Broken 1" not in set(rows.label.astype(str))


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def test_a_second_writer_is_refused_at_once_naming_the_first(workspace, tmp_path, request):
    images, output, _, weights = workspace
    log = tmp_path / "first.log"
    first = start(*run_args(images, output, weights, "--classes", RERUN), home=tmp_path / "h1",
                  env={"FRUITS_FAILPOINT": f"{layout.LABELED_IMAGES}:pause"}, log=log)  # fmt: skip
    request.addfinalizer(lambda: _kill_group(first))
    wait_for(paused(output, layout.LABELED_IMAGES), first, log)
    second = fruits(*run_args(images, output, weights), home=tmp_path / "h2", timeout=300)
    assert second.returncode == 1
    first_line = second.stderr.strip().splitlines()[0]
    assert first_line.startswith(f"error: Output root {output} is being written by run")
    assert f"pid {first.pid}" in first_line
    paused(output, layout.LABELED_IMAGES).unlink()  # let the first run go on
    assert first.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert (read_dataset(output / layout.MOBILENET_FEATURES).label == RERUN).sum() == 16


@pytest.fixture
def small_disk(tmp_path):
    """A 96 MiB tmpfs, mounted for the test (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_out_of_disk_says_so_first_and_loses_nothing(workspace, small_disk, tmp_path, request):
    images, output, _, weights = workspace
    disk_output = small_disk / "out"
    shutil.copytree(output, disk_output, symlinks=True)
    before = snapshot(disk_output)
    home = tmp_path / "home"

    # Full before the run: refused by the checks before anything is touched.
    filler = small_disk / "filler"
    subprocess.run(["fallocate", "-l", f"{_free(small_disk) - 2 * 2**20}", str(filler)], check=True)
    refused = fruits(*run_args(images, disk_output, weights, "--classes", RERUN), home=home)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: No space left on device: {disk_output} has")
    assert snapshot(disk_output) == before
    filler.unlink()

    # Full during the run: the disk fills while raw_images is about to publish.
    log = tmp_path / "full.log"
    run = start(*run_args(images, disk_output, weights, "--classes", RERUN), home=home,
                env={"FRUITS_FAILPOINT": f"{layout.RAW_IMAGES}:pause"}, log=log)  # fmt: skip
    request.addfinalizer(lambda: _kill_group(run))
    wait_for(paused(disk_output, layout.RAW_IMAGES), run, log)
    subprocess.run(["fallocate", "-l", f"{_free(small_disk) - 64 * 1024}", str(filler)], check=True)
    paused(disk_output, layout.RAW_IMAGES).unlink()
    assert run.wait(timeout=900) == 1
    # The first write that finds no room fails its step with the cause and the place first.
    failure = log.read_text().split("FAILED:", 1)[1].strip().splitlines()[0]
    step = failure.split("step ", 1)[1].split(" failed", 1)[0]
    assert failure.startswith(f"- step {step} failed: No space left on device: {disk_output}")
    filler.unlink()
    assert_killed_at(step, before, disk_output)
    again = fruits(*run_args(images, disk_output, weights, "--classes", RERUN), home=home)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def test_hostile_names_and_links_are_kept_exactly_or_reported(tmp_path, fruits360, shared_weights):
    """Quotes, commas and newlines in a file name reach every output exactly; links are never
    followed (a loop, a link out of the root); a class name too long for the layout is refused
    with a reason; every file is accounted for."""
    images = copy_classes(fruits360 / "Test", tmp_path / "images", ["Kiwi 1", "Lemon 1"])
    photo = sorted((images / "Kiwi 1").glob("*.jpg"))[0]
    hostile = images / "Kiwi 1" / 'a "quoted", name\nwith a line break.jpg'
    shutil.copy(photo, hostile)
    (images / "Kiwi 1" / "loop").symlink_to(images, target_is_directory=True)
    outside = tmp_path / "outside.jpg"
    shutil.copy(photo, outside)
    (images / "Lemon 1" / "outside.jpg").symlink_to(outside)
    # Fits a folder name (126 bytes), not once escaped as label=%23%23… (372 bytes).
    long_class = images / ("Pomme " + "#" * 120)
    long_class.mkdir()
    shutil.copy(photo, long_class / "0.jpg")
    output = tmp_path / "out"
    done = fruits(*run_args(images, output, shared_weights, "--no-classifier"),
                  home=tmp_path / "home")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "images read:        31" in done.stdout  # 15 + 15 + the hostile name
    assert "ignored files:      3" in done.stdout  # the loop, the outside link, the long class

    features = read_dataset(output / layout.MOBILENET_FEATURES)
    assert len(features) == 31 and str(hostile) in set(features.path)
    csv_path = output / layout.FEATURES_CSV / layout.CSV_FILE_NAME
    with csv_path.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert len(rows) == 31 and {r[0] for r in rows} == set(features.path)
    assert len(pd.read_csv(csv_path)) == 31
    read_back = (
        local_spark()
        .read.option("header", True)
        .option("multiLine", True)
        .option("escape", '"')
        .csv(str(csv_path))
    )
    assert read_back.count() == 31
    assert str(hostile) in {r["path"] for r in read_back.select("path").collect()}


def test_restore_publishes_an_earlier_version_again(workspace, tmp_path):
    """After a rerun, `fruits restore` brings back the baseline's features, labeled images (both
    tables together) and CSV, as new versions, and the instance records it."""
    images, output, before, weights = workspace
    home = tmp_path / "home"
    done = fruits(*run_args(images, output, weights, "--classes", RERUN), home=home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert snapshot(output)[layout.MOBILENET_FEATURES] != before[layout.MOBILENET_FEATURES]

    listed = fruits("restore", "mobilenet_features", "--output", str(output), "--list",
                    home=home, timeout=300)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    versions = [line for line in listed.stdout.splitlines() if line.startswith("version=")]
    assert [v.split()[0] for v in versions] == ["version=1", "version=0"]
    for asset, version in (
        (layout.MOBILENET_FEATURES, 0), (layout.LABELED_IMAGES, 0), (layout.FEATURES_CSV, 1),
    ):  # fmt: skip
        restored = fruits("restore", asset, "--output", str(output), "--version", str(version),
                          home=home, timeout=300)  # fmt: skip
        assert restored.returncode == 0, restored.stdout + restored.stderr
    after = snapshot(output)
    for name in (layout.MOBILENET_FEATURES, layout.ACCEPTED_IMAGES, layout.REJECTED_IMAGES,
                 "features.csv"):  # fmt: skip
        assert after[name] == before[name], name
    instance = dg.DagsterInstance.from_config(str(home))
    event = instance.get_latest_materialization_event(dg.AssetKey(layout.FEATURES_CSV))
    assert event.asset_materialization.metadata["restored_version"].value == 1
