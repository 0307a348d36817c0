"""Dagster's SQLite databases held open by one idle connection each while runs execute.

Dagster's SQLite storages open and close a connection for every event they store. When the last
connection to a database in WAL mode closes, SQLite checkpoints the WAL into the database, syncs
both and deletes the WAL and its shared-memory file: a few syncs and four file creations or
deletions per event, for the ~3,000 events of a run over 141 classes (a third of Dagster's own
time in such a run). While `kept_open()` is active, this process keeps one idle connection to
each WAL database of the Dagster home it connects to: a connection to a database in WAL mode
holds a shared lock on it until it closes, so no other connection's close is the last one, and
the WAL is checkpointed as its pages accumulate (SQLite's automatic checkpoint, about 4 MB), not
after every event. No snapshot is held: every process reads and writes as before, and commits
are synced as Dagster configures them (durability does not change). Leaving `kept_open()`
closes those connections; the last close checkpoints the WAL as before.

Uses SQLAlchemy's public `connect` event, not Dagster's internals, and touches only SQLite
files under the Dagster home (Postgres storage and in-memory instances are left alone).

`BatchedSqliteEventLogStorage`, the event log of the Dagster home `fruits` sets up, stores the
events Dagster hands it in batches (a step's per-class materializations, a run's "planned"
events: a few hundred of each in a run over every class) in one transaction per database
instead of two connections and two commits per event. Inside `partitions_read_once()` it reads
each dynamic partitions definition's keys once.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import dagster as dg
from dagster._core.events import ASSET_EVENTS
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event
from sqlalchemy.engine import Engine

# Held at once, the least recently connected closed first: a `fruits run` over scattered
# classes executes one Dagster run (one database) per range of neighbouring classes.
MAX_HELD = 8


class _Holder:
    """One idle connection per WAL database under `home` that this process connects to."""

    def __init__(self, home: str) -> None:
        self.home = os.path.join(os.path.realpath(home), "")
        self.lock = threading.Lock()
        self.held: dict[str, sqlite3.Connection] = {}
        self.closed = False

    def on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        try:
            # fetchall: a statement left unfinished would keep a read transaction open.
            path = dbapi_connection.execute("PRAGMA database_list").fetchall()[0][2]
            with self.lock:
                if self.closed or not path:  # no path: an in-memory database
                    return
                if path in self.held:
                    self.held[path] = self.held.pop(path)  # the most recently connected
                    return
                if not os.path.realpath(path).startswith(self.home):
                    return
                # Only a database in WAL mode: a database Dagster is still creating is in
                # rollback-journal mode until its schema is in place, and switches then.
                mode = dbapi_connection.execute("PRAGMA journal_mode").fetchall()[0][0]
                if mode.lower() != "wal":
                    return
                # timeout=0: a database that is busy now is held at a later connection.
                holder = sqlite3.connect(path, timeout=0, check_same_thread=False)
                try:
                    # One finished read: the connection has opened the WAL and holds its
                    # shared lock on the database from then on, without a transaction.
                    holder.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                except sqlite3.Error:
                    holder.close()
                    return
                self.held[path] = holder
                if len(self.held) > MAX_HELD:
                    self._close(self.held.pop(next(iter(self.held))))
        except sqlite3.Error:  # Dagster's own connection goes on as it would without this
            return

    @staticmethod
    def _close(holder: sqlite3.Connection) -> None:
        try:
            holder.close()
        except sqlite3.Error:
            pass

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for holder in self.held.values():
                self._close(holder)
            self.held.clear()


@contextmanager
def kept_open(home: str | None = None) -> Iterator[None]:
    """While active, the SQLite databases of the Dagster home `home` ($DAGSTER_HOME by default)
    that this process connects to stay open (one idle connection each), so that storing an
    event does not checkpoint and delete their WAL. Without a Dagster home: nothing to do."""
    home = home or os.environ.get("DAGSTER_HOME")
    if not home:
        yield
        return
    holder = _Holder(home)
    event.listen(Engine, "connect", holder.on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", holder.on_connect)
        holder.close()


_log = logging.getLogger(__name__)

# Events Dagster may hand the storage at once: more than a run over every class plans per asset.
EVENT_BATCH_SIZE = 1000
# Rows of one INSERT statement: well under SQLite's limit on a statement's bound values.
ROWS_PER_INSERT = 200


# Each dynamic partitions definition's keys, read once inside `partitions_read_once()`, by
# storage (its id) and definition name.
_KEYS_READ: ContextVar[dict[tuple[int, str], tuple[list[str], frozenset[str]]] | None] = ContextVar(
    "fruits_partition_keys_read", default=None
)


@contextmanager
def partitions_read_once() -> Iterator[None]:
    """While active (in this thread), `BatchedSqliteEventLogStorage` answers for the dynamic
    partitions from one read of each definition's keys, the first time it is asked.

    Dagster checks the partition key of every piece of per-partition metadata a step adds with
    two or three queries of the partitions table, each through a connection of its own: a
    second of the run's CPU for a step over 141 classes. A step adding metadata for the
    classes it ran checks them against the keys as they were a moment before, which the run
    was launched with; a partition added or deleted meanwhile through this storage, in this
    thread, is read again. Only `get_dynamic_partitions` and `has_dynamic_partition` answer
    from the read: what Dagster asks to check a partition key."""
    token = _KEYS_READ.set({})
    try:
        yield
    finally:
        _KEYS_READ.reset(token)


def _is_asset_event(entry: dg.EventLogEntry) -> bool:
    return entry.is_dagster_event and entry.dagster_event_type in ASSET_EVENTS


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log, storing each batch of asset events Dagster hands it in one
    transaction per database: the run's own log, then its mirror in the event index. The rows
    are those `SqliteEventLogStorage.store_event` writes for each event, in the same order; each
    asset's summary row in the index is written once per kind of event in a batch, its columns as
    the batch's events would leave them, rather than once per event.

    Dagster batches events only while $DAGSTER_EVENT_BATCH_SIZE is set, and reads it at each
    event: the storage sets it (unless set already) in every process that loads it, a run's or
    the UI's. A batch that fails before anything of it is stored, Dagster stores again event by
    event; one that fails part-way, this storage finishes itself, event by event from where it
    stopped, rather than let Dagster store the whole batch again (the stored part twice)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
        self._tables_found: set[str] = set()
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def has_table(self, table_name: str) -> bool:
        """Whether the event index has this table; a table once found is remembered. Dagster
        asks before many of its queries (three times per class that a step gives metadata
        to), each time through a connection of its own; its tables are created by migrations
        and dropped only when one is undone, so only an absent table needs asking again."""
        if table_name in self._tables_found:
            return True
        found = super().has_table(table_name)
        if found:
            self._tables_found.add(table_name)
        return found

    def _keys(self, partitions_def_name: str) -> tuple[list[str], frozenset[str]] | None:
        """The definition's keys as first read inside `partitions_read_once()`; None outside."""
        read = _KEYS_READ.get()
        if read is None:
            return None
        key = (id(self), partitions_def_name)
        if key not in read:
            keys = list(super().get_dynamic_partitions(partitions_def_name))
            read[key] = (keys, frozenset(keys))
        return read[key]

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        keys = self._keys(partitions_def_name)
        if keys is None:
            return super().get_dynamic_partitions(partitions_def_name)
        return list(keys[0])

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        keys = self._keys(partitions_def_name)
        if keys is None:
            return super().has_dynamic_partition(partitions_def_name, partition_key)
        return partition_key in keys[1]

    def add_dynamic_partitions(
        self, partitions_def_name: str, partition_keys: Sequence[str]
    ) -> None:
        self._forget_keys(partitions_def_name)
        super().add_dynamic_partitions(partitions_def_name, partition_keys)

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        self._forget_keys(partitions_def_name)
        super().delete_dynamic_partition(partitions_def_name, partition_key)

    def _forget_keys(self, partitions_def_name: str) -> None:
        read = _KEYS_READ.get()
        if read is not None:
            read.pop((id(self), partitions_def_name), None)

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        chunks = list(_chunks(events))
        done = 0  # chunks stored in both databases
        logged = False  # chunks[done] is in the run's log, not yet in the index
        try:
            for entries, batched in chunks:
                if batched:
                    with self.run_connection(entries[0].run_id) as conn:
                        conn.execute(self.prepare_insert_event_batch(entries))
                    logged = True
                    with self.index_transaction() as conn:
                        self._index(conn, entries)
                else:
                    self.store_event(entries[0])
                done, logged = done + 1, False
        except Exception as error:
            if done == 0 and not logged:
                raise  # nothing stored: Dagster stores the batch again, event by event
            # Dagster would store the whole batch again, the part already stored twice: the
            # rest is stored here, event by event, as Dagster's own storage does.
            _log.warning(f"storing a batch of events failed part-way ({error}); storing the rest")
            for position, (entries, _) in enumerate(chunks[done:]):
                for entry in entries:
                    if position == 0 and logged:
                        with self.index_transaction() as conn:
                            self._index(conn, [entry])
                    else:
                        self.store_event(entry)

    def _index(self, conn: Any, entries: list[dg.EventLogEntry]) -> None:
        """The event index's rows for asset events of one run, as `store_event` writes them;
        each asset's summary row once per asset and kind of event (below)."""
        ids = [conn.execute(self.prepare_insert_event(e)).inserted_primary_key[0] for e in entries]
        if None in ids:
            raise dg.DagsterInvariantViolationError("an asset event was stored without an id")
        self._store_asset_event_tags(conn, entries, ids)
        # The index keeps one row per asset, each column from the newest event that sets it,
        # and an event's kind decides which columns it sets: the newest event of each asset and
        # kind, in their order, leave its columns as every event would, for one write (and one
        # serialization of a materialization) per asset and kind instead of one per event.
        newest: dict[tuple[Any, Any], tuple[dg.EventLogEntry, int]] = {}
        for entry, event_id in zip(entries, ids, strict=True):
            kind = (entry.get_dagster_event().asset_key, entry.dagster_event_type)
            newest.pop(kind, None)  # re-inserted last: the order of the newest events
            newest[kind] = (entry, event_id)
        for entry, event_id in newest.values():
            self._store_asset_event(conn, entry, event_id)


def _chunks(events: Sequence[dg.EventLogEntry]) -> Iterator[tuple[list[dg.EventLogEntry], bool]]:
    """`events` in order, as (entries, batched): runs of one run's asset events, at most
    ROWS_PER_INSERT each, are batched; any other event (a check's planned evaluation) and a
    lone asset event are stored as Dagster's own storage stores them."""
    for (asset_events, _), group in itertools.groupby(
        events, key=lambda entry: (_is_asset_event(entry), entry.run_id)
    ):
        entries = list(group)
        if not asset_events or len(entries) == 1:
            yield from (([entry], False) for entry in entries)
            continue
        for start in range(0, len(entries), ROWS_PER_INSERT):
            yield entries[start : start + ROWS_PER_INSERT], True
