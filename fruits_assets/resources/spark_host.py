"""A Spark JVM that `fruits ui` keeps warm for the runs it launches.

A fresh JVM spends 10-15 s of CPU loading and compiling Spark's and Delta's code before a run's
first write, which is most of a one-class rerun. `fruits ui` starts one JVM (PySpark's own
gateway, with the JVM settings of `local_spark_config`), warms it up once, and hands its address
to the runs it launches through the environment. Each run gets a Spark context of its own there,
one run at a time: the run holds the host's lock file (`flock`, which the kernel releases however
the run ends) while its context lives. Whenever no run holds the lock, the host stops any context
a run left there, cancelling its jobs (a run that was killed leaves nothing running), and, once
the run's process has ended, prepares the next run's context: created with the runs' settings,
its Python workers started and their libraries imported (and kept from Spark's idle timeout),
so that a run does not wait for them. A run claims it or, when its settings or the project's
code differ from the context's, replaces it with its own. A run that finds the host taken for
longer than ATTACH_WAIT_SECONDS starts its own JVM, as it does without a host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENV_PORT = "FRUITS_SPARK_HOST_PORT"
ENV_SECRET = "FRUITS_SPARK_HOST_SECRET"
ENV_LOCK = "FRUITS_SPARK_HOST_LOCK"
ATTACH_WAIT_SECONDS = 180.0
QUIET_WAIT_SECONDS = 2.0  # a run's wait for the lock before it logs that it waits
WATCH_SECONDS = 0.5
ENDING_WATCH_SECONDS = 0.1  # while a run that let the host go is ending
# A JVM system property: "<application id> <code fingerprint>" of the context the host prepared
# and no run has claimed yet. A run clears it when it claims the context; a context running
# without it is a finished (or killed) run's. Python workers keep the modules they imported: a
# run whose code changed since (a reloaded code location) does not claim workers that imported
# the older code.
PREPARED_PROPERTY = "fruits.spark.prepared"
# Spark ends Python workers idle for a minute: a prepared context runs a tiny job this often,
# so that a run's first Python stage finds them up to 40 s after the run claimed the context.
REFRESH_SECONDS = 20.0
# Settings that take effect only when a JVM starts (spark-submit also adds its own options to
# them): a run attached to the host's JVM has that JVM's, whatever it asks.
JVM_SETTINGS = frozenset(
    {
        "spark.driver.extraJavaOptions",
        "spark.driver.extraClassPath",
        "spark.driver.extraLibraryPath",
        "spark.driver.memory",
    }
)
# Failed preparations in a row after which the host waits for a run to end before trying again
# (runs meanwhile create their own contexts), and the pause after each.
PREPARE_ATTEMPTS = 3
PREPARE_RETRY_SECONDS = 5.0

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


def _hold(fd: int) -> None:
    """Write this process's id into the lock file it holds (`_holder`)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def _holder(fd: int) -> int | None:
    """The id of the process that held the lock file last, if one wrote it (`_hold`)."""
    try:
        return int(os.pread(fd, 32, 0) or b"0") or None
    except (OSError, ValueError):
        return None


def _running(pid: int | None) -> bool:
    """Whether the process `pid` has not ended yet (a zombie has ended)."""
    if pid is None:
        return False
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except OSError:
            return False
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def stop_left_over(
    jvm: Any, wait_seconds: float = 60.0, stop: threading.Event | None = None
) -> bool:
    """Cancel the jobs of the JVM's Spark context, if one is still there, and stop it; forget
    the Delta table states cached with it (another writer may have moved those tables on).

    A run killed in a call into the JVM (a Delta commit runs on the driver, not in a job) leaves
    that call running: wait up to `wait_seconds` (or until `stop` is set) for it to end, so
    that nothing of a dead run lands after the next run has started."""
    context = _active(jvm)
    jvm.java.lang.System.clearProperty(PREPARED_PROPERTY)
    stopped = context is not None
    if stopped:
        context.cancelAllJobs()
        context.stop()
        _settle(jvm, wait_seconds, stop)
        forget(jvm)
    return stopped


_STUCK: set[int] = set()  # JVM threads whose call outlasted a wait: not waited for again


def _settle(jvm: Any, wait_seconds: float = 60.0, stop: threading.Event | None = None) -> None:
    """Wait up to `wait_seconds` (or until `stop` is set) for the calls of other processes into
    the JVM to end. A call still running then is not waited for again."""
    deadline = time.monotonic() + wait_seconds
    while calls := _calls_in_flight(jvm):
        if stop is not None and stop.is_set():
            return
        if time.monotonic() >= deadline:
            log.warning("%d calls into the Spark JVM still run after %.0f s: not waiting for "
                        "them again", len(calls), wait_seconds)  # fmt: skip
            _STUCK.update(calls)
            return
        time.sleep(0.2)


