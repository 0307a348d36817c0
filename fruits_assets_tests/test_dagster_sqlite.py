"""Dagster's SQLite databases kept open during runs (`fruits_assets.dagster_sqlite`), on a real
instance on disk: every event is stored and seen by another process while the run goes on, the
WAL stays bounded, nothing is left open after the run, and a run killed with SIGKILL loses none
of the events it had stored, with Dagster's own event log and with the batched one `fruits` sets
up; the batched one stores what Dagster's own stores."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from fruits_assets import dagster_sqlite
from fruits_assets.dagster_sqlite import BatchedSqliteEventLogStorage

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

@dg.asset(partitions_def=classes, backfill_policy=dg.BackfillPolicy.single_run(),
          check_specs=[dg.AssetCheckSpec("balanced", asset="per_class")])
def per_class(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    for key in context.partition_keys:
        context.add_asset_metadata({"num_images": 1}, partition_key=key)
    return dg.MaterializeResult(check_results=[dg.AssetCheckResult(passed=True)])

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
import os, sys
sys.path.insert(0, sys.argv[1])
import dagster as dg
from sqlalchemy import event
from sqlalchemy.engine import Engine
from graph import CLASSES, job
from fruits_assets import dagster_sqlite

if os.environ.get("FAIL_INDEX_AT"):  # the event index fails once, part-way through a batch
    from fruits_assets.dagster_sqlite import BatchedSqliteEventLogStorage

    dagster_sqlite.ROWS_PER_INSERT = 64
    calls, index = [], BatchedSqliteEventLogStorage._index

    def failing_once(self, conn, entries):
        calls.append(len(entries))
        if len(calls) == int(os.environ["FAIL_INDEX_AT"]):
            open(os.path.join(os.environ["PROBE_DIR"], "index_failed"), "w").close()
            raise RuntimeError("the event index is unavailable")
        return index(self, conn, entries)

    BatchedSqliteEventLogStorage._index = failing_once
connections = []
instance = dg.DagsterInstance.get()
event.listen(Engine, "connect", lambda *_: connections.append(1))
tags = {"dagster/asset_partition_range_start": CLASSES[0],
        "dagster/asset_partition_range_end": CLASSES[-1]}
with dagster_sqlite.kept_open():
    assert job.execute_in_process(instance=instance, tags=tags).success
print("connections", len(connections))
"""
BATCHED = (
    "event_log_storage:\n  module: fruits_assets.dagster_sqlite\n"
    "  class: BatchedSqliteEventLogStorage\n  config:\n    base_dir: {}\n"
)


def _home(tmp_path: Path, batched: bool = False) -> dict[str, str]:
    home, probe = tmp_path / "home", tmp_path / "probe"
    home.mkdir(parents=True)
    probe.mkdir()
    events = BATCHED.format(json.dumps(str(home / "history" / "runs"))) if batched else ""
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + events)
    (tmp_path / "graph.py").write_text(GRAPH.replace("@COUNT@", repr(COUNT)))
    env = {**os.environ, "DAGSTER_HOME": str(home), "PROBE_DIR": str(probe)}
    env.pop("DAGSTER_EVENT_BATCH_SIZE", None)  # set by the batched event log where it is loaded
    return env


