"""A second real engine: the graph on a Spark standalone cluster (1 master, 2 worker JVMs), so
nothing may rely on local mode (driver-only files, in-process broadcasts, one JVM)."""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as ds
import pytest

from fruits_assets_tests.helpers import copy_classes, fruits
from fruits_assets_tests.spark_standalone import master_state, standalone_cluster

pytestmark = pytest.mark.slow

CLASSES = ["Avocado 1", "Banana 1", "Lemon 1", "Pear 1"]


def test_graph_runs_on_a_standalone_cluster(tmp_path, fruits360, shared_weights, monkeypatch):
    images = copy_classes(fruits360 / "Test", tmp_path / "images", CLASSES)
    output = tmp_path / "out"
    with standalone_cluster(tmp_path / "spark") as (master_url, ui_port):
        monkeypatch.setenv("FRUITS_SPARK_MASTER", master_url)
        done = fruits(
            "run", "--images", str(images), "--output", str(output),
            "--weights", str(shared_weights), home=tmp_path / "home",
        )  # fmt: skip
        state = master_state(ui_port)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "status:             OK" in done.stdout
    # The work ran in the workers' executors, not in a local-mode driver.
    (app,) = [a for a in state["completedapps"] + state["activeapps"] if a["name"]]
    assert app["name"] == "fruits_assets" and app["cores"] == 2
    features = ds.dataset(str(output / "mobilenet_features"), partitioning="hive").to_table()
    assert features.num_rows == 15 * len(CLASSES)
    csv = pd.read_csv(output / "features_csv" / "features.csv")
    assert len(csv) == 15 * len(CLASSES) and set(csv.label) == set(CLASSES)
