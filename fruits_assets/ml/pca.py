"""The PCA: how many components the data allows, the smallest k reaching the target, projections."""

from collections.abc import Sequence

import numpy as np


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


def project_udf(spark, components: np.ndarray):  # Spark objects
    """A pandas UDF: 1280-d features -> their k PCA coordinates, as Spark ML's PCAModel computes
    them (components applied without centring), on the Python workers with numpy."""
    import pandas as pd
    from pyspark.sql import functions as F

    matrix = spark.sparkContext.broadcast(np.ascontiguousarray(components.T, dtype=np.float64))

    @F.pandas_udf("array<float>")
    def project(features: pd.Series) -> pd.Series:
        x = np.stack(features.to_numpy()).astype(np.float64)
        return pd.Series(list((x @ matrix.value).astype(np.float32)))

    return project
