"""The PCA: the covariance on the Spark workers, its eigenvectors, the smallest k reaching the
target variance, projections."""

from __future__ import annotations

import functools
import itertools
import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from fruits_assets.ml.arrow_vectors import list_array
from fruits_assets.ml.splits import TRAIN, split_of_path
from fruits_assets.storage import table_files
from fruits_assets.storage.table_files import DataFile


@dataclass(frozen=True)
class Moments:
    """Row count, mean and centred scatter matrix (sum of (x - mean)(x - mean)^T) of some rows."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        mean = x.mean(axis=0)
        centred = x - mean
        return cls(len(x), mean, centred.T @ centred)

    def __sub__(self, part: Moments) -> Moments | None:
        """These moments without those of `part`, rows they include (None if nothing is
        left): `__add__` solved for its other term."""
        n = self.n - part.n
        if n < 0:
            raise ValueError(f"cannot remove {part.n} rows from moments of {self.n}")
        if n == 0:
            return None
        mean = (self.mean * self.n - part.mean * part.n) / n
        delta = mean - part.mean
        scatter = self.scatter - part.scatter - np.outer(delta, delta) * (part.n * n / self.n)
        return Moments(n, mean, scatter)

    def covariance(self) -> np.ndarray:
        """The sample covariance."""
        return self.scatter / max(self.n - 1, 1)

    def __add__(self, other: Moments) -> Moments:
        # Chan et al.'s pairwise update: each part is centred on its own mean, so no large
        # sum-of-squares minus square-of-sums cancellation, whatever the features' offset.
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(
            n,
            self.mean + delta * (other.n / n),
            self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n),
        )


def covariance(df, column: str) -> tuple[int, np.ndarray]:  # a Spark DataFrame
    """(rows, sample covariance) of an array<float> column (see `moments`)."""
    merged = moments(df, column)
    if merged is None:
        return 0, np.zeros((0, 0))
    return merged.n, merged.covariance()


# Rows per matrix product on a worker: a few thousand rows make one large product instead of a
# scatter matrix (13 MB at 1280 dimensions) built and merged per Arrow batch (256 rows).
BLOCK_ROWS = 2048
# Up to this many partial results (one per task slot) are merged on the driver; past it (a
# large cluster), the workers merge them first, so the driver receives a few matrices.
MAX_MERGED_ON_DRIVER = 8
MOMENTS_SCHEMA = "moments binary"


def checked_values(column: pa.Array, width: int | None = None) -> pa.Array:
    """The values of an Arrow array<float> column, in order. A null vector, a missing value, or
    a vector of another length than the others (or than `width`) fails with the cause."""
    if column.null_count:
        raise ValueError(f"{column.null_count} of {len(column)} feature vectors are null")
    if len(column):
        bounds = pc.min_max(pc.list_value_length(column))
        shortest, longest = bounds["min"].as_py(), bounds["max"].as_py()
        if shortest != longest:
            where = f" where {width} are expected" if width is not None else ""
            raise ValueError(
                "feature vectors of different lengths "
                f"(vectors of {shortest} to {longest} values{where})"
            )
        if width is not None and longest != width:
            raise ValueError(f"feature vectors of {longest} values where {width} are expected")
    values = column.flatten()
    if values.null_count:
        raise ValueError(f"feature vectors with missing values ({values.null_count} of them)")
    return values


def vectors(
    column: pa.Array | pa.ChunkedArray, width: int | None = None, dtype: type = np.float64
) -> np.ndarray:
    """An Arrow array<float> column as a matrix of `dtype`, one row per vector, from the list's
    contiguous values (no Python object per row), checked as `checked_values` does."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, width or 0), dtype)
    values = checked_values(column, width)
    return values.to_numpy(zero_copy_only=False).reshape(len(column), -1).astype(dtype, copy=False)


