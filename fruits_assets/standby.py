"""A standby of the run launcher (`fruits_assets.launcher`): a Python process that imports what
every run needs, then waits for one run's arguments and executes that run.

Started with `python -m fruits_assets.standby`; it imports nothing heavy before its import
thread starts, so that every import of a standby readying during another run's execution happens
at a low priority.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

from fruits_assets.quick_exit import exit_now

# What every run imports: loaded by the standby ahead of time (libraries only: the project's
# own modules are the run's, as they are on disk when it starts). Spark ML's Python side and
# matplotlib a run would otherwise import in a thread beside its first steps, taking the CPU
# and the interpreter from them for about a second.
PRELOADED = (
    "dagster._cli",
    "dagster._core.storage.sqlite_storage",
    "dagster_pyspark",
    "pandas",
    "pyarrow",
    "pyspark.sql",
    "pyspark.ml.classification",
    "pyspark.ml.evaluation",
    "pyspark.ml.feature",
    "pyspark.ml.tuning",
)
# Of the standby's import thread (0 normal, 19 lowest): it takes the CPU the run before it
# leaves idle rather than half of the cores that run needs.
PRELOAD_NICENESS = 10


def _preload() -> None:
    """Import PRELOADED at a low priority (Linux sets a nice value per thread: the run, on the
    main thread, keeps the normal one)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PRELOAD_NICENESS)
        except OSError:
            pass
    for module in PRELOADED:
        try:
            importlib.import_module(module)
        except ImportError:  # the run imports what it needs, or says what is missing
            pass
    try:
        import matplotlib

        matplotlib.use("Agg")  # the backend of the run's plots (`fruits_assets.ml.plots`)
        importlib.import_module("matplotlib.pyplot")
    except ImportError:
        pass


def standby() -> int:
    """Import, wait for one run's arguments, execute that run as `dagster api execute_run` does
    (and exit with its status); exit quietly if the input closes first."""
    # Ctrl-C on the UI reaches its whole process group: a standby without a run just ends (the
    # run's execution installs Dagster's own handlers, which interrupt its steps).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Threads start with their creator's nice value: numpy's BLAS threads, which the run's own
    # computations use, are started here on the main thread.
    import numpy  # noqa: F401

    preload = threading.Thread(target=_preload, name="preload", daemon=True)
    preload.start()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    preload.join()  # the cores are the run's now: nothing competes with what is left of it
    from dagster._cli import main

    from fruits_assets import dagster_sqlite

    sys.argv = ["dagster", "api", "execute_run", line.strip()]
    try:
        with dagster_sqlite.kept_open():
            main()
        status: object = 0
    except SystemExit as done:
        status = done.code
    # The run is over and recorded: what is left of the process (its teardown) would only take
    # the CPU from the next run, or from the Spark context the UI prepares for it once this
    # process is gone.
    exit_now(status)


if __name__ == "__main__":
    sys.exit(standby())
