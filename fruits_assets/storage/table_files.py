"""A table's Parquet files read by Spark's Python workers themselves, with pyarrow.

A pass over the feature vectors through Spark's reader decodes every value into the JVM, then
copies it into Arrow for the Python workers: on 2 cores, 1.7 s for the 8,460-image sample's
1280-d vectors, against 0.4 s for the workers reading the same files
(`benchmarks/array_columns.py`). The steps that only hand vectors to numpy (the PCA's moments,
its projections, the CSV's lines) read them this way; Delta's log says which files are live
(`Datasets.data_files`) and Spark runs the tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    for batch in files:
        for uri, label in zip(
            batch.column(FILE_COLUMN).to_pylist(),
            batch.column(LABEL_COLUMN).to_pylist(),
            strict=True,
        ):
            where = filesystem.Location.of(uri)
            with where.fs.open_input_file(where.path) as handle:
                parquet = pq.ParquetFile(handle)
                stored = set(parquet.schema_arrow.names)
                read = [c for c in columns if c in stored]
                from_folder = LABEL_COLUMN in columns and LABEL_COLUMN not in stored
                missing = [c for c in columns if c not in stored]
                if missing and (missing != [LABEL_COLUMN] or label is None):
                    raise ValueError(f"{uri} has no column {missing[0]!r}")
                for piece in parquet.iter_batches(batch_size=BATCH_ROWS, columns=read):
                    if from_folder:
                        labels = pa.array([label] * piece.num_rows, pa.string())
                        piece = pa.RecordBatch.from_arrays(
                            [*piece.columns, labels], names=[*piece.schema.names, LABEL_COLUMN]
                        )
                    yield piece.select(list(columns))
