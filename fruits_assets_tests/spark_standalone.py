"""A Spark standalone cluster on loopback (1 master, 2 workers) from the pyspark wheel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
# The wheel has no sbin/start-master.sh; these are the classes those scripts start.
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        return json.load(response)


@contextmanager
def standalone_cluster(work_dir: Path, workers: int = 2, worker_memory: str = "3g") -> Iterator:
    """Yields (master URL, master web UI port) once every worker has registered."""
    port, ui_port = free_port(), free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
    }
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    master_url = f"spark://127.0.0.1:{port}"
    logs = []
    processes = []

    def start(name: str, *args: str) -> None:
        log = open(work_dir / f"{name}.log", "w")  # closed below
        logs.append(log)
        processes.append(
            subprocess.Popen([spark_class, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        )

    try:
        start("master", MASTER_CLASS, "--host", "127.0.0.1", "--port", str(port),
              "--webui-port", str(ui_port))  # fmt: skip
        for index in range(workers):
            worker_dir = work_dir / f"worker{index}"
            worker_dir.mkdir()
            start(f"worker{index}", WORKER_CLASS, master_url, "--host", "127.0.0.1",
                  "--cores", "1", "--memory", worker_memory, "--webui-port", str(free_port()),
                  "--work-dir", str(worker_dir))  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                if len(master_state(ui_port)["workers"]) == workers:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Spark workers did not register; logs in {work_dir}")
            time.sleep(1)
        yield master_url, ui_port
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()
