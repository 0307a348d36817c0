"""The CSV export's lines, formatted from Arrow batches in Spark's Python workers, and the one file
they make, put together in order on the driver.

Arrow formats float32 values as the shortest text that reads back as the same float32, about three
times faster than Spark's CSV writer (Java's `Float.toString`), and on every core. Each task
writes its lines as they come, as text, beside their sort keys and places (`written`); the
driver sorts the keys alone and copies the lines into the file in that order, a run of
consecutive lines at a time (`merged`). The lines' text never passes through the JVM.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from fruits_assets.ml import pca
from fruits_assets.storage import filesystem, table_files

# RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled.
NEEDS_QUOTES = '[",\r\n]'
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


@dataclass(frozen=True)
class Piece:
    """What one task of `written` wrote: its text file, its keys file, its number of lines."""

    text: str
    keys: str
    rows: int


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
    """For batches of path, label and `vector`: each row's CSV line (path, label, then the k
    values of `vector`), with its label and path to sort by (columns label, path, line). A null
    vector, a missing value or a vector of another length than k fails with that cause."""
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
                raise ValueError("feature rows without a path or a label: they have no CSV line")
            # `_lines` joins text columns: a string array, whose offsets are 32-bit.
            line = pc.binary_join_element_wise(batch.column("line"), "\n", "")
            ends = np.frombuffer(line.buffers()[1], np.int32, len(line) + 1, line.offset * 4)
            first, last = int(ends[0]), int(ends[-1])
            if text is None:
                filesystem.make_dirs(where.fs, where.path)
                text = where.fs.open_output_stream(text_path)
                keys = where.fs.open_output_stream(keys_path)
                writer = pa.ipc.new_file(keys, PLACES)
            text.write(line.buffers()[2].slice(first, last - first))
            labels = batch.column("label").cast(pa.string())
            paths = batch.column("path").cast(pa.string())
            starts = pa.array(ends[:-1].astype(np.int64) - first + written)
            lengths = pa.array(np.diff(ends).astype(np.int64))
            writer.write_batch(
                pa.RecordBatch.from_arrays([labels, paths, starts, lengths], schema=PLACES)
            )
            written += last - first
            rows += batch.num_rows
        if text is None:
            return
        writer.close()
        keys.close()
        text.close()
    except BaseException:
        for stream in (text, keys):  # no half-written file left for a retry to meet
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
        for path in (text_path, keys_path):
            with contextlib.suppress(Exception):
                where.fs.delete_file(path)
        raise
    text_uri, keys_uri = filesystem.to_uri(folder, text_path), filesystem.to_uri(folder, keys_path)
    yield pa.RecordBatch.from_pydict({TEXT: [text_uri], KEYS: [keys_uri], ROWS: [rows]})


def written(
    vector: str, k: int, folder: str, from_files: bool = False
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """For `DataFrame.mapInArrow(…, PIECES_SCHEMA)` over path, label and `vector` (or, with
    `from_files`, over a table's data files, `table_files.file_rows`, which the workers read
    themselves): each task writes its rows' CSV lines (`lines`), each with its line break, as
    they come, into a text file under `folder`, and each line's label, path and place into an
    Arrow file beside it; one row per task that had rows: the two files and its row count. A
    row without a path or a label has no line: the task fails with that cause."""
    return partial(_written, vector=vector, k=k, folder=folder, from_files=from_files)


def _local(pieces: Sequence[Piece], into: str) -> list[Piece]:
    """The pieces' files on this machine's disk: local ones where they are; from S3, each copied
    whole into `into`, where a read at a place of its own would be a request of its own."""
    if not pieces or not filesystem.is_s3(pieces[0].text):
        return [
            Piece(filesystem.path_of(p.text), filesystem.path_of(p.keys), p.rows) for p in pieces
        ]
    source, local = filesystem.Location.of(pieces[0].text).fs, pafs.LocalFileSystem()

    def fetch(numbered: tuple[int, Piece]) -> Piece:
        number, piece = numbered
        copies = []
        for uri, suffix in ((piece.text, ".csv"), (piece.keys, ".keys.arrow")):
            copy = os.path.join(into, f"{number}{suffix}")
            # One file per call, the calls side by side; large reads: a request per 16 MB.
            path = filesystem.path_of(uri)
            pafs.copy_files(path, copy, source, local, chunk_size=COPY_BYTES, use_threads=False)
            copies.append(copy)
        return Piece(copies[0], copies[1], piece.rows)

    with ThreadPoolExecutor(max_workers=min(16, len(pieces))) as pool:
        return list(pool.map(fetch, enumerate(pieces)))


def _places(pieces: Sequence[Piece], names: Sequence[str]) -> pa.Table:
    """Every line's label, path and place, with the number of its piece; a piece whose files
    hold other than the lines its task reported fails the merge (a stale or cut file), named
    as the task wrote it (`names`)."""
    tables = []
    for number, (piece, name) in enumerate(zip(pieces, names, strict=True)):
        with pa.OSFile(piece.keys) as handle:
            found = pa.ipc.open_file(handle).read_all()
        size = os.path.getsize(piece.text)
        held = pc.sum(found.column(LENGTH)).as_py() or 0
        if found.num_rows != piece.rows or held != size:
            raise ValueError(
                f"{name}: {found.num_rows} lines of {held} bytes where its task wrote "
                f"{piece.rows} lines, and the file holds {size} bytes"
            )
        number_column = pa.array(np.full(found.num_rows, number, np.int32))
        tables.append(found.combine_chunks().append_column("piece", number_column))
    if not tables:
        return PLACES.append(pa.field("piece", pa.int32())).empty_table()
    return pa.concat_tables(tables)


def merged(pieces: Sequence[Piece], header: str, target: str) -> int:
    """Write `target`: the `header` line, then the lines of the `pieces` (`written`'s files)
    sorted by label and path. Only the keys are sorted, in memory; the lines are copied as
    bytes, a run of lines that lie one after the other in a text file at a time, at most
    `COPY_BYTES` held at once. Pieces on S3 are first copied to the temporary folder (`TMPDIR`),
    which then needs room for the whole file. Returns the number of lines after the header."""
    with tempfile.TemporaryDirectory(prefix="fruits-csv-") as scratch, ExitStack() as stack:
        names = [piece.text for piece in pieces]
        pieces = _local(pieces, scratch)
        table = _places(pieces, names)
        order = pc.sort_indices(table, sort_keys=ORDER, null_placement="at_start")
        piece, offset, length = (
            table.column(name).take(order).to_numpy() for name in ("piece", OFFSET, LENGTH)
        )
        # Read, not mapped: mapped pages would count in the process's memory, the whole file's.
        texts = [stack.enter_context(pa.OSFile(p.text)) for p in pieces]
        out = filesystem.Location.of(target)
        filesystem.make_dirs(out.fs, out.path.rsplit("/", 1)[0])
        # A failure leaves a partial file in the run's staging folder: never published.
        stream = stack.enter_context(out.fs.open_output_stream(out.path, buffer_size=1 << 20))
        stream.write(f"{header}\n".encode())
        if not len(piece):
            return 0
        # A run ends where the next line is in another file or not right after it.
        cut = (piece[1:] != piece[:-1]) | (offset[1:] != offset[:-1] + length[:-1])
        firsts = np.concatenate([[0], np.flatnonzero(cut) + 1])
        lasts = np.concatenate([firsts[1:] - 1, [len(piece) - 1]])
        for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
            source = texts[piece[first]]
            start, end = int(offset[first]), int(offset[last] + length[last])
            for at in range(start, end, COPY_BYTES):
                stream.write(source.read_at(min(COPY_BYTES, end - at), at))
        return len(piece)
