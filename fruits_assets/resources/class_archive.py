"""The local Spark JVM's class archive: the JDK's class-data sharing (CDS) for Spark's classes.

A local Spark JVM loads and verifies some 20,000 classes (Spark, Delta, Hadoop, Arrow) from jars
on every start, and each first use of a code path (the first Delta commit, the first Arrow
batch) loads more. An archive of those classes, recorded once per machine by `fruits jvm-archive`
(`scripts/setup.sh` runs it), is mapped into memory instead: every later local JVM starts and
reaches its first results sooner (BENCHMARKS.md, "The JVM's class archive").

The archive is only valid for the Java runtime, the jars and the heap it was recorded with: its
file name is a digest of those, so a change (a Java update, another jar) simply finds none, and
the JVM checks them again when it maps it (it runs without the archive, silently, if they
differ). It is written aside and renamed into place once the recording JVM has exited: a JVM
must never map a partly written archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ARCHIVE_DIR = "jvm"
KEPT = 3  # archives kept in the cache (about 170 MB each)
# Without these, a JVM that cannot use the archive (another Java, a changed jar) prints warnings
# ahead of the run's own output; it runs the same without it.
QUIET = ("-Xlog:cds=off", "-Xlog:cds+dynamic=off")


class ArchiveError(RuntimeError):
    """The class archive cannot be recorded here; the message says why."""


def _spark_home() -> Path:
    import pyspark

    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)


def _java() -> Path | None:
    """The java Spark's launcher starts: $JAVA_HOME's, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return Path(os.path.realpath(found)) if found and os.path.exists(found) else None


def spark_conf_dir() -> Path:
    """Spark's configuration folder, which its launcher puts on the JVM's class path."""
    return Path(os.environ.get("SPARK_CONF_DIR") or _spark_home() / "conf")


def obstacle() -> str | None:
    """Why no archive can serve this environment's local Spark JVM, or None. The JDK archives
    classes from jars only: a folder with files on the class path (a Spark or Hadoop
    configuration folder) makes recording fail and a recorded archive unusable."""
    if _java() is None:
        return "no java found (JAVA_HOME or PATH)"
    if os.environ.get("SPARK_DIST_CLASSPATH"):
        return "SPARK_DIST_CLASSPATH adds to Spark's class path"
    folders = [("SPARK_CONF_DIR", str(spark_conf_dir()))] + [
        (name, os.environ[name]) for name in ("HADOOP_CONF_DIR", "YARN_CONF_DIR")
        if os.environ.get(name)
    ]  # fmt: skip
    for name, folder in folders:
        if os.path.isdir(folder) and os.listdir(folder):
            return f"{name} ({folder}) holds files, and Spark puts it on the JVM's class path"
    return None


def _stamp(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{info.st_size}:{info.st_mtime_ns}"


def archive_path(config: dict[str, Any], cache_dir: str | Path) -> Path | None:
    """Where the archive for a JVM started with this Spark config lives (it may not exist yet);
    None when no archive can serve it (`obstacle`)."""
    if obstacle():
        return None
    jars = sorted((_spark_home() / "jars").glob("*.jar"))
    extra = [Path(p) for p in str(config.get("spark.driver.extraClassPath", "")).split(os.pathsep)]
    parts = [
        "format 1",
        _stamp(_java()),  # type: ignore[arg-type]  (obstacle() found it)
        *(_stamp(p) for p in extra if str(p)),
        *(_stamp(p) for p in jars),
        f"heap {config.get('spark.driver.memory', '')}",
    ]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    return Path(cache_dir) / ARCHIVE_DIR / f"spark-classes-{digest}.jsa"


def java_options(config: dict[str, Any], cache_dir: str | Path) -> list[str]:
    """The JVM options that map the archive recorded for this config; none before it is."""
    path = archive_path(config, cache_dir)
    if path is None or not path.is_file():
        return []
    # Marked as used (its time), so that pruning keeps the archives still in use: one other
    # environment's recording (another checkout's setup) must not drop this one's.
    with contextlib.suppress(OSError):
        os.utime(path)
    return [f"-XX:SharedArchiveFile={shlex.quote(str(path))}", *QUIET]


def record(config: dict[str, Any], cache_dir: str | Path, timeout: float = 900) -> Path:
    """Record the archive for this config: a JVM started as a run's, with a short workload of
    the pipeline's kinds of Spark work, writes it when it exits; it is renamed into place only
    after that JVM ended well. Returns its path; raises ArchiveError with the cause."""
    path = archive_path(config, cache_dir)
    if path is None:
        raise ArchiveError(f"No class archive can serve local Spark here: {obstacle()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    options = config.get("spark.driver.extraJavaOptions", "")
    command = [str(_spark_home() / "bin" / "spark-submit")]
    for key, value in {
        **config,
        "spark.driver.extraJavaOptions": f"{options} -XX:ArchiveClassesAtExit={aside}".strip(),
    }.items():
        command += ["--conf", f"{key}={value}"]
    command.append(str(Path(__file__).with_name("class_archive_workload.py")))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        aside.unlink(missing_ok=True)
        raise ArchiveError(f"Recording the class archive took over {timeout:.0f} s") from error
    if done.returncode != 0 or not aside.is_file() or aside.stat().st_size == 0:
        aside.unlink(missing_ok=True)
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        cause = next((line for line in lines if "rror" in line), lines[-1] if lines else "")
        raise ArchiveError(
            f"Recording the class archive failed (exit status {done.returncode}): {cause}"
        )
    os.replace(aside, path)
    _prune(path.parent, keep=KEPT)
    return path


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the `keep` most recently recorded or used archives (one per Java, jars
    and heap: the others serve environments since replaced or left). A JVM that maps one keeps
    its mapping."""
    archives = sorted(folder.glob("spark-classes-*.jsa"), key=lambda p: p.stat().st_mtime)
    for old in archives[:-keep]:
        old.unlink(missing_ok=True)
