"""Vectors to Arrow without a Python object per row."""

import numpy as np
import pyarrow as pa


def list_array(rows: np.ndarray) -> pa.ListArray:
    """A matrix as an Arrow array<float> column, one list per row, without a Python object per
    value (Spark reads it as `array<float>` from `mapInArrow`)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    # Arrow lists hold 32-bit offsets: a batch past 2**31 values fails here rather than wraps.
    offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int64) * rows.shape[1], type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1)))
