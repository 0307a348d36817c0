"""The warm Spark JVM of `fruits ui`: runs (real processes) attach to it one at a time, a run
that ends or is killed leaves no context or job behind, a busy host sends a run to its own JVM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fruits_assets.resources.spark import local_spark_config
from fruits_assets.resources.spark_host import SparkHost
from fruits_assets.settings import FruitsSettings

pytestmark = pytest.mark.slow

# A run's use of Spark, as LocalSpark does it: attach, say which JVM it got, then what the
# test asks (`write` a Delta table and exit, `hang` in a job, `hold` the host; `bad`: a
# configuration its Spark context cannot be created with).
RUN = textwrap.dedent(
    """
    import os, sys, time
    from fruits_assets.resources import spark_host
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings

    spark_host.ATTACH_WAIT_SECONDS = float(os.environ.get("WAIT", "30"))
    config = local_spark_config(FruitsSettings.from_env())
    if sys.argv[1] == "bad":  # a context the JVM refuses to create, after connecting to it
        config["spark.master"] = "local[no such thing]"
    spark = spark_host.attach(config)
    if spark is None:
        print("own JVM", flush=True)
        sys.exit(0)
    print("jvm", spark.sparkContext._jvm.ProcessHandle.current().pid(), flush=True)
    what = sys.argv[1]
    if what == "write":
        spark.range(10).write.format("delta").save(sys.argv[2])
    elif what == "hang":
        import threading

        def sleep(batches):
            for batch in batches:
                time.sleep(3600)
                yield batch

        threading.Thread(
            target=lambda: spark.range(4, numPartitions=2).mapInPandas(sleep, "id long").collect(),
            daemon=True,
        ).start()
        while not spark.sparkContext.statusTracker().getActiveJobsIds():
            time.sleep(0.2)
        print("job running", flush=True)
        time.sleep(3600)
    elif what == "hold":
        print("holding", flush=True)
        time.sleep(3600)
    """
)


def _start_run(host: SparkHost, *args: str, wait: float = 30) -> subprocess.Popen:
    env = {**os.environ, **host.env(), "WAIT": str(wait)}
    return subprocess.Popen(
        [sys.executable, "-c", RUN, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def _line(run: subprocess.Popen, prefix: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = run.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and run.poll() is not None:
            break
    raise AssertionError(f"the run never printed {prefix!r} (exit {run.poll()})")


def _active_jobs(host: SparkHost) -> list[int] | None:
    """The job ids of the host JVM's Spark context; None when no context is there."""
    jvm = host._gateway.jvm
    active = getattr(jvm.org.apache.spark, "SparkContext$").__getattr__("MODULE$").getActive()
    return list(active.get().statusTracker().getActiveJobIds()) if active.isDefined() else None


def _until(condition, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_runs_share_the_ui_jvm_one_at_a_time_and_leave_nothing_running(tmp_path):
    host = SparkHost(local_spark_config(FruitsSettings.from_env()))
    jvm_pid = host._gateway.proc.pid
    try:
        assert host.warm.wait(300), "the host never finished warming up"
        assert _active_jobs(host) is None, "the warm-up left its context running"

        # A run attaches, writes through Delta in the host's JVM and exits without stopping
        # its context: the host stops it.
        table = tmp_path / "table"
        run = _start_run(host, "write", f"file://{table}")
        assert _line(run, "jvm") == f"jvm {jvm_pid}"
        assert run.wait(timeout=180) == 0
        assert (table / "_delta_log").is_dir()
        assert _until(lambda: _active_jobs(host) is None), "a finished run's context stayed"

        # A run whose context cannot be created there starts its own JVM (and fails there by
        # itself); the host is left as it was for the next run.
        run = _start_run(host, "bad")
        assert _line(run, "own JVM")
        assert run.wait(timeout=60) == 0

        # A run killed in the middle of a job: its job is cancelled and its context stopped.
        run = _start_run(host, "hang")
        _line(run, "job running")
        assert _active_jobs(host), "the hanging job is not in the host's JVM"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        assert _until(lambda: _active_jobs(host) is None), "a killed run's job kept running"

        # While one run holds the host, another starts its own JVM instead of waiting forever.
        holder = _start_run(host, "hold")
        try:
            assert _line(holder, "jvm") == f"jvm {jvm_pid}"
            _line(holder, "holding")
            other = _start_run(host, "write", f"file://{tmp_path / 'other'}", wait=1)
            assert _line(other, "own JVM")
            assert other.wait(timeout=60) == 0
        finally:
            holder.kill()
            holder.wait(timeout=30)
        # ... and the next run gets the host again.
        run = _start_run(host, "write", f"file://{tmp_path / 'again'}")
        assert _line(run, "jvm") == f"jvm {jvm_pid}"
        assert run.wait(timeout=180) == 0
    finally:
        host.close()
    assert host._gateway.proc.poll() is not None, "the host's JVM outlived close()"
