"""Dagster's SQLite storage with one reader held open per database file while runs execute.

Dagster's SQLite storages open and close a connection for every event they store. When the last
connection to a database in WAL mode closes, SQLite checkpoints the WAL into the database, syncs
both and deletes the WAL and its shared-memory file: a few syncs and four file creations or
deletions per event, for the ~3,000 events of a run over 141 classes (a third of Dagster's own
time in such a run). While `kept_open()` is active, this process holds a reader (an open read
transaction) on each Dagster database it has opened, so that a closing connection is not the
last one; every `REFRESH_EVERY` connections the reader steps aside once, and that connection's
close checkpoints the WAL as usual. Commits are synced as Dagster configures them: durability
does not change. Leaving `kept_open()` closes the readers.

Uses SQLAlchemy's public `connect` event, not Dagster's internals, and does nothing for other
storages (Postgres, in-memory instances)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

# After this many connections to a database, its reader closes for one connection, which then
# closes as the last one and checkpoints the WAL: a reader's open transaction keeps the WAL from
# being checkpointed past it, so it would otherwise grow for the whole run (50 MB in a run of
# two assets over 300 classes; 2.3 MB with this refresh).
REFRESH_EVERY = 64


class _Readers:
    """The readers held open, one per database file, with the connections seen since each
    was opened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readers: dict[str, list[Any]] = {}  # path -> [connection, connections since]

    def on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        # fetchall: a statement left unfinished would hold a read lock of its own.
        path = dbapi_connection.execute("PRAGMA database_list").fetchall()[0][2]
        if not path:  # in-memory
            return
        with self.lock:
            held = self.readers.get(path)
            if held is not None:
                held[1] += 1
                if held[1] >= REFRESH_EVERY:
                    self._close(self.readers.pop(path)[0])
                return
            # Only a database in WAL mode: in rollback-journal mode (a database Dagster is still
            # creating), a reader's open transaction would block its writers.
            mode = dbapi_connection.execute("PRAGMA journal_mode").fetchall()[0][0]
            if mode.lower() != "wal":
                return
            reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            try:
                # A read transaction holds the database's shared lock: no connection of this
                # process that closes meanwhile is the last one.
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except sqlite3.Error:  # busy, or gone: Dagster's own connection goes on as usual
                self._close(reader)
                return
            self.readers[path] = [reader, 0]

    @staticmethod
    def _close(reader: sqlite3.Connection) -> None:
        try:
            reader.close()
        except sqlite3.Error:
            pass

    def close(self) -> None:
        with self.lock:
            for reader, _ in self.readers.values():
                self._close(reader)
            self.readers.clear()


@contextmanager
def kept_open() -> Iterator[None]:
    """While active, Dagster's SQLite databases opened by this process stay open (one idle
    reader each), so that storing an event does not checkpoint and delete their WAL."""
    readers = _Readers()
    event.listen(Engine, "connect", readers.on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", readers.on_connect)
        readers.close()
