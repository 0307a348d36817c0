"""Ending a process whose work is done without the interpreter's teardown."""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_now(status: object) -> NoReturn:
    """Exit with `status` (as `sys.exit` takes it) once the exit handlers have run and the
    standard streams are flushed, skipping the interpreter's teardown: freeing every module's
    objects (Dagster, PySpark, pandas, the model runtimes) takes a second or more of CPU after
    the work is done and recorded, while a user, or the next run, waits."""
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:  # a message, as `sys.exit` prints it
        print(status, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # logging's flush, file locks' release, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
