"""The warm Spark JVM of `fruits ui`: runs (real processes) attach to it one at a time, each
claims the context the host prepared for it (with its Python workers), a run that ends or is
killed leaves no context or job behind, a busy host sends a run to its own JVM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fruits_assets.resources import spark_host
from fruits_assets.resources.spark import local_spark_config
from fruits_assets.resources.spark_host import SparkHost
from fruits_assets.settings import FruitsSettings

pytestmark = pytest.mark.slow

# A run's use of Spark, as LocalSpark does it: attach, say which JVM and context it got and one
# of its settings, then what the test asks (`write` a Delta table, after a Python job that says
# which workers ran it, and exit; `hang` in a job; `call` into the JVM for a long time; `open`:
# stop its context, then wait in a constructor call into the JVM, as creating a context does;
# `hold` the host; `bad`: a configuration its Spark context cannot be created with). CODE: the
# run's code differs from the code the host prepared the context for.
RUN = textwrap.dedent(
    """
    import os, sys, time
    from fruits_assets.resources import spark_host
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings

    spark_host.ATTACH_WAIT_SECONDS = float(os.environ.get("WAIT", "30"))
    if os.environ.get("CODE"):
        spark_host.code_version = lambda: os.environ["CODE"]
    config = local_spark_config(FruitsSettings.from_env())
    if sys.argv[1] == "bad":  # a context the JVM refuses to create, after connecting to it
        config["spark.master"] = "local[no such thing]"
    spark = spark_host.attach(config)
    if spark is None:
        print("own JVM", flush=True)
        sys.exit(0)
    print("jvm", spark.sparkContext._jvm.ProcessHandle.current().pid(), flush=True)
    print("app", spark.sparkContext.applicationId, int(spark_host.claimed_prepared()), flush=True)
    print("batch", spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"), flush=True)
    what = sys.argv[1]
    if what == "write":

        def worker(batches):
            for batch in batches:
                yield batch.assign(id=os.getpid())

        rows = spark.range(8, numPartitions=2).mapInPandas(worker, "id long").collect()
        print("workers", *sorted({row.id for row in rows}), flush=True)
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
    elif what == "call":  # a long call into the JVM, as a Delta commit on the driver is
        print("calling", flush=True)
        spark.sparkContext._jvm.java.lang.Thread.sleep(20000)
    elif what == "open":  # blocks until the test opens the FIFO argv[2] for writing
        jvm = spark.sparkContext._jvm
        spark.stop()
        print("opening", flush=True)
        jvm.java.io.FileInputStream(sys.argv[2])
    elif what == "hold":
        print("holding", flush=True)
        time.sleep(3600)
    """
)


def _start_run(host: SparkHost, *args: str, wait: float = 30, code: str = "") -> subprocess.Popen:
    env = {**os.environ, **host.env(), "WAIT": str(wait), "CODE": code}
    run = subprocess.Popen(
        [sys.executable, "-c", RUN, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    run.lines = queue.Queue()  # what it prints, read in a thread: `_line` gives up in time

    def read() -> None:
        for line in run.stdout:
            run.lines.put(line)
        run.lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return run


def _line(run: subprocess.Popen, prefix: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = run.lines.get(timeout=left)
        except queue.Empty:
            break
        if line.startswith(prefix):
            return line.strip()
        if not line:
            break
    raise AssertionError(f"the run never printed {prefix!r} (exit {run.poll()})")


def _active_jobs(host: SparkHost) -> list[int] | None:
    """The job ids of the host JVM's Spark context; None when no context is there."""
    jvm = host._gateway.jvm
    active = getattr(jvm.org.apache.spark, "SparkContext$").__getattr__("MODULE$").getActive()
    return list(active.get().statusTracker().getActiveJobIds()) if active.isDefined() else None


def _active_app(host: SparkHost) -> str | None:
    """The application id of the host JVM's Spark context; None when no context is there."""
    jvm = host._gateway.jvm
    active = getattr(jvm.org.apache.spark, "SparkContext$").__getattr__("MODULE$").getActive()
    return active.get().applicationId() if active.isDefined() else None


def _python_workers(host: SparkHost) -> set[int]:
    """The processes under the host's JVM: its contexts' Python daemons and their workers."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {host._gateway.proc.pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _calls_in(host: SparkHost, frame: str) -> int:
    """JVM threads executing a Python driver's call that is in `frame` (a method's name)."""
    traces = spark_host._stack_traces(host._gateway.jvm).values()
    return sum("py4j.commands." in trace and frame in trace for trace in traces)


def _mark(host: SparkHost) -> str | None:
    """What the host marked the prepared context with (`PREPARED_PROPERTY`)."""
    return host._gateway.jvm.java.lang.System.getProperty(spark_host.PREPARED_PROPERTY)


def _prepared_anew(host: SparkHost, previous: str) -> bool:
    """The host stopped the context `previous` and prepared another, idle."""
    app = _active_app(host)
    return app is not None and app != previous and app == host.prepared and not _active_jobs(host)


def _until(condition, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture
def pyspark_set_aside():
    """PySpark's process-wide state (a session an earlier test left in this process) set aside
    while the host runs here: the host's process is the only PySpark user in `fruits ui`."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    state = [
        (SparkContext, "_gateway"),
        (SparkContext, "_jvm"),
        (SparkContext, "_active_spark_context"),
        (SparkSession, "_instantiatedSession"),
        (SparkSession, "_activeSession"),
    ]
    saved = [getattr(owner, name) for owner, name in state]
    for owner, name in state:
        setattr(owner, name, None)
    yield
    for (owner, name), value in zip(state, saved, strict=True):
        setattr(owner, name, value)


