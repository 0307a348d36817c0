"""The instance's run launcher with a real Dagster daemon: each queued run executes in a process
that was ready before the run was launched, a terminated run's process stops, a killed one's run
is marked failed, and nothing outlives the daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from fruits_assets import cli, runs

BIN = Path(sys.executable).parent

# A job whose one step writes its process id and the nice value of every thread of its process
# but the allocator's, then waits while a "hold" file exists.
JOBS = """
import json, os, time
from pathlib import Path
import dagster as dg

@dg.op
def report(context):
    probe = Path(os.environ["PROBE_DIR"])
    nice = {}
    for task in os.listdir("/proc/self/task"):
        name, stat = (Path("/proc/self/task", task, f).read_text() for f in ("comm", "stat"))
        if not name.startswith("jemalloc"):
            nice[task] = int(stat.rsplit(")", 1)[1].split()[16])
    (probe / (context.run_id + ".nice")).write_text(json.dumps(nice))
    (probe / context.run_id).write_text(str(os.getpid()))
    while (probe / "hold").exists():
        time.sleep(0.1)

@dg.job(executor_def=dg.in_process_executor)
def probe():
    report()

defs = dg.Definitions(jobs=[probe])
"""


def _standbys(parent: int) -> list[int]:
    """The launcher's processes under `parent` that have no run yet or run one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"fruits_assets.standby" in command and ppid == parent:
            found.append(int(entry))
    return found


def _until(condition, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    return condition()


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    home, probe = tmp_path / "home", tmp_path / "probe"
    home.mkdir()
    probe.mkdir()
    jobs = tmp_path / "jobs.py"
    jobs.write_text(JOBS)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PROBE_DIR", str(probe))
    with cli._instance():  # writes the instance's configuration, as `fruits ui` does
        pass
    process = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-f", str(jobs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield process, jobs, probe
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _launch(jobs: Path, instance: dg.DagsterInstance) -> str:
    before = {r.run_id for r in instance.get_runs()}
    done = subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-f", str(jobs), "-j", "probe"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run_id,) = {r.run_id for r in instance.get_runs()} - before
    return run_id


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_runs_start_in_a_ready_process_stop_when_terminated_and_end_with_the_daemon(daemon):
    process, jobs, probe = daemon
    instance = dg.DagsterInstance.get()
    ended = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)

    # The first run starts its process when launched; the next process is readied meanwhile.
    first = _launch(jobs, instance)
    assert _until(lambda: _status(instance, first) in ended, 180), _status(instance, first)
    assert _status(instance, first) == dg.DagsterRunStatus.SUCCESS
    first_worker = int((probe / first).read_text())
    ready = _until(lambda: [pid for pid in _standbys(process.pid) if pid != first_worker])
    assert len(ready) == 1, ready
    ready_since = runs.process_start(ready[0])

    # The next run executes in that process, started before the run was launched.
    second = _launch(jobs, instance)
    assert _until(lambda: _status(instance, second) in ended), _status(instance, second)
    assert _status(instance, second) == dg.DagsterRunStatus.SUCCESS
    assert (probe / second).read_text() == str(ready[0])
    # It imported at a low priority, on a thread of its own: the run's threads have the normal one.
    nice = json.loads((probe / f"{second}.nice").read_text())
    assert nice and set(nice.values()) == {os.getpriority(os.PRIO_PROCESS, 0)}, nice
    tags = instance.get_run_by_id(second).tags
    assert tags[runs.PID_TAG] == str(ready[0]) and tags[runs.PID_START_TAG] == ready_since

    # Terminated (as the UI's "Terminate" button asks the launcher): its process stops and the
    # run ends CANCELED.
    (probe / "hold").touch()
    third = _launch(jobs, instance)
    assert _until(lambda: (probe / third).exists()), _status(instance, third)
    worker = int((probe / third).read_text())
    assert instance.run_launcher.terminate(third)
    canceled = _until(lambda: _status(instance, third) == dg.DagsterRunStatus.CANCELED, 60)
    assert canceled, _status(instance, third)
    assert _until(lambda: not runs.alive(worker, ""), 30), "the terminated run's process lives"
    assert not instance.run_launcher.terminate(third), "a finished run was terminated again"

    # Killed outright (out of memory, kill -9): the run ends FAILED, naming its process.
    fourth = _launch(jobs, instance)
    assert _until(lambda: (probe / fourth).exists()), _status(instance, fourth)
    killed = int((probe / fourth).read_text())
    os.kill(killed, signal.SIGKILL)
    failed = _until(lambda: _status(instance, fourth) == dg.DagsterRunStatus.FAILURE, 60)
    assert failed, _status(instance, fourth)
    messages = [event.message or "" for event in instance.all_logs(fourth)]
    assert any(f"pid {killed}" in message for message in messages), messages[-3:]

    # The daemon gone, its ready process exits instead of waiting forever.
    waiting = _until(lambda: [p for p in _standbys(process.pid) if p not in (worker, killed)])
    assert len(waiting) == 1, waiting
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    assert _until(lambda: not any(runs.alive(pid, "") for pid in waiting), 60), waiting


@pytest.mark.parametrize(
    ("status", "code", "printed"), [(None, 0, ""), (3, 3, ""), ("no such run", 1, "no such run")]
)
def test_a_finished_process_exits_with_its_status_after_the_exit_handlers(status, code, printed):
    """A standby (and `fruits`) ends its process without the interpreter's teardown: the
    status `sys.exit` would give, what was registered to run at exit run, what was printed
    flushed."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran'))\n"
        "print('buffered', end='')\n"
        "from fruits_assets.quick_exit import exit_now\n"
        f"exit_now({status!r})\n"
        "print('not reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == code, done.stderr
    assert done.stdout == "bufferedexit handler ran\n"
    assert printed in done.stderr
