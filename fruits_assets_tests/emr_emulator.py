"""An emulated EMR for tests: moto's server speaks the S3 and EMR APIs, and a thread runs the
spark-submit command line of every step submitted to a cluster, locally, as EMR would.

dagster-aws's own tests replay recorded events; this executes the code EMR would execute. What
differs from EMR, and only that: YARN becomes local[2], EMR's spark-submit becomes the pyspark
wheel's, the bootstrap's venv Python becomes this interpreter, and s3:// goes through Hadoop S3A
to moto (EMRFS is AWS-only). The step's environment holds no FRUITS_* variable: the settings must
travel with the step, as they would to a real cluster.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyspark
from moto.core import DEFAULT_ACCOUNT_ID
from moto.emr.models import emr_backends
from moto.server import ThreadedMotoServer

from fruits_assets.resources.spark import delta_jars, jars_config, s3a_jars, s3a_spark_config
from fruits_assets.settings import FruitsSettings

EMR_SPARK_SUBMIT = "/usr/lib/spark/bin/spark-submit"
LOCAL_SPARK_SUBMIT = str(Path(pyspark.__file__).parent / "bin" / "spark-submit")
LOCAL_PYTHON_KEYS = ("spark.pyspark.python", "spark.pyspark.driver.python")


def start_moto() -> tuple[ThreadedMotoServer, str]:
    """moto's server on a free loopback port; returns it and its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def local_command(args: list[str]) -> list[str]:
    """EMR's spark-submit command line, rewritten to run here (see the module docstring)."""
    if not args or args[0] != EMR_SPARK_SUBMIT:
        raise ValueError(f"not an EMR spark-submit step: {args[:1]}")
    command = [LOCAL_SPARK_SUBMIT]
    rest = iter(args[1:])
    for arg in rest:
        if arg == "--master":
            value = next(rest)
            assert value == "yarn", value
            command += ["--master", "local[2]"]
        elif arg == "--conf":
            key, _, value = next(rest).partition("=")
            if key in LOCAL_PYTHON_KEYS:
                value = sys.executable
            command += ["--conf", f"{key}={value}"]
        elif arg == "--py-files":  # our additions go just before the code and the main file
            jars_dir = FruitsSettings.from_env().jars_dir
            jars = jars_config(delta_jars(jars_dir) + s3a_jars(jars_dir))
            for key, value in {**jars, **s3a_spark_config(schemes=("s3", "s3a"))}.items():
                command += ["--conf", f"{key}={value}"]
            command += ["--conf", "spark.driver.memory=2g", arg, next(rest)]
        else:
            command.append(arg)
    return command


@dataclass
class StepRun:
    """What the emulated cluster did with one step."""

    step_id: str
    command: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class EmulatedEmr:
    """Watches the clusters of one region in moto and runs their steps one at a time."""

    region: str
    step_timeout: float = 900.0
    runs: list[StepRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _handled: set[str] = field(default_factory=set)
    _thread: threading.Thread | None = None
    # The cluster node's own home: its caches (weights, converted models) start empty, as on EMR.
    node_home: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="emulated-emr-home-"))

    def __enter__(self) -> EmulatedEmr:
        self._thread = threading.Thread(target=self._loop, name="emulated-emr", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.step_timeout)
        shutil.rmtree(self.node_home, ignore_errors=True)

    def _clusters(self) -> list:
        # moto's server files EMR calls to loopback under its default region: look everywhere.
        backends = dict.values(emr_backends[DEFAULT_ACCOUNT_ID])
        return [c for backend in list(backends) for c in list(backend.clusters.values())]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._pass()
            except Exception as exc:  # a dead emulator would look like a hang
                self.errors.append(repr(exc))
            time.sleep(0.2)

    def _pass(self) -> None:
        for cluster in self._clusters():
            if cluster.state in ("TERMINATING", "TERMINATED"):
                continue
            for step in list(cluster.steps):
                if step.id not in self._handled and step.state in ("PENDING", "RUNNING"):
                    self._handled.add(step.id)
                    self._run(cluster, step)
                    return  # StepConcurrencyLevel 1: next step on the next pass

    def _run(self, cluster, step) -> None:
        from moto.core.utils import utcnow

        step.state, step.start_date_time = "RUNNING", utcnow()
        cluster.state = "RUNNING"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRUITS_")}
        env.update(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", HOME=self.node_home)
        try:
            command = local_command(list(step.args))
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=self.step_timeout
            )
            run = StepRun(step.id, command, done.returncode, done.stdout, done.stderr)
        except (ValueError, subprocess.TimeoutExpired) as exc:
            run = StepRun(step.id, list(step.args), -1, "", f"emulated EMR: {exc}")
        self.runs.append(run)
        self._ship_logs(cluster, run)
        step.end_date_time = utcnow()
        step.state = "COMPLETED" if run.returncode == 0 else "FAILED"
        if run.returncode != 0:
            step.last_state_change_reason = f"step exited with code {run.returncode}"
        cluster.state = "WAITING"

    def _ship_logs(self, cluster, run: StepRun) -> None:
        """Where EMR puts step logs: <LogUri><cluster id>/steps/<step id>/std{out,err}.gz."""
        if not cluster.log_uri:
            return
        parsed = urlparse(cluster.log_uri.replace("s3n://", "s3://"))
        prefix = f"{parsed.path.lstrip('/')}{cluster.id}/steps/{run.step_id}"
        s3 = boto3.client("s3", region_name=self.region)
        for name, text in (("stdout", run.stdout), ("stderr", run.stderr)):
            s3.put_object(
                Bucket=parsed.netloc, Key=f"{prefix}/{name}.gz", Body=gzip.compress(text.encode())
            )