def _materializations(env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", COUNT], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("batched", [False, True], ids=["dagster's event log", "batched"])
def test_a_run_with_its_databases_kept_open_stores_every_event(
    tmp_path: Path, batched: bool
) -> None:
    env = _home(tmp_path, batched)
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


@pytest.mark.parametrize("batched", [False, True], ids=["dagster's event log", "batched"])
def test_a_killed_run_keeps_the_events_it_had_stored(tmp_path: Path, batched: bool) -> None:
    env = _home(tmp_path, batched)
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


def _stored(home: Path) -> dict[str, object]:
    """What a run left in a Dagster home's event databases, without ids, times, run ids and
    data versions (which derive from them): each database's events as runs of one kind in the
    order stored (the classes within a run sorted: Dagster plans them in a set's order), the
    asset index's own tables, and whether the index's rows point at the right events."""
    runs = home / "history" / "runs"
    index = runs / "index.db"

    def rows(database: Path, query: str) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(database)) as connection:
            return connection.execute(query).fetchall()

    def log(database: Path) -> list[tuple]:
        events = rows(
            database,
            "SELECT dagster_event_type, step_key, asset_key, partition FROM event_logs ORDER BY id",
        )
        return [
            (kind, sorted(str(event[3]) for event in group))
            for kind, group in itertools.groupby(events, key=lambda event: event[:3])
        ]

    (run_db,) = [db for db in runs.glob("*.db") if db.name != "index.db"]
    tags = rows(index, "SELECT asset_key, key, value FROM asset_event_tags")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        latest = {
            record.asset_entry.asset_key.to_string(): (
                record.asset_entry.last_materialization_record.storage_id
            )
            for record in instance.get_asset_records()
            if record.asset_entry.last_materialization_record
        }
    newest = dict(
        rows(
            index,
            "SELECT asset_key, MAX(id) FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key",
        )
    )
    return {
        "run_log": log(run_db),
        "index_log": log(index),
        "asset_keys": rows(index, "SELECT asset_key FROM asset_keys ORDER BY 1"),
        "asset_tags": sorted((a, k, None if "version" in k else v) for a, k, v in tags),
        "checks": rows(
            index,
            "SELECT asset_key, check_name, partition, execution_status "
            "FROM asset_check_executions ORDER BY id",
        ),
        # Each asset's latest materialization is the newest in the index; every tag is its
        # own asset event's.
        "latest_is_newest": latest == newest and len(latest) == 2,
        # Each asset's row in the index holds the time of its newest event of the kinds that
        # set it (materializations and planned ones here).
        "asset_rows_of_newest_events": rows(
            index,
            "SELECT COUNT(*), SUM(a.last_materialization_timestamp = (SELECT MAX(e.timestamp) "
            "FROM event_logs e WHERE e.asset_key = a.asset_key AND e.dagster_event_type IN "
            "('ASSET_MATERIALIZATION', 'ASSET_MATERIALIZATION_PLANNED'))) FROM asset_keys a",
        ),
        "tags_of_other_events": rows(
            index,
            "SELECT COUNT(*) FROM asset_event_tags t LEFT JOIN event_logs e ON t.event_id = e.id "
            "WHERE e.id IS NULL OR e.asset_key != t.asset_key",
        ),
    }


def _run(tmp_path: Path, name: str, batched: bool, **extra: str) -> tuple[dict[str, object], int]:
    """RUN in a new Dagster home: what it stored (`_stored`) and the connections it opened."""
    env = {**_home(tmp_path / name, batched), **extra}
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / name)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert _materializations(env) == len(CLASSES)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert isinstance(instance.event_log_storage, BatchedSqliteEventLogStorage) == batched
        for key in ("per_class", "after"):
            assert instance.get_materialized_partitions(dg.AssetKey(key)) == set(CLASSES)
    return _stored(Path(env["DAGSTER_HOME"])), int(out.stdout.split("connections")[-1])


def test_the_batched_event_log_stores_what_dagsters_own_stores(tmp_path: Path) -> None:
    """A run over 150 classes (per-class metadata, a check) stores the same rows in the same
    order with `BatchedSqliteEventLogStorage` as with Dagster's own SQLite event log, through
    a fraction of the connections, and so it does when the event index fails once in the
    middle of a batch: what was stored is not stored again, the rest is."""
    plain, plain_connections = _run(tmp_path, "plain", batched=False)
    assert plain["latest_is_newest"] and plain["tags_of_other_events"] == [(0,)]
    assert plain["asset_rows_of_newest_events"] == [(2, 2)]
    # Each class's two planned events and two materializations.
    assert sum(len(partitions) for _, partitions in plain["run_log"]) > 4 * len(CLASSES)
    batched, connections = _run(tmp_path, "batched", batched=True)
    assert batched == plain
    assert connections * 4 < plain_connections
    # The second chunk of the run's planned events fails in the index, after the run's log.
    recovered, _ = _run(tmp_path, "failing", batched=True, FAIL_INDEX_AT="2")
    assert (tmp_path / "failing" / "probe" / "index_failed").exists()
    assert recovered == plain


