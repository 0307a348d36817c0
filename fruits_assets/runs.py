"""Runs and the processes behind them: tags that say where a run executes, and the runs a
killed process left STARTED, marked FAILED the next time `fruits` starts."""

from __future__ import annotations

import os
import socket

import dagster as dg

HOST_TAG, PID_TAG, PID_START_TAG = "fruits/host", "fruits/pid", "fruits/pid_start"
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def process_start(pid: int) -> str:
    """When a process started (Linux clock ticks since boot), so a reused pid is not mistaken
    for the process that started a run; empty where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags(pid: int) -> dict[str, str]:
    """The tags that say which process of this machine runs a run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid)}


def this_process_tags() -> dict[str, str]:
    return process_tags(os.getpid())


def alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or process_start(pid) == started


def run_process(tags: dict[str, str]) -> tuple[int, bool] | None:
    """(pid, whether it is alive) of the process a run's tags name on this machine; None if
    they name none here."""
    pid = tags.get(PID_TAG, "")
    if tags.get(HOST_TAG) != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid), alive(int(pid), tags.get(PID_START_TAG, ""))


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark FAILED the runs of this machine whose process is gone but which still say STARTED."""
    failed = []
    host = socket.gethostname()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED)):
        tags = run.tags
        process = run_process(tags)
        if process is None or process[1]:
            continue
        instance.report_run_failed(
            run,
            f"the process of this run (pid {tags[PID_TAG]} on {host}) ended without finishing it "
            "(killed?): marked failed; nothing it had not published was published",
        )
        failed.append(run.run_id)
    return failed
