"""The run launcher of the Dagster instance `fruits` creates: each run the UI, a sensor or a
backfill launches executes in a Python process that had already loaded Dagster and the
pipeline's libraries when the run was launched.

Dagster's default launcher has the code server start a new interpreter for each run, which then
spends about two seconds importing Dagster, pandas and PySpark before the run's first event, a
sizeable share of a one-class rerun. This launcher keeps one interpreter ready (a standby) and
hands it the next run, which it executes exactly as `dagster api execute_run` does, and starts
readying the next one at once, so the imports happen while nobody waits for them. The run's own
code is imported by the run itself: a code location reloaded in the UI is what runs.

A standby (`fruits_assets.standby`) whose launcher is gone (the UI stopped) sees its input
close and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

from dagster import DagsterRunStatus
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from fruits_assets import runs


class StandbyRunLauncher(RunLauncher, ConfigurableClass):
    """Runs each launched run in a ready Python process (see the module's docstring); one run
    per process, as Dagster's default launcher does."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        self._lock = threading.Lock()
        self._standby: subprocess.Popen | None = None
        self._standby_python: str | None = None
        self._disposed = False
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]
    ) -> StandbyRunLauncher:
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise ValueError(f"run {run.run_id} has no code origin: it cannot be launched")
        python = origin.executable_path or sys.executable
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref()
        )
        with self._lock:
            worker = self._take_standby(python)
        # The run's process is tagged as the run's own steps tag it (`runs.this_process_tags`):
        # `terminate` and `fruits`' check for runs left unfinished by a killed process use it.
        self._instance.add_run_tags(run.run_id, runs.process_tags(worker.pid))
        assert worker.stdin is not None
        worker.stdin.write((serialize_value(args) + "\n").encode())
        worker.stdin.close()
        threading.Thread(
            target=self._watch, args=(worker, run.run_id), name="run-worker", daemon=True
        ).start()
        # The next one imports now, on the core this run's own start leaves idle, so that it is
        # ready even for a run launched the moment this one ends.
        with self._lock:
            if not self._disposed:
                try:
                    self._standby, self._standby_python = _start(python), python
                except OSError:  # the next launch starts its process itself
                    self._standby = None

    def _take_standby(self, python: str) -> subprocess.Popen:
        """The ready process if it runs this Python and is alive, else a new one (which then
        imports while the run waits, as a new interpreter always did)."""
        standby, self._standby = self._standby, None
        if standby is not None and standby.poll() is None:
            if self._standby_python == python:
                return standby
            _close(standby)
        return _start(python)

    def _watch(self, worker: subprocess.Popen, run_id: str) -> None:
        """Reap the run's process when it ends; a run it left unfinished (killed, out of
        memory) is marked as ended, as Dagster's code server marks the runs of its processes."""
        code = worker.wait()
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        why = f"the run's process (pid {worker.pid}) ended with code {code} before the run did"
        if run.status == DagsterRunStatus.CANCELING:
            self._instance.report_run_canceled(run, why)
        else:
            self._instance.report_run_failed(run, f"{why} (killed?)")

    def terminate(self, run_id: str) -> bool:
        """Ask the run's process to stop (SIGTERM: the run ends CANCELED, its steps
        interrupted); False if the run has no live process on this machine."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        process = runs.run_process(run.tags)
        if process is None or not process[1]:
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(process[0], signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def dispose(self) -> None:
        with self._lock:
            self._disposed = True
            standby, self._standby = self._standby, None
        if standby is not None:
            _close(standby)


def _start(python: str) -> subprocess.Popen:
    # Same environment and folder as the launching process (the daemon of `fruits ui`), as the
    # code server's processes have; same process group, so stopping the UI stops it too.
    return subprocess.Popen([python, "-m", "fruits_assets.standby"], stdin=subprocess.PIPE)


def _close(standby: subprocess.Popen) -> None:
    """A standby ends when its input closes (without a run, it does nothing else)."""
    try:
        if standby.stdin is not None:
            standby.stdin.close()
    except OSError:
        pass
