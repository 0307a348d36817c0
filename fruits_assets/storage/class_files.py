"""A table's data files written by Spark's Python workers themselves, one per class and task.

Spark's Parquet writer takes every value of a list column through Parquet's record consumer
(a group, a field and a value per float): 10.8 million feature floats of the 8,460-image sample
cost it about 3.7 s on 2 cores, after the rows were computed and held aside. A worker that has
just computed the vectors as Arrow arrays writes them with pyarrow in a fraction of that, in the
same task. `Datasets.stage_files` runs such a writer and `Datasets.publish_files` commits what
it wrote to the Delta table, so the table is still changed by one atomic commit.

Workers write into the run's staging folder, in the table's own layout (`label=<class>/`
folders, Spark's escaping); a publish moves the files into the table's folder and commits them.
Each task reports one row per file it wrote (`MANIFEST_SCHEMA`): what the commit and the audit
need, without reading the files back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import types as T

from fruits_assets.storage import filesystem
from fruits_assets.storage.layout import LABEL_COLUMN, partition_dir_name

FILE, SIZE, ROWS, MODIFIED = "file", "size", "rows", "modification_time"
DISTINCT = "distinct"  # the distinct values of the writer's `distinct` column in the file's class
MANIFEST_FIELDS = [
    # The file's path under the folder it was written to, unescaped (as Delta's log decodes it).
    T.StructField(FILE, T.StringType(), False),
    T.StructField(LABEL_COLUMN, T.StringType(), False),
    T.StructField(SIZE, T.LongType(), False),
    T.StructField(ROWS, T.LongType(), False),
    T.StructField(MODIFIED, T.LongType(), False),  # ms since the epoch, as Delta records it
    T.StructField(DISTINCT, T.LongType(), False),
]


def manifest_schema(counts: Sequence[str]) -> T.StructType:
    """One row per written file and class, and a count of its rows per name in `counts`."""
    return T.StructType(
        [*MANIFEST_FIELDS, *(T.StructField(c, T.LongType(), False) for c in counts)]
    )


# What a writer counts of each file's rows of a class for the audit: {count name: rows}, per
# Arrow batch of them.
Summary = Callable[[pa.RecordBatch], Mapping[str, int]]


@dataclass
class _Tally:
    """What a file holds of one class."""

    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)


@dataclass
class _OpenFile:
    relative: str
    stream: pa.NativeFile
    writer: pq.ParquetWriter
    classes: dict[str, _Tally] = field(default_factory=dict)


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
    column among them (0 without one). The files are complete once their rows are
    yielded; a task that fails leaves its files in the staging folder, in no manifest."""
    task = uuid.uuid4().hex
    where = filesystem.Location.of(folder)
    opened: dict[str | None, _OpenFile] = {}
    try:
        for batch in batches:
            labels = batch.column(LABEL_COLUMN)
            present = pc.unique(labels).to_pylist()
            if not partitioned and batch.num_rows:
                whole = opened.get(None) or _open(
                    where, f"part-{task}.snappy.parquet", batch, columns
                )
                opened[None] = whole
                whole.writer.write_batch(batch.select(list(columns)))
            for label in present:
                rows = batch if len(present) == 1 else batch.filter(pc.equal(labels, label))
                if partitioned:
                    name = (
                        f"{partition_dir_name(label)}/part-{task}-{len(opened):05d}.snappy.parquet"
                    )
                    current = opened.get(label) or _open(where, name, rows, columns)
                    opened[label] = current
                    current.writer.write_batch(rows.select(list(columns)))
                else:
                    current = opened[None]
                tally = current.classes.setdefault(label, _Tally())
                tally.rows += rows.num_rows
                for key, value in summary(rows).items():
                    tally.counts[key] = tally.counts.get(key, 0) + int(value)
                if distinct is not None:
                    tally.keys.update(rows.column(distinct).to_pylist())
        files = []
        for current in opened.values():
            current.writer.close()
            size = current.stream.tell()
            current.stream.close()
            files.append((current, size, int(time.time() * 1000)))
        opened.clear()
    finally:
        for current in opened.values():  # a failed task: close what it opened
            current.stream.close()
    rows = [(f, size, modified, label, tally) for f, size, modified in files
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


def _open(
    where: filesystem.Location, relative: str, rows: pa.RecordBatch, columns: Sequence[str]
) -> _OpenFile:
    path = f"{where.path.rstrip('/')}/{relative}"
    where.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    stream = where.fs.open_output_stream(path)
    schema = rows.select(list(columns)).schema
    # As Spark writes the tables' files: snappy, no dictionary (nearly every value is unique).
    writer = pq.ParquetWriter(stream, schema, compression="snappy", use_dictionary=False)
    return _OpenFile(relative, stream, writer)
