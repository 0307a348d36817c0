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
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