def _partition_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The moments of one partition's vectors (its batches' first column), as one batch."""
    total, block, rows, width = None, [], 0, None
    for batch in itertools.chain(batches, [None]):  # None: the end, for the last block
        if batch is not None and batch.num_rows:
            # As float32 until the block is complete: one float64 copy per block.
            block.append(vectors(batch.column(0), width, dtype=np.float32))
            width, rows = block[-1].shape[1], rows + batch.num_rows
        if block and (rows >= BLOCK_ROWS or batch is None):
            total = _merge(total, Moments.of(np.concatenate(block, dtype=np.float64)))
            block, rows = [], 0
    if total is not None:
        yield _moments_batch(total)


def moments(df, column: str) -> Moments | None:  # a Spark DataFrame
    """The moments of an array<float> column (None without rows): each partition's are computed
    by numpy on the Spark workers from Arrow batches, and merged on the driver (on the workers
    first, past MAX_MERGED_ON_DRIVER partitions), so the driver receives a few matrices."""
    # One task per core: each partition's result is a full dim x dim matrix (13 MB at 1280),
    # so more partitions than cores would only ship and merge more matrices.
    parts = df.sparkSession.sparkContext.defaultParallelism
    partial = df.select(column).coalesce(parts).mapInArrow(_partition_moments, MOMENTS_SCHEMA)
    return _merged(partial, parts)


def moments_of_files(
    spark: SparkSession, files: Sequence[DataFile], column: str, training_only: bool
) -> Moments | None:
    """`moments` of an array<float> column of a table's data files (`Datasets.data_files`),
    read by the Python workers themselves; of the Training split's rows only, as the folders
    above each path's class folder say (`splits.split_of_path`), if `training_only`."""

    def of_files(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        read = table_files.read_batches(batches, ["path", column] if training_only else [column])
        if training_only:
            read = (_training_rows(batch).select([column]) for batch in read)
        yield from _partition_moments(read)

    # One task per core, as in `moments` (`file_rows` makes as many partitions).
    partial = table_files.file_rows(spark, files).mapInArrow(of_files, MOMENTS_SCHEMA)
    return _merged(partial, spark.sparkContext.defaultParallelism)


def _training_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    paths = batch.column("path").to_pylist()
    keep = [path is not None and split_of_path(path) == TRAIN for path in paths]
    return batch.filter(pa.array(keep, pa.bool_()))


def _merged(partial, parts: int) -> Moments | None:  # a DataFrame of MOMENTS_SCHEMA
    """The `parts` partial moments merged: on the workers first past MAX_MERGED_ON_DRIVER."""
    if parts > MAX_MERGED_ON_DRIVER:
        partial = partial.repartition(math.isqrt(parts - 1) + 1).mapInArrow(
            _merge_batches, MOMENTS_SCHEMA
        )
    # Through Arrow (`toPandas`): a row's 13 MB of bytes, collected as Python objects, would be
    # pickled by the JVM and unpickled here, taking three times as long.
    collected = partial.toPandas()["moments"]
    return functools.reduce(_merge, (pickle.loads(data) for data in collected), None)


def _moments_batch(total: Moments) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"moments": [pickle.dumps(total)]})


def _merge_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    total = None
    for batch in batches:
        for data in batch.column(0).to_pylist():
            total = _merge(total, pickle.loads(data))
    if total is not None:
        yield _moments_batch(total)


def _merge(a: Moments | None, b: Moments | None) -> Moments | None:
    return b if a is None else a if b is None else a + b


def principal_components(cov: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """The explained-variance ratio of the first k_max components and those components (k_max,
    dim), largest first, as Spark ML's PCA defines them (eigenvectors of the covariance, ratios
    of its eigenvalues to their sum).

    numpy's LAPACK (a symmetric eigensolver) decomposes the covariance on the driver: Spark's
    own PCA falls back to a pure-Java SVD where no native LAPACK is installed (EMR, most
    machines), and on these rank-deficient covariances (fewer images than 1280 dimensions) it
    returned eigenvalues several times too small, changing with the rounding of the input.
    """
    eigenvalues, vectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1][:k_max]
    # Eigenvalues of a covariance are >= 0; rounding leaves the null space at about -1e-16.
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    total = eigenvalues.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("The features have no variance: every image has the same features")
    components = vectors[:, order].T
    # An eigenvector's sign is arbitrary: fix it (largest loading positive) so a refit on the
    # same features gives the same projections.
    largest = components[np.arange(len(order)), np.abs(components).argmax(axis=1)]
    components *= np.where(largest < 0, -1.0, 1.0)[:, None]
    return eigenvalues[order] / total, components