def forget(jvm: Any) -> None:
    """Drop the JVM's default session and Delta's cached table states (another writer may
    have moved those tables on since)."""
    jvm.org.apache.spark.sql.SparkSession.clearDefaultSession()
    jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


def code_version() -> str:
    """A fingerprint of this package's Python files (paths, sizes, modification times)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.blake2b(digest_size=8)
    files = (
        os.path.join(folder, name)
        for folder, _, names in os.walk(root)  # folders removed meanwhile are skipped
        for name in names
        if name.endswith(".py")
    )
    for path in sorted(files):
        try:
            stat = os.stat(path)
        except OSError:  # removed meanwhile, or a link to nothing (an editor's lock file)
            continue
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _active(jvm: Any) -> Any | None:
    """The JVM's running Spark context (Scala's), or None."""
    active = getattr(jvm.org.apache.spark, "SparkContext$").__getattr__("MODULE$").getActive()
    return active.get() if active.isDefined() else None


def _stack_traces(jvm: Any) -> dict[int, str]:
    """Each JVM thread's stack trace, rendered, by thread id."""
    traces = jvm.java.lang.Thread.getAllStackTraces()
    rendered = {}
    for thread in traces.keySet():
        # Py4J cannot pass a StackTraceElement[] as an Object[]: render it as a Throwable's.
        trace = jvm.java.lang.Throwable()
        trace.setStackTrace(traces.get(thread))
        text = jvm.org.apache.commons.lang3.exception.ExceptionUtils.getStackTrace(trace)
        rendered[thread.getId()] = text
    return rendered


def _calls_in_flight(jvm: Any) -> set[int]:
    """The JVM threads, other than this caller's (and those given up on), executing a call from
    a Python driver."""
    this = jvm.java.lang.Thread.currentThread().getId()
    return {
        identity
        for identity, trace in _stack_traces(jvm).items()
        # a call, a constructor, a field...
        if identity != this and identity not in _STUCK and "py4j.commands." in trace
    }


