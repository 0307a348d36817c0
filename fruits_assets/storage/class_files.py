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
MANIFEST_FIELDS = [
    # The file's path under the folder it was written to, unescaped (as Delta's log decodes it).
    T.StructField(FILE, T.StringType(), False),
    T.StructField(LABEL_COLUMN, T.StringType(), False),
    T.StructField(SIZE, T.LongType(), False),
    T.StructField(ROWS, T.LongType(), False),
    T.StructField(MODIFIED, T.LongType(), False),  # ms since the epoch, as Delta records it
]


def manifest_schema(counts: Sequence[str]) -> T.StructType:
    """One row per written file, and a count of its rows per name in `counts` (`Summary`)."""
    return T.StructType(
        [*MANIFEST_FIELDS, *(T.StructField(c, T.LongType(), False) for c in counts)]
    )


# What a writer counts of each file's rows for the audit: {count name: rows}, per Arrow batch,
# plus the rows' keys (e.g. paths), whose distinct number per file is reported as `distinct`.
Summary = Callable[[pa.RecordBatch], tuple[Mapping[str, int], Sequence[str]]]


@dataclass
class _OpenFile:
    relative: str
    stream: pa.NativeFile
    writer: pq.ParquetWriter
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)


def written(
    batches: Iterator[pa.RecordBatch],
    folder: str,
    columns: Sequence[str],
    summary: Summary,
    counts: Sequence[str],
    distinct: str,
) -> Iterator[pa.RecordBatch]:
    """Write one task's rows (Arrow batches holding `columns` and the class column) under
    `folder`: one Parquet file per class, in the class's folder, without the class column (the
    folder says it, as in Delta's files). Then one row per file (`manifest_schema(counts +
    [distinct])`). A file is complete once its row is yielded; a task that fails leaves its
    files in the staging folder, in no manifest."""
    task = uuid.uuid4().hex
    where = filesystem.Location.of(folder)
    opened: dict[str, _OpenFile] = {}
    try:
        for batch in batches:
            labels = batch.column(LABEL_COLUMN)
            present = pc.unique(labels).to_pylist()
            for label in present:
                rows = batch if len(present) == 1 else batch.filter(pc.equal(labels, label))
                current = opened.get(label)
                if current is None:
                    current = opened[label] = _open(where, task, len(opened), label, rows, columns)
                current.writer.write_batch(rows.select(list(columns)))
                current.rows += rows.num_rows
                found, keys = summary(rows)
                for name, value in found.items():
                    current.counts[name] = current.counts.get(name, 0) + int(value)
                current.keys.update(keys)
        files = []
        for label, current in opened.items():
            current.writer.close()
            size = current.stream.tell()
            current.stream.close()
            files.append((label, current, size, int(time.time() * 1000)))
        opened.clear()
    finally:
        for current in opened.values():  # a failed task: close what it opened
            current.stream.close()
    if not files:
        return
    yield pa.RecordBatch.from_pydict(
        {
            FILE: [f.relative for _, f, _, _ in files],
            LABEL_COLUMN: [label for label, _, _, _ in files],
            SIZE: [size for _, _, size, _ in files],
            ROWS: [f.rows for _, f, _, _ in files],
            MODIFIED: [modified for _, _, _, modified in files],
            **{c: [f.counts.get(c, 0) for _, f, _, _ in files] for c in counts},
            distinct: [len(f.keys) for _, f, _, _ in files],
        },
        schema=pa.schema(
            [
                pa.field(FILE, pa.string(), False),
                pa.field(LABEL_COLUMN, pa.string(), False),
                *(pa.field(n, pa.int64(), False) for n in (SIZE, ROWS, MODIFIED)),
                *(pa.field(c, pa.int64(), False) for c in [*counts, distinct]),
            ]
        ),
    )


def _open(
    where: filesystem.Location,
    task: str,
    n: int,
    label: str,
    rows: pa.RecordBatch,
    columns: Sequence[str],
) -> _OpenFile:
    relative = f"{partition_dir_name(label)}/part-{task}-{n:05d}.snappy.parquet"
    path = f"{where.path.rstrip('/')}/{relative}"
    where.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    stream = where.fs.open_output_stream(path)
    schema = rows.select(list(columns)).schema
    # As Spark writes the tables' files: snappy, no dictionary (nearly every value is unique).
    writer = pq.ParquetWriter(stream, schema, compression="snappy", use_dictionary=False)
    return _OpenFile(relative, stream, writer)
