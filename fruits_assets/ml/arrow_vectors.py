"""Vectors to Arrow without a Python object per row."""

import numpy as np
import pyarrow as pa


def list_array(rows: np.ndarray) -> pa.ListArray:
    """A matrix as an Arrow array<float> column, one list per row, over the matrix's own values
    (Spark reads it as `array<float>` from `mapInArrow`)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    offsets = np.arange(len(rows) + 1, dtype=np.int32) * np.int32(rows.shape[1])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.reshape(-1)))
