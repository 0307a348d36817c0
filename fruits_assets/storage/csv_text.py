"""The CSV export's lines, formatted from Arrow batches in Spark's Python workers, and the one file
they make, put together in order on the driver.

Arrow formats float32 values as the shortest text that reads back as the same float32, about three
times faster than Spark's CSV writer (Java's `Float.toString`), and on every core. Each task
writes its lines as they come, as text, beside their sort keys and places (`written`); the
driver sorts the keys alone and copies the lines into the file in that order, a run of
consecutive lines at a time (`merged`). The lines never go through the JVM: no shuffle of the
file's text to one task, no sort of it there, no second write.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fruits_assets.ml import pca
from fruits_assets.storage import filesystem, table_files

# RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled.
NEEDS_QUOTES = '[",\r\n]'
LINE_SCHEMA = "label string, path string, line string"
# What a task of `written` reports: its text file, its keys file and how many lines it wrote.
TEXT, KEYS, ROWS = "text", "keys", "rows"
PIECES_SCHEMA = f"{TEXT} string, {KEYS} string, {ROWS} long"
# The sort keys of the file's lines (label, then path, as Spark sorts text: by UTF-8 bytes) and
# where each line lies in its text file.
ORDER = [("label", "ascending"), ("path", "ascending")]
OFFSET, LENGTH = "offset", "length"
PLACES = pa.schema(
    [("label", pa.string()), ("path", pa.string()), (OFFSET, pa.int64()), (LENGTH, pa.int64())]
)
# The most bytes of lines the driver holds at once while it copies them.
COPY_BYTES = 16 << 20


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


def _written(
    batches: Iterator[pa.RecordBatch], vector: str, k: int, folder: str, from_files: bool
) -> Iterator[pa.RecordBatch]:
    if from_files:
        batches = table_files.read_batches(batches, ["path", "label", vector])
    where = filesystem.Location.of(folder)
    name = f"{where.path.rstrip('/')}/lines-{uuid.uuid4().hex}"
    text_path, keys_path = f"{name}.csv", f"{name}.keys.arrow"
    text = keys = writer = None
    written = rows = 0
    try:
        for batch in _lines(batches, vector, k):
            if not batch.num_rows:
                continue
            if batch.column("line").null_count:
                raise ValueError("feature rows without a path or a label: no CSV line")
            line = pc.binary_join_element_wise(batch.column("line"), "\n", "")
            ends = np.frombuffer(line.buffers()[1], np.int32, len(line) + 1, line.offset * 4)
            if text is None:
                where.fs.create_dir(where.path, recursive=True)
                text = where.fs.open_output_stream(text_path)
                keys = where.fs.open_output_stream(keys_path)
                writer = pa.ipc.new_file(keys, PLACES)
            text.write(line.buffers()[2].slice(int(ends[0]), int(ends[-1] - ends[0])))
            starts = ends[:-1].astype(np.int64) - ends[0] + written
            writer.write_batch(
                pa.RecordBatch.from_arrays(
                    [batch.column("label").cast(pa.string()),
                     batch.column("path").cast(pa.string()), pa.array(starts),
                     pa.array(np.diff(ends).astype(np.int64))],
                    schema=PLACES,
                )
            )  # fmt: skip
            written += int(ends[-1] - ends[0])
            rows += batch.num_rows
        if text is None:
            return
        writer.close()
        keys.close()
        text.close()
    except BaseException:
        for stream in (text, keys):  # no half-written file left for a retry to meet
            with contextlib.suppress(Exception):
                stream.close()
        for path in (text_path, keys_path):
            with contextlib.suppress(Exception):
                where.fs.delete_file(path)
        raise
    yield pa.RecordBatch.from_pydict(
        {
            TEXT: [filesystem.to_uri(folder, text_path)],
            KEYS: [filesystem.to_uri(folder, keys_path)],
            ROWS: [rows],
        },
        schema=pa.schema([(TEXT, pa.string()), (KEYS, pa.string()), (ROWS, pa.int64())]),
    )


def written(
    vector: str, k: int, folder: str, from_files: bool = False
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """For `DataFrame.mapInArrow(…, PIECES_SCHEMA)` over path, label and `vector` (or, with
    `from_files`, over a table's data files, `table_files.file_rows`, which the workers read
    themselves): each task writes its rows' CSV lines (`lines`), each with its line break, as
    they come, into a text file under `folder`, and each line's label, path and place into an
    Arrow file beside it; one row per task that had rows: the two files and its row count."""
    return partial(_written, vector=vector, k=k, folder=folder, from_files=from_files)


def merged(pieces: Sequence[tuple[str, str]], header: str, target: str) -> int:
    """Write `target`: the `header` line, then the lines of the `pieces` (`written`'s text and
    keys files) sorted by label and path. Only the keys are sorted; the lines are copied as
    bytes, a run of lines that lie one after the other in a text file at a time. Returns the
    number of lines after the header."""
    keys = []
    for number, (_, keys_uri) in enumerate(pieces):
        where = filesystem.Location.of(keys_uri)
        with where.fs.open_input_file(where.path) as handle:
            found = pa.ipc.open_file(handle).read_all()
        keys.append(found.append_column("piece", pa.array(np.full(len(found), number, np.int32))))
    out = filesystem.Location.of(target)
    out.fs.create_dir(out.path.rsplit("/", 1)[0], recursive=True)
    with out.fs.open_output_stream(out.path) as stream:
        stream.write(f"{header}\n".encode())
        if not keys:
            return 0
        table = pa.concat_tables(keys)
        order = pc.sort_indices(table, sort_keys=ORDER, null_placement="at_start")
        piece, offset, length = (
            table.column(name).take(order).to_numpy() for name in ("piece", OFFSET, LENGTH)
        )
        # A run ends where the next line is in another file or not right after it.
        cut = (piece[1:] != piece[:-1]) | (offset[1:] != offset[:-1] + length[:-1])
        firsts = np.concatenate([[0], np.flatnonzero(cut) + 1])
        lasts = np.concatenate([firsts[1:] - 1, [len(piece) - 1]])
        texts = [filesystem.Location.of(text_uri) for text_uri, _ in pieces]
        handles = [where.fs.open_input_file(where.path) for where in texts]
        try:
            for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
                source = handles[piece[first]]
                start, end = int(offset[first]), int(offset[last] + length[last])
                for at in range(start, end, COPY_BYTES):
                    stream.write(source.read_at(min(COPY_BYTES, end - at), at))
        finally:
            for handle in handles:
                handle.close()
        return len(piece)
