"""Spark session settings for local runs (the EMR ones live with the step launcher)."""

from __future__ import annotations

import os
import sys
from typing import Any

# Settings every environment needs: per-class reruns overwrite only their own label= folders.
COMMON_SPARK_CONFIG: dict[str, Any] = {
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.compression.codec": "snappy",
}


def local_spark_config(
    cores: int | None = None, driver_memory: str | None = None
) -> dict[str, Any]:
    """local[N] Spark whose Python workers run this interpreter (so they see this package)."""
    # Spark's Python workers must be this interpreter, with this package and its pins.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local Spark listens on loopback only
    cores = cores or int(os.environ.get("FRUITS_SPARK_CORES", "0")) or os.cpu_count() or 1
    return {
        **COMMON_SPARK_CONFIG,
        "spark.master": f"local[{cores}]",
        "spark.app.name": "fruits_assets",
        "spark.driver.memory": driver_memory or os.environ.get("FRUITS_DRIVER_MEMORY", "4g"),
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.shuffle.partitions": str(max(4, 2 * cores)),
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": os.environ.get("FRUITS_SPARK_UI", "false"),
        # The incubator Vector API lets Spark ML's BLAS use SIMD instead of plain Java loops.
        "spark.driver.extraJavaOptions": "-Dderby.system.home=/tmp/derby "
        "--add-modules=jdk.incubator.vector",
    }
