"""The CSV export's lines, formatted from Arrow batches in Spark's Python workers.

Arrow formats float32 values as the shortest text that reads back as the same float32, about three
times faster than Spark's CSV writer (Java's `Float.toString`), and on every core: the file itself
is one, so only its final sort and write are left to a single task.
"""

from collections.abc import Callable, Iterator
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from fruits_assets.ml import pca
from fruits_assets.storage import table_files

# RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled.
NEEDS_QUOTES = '[",\r\n]'
LINE_SCHEMA = "label string, path string, line string"


def field(values: pa.Array) -> pa.Array:
    """Text values as CSV fields (quoted only where they need it)."""
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
    return pc.if_else(pc.match_substring_regex(values, NEEDS_QUOTES), quoted, values)


def _lines(batches: Iterator[pa.RecordBatch], vector: str, k: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        vectors = batch.column(vector)
        pca.checked_values(vectors, width=k)
        # `values` and `offsets` are the list's underlying arrays, consistent even when the
        # batch is a slice of a larger one (`flatten` would renumber the values).
        numbers = vectors.values.cast(pa.string())
        fields = [field(batch.column("path")), field(batch.column("label"))]
        if k:
            fields.append(pc.binary_join(pa.ListArray.from_arrays(vectors.offsets, numbers), ","))
        line = pc.binary_join_element_wise(*fields, ",")
        yield pa.RecordBatch.from_arrays(
            [batch.column("label"), batch.column("path"), line], ["label", "path", "line"]
        )


def lines(vector: str, k: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """For `DataFrame.mapInArrow(…, LINE_SCHEMA)` over path, label and `vector`: each row's CSV
    line (path, label, then the k values of `vector`), with its label and path to sort by. A
    null vector, a missing value or a vector of another length than k fails with that cause."""
    return partial(_lines, vector=vector, k=k)


def _lines_of_files(
    files: Iterator[pa.RecordBatch], vector: str, k: int
) -> Iterator[pa.RecordBatch]:
    yield from _lines(table_files.read_batches(files, ["path", "label", vector]), vector, k)


def lines_of_files(
    vector: str, k: int
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """`lines`, for `mapInArrow` over a table's data files (`table_files.file_rows`): the
    workers read the rows themselves."""
    return partial(_lines_of_files, vector=vector, k=k)
