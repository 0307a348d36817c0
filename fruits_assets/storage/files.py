"""Single files at fixed paths (the CSV, the classifier's export), published atomically.

Each version is first written to `<folder>/_versions/<n>/<name>`; after its audit it is
published by one atomic step: a rename over the fixed path locally, one object copy on S3. The
last KEEP_VERSIONS versions stay, so `fruits restore` can publish one of them again.
"""

from __future__ import annotations

import os
import uuid

from fruits_assets.storage import filesystem

VERSIONS = "_versions"
KEEP_VERSIONS = 5
PUBLISHED = "PUBLISHED"


def _versions_dir(target: str) -> str:
    folder, _ = target.rsplit("/", 1)
    return filesystem.join(folder, VERSIONS)


def versions(target: str) -> list[int]:
    """The kept versions of a published file, oldest first."""
    names = filesystem.list_dirs(_versions_dir(target))
    return sorted(int(name) for name in names if name.isdigit())


def version_path(target: str, version: int) -> str:
    return filesystem.join(_versions_dir(target), f"{version:06d}", target.rsplit("/", 1)[1])


def next_version_path(target: str) -> tuple[int, str]:
    """Where to write the next version (not yet published)."""
    version = (versions(target) or [0])[-1] + 1
    return version, version_path(target, version)


def publish(target: str, version: int, keep: int = KEEP_VERSIONS) -> None:
    """Make a written version the file at `target`, atomically; prune the oldest versions."""
    source = version_path(target, version)
    if not filesystem.exists(source):
        raise FileNotFoundError(
            f"version {version} of {target} is not kept (kept: {versions(target)})"
        )
    if filesystem.is_s3(target):
        # One CopyObject: readers get the old object or the new one, never part of either.
        filesystem.copy(source, target)
    else:
        # A hard link shares the bytes; the rename over the fixed path is atomic (POSIX).
        partial = f"{target}.{uuid.uuid4().hex}.partial"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(source, partial)
        except OSError:
            filesystem.copy(source, partial)
        os.replace(partial, target)
    filesystem.write_bytes(filesystem.join(_versions_dir(target), PUBLISHED), str(version).encode())
    for old in versions(target)[:-keep]:
        if old != version:
            filesystem.delete_dir(filesystem.join(_versions_dir(target), f"{old:06d}"))


def published_version(target: str) -> int | None:
    """Which kept version was published last at `target` (None if none was)."""
    marker = filesystem.join(_versions_dir(target), PUBLISHED)
    if not filesystem.exists(marker):
        return None
    return int(filesystem.read_bytes(marker).decode().strip())
