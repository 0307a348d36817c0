"""A table's data files written by Spark's Python workers themselves, in the tasks that compute
the rows, or by the driver for the rows it holds (`written_by_driver`).

Spark's Parquet writer takes every value of a list column through Parquet's record consumer
(a group, a field and a value per float): 10.8 million feature floats of the 8,460-image sample
cost it about 3.7 s on 2 cores, after the rows were computed and held aside. A worker that has
just computed the vectors as Arrow arrays writes them with pyarrow in a fraction of that, in the
same task. `Datasets.stage_files` runs such a writer and `Datasets.publish_files` commits what
it wrote to the Delta table, so the table is still changed by one atomic commit.

Workers write into the run's staging folder, in the table's own layout (`label=<class>/`
folders, escaped as Spark escapes them), or one file per task for a table not split by class; a
publish moves the files into the table's folder and commits them. Each task reports one row per
file and class it wrote (`manifest_schema`): what the commit and the audit need, without
reading the files back.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import types as T

from fruits_assets.storage import filesystem
from fruits_assets.storage.layout import LABEL_COLUMN, partition_dir_name

FILE, SIZE, ROWS, MODIFIED = "file", "size", "rows", "modification_time"
DISTINCT = "distinct"  # the distinct values of the writer's `distinct` column in the file's class
MANIFEST_FIELDS = [
    # The file's path under the folder it was written to, as a path (Delta's log holds it
    # URL-encoded; the `deltalake` package encodes it when it commits).
    T.StructField(FILE, T.StringType(), False),
    T.StructField(LABEL_COLUMN, T.StringType(), False),
    T.StructField(SIZE, T.LongType(), False),
    T.StructField(ROWS, T.LongType(), False),
    T.StructField(MODIFIED, T.LongType(), False),  # ms since the epoch, as Delta records it
    T.StructField(DISTINCT, T.LongType(), False),
]
# Rows a task holds before it writes them as row groups: Parquet readers pay per row group, and
# a task's memory stays bounded (4,096 photos' 1,280-d vectors are 21 MB), photos of a few MB
# each included (their bytes bound it first).
BUFFERED_ROWS = 4096
BUFFERED_BYTES = 64 << 20


def manifest_schema(counts: Sequence[str]) -> T.StructType:
    """One row per written file and class, and a count of its rows per name in `counts`."""
    added = [T.StructField(name, T.LongType(), False) for name in counts]
    return T.StructType([*MANIFEST_FIELDS, *added])


# What a writer counts of a file's rows of a class for the audit: {count name: rows}, per Arrow
# batch of them.
Summary = Callable[[pa.RecordBatch], Mapping[str, int]]


@dataclass
class _Tally:
    """What a file holds of one class."""

    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    keys: set[Any] = field(default_factory=set)


@dataclass
class _OpenFile:
    relative: str
    path: str
    stream: pa.NativeFile
    writer: pq.ParquetWriter
    held: list[pa.RecordBatch] = field(default_factory=list)
    classes: dict[str, _Tally] = field(default_factory=dict)

    def flush(self) -> None:
        if self.held:
            self.writer.write_table(pa.Table.from_batches(self.held))
            self.held = []


def written(
    batches: Iterator[pa.RecordBatch],
    folder: str,
    columns: Sequence[str],
    summary: Summary,
    counts: Sequence[str],
    distinct: str | None = None,
    partitioned: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Write one task's rows (Arrow batches holding `columns` and the class column) under
    `folder`. `partitioned`: one Parquet file per class, in the class's folder, without the
    class column (the folder says it, as in Delta's files); else one file for all the task's
    rows, `columns` as they are. Then one row per file and class it holds
    (`manifest_schema(counts)`), its `DISTINCT` the number of distinct values of the `distinct`
    column among them (0 without one). The files are complete once their rows are yielded; a
    task that fails deletes the files it began."""
    task = uuid.uuid4().hex
    where = filesystem.Location.of(folder)
    opened: dict[str | None, _OpenFile] = {}
    done: list[tuple[_OpenFile, int, int]] = []
    try:
        held = held_bytes = 0
        for batch in batches:
            labels = batch.column(LABEL_COLUMN)
            present = pc.unique(labels).to_pylist()
            for label in present:
                rows = batch if len(present) == 1 else batch.filter(pc.equal(labels, label))
                kept = rows.select(list(columns))
                key = label if partitioned else None
                current = opened.get(key)
                if current is None:
                    name = (
                        f"{partition_dir_name(label)}/part-{task}-{len(opened):05d}.snappy.parquet"
                        if partitioned
                        else f"part-{task}.snappy.parquet"
                    )
                    current = opened[key] = _open(where, name, kept.schema)
                current.held.append(kept)
                held += rows.num_rows
                held_bytes += kept.nbytes
                tally = current.classes.setdefault(label, _Tally())
                tally.rows += rows.num_rows
                for count, value in summary(rows).items():
                    tally.counts[count] = tally.counts.get(count, 0) + int(value)
                if distinct is not None:
                    tally.keys.update(rows.column(distinct).to_pylist())
            if held >= BUFFERED_ROWS or held_bytes >= BUFFERED_BYTES:
                for current in opened.values():
                    current.flush()
                held = held_bytes = 0
        for current in opened.values():
            current.flush()
            current.writer.close()
            done.append((current, current.stream.tell(), int(time.time() * 1000)))
            current.stream.close()
    except BaseException:
        for current in opened.values():  # no half-written file left for a retry to meet
            with contextlib.suppress(Exception):
                current.stream.close()
            with contextlib.suppress(Exception):
                where.fs.delete_file(current.path)
        raise
    rows = [(f, size, modified, label, tally) for f, size, modified in done
            for label, tally in f.classes.items()]  # fmt: skip
    if not rows:
        return
    yield pa.RecordBatch.from_pydict(
        {
            FILE: [f.relative for f, *_ in rows],
            LABEL_COLUMN: [label for *_, label, _ in rows],
            SIZE: [size for _, size, *_ in rows],
            ROWS: [tally.rows for *_, tally in rows],
            MODIFIED: [modified for _, _, modified, *_ in rows],
            DISTINCT: [len(tally.keys) for *_, tally in rows],
            **{c: [tally.counts.get(c, 0) for *_, tally in rows] for c in counts},
        },
        schema=pa.schema(
            [
                pa.field(FILE, pa.string(), False),
                pa.field(LABEL_COLUMN, pa.string(), False),
                *(pa.field(n, pa.int64(), False) for n in (SIZE, ROWS, MODIFIED, DISTINCT)),
                *(pa.field(c, pa.int64(), False) for c in counts),
            ]
        ),
    )


