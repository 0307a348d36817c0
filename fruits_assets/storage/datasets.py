"""The storage facade the assets use: read a table, stage new rows aside, publish them atomically.

Every output table is a Delta table at a fixed path under the output root. A publish is one
Delta commit: a reader sees the previous version or the new one, never a mix; a per-class publish
replaces exactly those classes (a commit of the files a step wrote that removes those classes'
files); earlier versions stay readable and restorable
(time travel) until a VACUUM. Assets name tables (`layout.RAW_IMAGES`, …), never paths.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import errors, filesystem, layout, table_files
from fruits_assets.storage.layout import LABEL_COLUMN
from fruits_assets.storage.table_files import DataFile, Rows

logger = logging.getLogger(__name__)

DELTA_LOG = "_delta_log"
FAILED_MARKER = "_AUDIT_FAILED.json"

# What a step computed from (or published as) one commit of a table, for the next steps of the
# same process (a run on local Spark): a commit never changes, so while it is still the table's
# latest they reuse it instead of reading the table again. Keyed by table location and fact;
# the commit is named by its version and its file's time, so a table deleted and written
# again from version 0 does not match what was remembered of the old one.
_FACTS: dict[tuple[str, str], tuple[tuple[int, int], Any]] = {}
MAX_FACTS = 32  # a run keeps about fifteen; a process that serves many output roots, no more
# A fact: {class: rows} for the classes a step published (`Datasets.rows_per_class`).
ROWS_PER_CLASS = "rows per class"
# A fact: the classes this process's publish replaced with its commit (`Published`), whose
# added files are then the live files of those classes (`Datasets.data_files`).
PUBLISHED = "published"
# Commits between two checkpoints of a table's log, as Spark's Delta writes them.
CHECKPOINT_INTERVAL = 10
# What `Datasets.spread` tells Spark a file costs to read, whatever its size (1 GiB).
FILE_COST = 1 << 30


@dataclass(frozen=True)
class Published:
    """The classes a publish replaced (None: the whole table)."""

    labels: frozenset[str] | None

    def replaced(self, labels: set[str] | None) -> bool:
        """Whether it replaced these classes (None: the whole table)."""
        if labels is None or self.labels is None:
            return labels is None and self.labels is None
        return labels <= self.labels


@dataclass(frozen=True)
class Staged:
    """Data a run wrote aside at `location`, to be audited, then published or kept there for
    inspection."""

    name: str
    location: str
    # The rows of the job that wrote them (Rows, dicts): a manifest of what each task wrote.
    files: list[Any] = field(default_factory=list)


def sql_string(value: str) -> str:
    """A Spark SQL string literal for any text (quotes, backslashes, newlines included)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def labels_predicate(labels: Iterable[str]) -> str:
    return f"{LABEL_COLUMN} IN ({', '.join(sql_string(label) for label in sorted(labels))})"


def labels_filter(labels: Iterable[str]) -> Column:
    """The rows of these classes, as one SQL expression: `Column.isin` would make a round trip
    to the JVM per class (a third of a second for 141 classes)."""
    labels = set(labels)
    return F.expr(labels_predicate(labels)) if labels else F.lit(False)


def _keep(key: tuple[str, str], commit: tuple[int, int], value: Any) -> None:
    """Keep `value` for `commit` of a table, dropping the oldest facts beyond MAX_FACTS."""
    _FACTS.pop(key, None)
    _FACTS[key] = (commit, value)
    while len(_FACTS) > MAX_FACTS:  # the oldest first
        del _FACTS[next(iter(_FACTS))]


