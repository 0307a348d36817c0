"""Dagster's SQLite databases kept open during runs (`fruits_assets.dagster_sqlite`), on a real
instance on disk: every event is stored and seen by another process while the run goes on, the
WAL stays bounded, nothing is left open after the run, and a run killed with SIGKILL loses none
of the events it had stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from fruits_assets import dagster_sqlite

CLASSES = [f"Class {i:03d}" for i in range(150)]
# Run in another process: how many classes of `per_class` the Dagster home has materialized.
COUNT = (
    "import dagster as dg; i = dg.DagsterInstance.get(); "
    "print(len(i.fetch_materializations(dg.AssetKey('per_class'), limit=1000).records))"
)

# A two-asset graph over 150 classes, run as one single-run backfill like `fruits run`'s: the
# first asset gives each class its own metadata; the second writes what it sees (the WAL of the
# event index, and the first asset's materializations as another process reads them), then
# waits while a "hold" file exists.
GRAPH = """
import json, os, subprocess, sys, time
from pathlib import Path
import dagster as dg

CLASSES = [f"Class {i:03d}" for i in range(150)]
classes = dg.StaticPartitionsDefinition(CLASSES)
probe = Path(os.environ["PROBE_DIR"])
COUNT = @COUNT@

@dg.asset(partitions_def=classes, backfill_policy=dg.BackfillPolicy.single_run())
def per_class(context: dg.AssetExecutionContext) -> None:
    for key in context.partition_keys:
        context.add_asset_metadata({"num_images": 1}, partition_key=key)

@dg.asset(partitions_def=classes, backfill_policy=dg.BackfillPolicy.single_run(), deps=[per_class])
def after(context: dg.AssetExecutionContext) -> None:
    wal = Path(os.environ["DAGSTER_HOME"], "history", "runs", "index.db-wal")
    seen = subprocess.run([sys.executable, "-c", COUNT], capture_output=True, text=True, check=True)
    (probe / "during.json").write_text(json.dumps({
        "wal_exists": wal.exists(),
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "seen_by_another_process": int(seen.stdout.split()[-1]),
    }))
    while (probe / "hold").exists():
        time.sleep(0.1)

job = dg.Definitions(
    assets=[per_class, after], jobs=[dg.define_asset_job("both", selection="*")]
).resolve_job_def("both")
"""

RUN = """
import sys
sys.path.insert(0, sys.argv[1])
import dagster as dg
from graph import CLASSES, job
from fruits_assets import dagster_sqlite

instance = dg.DagsterInstance.get()
tags = {"dagster/asset_partition_range_start": CLASSES[0],
        "dagster/asset_partition_range_end": CLASSES[-1]}
with dagster_sqlite.kept_open():
    assert job.execute_in_process(instance=instance, tags=tags).success
"""


def _home(tmp_path: Path) -> dict[str, str]:
    home, probe = tmp_path / "home", tmp_path / "probe"
    home.mkdir()
    probe.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "graph.py").write_text(GRAPH.replace("@COUNT@", repr(COUNT)))
    return {**os.environ, "DAGSTER_HOME": str(home), "PROBE_DIR": str(probe)}


def _materializations(env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", COUNT], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def test_a_run_with_its_databases_kept_open_stores_every_event(tmp_path: Path) -> None:
    env = _home(tmp_path)
    subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path)], env=env, check=True, capture_output=True
    )
    during = json.loads((tmp_path / "probe" / "during.json").read_text())
    # The event index was held open: its WAL was not deleted after each event, nor did it
    # grow with the run (SQLite's automatic checkpoint keeps it near 4 MB).
    assert during["wal_exists"]
    assert during["wal_bytes"] < 8 * 2**20
    # Another process saw every class's materialization while the run went on.
    assert during["seen_by_another_process"] == len(CLASSES)
    runs = Path(env["DAGSTER_HOME"], "history", "runs")
    # The run's process has ended and closed its readers: the last close checkpointed the WAL.
    assert not list(runs.glob("*-wal"))
    assert _materializations(env) == len(CLASSES)


def test_a_killed_run_keeps_the_events_it_had_stored(tmp_path: Path) -> None:
    env = _home(tmp_path)
    probe = tmp_path / "probe"
    (probe / "hold").touch()
    run = subprocess.Popen(
        [sys.executable, "-c", RUN, str(tmp_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (probe / "during.json").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    # The WAL it kept is still there, unmerged, and every event in it is read back.
    assert json.loads((probe / "during.json").read_text())["wal_exists"]
    runs = Path(env["DAGSTER_HOME"], "history", "runs")
    assert (runs / "index.db-wal").exists()
    assert _materializations(env) == len(CLASSES)
    for database in runs.glob("*.db"):
        check = subprocess.run(
            [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "print(c.execute('PRAGMA integrity_check').fetchall()[0][0])", str(database)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert check.stdout.strip() == "ok", database


def test_outside_kept_open_nothing_is_held(tmp_path: Path) -> None:
    home = _home(tmp_path)["DAGSTER_HOME"]
    with dg.DagsterInstance.from_config(home) as instance:
        index = Path(home, "history", "runs", "index.db")
        with dagster_sqlite.kept_open(home):
            instance.add_dynamic_partitions("fruit", ["Apple"])
            instance.add_dynamic_partitions("fruit", ["Kiwi"])
            # Held open: the connections' closes left the WAL in place.
            assert index.with_name("index.db-wal").exists()
        # Once left, the readers are closed: the next connection's close checkpoints and
        # removes the WAL, as without `kept_open()`.
        instance.add_dynamic_partitions("fruit", ["Lemon"])
        assert not index.with_name("index.db-wal").exists()
        assert instance.get_dynamic_partitions("fruit") == ["Apple", "Kiwi", "Lemon"]
