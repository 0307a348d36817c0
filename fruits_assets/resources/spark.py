"""Spark settings: local Spark (with Hadoop S3A for s3:// data) and the EMR steps' Spark."""

from __future__ import annotations

import importlib
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any

from fruits_assets.resources.cores import available_cores
from fruits_assets.settings import FruitsSettings

# Settings every environment needs. Every output table is a Delta table: one atomic commit per
# publish, versions to go back to (EMR 7 ships Delta; locally its jars come from the cache).
COMMON_SPARK_CONFIG: dict[str, Any] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # A class named "2024" stays the string "2024" wherever Spark reads class folders.
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Rows per Arrow batch sent to the Python UDFs: each batch is a few MB of image bytes.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.compression.codec": "snappy",
    # Parquet's dictionary encoding pays only for repeated values. Nearly every value here is
    # unique (feature floats, photo bytes, paths): the writer would hash each into a dictionary,
    # find it no smaller than the values, and write them plain anyway.
    "spark.hadoop.parquet.enable.dictionary": "false",
}


S3A_JARS = ("hadoop-aws-", "aws-java-sdk-bundle-")
DELTA_JARS = ("delta-spark_", "delta-storage-")
# Without Hadoop's native library (the pyspark wheel has none), Hadoop's local file system sets
# the permissions of every file and folder it creates by starting a `chmod` process, and reads
# them back with `ls`: a few processes per data file of a Delta write, thousands in a run over
# 141 classes, each a fork of the JVM. This drop-in (a subclass of Hadoop's local file system,
# checksums included) does both through Java's own file API instead. Its listings do not follow
# a symbolic link to a folder (Spark and Delta reach this pipeline's files through the tables'
# logs, not by listing folders: an output root or a table folder that is a link works).
LOCAL_FS_JARS = ("hadoop-bare-naked-local-fs-",)
LOCAL_FS_CLASS = "com.globalmentor.apache.hadoop.fs.BareLocalFileSystem"
# Environment first: the same code talks to AWS, MinIO or moto's server.
S3A_CREDENTIALS = ",".join(
    [
        "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
        "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "com.amazonaws.auth.EnvironmentVariableCredentialsProvider",
        "com.amazonaws.auth.profile.ProfileCredentialsProvider",
        "org.apache.hadoop.fs.s3a.auth.IAMInstanceCredentialsProvider",
    ]
)


def _jars(jars_dir: str | Path, prefixes: tuple[str, ...], what: str) -> list[str]:
    found = sorted(str(p) for p in Path(jars_dir).glob("*.jar") if p.name.startswith(prefixes))
    if len(found) != len(prefixes):
        raise FileNotFoundError(
            f"{what} jars are not in {jars_dir} (found {found}): run scripts/fetch_jars.sh "
            "(or scripts/setup.sh)"
        )
    return found


def s3a_jars(jars_dir: str | Path) -> list[str]:
    """hadoop-aws and its AWS SDK bundle, as fetched by scripts/fetch_jars.sh (s3:// data)."""
    return _jars(jars_dir, S3A_JARS, "Hadoop's S3A")


def delta_jars(jars_dir: str | Path) -> list[str]:
    """Delta Lake for Spark and its storage layer, as fetched by scripts/fetch_jars.sh."""
    return _jars(jars_dir, DELTA_JARS, "Delta Lake")


def local_fs_jars(jars_dir: str | Path) -> list[str]:
    """The local file system that starts no process per file (`LOCAL_FS_CLASS`), as fetched by
    scripts/fetch_jars.sh."""
    return _jars(jars_dir, LOCAL_FS_JARS, "The local file system's")


def jars_config(jars: list[str]) -> dict[str, Any]:
    """Jars on the driver's and executors' class paths (and shipped to a cluster's executors)."""
    return {
        "spark.jars": ",".join(jars),
        "spark.driver.extraClassPath": os.pathsep.join(jars),
        "spark.executor.extraClassPath": os.pathsep.join(jars),
    }


def s3a_spark_config(schemes: tuple[str, ...] = ("s3a",)) -> dict[str, Any]:
    """Hadoop S3A for the given URI schemes, endpoint and region from the AWS environment
    (its jars come with `local_spark_config`)."""
    config: dict[str, Any] = {
        "spark.hadoop.fs.s3a.aws.credentials.provider": S3A_CREDENTIALS,
    }
    for scheme in schemes:
        config[f"spark.hadoop.fs.{scheme}.impl"] = "org.apache.hadoop.fs.s3a.S3AFileSystem"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:  # MinIO, moto: path-style addressing, plain HTTP when the URL says so
        config["spark.hadoop.fs.s3a.endpoint"] = endpoint
        config["spark.hadoop.fs.s3a.path.style.access"] = "true"
        config["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            endpoint.startswith("https")
        ).lower()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        config["spark.hadoop.fs.s3a.endpoint.region"] = region
    return config


