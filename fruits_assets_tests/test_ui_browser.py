"""The Dagster UI of `fruits ui` in a real browser: a user materializes everything, looks at the
lineage and the scree plot, adds photos and a class, and reruns just those classes from the UI.

Screenshots of every step, the UI's log and a summary land in $FRUITS_TEST_ARTIFACTS/ui_browser
(default: <repo>/.test-artifacts/ui_browser, git-ignored).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from fruits_assets.storage import layout
from fruits_assets_tests import ui_browser
from fruits_assets_tests.conftest import REPO
from fruits_assets_tests.helpers import read_dataset

pytestmark = pytest.mark.slow

CLASSES = ["Banana 1", "Kiwi 1", "Lemon 1"]
CHANGED = "Kiwi 1"  # gets two more photos
NEW = "Limes 1"  # a class folder added later: the sensor registers it and runs it
PHOTOS = 10
ADDED_PHOTOS = 2
ASSETS = [
    layout.RAW_IMAGES,
    layout.LABELED_IMAGES,
    layout.MOBILENET_FEATURES,
    layout.PCA_MODEL,
    layout.PCA_FEATURES_PARQUET,
    layout.FEATURES_CSV,
    layout.FRUIT_CLASSIFIER,
]
PARTITIONED = [layout.RAW_IMAGES, layout.LABELED_IMAGES, layout.MOBILENET_FEATURES]


@pytest.fixture
def artifacts() -> Path:
    root = Path(os.environ.get("FRUITS_TEST_ARTIFACTS") or REPO / ".test-artifacts")
    folder = root / "ui_browser"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def photos(source: Path, start: int, count: int) -> list[Path]:
    return sorted(source.glob("*.jpg"))[start : start + count]


def copy_photos(files: list[Path], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy(file, target / file.name)


def class_files(output: Path, labels: list[str]) -> dict[str, str]:
    """sha256 of every file the partitioned assets keep for these classes, by relative path."""
    folders = {layout.partition_dir_name(label) for label in labels}
    digests = {}
    for asset in PARTITIONED:
        for file in sorted((output / asset).rglob("*")):
            if file.is_file() and folders & set(file.relative_to(output).parts):
                digests[str(file.relative_to(output))] = hashlib.sha256(
                    file.read_bytes()
                ).hexdigest()
    return digests


def rows_per_class(dataset: Path) -> dict[str, int]:
    return read_dataset(dataset).label.value_counts().to_dict()


SENSOR_RUNS = """
{ runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: "fruit_class_sensor"}]}) {
    ... on Runs { results { runId status } } } }