def test_a_batch_of_several_kinds_leaves_each_assets_row_as_event_by_event(
    tmp_path: Path,
) -> None:
    """Planned events and materializations of two assets interleaved in one batch: each
    asset's row in the index (its latest materialization, run and event time) ends as Dagster's
    own storage leaves it, storing the same events one at a time."""
    from dagster._core.events import (
        AssetMaterializationPlannedData,
        DagsterEvent,
        DagsterEventType,
        StepMaterializationData,
    )
    from dagster._core.storage.event_log import SqliteEventLogStorage

    def entry(kind: str, asset: str, partition: str, second: int) -> dg.EventLogEntry:
        if kind == "planned":
            kind_value = DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value
            data = AssetMaterializationPlannedData(dg.AssetKey(asset), partition=partition)
        else:
            kind_value = DagsterEventType.ASSET_MATERIALIZATION.value
            data = StepMaterializationData(dg.AssetMaterialization(asset, partition=partition))
        event = DagsterEvent(kind_value, "job", event_specific_data=data, step_key=asset)
        return dg.EventLogEntry(
            None, "DEBUG", "", "run-1", 1_700_000_000.0 + second, asset, "job", event
        )

    events = [
        entry("planned", "a", "p1", 1),
        entry("materialized", "a", "p1", 2),
        entry("planned", "b", "p1", 3),
        entry("planned", "a", "p2", 4),
        entry("materialized", "b", "p1", 5),
        entry("materialized", "a", "p2", 6),
        entry("planned", "a", "p3", 7),
    ]
    plain = SqliteEventLogStorage(str(tmp_path / "plain"))
    for one in events:
        plain.store_event(one)
    BatchedSqliteEventLogStorage(str(tmp_path / "batched")).store_event_batch(events)

    def asset_rows(folder: str) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(tmp_path / folder / "index.db")) as connection:
            return connection.execute(
                "SELECT asset_key, last_materialization, last_run_id, "
                "last_materialization_timestamp FROM asset_keys ORDER BY asset_key"
            ).fetchall()

    assert len(asset_rows("plain")) == 2
    assert asset_rows("batched") == asset_rows("plain")


def test_the_batched_event_log_remembers_only_the_tables_it_found(tmp_path: Path) -> None:
    """A table found in the event index is not looked up again; an absent one is, until it
    appears (as a migration would add it)."""
    storage = BatchedSqliteEventLogStorage(str(tmp_path / "runs"))
    assert storage.has_table("dynamic_partitions")
    assert not storage.has_table("added_later")
    with contextlib.closing(sqlite3.connect(tmp_path / "runs" / "index.db")) as connection:
        connection.execute("CREATE TABLE added_later (id INTEGER)")
        connection.commit()
    assert storage.has_table("added_later")


def test_inside_partitions_read_once_the_keys_are_read_once(tmp_path: Path) -> None:
    """Inside `partitions_read_once()` a definition's keys are read with one query: a key added
    by another storage meanwhile is seen after the block, one added or deleted through this
    storage at once. Outside it every question is a query, as in Dagster's own storage."""
    storage = BatchedSqliteEventLogStorage(str(tmp_path / "runs"))
    other = BatchedSqliteEventLogStorage(str(tmp_path / "runs"))
    storage.add_dynamic_partitions("fruit", ["Apple", "Kiwi"])
    queries: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if "dynamic_partitions" in statement and statement.lstrip().upper().startswith("SELECT"):
            queries.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        with dagster_sqlite.partitions_read_once():
            for _ in range(3):
                assert storage.has_dynamic_partition("fruit", "Kiwi")
                assert storage.get_dynamic_partitions("fruit") == ["Apple", "Kiwi"]
            assert len(queries) == 1
            other.add_dynamic_partitions("fruit", ["Lemon"])
            assert not storage.has_dynamic_partition("fruit", "Lemon")
            storage.add_dynamic_partitions("fruit", ["Mango"])
            assert storage.get_dynamic_partitions("fruit") == ["Apple", "Kiwi", "Lemon", "Mango"]
            storage.delete_dynamic_partition("fruit", "Apple")
            assert not storage.has_dynamic_partition("fruit", "Apple")
        assert storage.has_dynamic_partition("fruit", "Lemon")
        before = len(queries)
        storage.has_dynamic_partition("fruit", "Kiwi")
        storage.has_dynamic_partition("fruit", "Kiwi")
        assert len(queries) == before + 2
    finally:
        event.remove(Engine, "before_cursor_execute", count)