def max_components(n_rows: int, n_features: int) -> int:
    """n rows span at most n-1 centred dimensions, and there are only n_features axes."""
    if n_rows < 2:
        raise ValueError(f"PCA needs at least 2 feature rows, got {n_rows}")
    return min(n_rows - 1, n_features)


def choose_k(explained_variance: Sequence[float], target: float) -> tuple[int, float]:
    """The smallest k whose cumulative explained variance reaches `target`, and that variance."""
    if not 0 < target <= 1:
        raise ValueError(f"Target explained variance must be in (0, 1], got {target}")
    cumulative = np.cumsum(np.asarray(explained_variance, dtype=np.float64))
    # Rounding can leave the full sum at 0.9999999; the last component always counts as reaching it.
    reached = np.nonzero(cumulative >= target - 1e-9)[0]
    k = int(reached[0]) + 1 if reached.size else len(cumulative)
    return k, float(min(cumulative[k - 1], 1.0))


def projected(
    df,
    components: np.ndarray,
    column: str,
    output: str,
    keep: Sequence[str],
    files: Sequence[DataFile] | None = None,
):
    """`df`'s `keep` columns and `output`: each 1280-d vector of `column` -> its k PCA
    coordinates (array<float>), as Spark ML's PCAModel computes them (components applied without
    centring), on the Python workers with numpy, from and to Arrow batches (no Python object per
    row). `files`: `df`'s data files (`Datasets.data_files`), for the workers to read its rows
    themselves instead of through Spark's reader."""
    from pyspark.sql import types as T

    project, rows = _projection(df.sparkSession, df, components, column, keep, files)
    schema = T.StructType(
        [df.schema[name] for name in keep] + [T.StructField(output, T.ArrayType(T.FloatType()))]
    )
    return rows.mapInArrow(lambda batches: project(batches, output), schema)


WRONG_LENGTH = "wrong_length"  # the projections written whose length is not k (`projected_files`)


def projected_files(
    spark: SparkSession,
    df,
    components: np.ndarray,
    column: str,
    output: str,
    keep: Sequence[str],
    files: Sequence[DataFile] | None,
    folder: str,
):
    """`projected`, each task writing its rows under `folder` itself, in one Parquet file of
    `keep` and `output` (`class_files.written`, not split by class); `df` only without `files`
    (None with them: the rows need no Spark plan). The rows of the job: one
    per file and class, with its rows whose projection's length is not k (`WRONG_LENGTH`)."""
    from fruits_assets.storage import class_files

    project, rows = _projection(spark, df, components, column, keep, files)
    k = len(components)

    def wrong_length(batch: pa.RecordBatch) -> dict[str, int]:
        lengths = pc.list_value_length(batch.column(output))
        return {WRONG_LENGTH: pc.sum(pc.cast(pc.not_equal(lengths, k), "int64")).as_py() or 0}

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from class_files.written(
            project(batches, output),
            folder,
            [*keep, output],
            wrong_length,
            (WRONG_LENGTH,),
            partitioned=False,
        )

    return rows.mapInArrow(write, class_files.manifest_schema((WRONG_LENGTH,)))


def _projection(
    spark: SparkSession, df, components: np.ndarray, column: str, keep: Sequence[str], files
):
    """The function a `mapInArrow` runs to project the vectors of `column` (`projected`), and
    the rows it runs over: `df`'s `keep` columns and `column`, or one row per data file."""
    matrix = spark.sparkContext.broadcast(np.ascontiguousarray(components.T, dtype=np.float64))
    columns = [*keep, column]
    from_files = files is not None

    def project(batches: Iterator[pa.RecordBatch], output: str) -> Iterator[pa.RecordBatch]:
        weights = matrix.value
        if from_files:
            batches = table_files.read_batches(batches, columns)
        for batch in batches:
            x = vectors(batch.column(len(keep)), width=len(weights))
            coordinates = list_array(x @ weights)
            yield pa.RecordBatch.from_arrays(
                [*batch.columns[: len(keep)], coordinates], names=[*keep, output]
            )

    if files is None:
        return project, df.select(*columns)
    return project, table_files.file_rows(spark, files)