"""


def wait_for_sensor_run(base_url: str, timeout_s: float = ui_browser.RUN_TIMEOUT_S) -> str:
    """Wait until the new-class sensor's run has ended; its status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = ui_browser.graphql(base_url, SENSOR_RUNS)["runsOrError"]["results"]
        ended = [r["status"] for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        if ended:
            return ended[0]
        time.sleep(ui_browser.POLL_S)
    raise TimeoutError("the new-class sensor launched no run that ended in time")


def check_lineage(page, base_url: str, shots: ui_browser.Screenshots, name: str) -> dict:
    """The lineage page shows the 7 assets, in its asset tree and in the graph."""
    ui_browser.open_lineage(page, base_url)
    tree = ui_browser.lineage_tree(page, expected=ASSETS)
    labels = ui_browser.lineage_graph_labels(page)
    shots.take(page, name)
    assert sorted(tree) == sorted(ASSETS), tree
    assert [a for a in ASSETS if not ui_browser.shows_name(labels, a)] == [], labels
    return tree


def materialize(page, base_url, shots, name, partitions) -> ui_browser.BackfillResult:
    """Lineage › "Materialize all…" › pick partitions › launch (a backfill for many classes,
    one run for one class), then watch it to its end."""
    ui_browser.open_lineage(page, base_url)
    dialog = ui_browser.click_materialize_all(page)
    shots.take(page, f"{name}-dialog")
    ui_browser.choose_partitions(page, dialog, partitions)
    shots.take(page, f"{name}-partitions-chosen")
    kind, launched = ui_browser.launch(page, dialog)
    shots.take(page, f"{name}-launched")
    if kind == "run":
        result = ui_browser.wait_for_run(page, base_url, launched, screenshots=shots, name=name)
        assert result.succeeded, result.describe()
        return result
    ui_browser.open_backfill(page, base_url, launched)
    result = ui_browser.wait_for_backfill(page, base_url, launched, screenshots=shots, name=name)
    assert result.succeeded, result.describe()
    return result


def test_ui_materializes_all_then_reruns_the_changed_classes(
    tmp_path, fruits360, shared_weights, artifacts
):
    chromium = ui_browser.require_browser()
    images, output, home = tmp_path / "images", tmp_path / "out", tmp_path / "home"
    for name in CLASSES:
        copy_photos(photos(fruits360 / "Test" / name, 0, PHOTOS), images / name)
    summary: dict = {"screenshots": []}
    shots = ui_browser.Screenshots(artifacts)
    ui = ui_browser.start_ui(
        images, output, home, artifacts / "fruits-ui.log", weights=shared_weights
    )
    try:
        assert sorted(ui_browser.wait_for_server(ui)) == sorted(ASSETS)
        base = ui.base_url
        with ui_browser.open_browser(chromium) as page:
            check_lineage(page, base, shots, "lineage-before")

            first = materialize(page, base, shots, "materialize-all", partitions=None)
            summary["materialize_all"] = first.describe()
            tree = check_lineage(page, base, shots, "lineage-materialized")
            assert set(tree.values()) == {"run_success"}, tree

            ui_browser.open_asset(page, base, layout.PCA_MODEL)
            metadata = ui_browser.read_metadata(page)
            shots.take(page, "pca-model-metadata")
            assert metadata["num_classes"] == str(len(CLASSES))
            assert metadata["num_rows"] == str(len(CLASSES) * PHOTOS)
            scree = ui_browser.show_markdown(page, "scree_plot")
            plots = ui_browser.images_in(scree)
            shots.take(page, "pca-model-scree-plot")
            assert len(plots) == 1 and plots[0]["src"].startswith("data:image/png;base64,")
            assert plots[0]["naturalWidth"] > 300 and plots[0]["width"] > 300, plots
            scree.get_by_role("button", name="Close").click()

            # A user adds a class folder: the sensor registers it and runs it, with everything
            # downstream, without anyone clicking.
            copy_photos(photos(fruits360 / "Test" / NEW, 0, PHOTOS), images / NEW)
            view = ui_browser.wait_for_partition(page, base, layout.RAW_IMAGES, NEW)
            shots.take(page, "raw-images-new-partition")
            assert sorted(view.keys) == sorted(CLASSES + [NEW]), view
            assert wait_for_sensor_run(base) == "SUCCESS"
            view = ui_browser.wait_for_partition(page, base, layout.RAW_IMAGES, NEW)
            shots.take(page, "raw-images-new-partition-materialized")
            assert view.counts.get("Materialized") == 4 and not view.counts.get("Missing"), view
            assert rows_per_class(output / layout.PCA_FEATURES_PARQUET)[NEW] == PHOTOS

            # Then two photos to one class, which the user reruns from the launch dialog.
            unchanged = [c for c in CLASSES + [NEW] if c != CHANGED]
            before = class_files(output, unchanged)
            changed_before = class_files(output, [CHANGED])
            copy_photos(
                photos(fruits360 / "Test" / CHANGED, PHOTOS, ADDED_PHOTOS), images / CHANGED
            )
            rerun = materialize(page, base, shots, "rerun-changed", partitions=[CHANGED])
            summary["rerun"] = rerun.describe()
            # One class: one run of every asset, for that partition only.
            assert [r["partitions"] for r in rerun.runs] == [CHANGED], rerun.describe()

            assert class_files(output, unchanged) == before
            assert class_files(output, [CHANGED]) != changed_before
            features = rows_per_class(output / layout.MOBILENET_FEATURES)
            assert features == {
                **{c: PHOTOS for c in CLASSES},
                CHANGED: PHOTOS + ADDED_PHOTOS,
                NEW: PHOTOS,
            }
            ui_browser.open_asset(page, base, layout.PCA_MODEL)
            metadata = ui_browser.read_metadata(page)
            shots.take(page, "pca-model-after-rerun")
            assert metadata["num_classes"] == str(len(CLASSES) + 1)
            assert metadata["num_rows"] == str(sum(features.values()))
    finally:
        stop = ui_browser.stop_ui(ui)
        summary["stop"] = stop.describe()
        summary["screenshots"] = [p.name for p in shots.files]
        (artifacts / "summary.json").write_text(json.dumps(summary, indent=2))
    assert stop.stopped and not stop.leftovers, f"{stop.describe()}\n{ui.log_tail(2000)}"
