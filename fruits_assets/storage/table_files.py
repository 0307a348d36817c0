"""A table's Parquet files read by Spark's Python workers themselves, with pyarrow.

A pass over the feature vectors through Spark's reader decodes every value into the JVM, then
copies it into Arrow for the Python workers: on 2 cores, 1.7 s for the 8,460-image sample's
1280-d vectors, against 0.4 s for the workers reading the same files
(`benchmarks/array_columns.py`). The steps that only hand rows to Python (the featurizer's
photos, the PCA's moments, its projections, the CSV's lines) read them this way, and so does the
classifier, whose rows Spark then joins and fits on (`frame`); Delta's log says which files are
live (`Datasets.data_files`) and Spark runs the tasks. Nor does Spark plan
the read: a table written by the `deltalake` package is new to Spark's Delta, whose first look
at it (its snapshot, its files listed) takes a few Spark jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from fruits_assets.storage import filesystem
from fruits_assets.storage.layout import LABEL_COLUMN

FILE_COLUMN = "file"
FILES_SCHEMA = T.StructType(
    [
        T.StructField(FILE_COLUMN, T.StringType(), False),
        # The file's class where the table is partitioned by class (its rows lack the column).
        T.StructField(LABEL_COLUMN, T.StringType(), True),
    ]
)
# Rows per batch read from a file, as many as in the Arrow batches Spark hands its Python
# workers (`spark.sql.execution.arrow.maxRecordsPerBatch`): each batch's copies and text stay small.
BATCH_ROWS = 256


@dataclass(frozen=True)
class DataFile:
    """A live data file of a table (a URI Spark gave) and the class of its rows, if the table
    is partitioned by class."""

    uri: str
    label: str | None = None


def file_rows(spark: SparkSession, files: Sequence[DataFile]) -> DataFrame:
    """One row per data file, for `read_batches` in a `mapInArrow`: handed to the JVM through
    Arrow (`createDataFrame` from pandas), which deals them into one partition per task slot
    (`defaultParallelism`), in order."""
    frame = pd.DataFrame(
        {
            FILE_COLUMN: pd.Series([f.uri for f in files], dtype=object),
            LABEL_COLUMN: pd.Series([f.label for f in files], dtype=object),
        }
    )
    return spark.createDataFrame(frame, FILES_SCHEMA)


def read_batches(
    files: Iterator[pa.RecordBatch], columns: Sequence[str]
) -> Iterator[pa.RecordBatch]:
    """The `columns` of the rows of the files named by `files` (batches of `file_rows`), in
    that order; the class column, where the files lack it, from the file's row."""
    for file in _files_of(files):
        yield from _file_batches(file, columns)


def _files_of(batches: Iterator[pa.RecordBatch]) -> Iterator[DataFile]:
    """The data files named by batches of `file_rows`."""
    for batch in batches:
        for uri, label in zip(
            batch.column(FILE_COLUMN).to_pylist(),
            batch.column(LABEL_COLUMN).to_pylist(),
            strict=True,
        ):
            yield DataFile(uri, label)


def frame(spark: SparkSession, files: Sequence[DataFile], schema: T.StructType) -> DataFrame:
    """The `schema` columns of the files' rows as a DataFrame for Spark's own operators (a
    join, Spark ML), read by the Python workers (`read_batches`, a task per core) and handed to
    the JVM as `schema`'s Arrow types: no Spark snapshot of the table, no Spark reader."""
    from pyspark.sql.pandas.types import to_arrow_schema

    columns = list(schema.names)
    arrow = to_arrow_schema(schema)

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for file in _files_of(batches):
            for piece in _file_batches(file, columns):
                try:
                    yield piece.cast(arrow)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    raise ValueError(
                        f"{file.uri}: its columns ({_types(piece.schema)}) do not read as "
                        f"{_types(arrow)} ({e}): rematerialize the asset that wrote it"
                    ) from e

    return file_rows(spark, files).mapInArrow(read, schema)


def _types(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)