def emr_spark_config(python: str) -> dict[str, Any]:
    """The --conf of every EMR step: YARN runs the Python of the bootstrap's venv."""
    return {
        **COMMON_SPARK_CONFIG,
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        # The featurizer (LiteRT) and image buffers live off the JVM heap, in the Python workers.
        "spark.executor.memoryOverhead": "2g",
    }


# Spark SQL compiles every query to JVM bytecode (Janino, then the JIT's own compilers): seconds
# of CPU in every fresh JVM, on a machine whose cores the run needs. This pipeline's queries carry
# one row per photo (the heavy work is in the Python featurizer and in Spark ML, which this does
# not touch), so evaluating them interpreted finishes sooner: a one-class rerun 9-16 %, a full
# run up to 7 % on 2 cores (BENCHMARKS.md, "Interpreted Spark SQL"). EMR steps keep Spark's
# defaults.
INTERPRETED_SQL_CONFIG = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}


# HotSpot's optimizing compiler (C2) spends seconds of CPU in every fresh JVM on Spark SQL, Delta
# and Scala code that this pipeline runs a few times per commit or per small table; on a few
# cores that CPU is taken from the run. A run's JVM compiles that code with the quick compiler
# (C1) only and keeps C2 for Spark ML's numerical code (the classifier's L-BFGS, BLAS, the Vector
# API), which is several times slower without it. A one-class rerun 10-17 % shorter, a full
# run about the same (BENCHMARKS.md, "The JVM's compilers"). A run without the classifier has no
# Spark ML code to compile: its JVM stops at C1 outright, which also spares the profiling C1
# adds to code meant for C2 and each hot method's second compilation once C2 declines it. The
# UI's long-lived JVM compiles everything: it pays C2's cost once, not per run.
COMPILER_DIRECTIVES = Path(__file__).with_name("jvm_compiler_directives.json")
LOG_CONFIG = Path(__file__).with_name("log4j2.properties")


def _own_log_config() -> bool:
    """Whether Spark's configuration folder has a log4j2 configuration of its own (the user's,
    which Spark finds on its class path): it then applies instead of `LOG_CONFIG`."""
    from fruits_assets.resources.class_archive import spark_conf_dir

    return any(spark_conf_dir().glob("log4j2*.*"))


def driver_java_options(
    settings: FruitsSettings, long_lived: bool = False, spark_ml: bool = True
) -> str:
    """The local Spark JVM's options (`spark.driver.extraJavaOptions`); `spark_ml`: whether it
    may run Spark ML (the classifier)."""
    options = [
        "-Dderby.system.home=/tmp/derby",
        # The incubator Vector API lets Spark ML's BLAS use SIMD instead of plain Java loops.
        "--add-modules=jdk.incubator.vector",
    ]
    if not _own_log_config():
        options.append("-Dlog4j2.configurationFile=" + shlex.quote(str(LOG_CONFIG)))
    if settings.spark_jit == "ml" and not long_lived:
        if spark_ml:
            options += [
                "-XX:+UnlockDiagnosticVMOptions",
                "-XX:CompilerDirectivesFile=" + shlex.quote(str(COMPILER_DIRECTIVES)),
            ]
        else:
            options.append("-XX:TieredStopAtLevel=1")
    return " ".join(options)