def test_runs_share_the_ui_jvm_one_at_a_time_and_leave_nothing_running(
    tmp_path, monkeypatch, pyspark_set_aside
):
    config = local_spark_config(FruitsSettings.from_env())
    host = SparkHost(config, run_config=config)
    jvm_pid = host._gateway.proc.pid
    try:
        assert host.warm.wait(300), "the host never finished warming up"
        prepared = host.prepared
        assert prepared and _active_app(host) == prepared, "no context prepared for a run"
        assert _until(lambda: _active_jobs(host) == []), "the warm-up left a job running"
        ready_workers = _python_workers(host)
        assert ready_workers, "the prepared context has no Python workers"
        # Spark ends Python workers idle for a minute (checking every 10 s): the host keeps
        # the prepared ones.
        time.sleep(80)
        assert _python_workers(host) == ready_workers, "the prepared workers were replaced"

        # A run claims the prepared context, runs its Python job in the workers started for it,
        # writes through Delta in the host's JVM and exits without stopping its context: the
        # host stops it and prepares the next run's.
        table = tmp_path / "table"
        run = _start_run(host, "write", f"file://{table}")
        assert _line(run, "jvm") == f"jvm {jvm_pid}"
        assert _line(run, "app") == f"app {prepared} 1"
        batch = config["spark.sql.execution.arrow.maxRecordsPerBatch"]
        assert _line(run, "batch") == f"batch {batch}", "the run's settings are not in effect"
        workers = {int(pid) for pid in _line(run, "workers").split()[1:]}
        assert workers and workers <= ready_workers, (workers, ready_workers)
        assert run.wait(timeout=180) == 0
        assert (table / "_delta_log").is_dir()
        assert _until(lambda: _prepared_anew(host, prepared)), "no fresh context after the run"

        # A run whose code changed since the context was prepared does not take its Python
        # workers: it replaces the context with its own.
        prepared, ready_workers = host.prepared, _python_workers(host)
        run = _start_run(host, "write", f"file://{tmp_path / 'changed'}", code="changed")
        app = _line(run, "app")
        assert app.startswith("app ") and app.endswith(" 0") and prepared not in app, app
        workers = {int(pid) for pid in _line(run, "workers").split()[1:]}
        assert workers and not workers & ready_workers, (workers, ready_workers)
        assert run.wait(timeout=180) == 0
        assert _until(lambda: _prepared_anew(host, prepared)), "no fresh context after the run"

        # A run whose context cannot be created there (other settings than the prepared one's)
        # starts its own JVM instead; the host prepares another context.
        prepared = host.prepared
        run = _start_run(host, "bad")
        assert _line(run, "own JVM")
        assert run.wait(timeout=60) == 0
        assert _until(lambda: _prepared_anew(host, prepared)), "no fresh context after the run"

        # A run killed in the middle of a job: its job is cancelled and its context stopped.
        run = _start_run(host, "hang")
        hung = _line(run, "app").split()[1]
        _line(run, "job running")
        assert _active_jobs(host), "the hanging job is not in the host's JVM"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        assert _until(lambda: _prepared_anew(host, hung)), "a killed run's job kept running"

        # A run killed during a long call into the JVM (a commit on the driver): its context is
        # stopped, and the next one prepared only once that call has ended.
        run = _start_run(host, "call")
        called = _line(run, "app").split()[1]
        _line(run, "calling")
        assert _until(lambda: _calls_in(host, "java.lang.Thread.sleep(") == 1)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        assert _until(lambda: _active_app(host) is None), "a killed run's context stayed"
        samples = 0
        while _calls_in(host, "java.lang.Thread.sleep("):
            assert _active_app(host) is None, "a context was created while a dead run's call ran"
            samples += 1
            time.sleep(0.2)
        assert samples, "the dead run's call was not seen running"
        assert _until(lambda: _prepared_anew(host, called), 60), "nothing prepared after it"

        # A run killed while it waits in a constructor call into the JVM, its context stopped
        # (as a run creating its context would be): nothing is prepared until that call ends.
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        run = _start_run(host, "open", str(fifo))
        opened = _line(run, "app").split()[1]
        _line(run, "opening")
        assert _until(lambda: _calls_in(host, "java.io.FileInputStream.<init>(") == 1)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
        time.sleep(2)  # the host's watch has seen the run end, several times
        assert _calls_in(host, "java.io.FileInputStream.<init>(") == 1
        assert _active_app(host) is None and host.prepared == opened, "prepared meanwhile"
        os.close(os.open(fifo, os.O_WRONLY))  # the call returns
        assert _until(lambda: _prepared_anew(host, opened), 60), "nothing prepared after it"

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
        again = _line(run, "app").split()[1]
        assert run.wait(timeout=180) == 0
        assert _until(lambda: _prepared_anew(host, again)), "no fresh context after the run"

        # The project's code changes while a context waits for a run: the host replaces it.
        prepared = host.prepared
        monkeypatch.setattr(spark_host, "code_version", lambda: "edited")
        monkeypatch.setattr(spark_host, "REFRESH_SECONDS", 0.0)
        assert _until(lambda: _prepared_anew(host, prepared) and _mark(host).endswith(" edited"))
        workers = _python_workers(host)
        assert workers, "the prepared context has no Python workers"
    finally:
        host.close()
    assert host._gateway.proc.poll() is not None, "the host's JVM outlived close()"
    assert _until(lambda: not any(spark_host._running(pid) for pid in workers)), (
        "Python workers outlived the host's JVM"
    )
