"""Describe the machine a benchmark ran on, and measure the peak memory of a process tree."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from importlib import metadata

from fruits_assets.ml.featurizer import INT8_DOT_PRODUCT_FLAGS
from fruits_assets.resources.cores import available_cores


def describe() -> dict:
    cpu, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith(("flags", "Features")) and not flags:  # x86, Arm
                    wanted = {"avx", "avx2", "avx512f", "fma", "amx_tile"}
                    wanted |= INT8_DOT_PRODUCT_FLAGS
                    flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    packages = ("tensorflow", "keras", "ai-edge-litert", "pyspark", "dagster", "numpy", "pillow",
                "pyarrow")  # fmt: skip
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "-"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": available_cores(),  # what local Spark takes: affinity, cgroup quota
        "cpu_flags": flags,
        "memory_gib": round(memory_gib, 1),
        "python": platform.python_version(),
        "java": java.splitlines()[0] if java else "-",
        **versions,
    }


def _tree_rss_bytes(root_pid: int, counted: set[int]) -> tuple[dict[str, int], set[int]]:
    """Resident memory of a process and all its descendants (Spark's JVM and Python workers),
    by kind: `java` (the JVM), `python` (the other processes named python*: Spark's Python
    workers), `other` (the root process, e.g. the `fruits` driver, and anything else)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    kinds: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                head, tail = handle.read().rsplit(")", 1)
            fields, name = tail.split(), head.split("(", 1)[1]
            pid, ppid = int(entry), int(fields[1])
            kinds[pid] = "java" if name == "java" else "python" if "python" in name else "other"
            rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(ppid, []).append(pid)
        except (OSError, IndexError, ValueError):
            continue
    kinds[root_pid] = "other"  # the driver, however it was started (`fruits`, `python -m …`)
    totals, stack = {"java": 0, "python": 0, "other": 0}, [root_pid]
    alive = set()
    while stack:
        pid = stack.pop()
        alive.add(pid)
        if pid in counted or pid == root_pid:
            totals[kinds.get(pid, "other")] += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return totals, alive


class PeakMemory:
    """Samples the RSS of a process tree every `interval` seconds; `.peak` in bytes, and
    `.peak_by_kind` (each kind's own peak: the JVM's and the Python processes')."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid, self.interval, self.peak = pid, interval, 0
        self.peak_by_kind: dict[str, int] = {}
        self.samples: list[tuple[float, dict[str, int]]] = []  # (time.time(), RSS by kind)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seen: set[int] = set()
        while not self._stop.is_set():
            # A process counts from its second sample on: a child caught between fork and exec
            # shares its parent's pages and would count them twice.
            sample, seen = _tree_rss_bytes(self.pid, seen)
            self.samples.append((time.time(), sample))
            self.peak = max(self.peak, sum(sample.values()))
            for kind, value in sample.items():
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), value)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_between(self, start: float, end: float, kind: str) -> int:
        """The peak RSS of one kind between two `time.time()` instants (0 if none sampled)."""
        return max((s.get(kind, 0) for t, s in self.samples if start <= t <= end), default=0)
