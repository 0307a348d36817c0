"""How many CPUs this process may use: the size of local Spark on this machine.

`os.cpu_count()` counts the machine's CPUs, not what a container or a CPU-pinned process is
allowed: on a 64-core host, a container limited to 2 CPUs (`docker --cpus 2`, a Kubernetes CPU
limit) would start 64 Spark task slots, 64 Python workers and 64 interpreters that take turns on
2 CPUs' worth of time. Counted like the JVM's container support (quota / period rounded up, the
affinity mask), the quotas of the cgroup's parents included, as newer JDKs do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path


def available_cores(proc: str = "/proc") -> int:
    """The CPUs this process may run on (its affinity), capped by its cgroup's CPU quota
    rounded up (`cgroup_cpu_limit`); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        cores = os.cpu_count() or 1
    try:
        limit = cgroup_cpu_limit(proc)
    except Exception:  # an unforeseen /proc or cgroupfs: the affinity alone, never a failed run
        limit = None
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def cgroup_cpu_limit(proc: str = "/proc") -> float | None:
    """The CPUs' worth of time a second that this process's cgroups allow it (quota / period),
    the smallest along its cgroup and their parents, cgroup v2 (`cpu.max`) or v1
    (`cpu.cfs_quota_us`); None where none sets a quota or none can be read."""
    try:
        # Mount points are bytes: a path that is not UTF-8 must not stop the count.
        memberships = _text(Path(proc, "self", "cgroup")).splitlines()
        mounts = _text(Path(proc, "self", "mountinfo")).splitlines()
    except OSError:
        return None
    paths: dict[str, str] = {}  # controller ("" for cgroup v2) -> this process's cgroup
    for line in memberships:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    limits = []
    for mount in mounts:
        fields, _, tail = mount.partition(" - ")
        described, options = fields.split(), tail.split()
        if len(described) < 5 or len(options) < 3:
            continue
        kind, root, point = options[0], _unescaped(described[3]), _unescaped(described[4])
        if kind == "cgroup2" and "" in paths:
            relative, read = _below(paths[""], root), _v2_limit
        elif kind == "cgroup" and "cpu" in options[2].split(",") and "cpu" in paths:
            relative, read = _below(paths["cpu"], root), _v1_limit
        else:
            continue
        if relative is not None:
            limits.extend(_quotas(point, relative, read))
    return min(limits) if limits else None


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def _unescaped(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _below(cgroup: str, root: str) -> str | None:
    """`cgroup` relative to the mount's root (a container's cgroupfs shows its own cgroup as the
    root); None where the mount shows another part of the tree (a sibling's cgroup mounted in,
    a process outside its cgroup namespace: "/.."), whose quotas are not this process's."""
    if cgroup.startswith("/.."):
        return None
    if root == "/":
        return cgroup.strip("/")
    if cgroup == root or cgroup.startswith(root.rstrip("/") + "/"):
        return cgroup[len(root) :].strip("/")
    return None


def _quotas(point: str, relative: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas `read` finds in the cgroup `relative` under the mount `point` and each of its
    parents up to the mount."""
    directory = Path(point, relative)
    chain = [directory, *directory.parents[: len(Path(relative).parts)]]
    return [limit for folder in chain if (limit := read(folder)) is not None]


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None