def _file_batches(file: DataFile, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The `columns` of a data file's rows; the class column, where the file lacks it, from
    its folder's class."""
    where = filesystem.Location.of(file.uri)
    with where.fs.open_input_file(where.path) as handle:
        parquet = pq.ParquetFile(handle)
        stored = set(parquet.schema_arrow.names)
        read = [c for c in columns if c in stored]
        from_folder = LABEL_COLUMN in columns and LABEL_COLUMN not in stored
        missing = [c for c in columns if c not in stored]
        if missing and (missing != [LABEL_COLUMN] or file.label is None):
            raise ValueError(f"{file.uri} has no column {missing[0]!r}")
        for piece in parquet.iter_batches(batch_size=BATCH_ROWS, columns=read):
            if from_folder:
                labels = pa.array([file.label] * piece.num_rows, pa.string())
                piece = pa.RecordBatch.from_arrays(
                    [*piece.columns, labels], names=[*piece.schema.names, LABEL_COLUMN]
                )
            yield piece.select(list(columns))


@dataclass(frozen=True)
class Share:
    """The rows of a data file whose key falls in `piece` of its `pieces` (a hash of the key
    says which): all of them, for one piece."""

    file: DataFile
    piece: int = 0
    pieces: int = 1


def shares_per_task(files: Sequence[DataFile], slots: int, per_slot: int = 4) -> list[list[Share]]:
    """The files' rows dealt to tasks for expensive per-row work whose tasks write a file per
    class they hold, with every task slot busy and few files per class (as
    `datasets.split_by_class` deals rows):
    - at least `per_slot` files per slot (a full run: a file per class, or a few): whole files,
      `per_slot` tasks per slot with equal numbers of files (not of bytes: one class's photos
      can weigh several times another's), so a free worker takes the next task to the end;
    - a few files (a small rerun): a task per slot, each with its piece of every file, about
      equal: a file per class and slot;
    - in between (many classes, a large cluster): each file cut into as few pieces as give
      each of the `per_slot` tasks per slot one.
    A key is in one task's share only. Files in the order given; no task without a share. A
    file cut into pieces is read by each of their tasks: bytes read again, cheap beside the
    per-row work that then runs on every core."""
    splits = slots * per_slot
    count = len(files)
    if count == 0:
        return []
    if count >= splits:
        return _dealt([Share(f) for f in files], splits)
    if count * slots <= splits * per_slot:
        return [[Share(f, piece, slots) for f in files] for piece in range(slots)]
    pieces = -(-splits // count)
    return _dealt([Share(f, piece, pieces) for f in files for piece in range(pieces)], splits)


def _dealt(shares: list[Share], tasks: int) -> list[list[Share]]:
    """`shares` in `tasks` runs of consecutive ones, their lengths differing by one at most."""
    count = len(shares)
    return [shares[i * count // tasks : (i + 1) * count // tasks] for i in range(tasks)]


@dataclass(frozen=True)
class Rows:
    """Rows for a `mapInArrow`: those of `frame`, or, with `read`, what `read` makes of its
    batches (a worker reading its task's share of a table's files)."""

    frame: DataFrame
    read: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]] | None = None

    def map_in_arrow(
        self,
        function: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
        schema: T.StructType,
    ) -> DataFrame:
        read = self.read
        if read is None:
            return self.frame.mapInArrow(function, schema)
        return self.frame.mapInArrow(lambda batches: function(read(batches)), schema)


def shares_read(
    spark: SparkSession,
    tasks: Sequence[Sequence[Share]],
    columns: Sequence[str],
    key: str,
    salt: str,
) -> Rows:
    """The `columns` of the rows of `tasks`' shares (`shares_per_task`), each task's read by
    its Python worker, in batches of about `BATCH_ROWS` rows: a task per share list, in order.
    `key`: the column (a text) whose hash, with `salt`, cuts a file into pieces. A step that
    reads files an earlier step cut by the same key uses another salt: its pieces then take
    rows from every earlier piece, not all or none."""
    tasks = [list(shares) for shares in tasks if shares]
    columns = list(columns)
    read_columns = columns if key in columns else [*columns, key]

    def shared(task: list[Share]) -> Iterator[pa.RecordBatch]:
        for share in task:
            for piece in _file_batches(share.file, read_columns):
                if share.pieces > 1:
                    keys = piece.column(key).to_pylist()
                    mask = [_piece_of(k, salt, share.pieces) == share.piece for k in keys]
                    piece = piece.filter(pa.array(mask, pa.bool_()))
                if piece.num_rows:
                    yield piece.select(columns)

    def read(ids: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in ids:
            for task in batch.column(0).to_pylist():
                yield from _regrouped(shared(tasks[task]))

    # One id per task, one task per id: Spark's range splits ids evenly over its partitions.
    ids = spark.range(0, len(tasks), 1, max(1, len(tasks)))
    return Rows(ids, read)


def _regrouped(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`batches` gathered into batches of `BATCH_ROWS` rows (the last may hold fewer): a small
    file or a piece of one does not make a small batch."""
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        held.append(batch)
        rows += batch.num_rows
        if rows >= BATCH_ROWS:
            table = pa.Table.from_batches(held)
            whole = rows // BATCH_ROWS * BATCH_ROWS
            yield from table.slice(0, whole).combine_chunks().to_batches(BATCH_ROWS)
            held = table.slice(whole).combine_chunks().to_batches() if rows > whole else []
            rows -= whole
    if rows:
        yield from pa.Table.from_batches(held).combine_chunks().to_batches()


def _piece_of(key: str | None, salt: str, pieces: int) -> int:
    """Which of `pieces` a row with this key falls in: the same in every process."""
    digest = hashlib.blake2b(f"{salt}\0{key or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % pieces