def written_by_driver(
    table: pa.Table, folder: str, partitioned: bool = True, threads: int = 16
) -> list[dict[str, Any]]:
    """Write rows the driver already holds (a listing, a model) under `folder` as `written`
    would: one Parquet file per class, the classes side by side (on S3 each file is a request of
    its own), or, not `partitioned`, one file of all the columns. Returns the manifest's rows
    (`manifest_schema(())`). No Spark job: a JVM write would plan, shuffle and commit a few
    thousand small rows in seconds, where pyarrow takes milliseconds."""
    if not partitioned:
        columns = table.column_names
        if LABEL_COLUMN not in columns:  # a table without classes: the manifest's class is ""
            blank = pa.array([""] * table.num_rows, pa.string())
            table = table.append_column(LABEL_COLUMN, blank)
        found = written(iter(table.to_batches()), folder, columns, lambda _: {}, (), None, False)
        return [row for batch in found for row in batch.to_pylist()]
    columns = [c for c in table.column_names if c != LABEL_COLUMN]
    labels = table.column(LABEL_COLUMN)
    classes = pc.unique(labels).to_pylist()

    def write(label: str) -> list[dict[str, Any]]:
        rows = table.filter(pc.equal(labels, label))
        found = written(iter(rows.to_batches()), folder, columns, lambda _: {}, ())
        return [row for batch in found for row in batch.to_pylist()]

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(classes)))) as pool:
        return [row for rows in pool.map(write, classes) for row in rows]


def _open(where: filesystem.Location, relative: str, schema: pa.Schema) -> _OpenFile:
    path = f"{where.path.rstrip('/')}/{relative}"
    filesystem.make_dirs(where.fs, path.rsplit("/", 1)[0])
    stream = where.fs.open_output_stream(path)
    # As Spark writes the tables' files: snappy, no dictionary (nearly every value is unique).
    writer = pq.ParquetWriter(stream, schema, compression="snappy", use_dictionary=False)
    return _OpenFile(relative, path, stream, writer)


def read_back(
    folder: str, files: Iterable[Mapping[str, Any]], columns: Sequence[str]
) -> Iterator[tuple[str, pa.Table]]:
    """The given columns of files `written` under `folder`, each with its class, read on the
    driver (a few small files: rejections)."""
    for row in files:
        where = filesystem.Location.of(f"{folder.rstrip('/')}/{row[FILE]}")
        yield row[LABEL_COLUMN], pq.read_table(where.path, filesystem=where.fs, columns=columns)


def per_class(files: Iterable[Mapping[str, Any]], counts: Sequence[str]) -> dict[str, dict]:
    """The manifest's rows (`written`) summed per class: `ROWS`, `DISTINCT` and `counts`.
    A class's distinct values add up over its files when no value is in two files (the
    writer's rows reach the tasks split by class or by that value)."""
    totals: dict[str, dict[str, int]] = {}
    for row in files:
        total = totals.setdefault(row[LABEL_COLUMN], dict.fromkeys([ROWS, DISTINCT, *counts], 0))
        for name in total:
            total[name] += row[name]
    return totals