class Datasets:
    """The Delta tables under one output root, and one run's staging area beside them."""

    def __init__(
        self, spark: SparkSession | None, storage: FruitsStorage, run_id: str = ""
    ) -> None:
        self.spark = spark
        self.storage = storage
        self.output = storage.output
        self.run_id = run_id or "adhoc"

    def location(self, dataset: str) -> str:
        return layout.dataset_dir(self.output, dataset)

    def spark_path(self, dataset: str) -> str:
        return self.storage.spark_path(self.location(dataset))

    def exists(self, dataset: str) -> bool:
        return filesystem.exists(filesystem.join(self.location(dataset), DELTA_LOG))

    def _table(self, dataset: str, version: int | None = None) -> DataFrame:
        if not self.exists(dataset):
            raise FileNotFoundError(
                f"{self.location(dataset)} is not a table yet: materialize the asset that writes "
                "it first"
            )
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.spark_path(dataset))

    def read(
        self, dataset: str, labels: Iterable[str] | None = None, version: int | None = None
    ) -> DataFrame:
        """The published rows (as of `version`, else the latest), or those of the given classes
        only (classes with none add none)."""
        table = self._table(dataset, version)
        if labels is None:
            return table
        return table.where(labels_filter(labels))

    def frame(
        self, dataset: str, schema: StructType, labels: Iterable[str] | None = None
    ) -> DataFrame:
        """The `schema` columns of the published rows (of these classes only, if given), as
        `schema`'s types, for a step that needs them in Spark (a join, Spark ML): read from the
        table's files by the Python workers where Delta's log says which files hold them
        (`data_files`: a table split into class folders only for given classes), else through
        Spark's Delta reader (`read`)."""
        wanted = None if labels is None else set(labels)
        files = self.data_files(dataset, wanted)
        if files is None:
            rows = self.read(dataset, wanted)
            return rows.select(*(F.col(f.name).cast(f.dataType) for f in schema.fields))
        return table_files.frame(self.spark, files, schema)

    def columns(self, dataset: str) -> list[str]:
        """The table's columns at its latest version, from its log: no Spark snapshot of it."""
        commit = self._latest_commit(dataset)
        table = None if commit is None else self._log_at(dataset, commit[0])
        if table is None:  # none yet (its error), or a log only Spark's Delta reads
            return self._table(dataset).columns
        return [column.name for column in table.schema().fields]

    def version(self, dataset: str) -> int | None:
        """The latest published version of a table (None before its first publish)."""
        commit = self._latest_commit(dataset)
        return commit[0] if commit else None

    def _commits(self, dataset: str) -> dict[int, int]:
        """{version: file time in ns} of the commits in the table's log."""
        return {
            int(info.base_name[: -len(".json")]): info.mtime_ns or 0
            for info in filesystem.list_entries(filesystem.join(self.location(dataset), DELTA_LOG))
            if info.base_name.endswith(".json") and info.base_name[: -len(".json")].isdigit()
        }

    def _latest_commit(self, dataset: str) -> tuple[int, int] | None:
        """(version, file time in ns) of the table's latest commit; None before the first."""
        return max(self._commits(dataset).items(), default=None)

    def commit(self, dataset: str) -> tuple[int, int] | None:
        """The table's latest commit as (version, file time in ns), None before the first: the
        time tells a table deleted and written again apart from the one it replaced."""
        return self._latest_commit(dataset)

    def file_changes(
        self, dataset: str, since: tuple[int, int], until: tuple[int, int]
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        """The data files a label-partitioned table's commits after `since` up to `until` (each
        a `commit`) took out and put in, each with its class: (files live at `since` and not at
        `until`, files live at `until` and not at `since`), paths relative to the table. None
        when the log cannot say: either commit is not this table's, a commit file is gone, a
        commit is not yet in the log's main folder, or one partitions the table otherwise,
        rearranges files without changing data (its adds may name files already there) or
        marks rows deleted inside a file."""
        log = filesystem.join(self.location(dataset), DELTA_LOG)
        commits = self._commits(dataset)
        version, written = since
        if commits.get(version) != written or commits.get(until[0]) != until[1]:
            return None
        if any(name.endswith(".json") for name in filesystem.list_names(f"{log}/_commits")):
            return None
        # Per file, its first and last action in these commits: a file first removed was live
        # at `since`, a file last added is live now (a RESTORE may add a file back).
        first: dict[str, str] = {}
        last: dict[str, str] = {}
        labels: dict[str, str] = {}
        for later in range(version + 1, until[0] + 1):
            if later not in commits:
                return None
            name = filesystem.join(log, f"{later:020d}.json")
            for line in filesystem.read_bytes(name).decode().splitlines():
                action = json.loads(line) if line.strip() else {}
                # A RESTORE restates the table's definition: followed while the table stays
                # partitioned by class (the files' own columns are read, whatever the schema).
                if action.get("metaData", {"partitionColumns": [LABEL_COLUMN]}).get(
                    "partitionColumns"
                ) != [LABEL_COLUMN]:
                    return None
                for kind in ("add", "remove"):
                    if kind not in action:
                        continue
                    entry = action[kind]
                    label = (entry.get("partitionValues") or {}).get(LABEL_COLUMN)
                    if label is None or entry.get("deletionVector") or not entry.get("dataChange"):
                        return None
                    path = unquote(entry["path"])
                    first.setdefault(path, kind)
                    last[path] = kind
                    labels[path] = label
        out = {p: labels[p] for p in first if first[p] == last[p] == "remove"}
        put = {p: labels[p] for p in first if first[p] == last[p] == "add"}
        return out, put

    def read_files(self, dataset: str, paths: Iterable[str], columns: list[str]) -> Iterator[Any]:
        """The given columns of these data files of a table (paths as `file_changes` gives
        them), each as a pyarrow Table read on the driver: for a few files, no Spark job."""
        import pyarrow.parquet as pq

        for path in paths:
            where = filesystem.Location.of(filesystem.join(self.location(dataset), path))
            schema = pq.read_schema(where.path, filesystem=where.fs)
            present = [c for c in columns if c in schema.names]
            yield pq.read_table(where.path, filesystem=where.fs, columns=present)

    def data_files(
        self, dataset: str, labels: Iterable[str] | None = None
    ) -> list[DataFile] | None:
        """The data files holding the table's rows at its latest version, for Python workers
        that read them themselves (`table_files`): of these classes, each file with its class,
        from a table partitioned by class; every file, for a table that is not (no `labels`).

        The files that this process's publish added, while its commit is the latest and it
        replaced these classes (`PUBLISHED`); else as the log lists them at that commit, read
        by the `deltalake` package (Spark's Delta would first compute its own snapshot of a
        table it has not seen: a few Spark jobs). None when the files may hold other rows or
        columns than the table: a table that needs more than Delta's first reader protocol
        (deletion vectors mark rows deleted inside a file; column mapping renames the stored
        columns), a file outside the table's folder, or a log the package cannot read."""
        commit = self._latest_commit(dataset)
        table = None if commit is None else self._log_at(dataset, commit[0])
        if table is None or table.protocol().min_reader_version != 1:
            return None
        wanted = None if labels is None else set(labels)
        published = self._kept_at(dataset, PUBLISHED, commit)
        found = None
        if published is not None and published.replaced(wanted):
            found = self._added_files(dataset, commit[0], published.labels)
            if found is not None and wanted is not None:  # these classes' of those replaced
                found = [(uri, label) for uri, label in found if label in wanted]
        if found is None:
            found = self._live_files(dataset, table, wanted)
            if found is None:
                return None
        if wanted is None:
            if any(label is not None for _, label in found):
                return None
            return [DataFile(uri) for uri, _ in found]
        if any(label not in wanted for _, label in found):
            return None
        return [DataFile(uri, label) for uri, label in found]

    def _log_at(self, dataset: str, version: int) -> Any | None:
        """The table's log at `version`, read by the `deltalake` package (its protocol, its
        live files); None where the package cannot read it (a feature it lacks, a storage
        error): Spark's Delta then reads the table, and reports what it cannot read."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        location = self.location(dataset)
        options = filesystem.delta_storage_options(location)
        try:
            return DeltaTable(location, version=version, storage_options=options)
        except DeltaError as error:
            logger.info("%s: the deltalake package cannot read its log (%s)", location, error)
            return None

    def _live_files(
        self, dataset: str, table: Any, labels: set[str] | None
    ) -> list[tuple[str, str | None]] | None:
        """The live data files of `table` (`_log_at`), each with its class (None in a table not
        split by class): those of other classes left out, unless `labels` is None. None for a
        file outside the table's folder."""
        location = self.location(dataset)
        found = []
        for entry in pa.table(table.get_add_actions(flatten=True)).to_pylist():
            path = unquote(entry["path"])
            label = entry.get(f"partition.{LABEL_COLUMN}")
            if "://" in path or path.startswith("/"):
                return None
            if labels is None or label is None or label in labels:
                found.append((filesystem.join(location, path), label))
        return found

    def _added_files(
        self, dataset: str, version: int, labels: frozenset[str] | None
    ) -> list[tuple[str, str | None]] | None:
        """The data files a commit added, each with its class: the live files of the classes it
        replaced (`labels`; None: the whole table). None when they may not be: a file with a
        deletion vector, outside the table's folder, or with rows of another class; or a log
        that cannot be read (the files are then listed by Delta)."""
        location = self.location(dataset)
        added = []
        try:
            log = filesystem.join(location, DELTA_LOG, f"{version:020d}.json")
            for line in filesystem.read_bytes(log).decode().splitlines():
                entry = (json.loads(line) if line.strip() else {}).get("add")
                if entry is None:
                    continue
                path = unquote(entry["path"])
                label = (entry.get("partitionValues") or {}).get(LABEL_COLUMN)
                if (
                    entry.get("deletionVector")
                    or "://" in path
                    or path.startswith("/")
                    or (labels is not None and label not in labels)  # not a folder per class
                ):
                    return None
                added.append((filesystem.join(location, path), label))
        except Exception:
            return None
        return added

    def remember(
        self, dataset: str, fact: str, value: Any, commit: tuple[int, int] | None = None
    ) -> None:
        """Keep `value`, a fact about the table's latest commit (or the given one, as `commit`
        names it), for `recall` in this process."""
        commit = commit or self._latest_commit(dataset)
        if commit is not None:
            _keep((self.location(dataset), fact), commit, value)

    def recall(self, dataset: str, fact: str) -> Any | None:
        """What `remember` kept as `fact`, if the table has had no commit since; else None."""
        return self._kept_at(dataset, fact, self._latest_commit(dataset))

    def _kept_at(self, dataset: str, fact: str, commit: tuple[int, int] | None) -> Any | None:
        """What was kept as `fact` for this commit of the table (as `_latest_commit` names it)."""
        kept = _FACTS.get((self.location(dataset), fact))
        return kept[1] if kept is not None and kept[0] == commit else None

    def remembered(self, dataset: str, fact: str, compute: Callable[[], Any]) -> Any:
        """`fact` as recalled, else computed now and kept. One listing of the table's log: the
        value is kept for the commit seen before computing it, so a commit made meanwhile by
        another writer makes the next call compute again rather than trust a stale value."""
        commit = self._latest_commit(dataset)
        key = (self.location(dataset), fact)
        kept = _FACTS.get(key)
        if kept is not None and kept[0] == commit:
            return kept[1]
        value = compute()
        if commit is not None:
            _keep(key, commit, value)
        return value

    def rows_per_class(self, dataset: str, labels: Iterable[str]) -> dict[str, int]:
        """The table's number of rows of each of these classes (0 for none): as the step that
        published them remembered (`ROWS_PER_CLASS`), else counted."""
        labels = set(labels)
        kept = self.recall(dataset, ROWS_PER_CLASS)
        if kept is not None and labels <= kept.keys():
            return {label: kept[label] for label in labels}
        counted = self.read(dataset, labels).groupBy(LABEL_COLUMN).count().collect()
        found = {r[LABEL_COLUMN]: r["count"] for r in counted}
        return {label: found.get(label, 0) for label in labels}

    # Write, audit, publish.

    def staging(self, name: str) -> str:
        """This run's staging folder for `name` (a table's name)."""
        return layout.staging_dir(self.output, self.run_id, name)

    def stage_files(self, write: Callable[[str], DataFrame], name: str) -> Staged:
        """Rows that Spark's Python workers write as files themselves (`class_files`'s data
        files, `csv_text`'s lines), into this run's staging folder: `write(folder)` is the Spark
        job, a DataFrame of one manifest row per file (and class) written. A killed run's files
        stay in the staging folder, which the next run sweeps; `publish_files` moves data files
        into the table and commits them."""
        location = self.staging(name)
        with errors.explained(location):
            files = write(location).collect()
        return Staged(name, location, files)

    def stage_rows(self, table: pa.Table, name: str, partitioned: bool = True) -> Staged:
        """Rows the driver holds (an Arrow table), written as data files into this run's
        staging folder by the driver itself, for `publish_files`: one per class (the table's
        class folders), else one (`partitioned` False). A small table needs no Spark job."""
        from fruits_assets.storage import class_files

        location = self.staging(name)
        with errors.explained(location):
            files = class_files.written_by_driver(table, location, partitioned)
        return Staged(name, location, files)

    def publish_files(
        self, staged: Staged, dataset: str, labels: Iterable[str] | None, schema: StructType
    ) -> int:
        """Publish the files `stage_files` or `stage_rows` wrote, in one commit: the given
        classes' rows replaced, every other class kept (the files in class folders; a class
        with no file loses its rows; no file for classes the table holds none of: no commit),
        or, for no `labels`, the whole of a table not split into class folders (its columns
        then those of `schema`). The files move into the table's
        folder, then one Delta commit adds them and removes those they replace. `schema`: the
        table's, as Spark would write it (the class column included).

        The commit is made by the `deltalake` package: Spark's Delta has no public way to
        commit files it did not write. Both read and write the same log, so Spark's reads,
        `fruits restore` and the next Spark commits see it as their own."""
        from deltalake import CommitProperties, DeltaTable
        from deltalake import Schema as DeltaSchema
        from deltalake.transaction import AddAction, create_table_with_add_actions
        from pyspark.sql.pandas.types import to_arrow_schema

        from fruits_assets.storage import class_files as cf

        partitioned = labels is not None
        wanted = set(labels) if labels is not None else set()
        if partitioned:
            others = sorted({r[LABEL_COLUMN] for r in staged.files} - wanted)
            if others:
                raise ValueError(
                    f"files of classes {others} staged for a publish of {sorted(wanted)}"
                )
            if not staged.files and self._holds_none(dataset, wanted):
                return self._published_version(dataset)
        # A file not split by class holds several classes: a manifest row each.
        files: dict[str, Row] = {}
        rows: dict[str, int] = {}
        for r in staged.files:
            files.setdefault(r[cf.FILE], r)
            rows[r[cf.FILE]] = rows.get(r[cf.FILE], 0) + r[cf.ROWS]
        adds = [
            AddAction(
                name,
                r[cf.SIZE],
                {LABEL_COLUMN: r[LABEL_COLUMN]} if partitioned else {},
                r[cf.MODIFIED],
                True,
                json.dumps({"numRecords": rows[name]}),
            )
            for name, r in files.items()
        ]
        note = self._commit_note(**({"classes": len(wanted)} if partitioned else {}))
        properties = CommitProperties(custom_metadata={"userMetadata": note})
        arrow_schema = to_arrow_schema(schema)
        columns = DeltaSchema.from_arrow(arrow_schema)
        location = self.location(dataset)
        options = filesystem.delta_storage_options(location)
        before = self._latest_commit(dataset)

        def commit(table: Any) -> None:
            if table is None:
                create_table_with_add_actions(
                    location,
                    columns,
                    adds,
                    mode="error",
                    partition_by=[LABEL_COLUMN] if partitioned else None,
                    storage_options=options,
                    commit_properties=properties,
                )
            elif partitioned:
                table.create_write_transaction(
                    adds,
                    mode="overwrite",
                    schema=table.schema(),
                    partition_by=[LABEL_COLUMN],
                    partition_filters=[(LABEL_COLUMN, "in", sorted(wanted))],
                    commit_properties=properties,
                )
            else:  # every file replaced; the columns too, if they changed
                table.create_write_transaction(
                    adds, mode="overwrite", schema=columns, commit_properties=properties
                )

        with errors.explained(location):
            table = None if before is None else DeltaTable(location, storage_options=options)
            if table is not None and partitioned:
                _same_columns(location, pa.schema(table.schema().to_arrow()), arrow_schema)
            moves = [(filesystem.join(staged.location, name), filesystem.join(location, name))
                     for name in files]  # fmt: skip
            _move_all(moves)
            try:
                commit(table)
            except BaseException:
                # Uncommitted, the files are invisible in the table: back to the staging folder,
                # where a failed publish leaves them for inspection and the next run sweeps them.
                with contextlib.suppress(Exception):
                    _move_all([(target, source) for source, target in moves])
                raise
        version = self._published(dataset, frozenset(wanted) if partitioned else None, before)
        if version % CHECKPOINT_INTERVAL == 0 and version > 0:
            # Readers replay the log's commits since its last checkpoint: one every ten
            # commits, as Spark's Delta writes them (the `deltalake` package's default is 100).
            # The commit is made: a checkpoint that fails only leaves the replay longer.
            with contextlib.suppress(Exception):
                DeltaTable(location, storage_options=options).create_checkpoint()
        return version

    def _holds_none(self, dataset: str, labels: set[str]) -> bool:
        """Whether the table exists and holds no row of these classes, seen without reading it:
        none of their class folders is there (a class's rows live in its folder; a commit that
        removes them leaves the files until a VACUUM, so a folder may outlive its rows, never
        the other way round)."""
        if not self.exists(dataset):
            return False
        folders = set(filesystem.list_dirs(self.location(dataset)))
        return not any(layout.partition_dir_name(label) in folders for label in labels)

    def _published(
        self, dataset: str, labels: frozenset[str] | None, before: tuple[int, int] | None
    ) -> int:
        """The version a publish of these classes (None: the whole table) just committed. Kept
        as `PUBLISHED` when it is the commit that follows `before`: this process's own."""
        commit = self._latest_commit(dataset)
        assert commit is not None, f"no commit found after publishing {dataset}"
        if commit[0] == (before[0] + 1 if before else 0):
            _keep((self.location(dataset), PUBLISHED), commit, Published(labels))
        return commit[0]

    def _published_version(self, dataset: str) -> int:
        version = self.version(dataset)
        assert version is not None, f"no commit found after publishing {dataset}"
        return version

    def _commit_note(self, **extra: Any) -> str:
        """Recorded with each commit: which run published it (for `fruits restore`)."""
        return json.dumps({"run_id": self.run_id, **extra})

    def keep_failed(self, staged: Staged, failed_checks: list[str]) -> str:
        """Keep staged data that failed its audit in the staging folder, marked, for
        inspection."""
        marker = {
            "run_id": self.run_id,
            "failed_checks": failed_checks,
            "at": datetime.now(timezone.utc).isoformat(),
        }
        filesystem.write_bytes(
            filesystem.join(staged.location, FAILED_MARKER), json.dumps(marker).encode()
        )
        return staged.location

    def discard(self, staged: Staged) -> None:
        filesystem.delete_dir(staged.location)

    # Versions.

    def history(self, dataset: str) -> list[dict[str, Any]]:
        """Every version of a table, newest first: version, time, operation, publishing run."""
        from delta.tables import DeltaTable

        rows = (
            DeltaTable.forPath(self.spark, self.spark_path(dataset))
            .history()
            .select("version", "timestamp", "operation", "userMetadata")
            .collect()
        )
        return [
            {
                "version": r["version"],
                "timestamp": r["timestamp"],
                "operation": r["operation"],
                "run_id": json.loads(r["userMetadata"]).get("run_id")
                if r["userMetadata"]
                else None,
            }
            for r in rows
        ]

    def restore(self, dataset: str, version: int) -> int:
        """Publish an earlier version again (a new commit: the restore is itself undoable)."""
        from delta.tables import DeltaTable

        with errors.explained(self.location(dataset)):
            DeltaTable.forPath(self.spark, self.spark_path(dataset)).restoreToVersion(version)
        return self._published_version(dataset)

    @contextmanager
    def spread(
        self, dataset: str, labels: Iterable[str], columns: list[str], per_slot: int = 4
    ) -> Iterator[Rows]:
        """The `columns` of the classes' rows split for expensive per-row work, about
        `per_slot` splits per task slot (a free worker takes the next split to the end, and
        each Python worker keeps its model across them); the rows inside this block.

        The Python workers read the table's files themselves (`table_files.shares_per_task`:
        whole files for many, pieces of each for a few) where Delta's log says which files
        hold the rows (`data_files`). Else Spark reads the table: each class's files read whole
        by one split, or, for fewer files than splits, its rows shuffled into a few pieces of
        their class (`split_by_class`)."""
        labels = set(labels)
        slots = self.spark.sparkContext.defaultParallelism
        found = self.data_files(dataset, labels)
        if found is not None:
            tasks = table_files.shares_per_task(found, slots, per_slot)
            # Cut by a hash of the path salted with the table's name: the pieces of files that
            # an earlier step cut by path (a small rerun's decode) are not all or nothing.
            yield table_files.shares_read(self.spark, tasks, columns, key="path", salt=dataset)
            return
        rows = self.read(dataset, labels)
        splits = slots * per_slot
        # Fewer classes than splits are fewer files: no need to plan the read to list them.
        files = [] if len(labels) < splits else rows.inputFiles()
        if len(files) < splits:
            yield Rows(split_by_class(rows, len(labels), slots, per_slot).select(*columns))
            return
        # Spark's default packs small files into 128 MiB splits: a few thousand images would
        # be one task on one core. Each file is read whole by one split (unless it reaches a
        # split's size: a class of over a GiB of photos, whose features would then take a file
        # per split, rows intact).
        with spark_conf(
            self.spark,
            {
                # Spark packs files into splits by their bytes plus a cost per file. A cost far
                # above any file's bytes packs them by count: the splits hold equal numbers of
                # classes, and so about equal numbers of photos, where splits of equal bytes
                # would not (one class's photos can weigh several times another's).
                "spark.sql.files.openCostInBytes": str(FILE_COST),
                "spark.sql.files.maxPartitionBytes": str(-(-len(files) // splits) * FILE_COST),
            },
        ):
            yield Rows(rows.select(*columns))


def split_by_class(rows: DataFrame, classes: int, slots: int, per_slot: int = 4) -> DataFrame:
    """Rows of `classes` classes shuffled for work whose tasks write a file per class they
    hold, with every task slot busy and few files per class:
    - as many classes as `per_slot` splits per slot (a full run): each class's rows in one
      split, a file per class;
    - a few classes (a small rerun): split by a hash of their paths, one split per slot, about
      equal: a file per class and slot, a few dozen at most;
    - in between (many classes, a large cluster): each class cut by a hash of its paths into
      as few pieces as give each split one, `per_slot` splits per slot: a class takes that
      many files, where split by path it would take one per slot.
    Rows of one path always stay in one split."""
    splits = slots * per_slot
    if classes >= splits:
        return rows.repartition(splits, LABEL_COLUMN)
    if classes * slots <= splits * per_slot:
        return rows.repartition(slots, "path")
    pieces = -(-splits // classes)
    piece = F.pmod(F.xxhash64("path"), F.lit(pieces))
    return rows.repartition(splits, LABEL_COLUMN, piece)


def _same_columns(location: str, table: pa.Schema, rows: pa.Schema) -> None:
    """Refuse to add files whose columns are not the table's, by name and type (as Spark's Delta
    refuses a write of another schema)."""

    def columns(schema: pa.Schema) -> dict[str, str]:
        return {f.name: str(f.type).replace("large_", "") for f in schema}

    if columns(table) != columns(rows):
        raise ValueError(
            f"{location} holds the columns {columns(table)}, not the {columns(rows)} of the rows "
            "to publish: it was written by another version of this pipeline. Move it away (or "
            "delete it) and run every class again to rebuild it"
        )


def _move_all(moves: list[tuple[str, str]]) -> None:
    """Move files (source, target), side by side: on S3 each is a copy and a delete."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda move: filesystem.move(*move), moves))


def finish_staging(output_root: str, run_id: str) -> None:
    """At the end of a run: remove its staging folder, unless it keeps data that failed."""
    run_dir = filesystem.join(layout.staging_root(output_root), run_id)
    if not filesystem.exists(run_dir):
        return
    if not any(i.base_name == FAILED_MARKER for i in filesystem.list_files(run_dir)):
        filesystem.delete_dir(run_dir)


def clean_staging(output_root: str, keep_run: str = "", keep_failed_days: float = 7.0) -> None:
    """Delete what dead runs left in the staging area; keep data that failed its audit for a
    week (for inspection) and `keep_run`'s own. Only the output root's lock holder calls it."""
    root = layout.staging_root(output_root)
    horizon = datetime.now(timezone.utc).timestamp() - keep_failed_days * 86400
    for name in set(filesystem.list_names(root)) - set(filesystem.list_dirs(root)):
        filesystem.delete_file(filesystem.join(root, name))
    for run_id in filesystem.list_dirs(root):
        if run_id == keep_run:
            continue
        run_dir = filesystem.join(root, run_id)
        markers = [
            info for info in filesystem.list_files(run_dir) if info.base_name == FAILED_MARKER
        ]
        if markers and max(m.mtime.timestamp() for m in markers if m.mtime) > horizon:
            continue
        filesystem.delete_dir(run_dir)


@contextmanager
def spark_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Session settings for the duration of a block, restored afterwards."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