def local_spark_config(
    settings: FruitsSettings,
    s3: bool = False,
    long_lived: bool = False,
    spark_ml: bool = True,
) -> dict[str, Any]:
    """local[N] Spark (or the configured master) whose Python workers run this interpreter;
    `long_lived`: a JVM that serves many runs (the UI's); `spark_ml`: one that may run Spark ML
    (a run with the classifier). It maps the recorded class archive (`class_archive.py`), if
    any, unless the `class_archive` setting is off."""
    # Spark's Python workers must be this interpreter, with this package and its pins.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local Spark listens on loopback only
    cores = settings.spark_cores or available_cores()  # a container's CPU limit included
    config = {
        **COMMON_SPARK_CONFIG,
        # A standalone cluster's URL works too, when its workers share this machine's paths.
        "spark.master": settings.spark_master or f"local[{cores}]",
        "spark.app.name": "fruits_assets",
        "spark.driver.memory": settings.driver_memory,
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.shuffle.partitions": str(max(4, 2 * cores)),
        # Delta rebuilds a table's state from its log with this many tasks (default 50).
        "spark.databricks.delta.snapshotPartitions": str(max(2, cores)),
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": str(settings.spark_ui).lower(),
        # The Python workers import the installed pyspark, not Spark's archived copies of it.
        "spark.python.daemon.module": "fruits_assets.ml.worker_daemon",
        "spark.driver.extraJavaOptions": driver_java_options(settings, long_lived, spark_ml),
    }
    if not settings.spark_codegen:
        config.update(INTERPRETED_SQL_CONFIG)
    jars = delta_jars(settings.jars_dir) + (s3a_jars(settings.jars_dir) if s3 else [])
    config.update(jars_config(jars + local_fs_jars(settings.jars_dir)))
    config["spark.hadoop.fs.file.impl"] = LOCAL_FS_CLASS
    if s3:
        config.update(s3a_spark_config())
    if settings.class_archive:
        from fruits_assets.resources import class_archive as archive

        mapped = archive.java_options(config, settings.cache_dir)
        if mapped:
            options = config["spark.driver.extraJavaOptions"]
            config["spark.driver.extraJavaOptions"] = " ".join([options, *mapped])
    return config


def start_in_background(config: dict[str, Any]) -> threading.Event:
    """Start the Spark session of `config` in a thread, so that the JVM boots while the caller
    does other work (imports, listing, checks); the resource then takes it (`started_session`).

    The returned event is set once the session is up (or failed to start: the resource then
    reports why). The thread then warms the session up (`warm_up`) while the run begins."""
    ready = threading.Event()

    def start() -> None:
        from pyspark.sql import SparkSession

        try:
            spark = SparkSession.builder.config(
                map={k: str(v) for k, v in config.items()}
            ).getOrCreate()
            _STARTED[:] = [(spark, dict(config))]
        finally:
            ready.set()
        warm_up(spark)

    threading.Thread(target=start, name="spark-start", daemon=True).start()
    return ready


# The session `start_in_background` started in this process, with its configuration.
_STARTED: list[tuple[Any, dict[str, Any]]] = []
# Options of the JVM itself, which a run sets by what it will do (`driver_java_options`).
_JVM_OPTIONS = "spark.driver.extraJavaOptions"


def started_session(config: dict[str, Any]) -> Any | None:
    """The session `start_in_background` started in this process, if it still runs and was
    asked for with `config` (the JVM's options aside), with `config`'s runtime SQL settings
    set again where they differ: what `getOrCreate` would return, less its warning that an
    existing session keeps its static settings (they are the ones asked for)."""
    if not _STARTED:
        return None
    session, started = _STARTED[0]
    if session.sparkContext._jsc is None:  # stopped (PySpark's own test in `getOrCreate`)
        return None
    if {k: str(v) for k, v in started.items() if k != _JVM_OPTIONS} != {
        k: str(v) for k, v in config.items() if k != _JVM_OPTIONS
    }:
        return None
    conf = session.conf
    for key, value in config.items():  # as `getOrCreate` does: a run may have changed some
        if conf.isModifiable(key) and conf.get(key, None) != str(value):
            conf.set(key, str(value))
    return session


WARM_UP_THREAD = "spark-warm-up"  # the background warm-up of a run's Spark (`warm_up`)


_WARMED: set[str] = set()  # the Spark applications already warmed up in this process
_WARMED_LOCK = threading.Lock()


def warm_up(spark: Any, workers: bool = True) -> None:
    """A pandas UDF on every core (unless `workers` is False: workers already running), so that
    each Python worker has imported the image and model libraries before the first asset needs
    them; then the driver imports its plotting and Spark ML libraries.

    No Delta write or read: the pipeline's steps write and commit their tables' files
    themselves and their workers read them (the classifier alone reads through Spark's Delta,
    late in the run), so Delta's code in the JVM would only take the cores from the first
    steps. Once per application; best effort: never fails a run."""
    from fruits_assets.ml import plots
    from fruits_assets.ml import workers as python_workers

    with _WARMED_LOCK:
        application = spark.sparkContext.applicationId
        if application in _WARMED:
            return
        _WARMED.add(application)
    try:
        if workers:
            cores = spark.sparkContext.defaultParallelism
            rows = spark.range(0, 4 * cores, numPartitions=cores)
            rows.mapInPandas(python_workers.warm, "id long").collect()
        plots.preload()
        importlib.import_module("fruits_assets.ml.training")  # Spark ML's Python side
    except Exception:  # the run itself reports any real problem with the session
        pass