class SparkHost:
    """The JVM of `fruits ui`: started on creation, warmed up and watched in a thread."""

    def __init__(
        self,
        config: dict[str, Any],
        rehearsal: Callable[[], object] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        """`config`: the JVM's settings. `rehearsal`: work that warms the JVM up (by default a
        pandas UDF on every core, `spark.warm_up`), run in this process once the JVM is
        up, before any run attaches; False when it did not run through. `run_config`: the
        settings of the runs' contexts, which the host then prepares ahead of each run."""
        from pyspark import SparkConf
        from pyspark.java_gateway import launch_gateway

        self._conf = SparkConf(loadDefaults=False).setAll((k, str(v)) for k, v in config.items())
        self._run_conf = (
            None
            if run_config is None
            else SparkConf(loadDefaults=False).setAll((k, str(v)) for k, v in run_config.items())
        )
        self._rehearsal = rehearsal
        self._dir = tempfile.mkdtemp(prefix="fruits-spark-host-")
        self.lock_path = os.path.join(self._dir, "spark-host.lock")
        self.warm = threading.Event()
        self.rehearsed = False  # the warm-up ran through
        self.prepared: str | None = None  # the application id of the last context prepared
        self._standing: Any = None  # this process's side of it (a PySpark SparkSession)
        self._standing_root = ""  # the folder PySpark put on sys.path for it
        self._warmed_at = 0.0
        self._failed_preparations = 0
        self._retry_at = 0.0
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

        from fruits_assets.resources.spark import WARM_UP_THREAD, warm_up

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
            # The rehearsal's runs warm their Spark up in the background (`LocalSpark`): what
            # they still do must not meet the contexts this thread creates from now on.
            for thread in threading.enumerate():
                if thread.name == WARM_UP_THREAD:
                    thread.join(timeout=60)
            try:
                if SparkContext._active_spark_context is not None:
                    SparkContext._active_spark_context.stop()
                stop_left_over(self._gateway.jvm)
            except Exception:
                if not self._closing.is_set():
                    log.exception("stopping the warm-up's Spark context failed")
            self._tend()  # the first run's context
            if self._warming is not None:
                _release(self._warming)
            self.warm.set()
        pause = WATCH_SECONDS
        while not self._closing.wait(pause):
            pause = WATCH_SECONDS
            if self._gateway.proc.poll() is not None:  # e.g. a fatal error in a run's task
                log.error("the UI's Spark JVM exited (%s): runs start their own from now on",
                          self._gateway.proc.returncode)  # fmt: skip
                return
            fd = _take(self.lock_path, 0)
            if fd is None:  # a run is attached
                continue
            try:
                holder = _holder(fd)
                if holder is not None:  # a run has come
                    # It lets the host go before it ends (its last events, its exit): preparing
                    # the next context then would take the cores from it.
                    if _running(holder):
                        pause = ENDING_WATCH_SECONDS
                        continue
                    os.ftruncate(fd, 0)  # and gone (its process id may be reused)
                    self._failed_preparations = 0
                self._tend()
            finally:
                _release(fd)

    def _tend(self) -> None:
        """With the lock held: stop the context a run left, prepare the next run's, keep it
        ready."""
        jvm = self._gateway.jvm
        may_prepare = (
            self._run_conf is not None
            and self._failed_preparations < PREPARE_ATTEMPTS
            and time.monotonic() >= self._retry_at
        )
        try:
            context = _active(jvm)
            mark = jvm.java.lang.System.getProperty(PREPARED_PROPERTY)
            if context is not None and mark and mark.split()[0] == context.applicationId():
                self._refresh(mark.partition(" ")[2])
                return
            self._retire()  # claimed by a run, or gone
            if context is None and mark is None and not may_prepare:
                return
            if stop_left_over(jvm, stop=self._closing):
                log.info("stopped the Spark context of a run that ended")
            # What a dead run still does in the JVM (it may be creating a context) ends first.
            _settle(jvm, stop=self._closing)
            if _active(jvm) is not None and stop_left_over(jvm, stop=self._closing):
                log.info("stopped the Spark context a run that ended had been creating")
        except Exception:  # the JVM is going away with the UI
            if not self._closing.is_set():
                log.exception("stopping a finished run's Spark context failed")
            return
        if not may_prepare or self._closing.is_set():
            return
        try:
            self._prepare()
            self._failed_preparations = 0
        except Exception as exc:
            self._failed_preparations += 1
            self._retry_at = time.monotonic() + PREPARE_RETRY_SECONDS
            if self._closing.is_set():
                return
            if self._failed_preparations == 1:  # the whole story once, then a line each time
                log.warning("preparing the next run's Spark context failed (runs create "
                            "their own)", exc_info=True)  # fmt: skip
            else:
                log.warning("preparing the next run's Spark context failed again: %s", exc)

    def _prepare(self) -> None:
        """Create the next run's context with the runs' settings, start its Python workers
        (the image and model libraries imported) and leave it running, marked as prepared."""
        from pyspark import SparkContext, SparkFiles
        from pyspark.sql import SparkSession

        code = code_version()
        context = SparkContext(conf=self._run_conf, gateway=self._gateway)
        root = ""
        try:
            root = SparkFiles.getRootDirectory()
            # The JVM's default session from now on: the run takes it with the context.
            session = SparkSession(context)
            self._warm(session)
            application = context.applicationId
        except BaseException:
            context.stop()
            if root in sys.path:
                sys.path.remove(root)
            raise
        # The JVM's context and session stay; PySpark in this process may create the next ones.
        _set_active_in_pyspark(None)
        self._standing, self._standing_root = session, root
        self._gateway.jvm.java.lang.System.setProperty(PREPARED_PROPERTY, f"{application} {code}")
        self.prepared = application

    def _warm(self, session: Any) -> None:
        """A pandas UDF on every core that starts the context's Python workers (or keeps them):
        they import what the image, featurizer and PCA stages use. (Spark keys its workers by
        their environment, which differs between SQL's and plain RDDs' Python jobs.)"""
        from fruits_assets.ml import workers

        cores = session.sparkContext.defaultParallelism
        rows = session.range(0, 2 * cores, numPartitions=cores)
        rows.mapInPandas(workers.warm, "id long").collect()
        self._warmed_at = time.monotonic()

    def _refresh(self, code: str) -> None:
        """Keep the prepared context's Python workers from Spark's idle timeout; replace the
        context once the project's code has changed (its workers hold the older modules)."""
        if self._standing is None or time.monotonic() - self._warmed_at < REFRESH_SECONDS:
            return
        try:
            if code != code_version():
                stop_left_over(self._gateway.jvm, stop=self._closing)
                self._retire()  # the next watch prepares one for the code as it is now
            else:
                with _active_in_pyspark(self._standing):
                    self._warm(self._standing)
        except Exception:  # a broken context: replaced by a new one
            if not self._closing.is_set():
                log.warning("the prepared Spark context failed: preparing another", exc_info=True)
                stop_left_over(self._gateway.jvm, stop=self._closing)
                self._retire()

    def _retire(self) -> None:
        """Drop this process's side of the prepared context (a run claimed it, or it is gone):
        its accumulator server, its PySpark folder, its place on sys.path."""
        from pyspark import SparkFiles

        session, self._standing = self._standing, None
        if session is None:
            return
        context = session.sparkContext
        ending = _end_accumulator_server(context)
        if ending is not None:
            _ENDING[:] = [thread for thread in _ENDING if thread.is_alive()] + [ending]
        if getattr(context, "_temp_dir", None):
            shutil.rmtree(context._temp_dir, ignore_errors=True)
        if SparkFiles._sc is context:
            SparkFiles._sc = None
        if self._standing_root in sys.path:
            sys.path.remove(self._standing_root)

    def close(self) -> None:
        """Stop the JVM (it exits when its standard input closes) and its files."""
        self._closing.set()
        if self.warm.is_set():  # a warm-up is cut short by the JVM's exit instead
            self._thread.join(timeout=10)  # what it is doing with the JVM, unless that hangs
        if not self._thread.is_alive():
            self._retire()
        # An accumulator server still open when the JVM exits reports its connection's end.
        while _ENDING:
            _ENDING.pop().join(timeout=5)
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


def _set_active_in_pyspark(session: Any) -> None:
    """Make `session` (and its context) PySpark's active ones in this process, or none."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    with SparkContext._lock:
        SparkContext._active_spark_context = None if session is None else session.sparkContext
    SparkSession._instantiatedSession = SparkSession._activeSession = session


@contextlib.contextmanager
def _active_in_pyspark(session: Any) -> Iterator[None]:
    """`session` PySpark's active one while the block runs (PySpark's UDFs look it up)."""
    _set_active_in_pyspark(session)
    try:
        yield
    finally:
        _set_active_in_pyspark(None)


_ENDING: list[threading.Thread] = []  # accumulator servers of retired contexts, shutting down


def _claim(jvm: Any, settings: dict[str, str]) -> Any | None:
    """The context the host prepared (a JavaSparkContext) when it has these settings (those a
    context can have) and this code, else None; unmarked either way: this run uses it or
    replaces it."""
    mark = jvm.java.lang.System.clearProperty(PREPARED_PROPERTY)
    context = _active(jvm)
    if mark is None or context is None:
        return None
    application, _, code = mark.partition(" ")
    if context.applicationId() != application or code != code_version():
        return None
    conf = context.getConf()
    if any(
        conf.get(key, None) != value for key, value in settings.items() if key not in JVM_SETTINGS
    ):
        return None
    return jvm.org.apache.spark.api.java.JavaSparkContext(context)


# While this process uses the host: the lock's descriptor, and whether its context was prepared.
_ATTACHED: dict[str, int] = {}


def claimed_prepared() -> bool:
    """Whether this process's context in the host was prepared for it (Python workers running)."""
    return bool(_ATTACHED.get("prepared"))


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
    fd = _take(lock, QUIET_WAIT_SECONDS)  # the host looks after the JVM between runs, briefly
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
        jvm = gateway.jvm
        prepared = _claim(jvm, settings)
        conf = SparkConf(loadDefaults=False).setAll(settings.items())
        if prepared is not None:
            jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # another writer's tables
            context = SparkContext(conf=conf, gateway=gateway, jsc=prepared)
            # The session the host created with it, these settings its own.
            default = jvm.org.apache.spark.sql.SparkSession.getDefaultSession()
            session = SparkSession(context, default.get() if default.isDefined() else None)
        else:
            if not stop_left_over(jvm):
                forget(jvm)  # what the run before this one cached
            SparkContext(conf=conf, gateway=gateway)
            session = SparkSession.builder.config(map=settings).getOrCreate()
    except Exception as exc:
        _forget(gateway)
        _release(fd)
        say.warning(f"the UI's Spark JVM cannot be used ({exc}): this run starts its own")
        return None
    finally:
        for name in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
            os.environ.pop(name, None)
    _hold(fd)
    _ATTACHED["lock"] = fd
    _ATTACHED["prepared"] = int(prepared is not None)
    return session


def _forget(gateway: Any) -> None:
    """Undo a failed attach in this process only: its context stopped, its connections closed
    (not `shutdown`, which would end the host's gateway for every run), PySpark reset so that
    the run can start its own JVM."""
    from pyspark import SparkContext

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
    _set_active_in_pyspark(None)
    with SparkContext._lock:
        SparkContext._gateway = None
        SparkContext._jvm = None


def detach(session: Any) -> None:
    """Stop this process's context in the host and let the next run have it. The context's
    PySpark folder (broadcast pickles: the featurizer model, the PCA) goes with it; the JVM
    would keep it until it exits."""
    fd = _ATTACHED.pop("lock", None)
    _ATTACHED.pop("prepared", None)
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
    _end_accumulator_server(session.sparkContext)
    session.stop()


def _end_accumulator_server(context: Any) -> threading.Thread | None:
    """Shut the context's PySpark accumulator server down on a thread of its own (it looks for
    its shutdown once a second), detached from the context; that thread, if there was one."""
    accumulators = getattr(context, "_accumulatorServer", None)
    if accumulators is None:
        return None
    context._accumulatorServer = None
    ending = threading.Thread(target=accumulators.shutdown, name="accumulators", daemon=True)
    ending.start()
    return ending
