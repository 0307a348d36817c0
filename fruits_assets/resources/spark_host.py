"""A Spark JVM that `fruits ui` keeps warm for the runs it launches.

A fresh JVM spends 10-15 s of CPU loading and compiling Spark's and Delta's code before a run's
first write, which is most of a one-class rerun. `fruits ui` starts one JVM (PySpark's own
gateway, with the JVM settings of `local_spark_config`), warms it up once, and hands its address
to the runs it launches through the environment. A run attaches to it and creates its own Spark
context there (its own settings and Python workers), one run at a time: the run holds the host's
lock file (`flock`, which the kernel releases however the run ends) while its context lives.
Whenever no run holds the lock, the host stops any context still there, cancelling its jobs: a
run that was killed leaves nothing running. A run that finds the host taken for longer than
ATTACH_WAIT_SECONDS starts its own JVM, as it does without a host.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

ENV_PORT = "FRUITS_SPARK_HOST_PORT"
ENV_SECRET = "FRUITS_SPARK_HOST_SECRET"
ENV_LOCK = "FRUITS_SPARK_HOST_LOCK"
ATTACH_WAIT_SECONDS = 180.0
WATCH_SECONDS = 0.5

log = logging.getLogger(__name__)


def _take(path: str, wait_seconds: float) -> int | None:
    """The lock file's descriptor, locked; None if it stayed taken for `wait_seconds` (or
    cannot be opened: its folder was removed)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.1)


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def stop_left_over(jvm: Any, wait_seconds: float = 60.0) -> bool:
    """Cancel the jobs of the JVM's Spark context, if one is still there, and stop it; forget
    the Delta table states cached with it (another writer may have moved those tables on).

    A run killed in a call into the JVM (a Delta commit runs on the driver, not in a job) leaves
    that call running: wait up to `wait_seconds` for it to end, so that nothing of a dead run
    lands after the next run has started."""
    active = getattr(jvm.org.apache.spark, "SparkContext$").__getattr__("MODULE$").getActive()
    stopped = bool(active.isDefined())
    if stopped:
        context = active.get()
        context.cancelAllJobs()
        context.stop()
        deadline = time.monotonic() + wait_seconds
        while _calls_in_flight(jvm) and time.monotonic() < deadline:
            time.sleep(0.2)
        forget(jvm)
    return stopped


def forget(jvm: Any) -> None:
    """Drop the JVM's default session and Delta's cached table states (another writer may
    have moved those tables on since)."""
    jvm.org.apache.spark.sql.SparkSession.clearDefaultSession()
    jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


def _calls_in_flight(jvm: Any) -> int:
    """JVM threads, other than this caller's, executing a call from a Python driver."""
    this = jvm.java.lang.Thread.currentThread().getId()
    traces = jvm.java.lang.Thread.getAllStackTraces()
    return sum(
        1
        for thread in traces.keySet()
        if thread.getId() != this
        and "py4j.commands.CallCommand" in jvm.java.util.Arrays.toString(traces.get(thread))
    )


class SparkHost:
    """The JVM of `fruits ui`: started on creation, warmed up and watched in a thread."""

    def __init__(
        self, config: dict[str, Any], rehearsal: Callable[[], object] | None = None
    ) -> None:
        """`rehearsal`: work that warms the JVM up (by default a tiny Delta table and pandas
        UDF, `spark.warm_up`), run in this process once the JVM is up, before any run attaches;
        False when it did not run through."""
        from pyspark import SparkConf
        from pyspark.java_gateway import launch_gateway

        self._conf = SparkConf(loadDefaults=False).setAll((k, str(v)) for k, v in config.items())
        self._rehearsal = rehearsal
        self._dir = tempfile.mkdtemp(prefix="fruits-spark-host-")
        self.lock_path = os.path.join(self._dir, "spark-host.lock")
        self.warm = threading.Event()
        self.rehearsed = False  # the warm-up ran through
        self._closing = threading.Event()
        # Taken until the warm-up is over: a run launched meanwhile waits for a warm JVM.
        self._warming = _take(self.lock_path, 0)
        try:
            self._gateway = launch_gateway(self._conf)  # spark-submit: driver memory, class path
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._thread = threading.Thread(target=self._serve, name="spark-host", daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """What a run needs to attach: the gateway's address and secret, the lock file."""
        parameters = self._gateway.java_parameters
        return {
            ENV_PORT: str(parameters.port),
            ENV_SECRET: parameters.auth_token,
            ENV_LOCK: self.lock_path,
        }

    def _serve(self) -> None:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        from fruits_assets.resources.spark import warm_up

        try:
            # Runs create their contexts through this gateway too (`attach`).
            SparkContext._ensure_initialized(gateway=self._gateway)
            if self._rehearsal is not None:
                self.rehearsed = self._rehearsal() is not False
            else:
                spark = SparkSession(SparkContext(conf=self._conf, gateway=self._gateway))
                warm_up(spark)
                self.rehearsed = True
        except Exception:  # a run reports any real problem with Spark; this one stays cold
            if not self._closing.is_set():
                log.exception("warming up the UI's Spark JVM failed")
        finally:
            try:
                if SparkContext._active_spark_context is not None:
                    SparkContext._active_spark_context.stop()
                stop_left_over(self._gateway.jvm)
            except Exception:
                if not self._closing.is_set():
                    log.exception("stopping the warm-up's Spark context failed")
            if self._warming is not None:
                _release(self._warming)
            self.warm.set()
        while not self._closing.wait(WATCH_SECONDS):
            if self._gateway.proc.poll() is not None:  # e.g. a fatal error in a run's task
                log.error("the UI's Spark JVM exited (%s): runs start their own from now on",
                          self._gateway.proc.returncode)  # fmt: skip
                return
            fd = _take(self.lock_path, 0)
            if fd is None:  # a run is attached
                continue
            try:
                if stop_left_over(self._gateway.jvm):
                    log.info("stopped the Spark context of a run that ended")
            except Exception:  # the JVM is going away with the UI
                if not self._closing.is_set():
                    log.exception("stopping a finished run's Spark context failed")
            finally:
                _release(fd)

    def close(self) -> None:
        """Stop the JVM (it exits when its standard input closes) and its files."""
        self._closing.set()
        process = getattr(self._gateway, "proc", None)
        try:
            self._gateway.shutdown()
        except Exception:
            pass
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=30)
            except Exception:
                process.kill()
        # A rehearsal cut short by the JVM's exit fails at once and removes its scratch folder.
        self._thread.join(timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)


_ATTACHED: dict[str, int] = {}  # the lock's descriptor while this process uses the host


def attach(config: dict[str, Any]) -> Any | None:
    """A Spark session of `config` in the JVM of the `fruits ui` that launched this run, or None
    when there is none to use (no host, not local Spark, this process has its own JVM already,
    the host is taken, or unreachable): the caller then starts Spark itself."""
    port, secret, lock = (os.environ.get(name) for name in (ENV_PORT, ENV_SECRET, ENV_LOCK))
    if not (port and secret and lock) or not str(config.get("spark.master", "")).startswith(
        "local"
    ):
        return None
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    if SparkContext._gateway is not None:
        return None
    import dagster as dg

    say = dg.get_dagster_logger()
    fd = _take(lock, 0)
    if fd is None:
        say.info("waiting for the UI's Spark JVM: it is warming up or another run uses it")
        fd = _take(lock, ATTACH_WAIT_SECONDS)
    if fd is None:
        say.warning("the UI's Spark JVM stayed busy or is gone: this run starts its own")
        return None
    settings = {k: str(v) for k, v in config.items()}
    os.environ["PYSPARK_GATEWAY_PORT"], os.environ["PYSPARK_GATEWAY_SECRET"] = port, secret
    gateway = None
    try:
        gateway = launch_gateway()  # connects on first use: a host that is gone fails here
        if not stop_left_over(gateway.jvm):
            forget(gateway.jvm)  # what the run before this one cached
        SparkContext(conf=SparkConf(loadDefaults=False).setAll(settings.items()), gateway=gateway)
        session = SparkSession.builder.config(map=settings).getOrCreate()
    except Exception as exc:
        _forget(gateway)
        _release(fd)
        say.warning(f"the UI's Spark JVM cannot be used ({exc}): this run starts its own")
        return None
    finally:
        for name in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
            os.environ.pop(name, None)
    _ATTACHED["lock"] = fd
    return session


def _forget(gateway: Any) -> None:
    """Undo a failed attach in this process only: its context stopped, its connections closed
    (not `shutdown`, which would end the host's gateway for every run), PySpark reset so that
    the run can start its own JVM."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    try:
        if SparkContext._active_spark_context is not None:
            SparkContext._active_spark_context.stop()
    except Exception:
        pass
    if gateway is not None:
        try:
            gateway.close(keep_callback_server=True)
            gateway.shutdown_callback_server()
        except Exception:
            pass
    with SparkContext._lock:
        SparkContext._active_spark_context = None
        SparkContext._gateway = None
        SparkContext._jvm = None
    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None


def detach(session: Any) -> None:
    """Stop this process's context in the host and let the next run have it. The context's
    PySpark folder (broadcast pickles: the featurizer model, the PCA) goes with it; the JVM
    would keep it until it exits."""
    fd = _ATTACHED.pop("lock", None)
    if fd is None:
        return
    temp_dir = getattr(session.sparkContext, "_temp_dir", None)
    try:
        stop_without_waiting(session)
    except Exception:  # the host's JVM is gone: nothing left to stop
        pass
    finally:
        _release(fd)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def stop_without_waiting(session: Any) -> None:
    """`session.stop()`, less its wait for PySpark's accumulator server, which looks for its
    shutdown once a second: up to a second at the end of every run. The server has nothing
    left to receive once the context stops; it ends on its own thread (with this process at
    the latest)."""
    context = session.sparkContext
    accumulators = getattr(context, "_accumulatorServer", None)
    if accumulators is not None:
        context._accumulatorServer = None
        threading.Thread(target=accumulators.shutdown, name="accumulators", daemon=True).start()
    session.stop()
