"""Spark's Python worker daemon for local Spark: pyspark's own, without Spark's archived copies of
pyspark on its import path.

Spark puts its copies of pyspark and py4j (`python/lib/*.zip` under SPARK_HOME) and the
spark-core jar in front of every Python worker's import path. Where pyspark is installed as a
package (the wheel local Spark runs from, whose archives are copies of that package), they only
cost: every task starts by invalidating the import caches, which makes Python read each
archive's directory again (the jar's 5,000 entries: about 40 ms per task), and every pyspark
module a worker imports is compiled from the zip's sources instead of loaded from the package's
bytecode. This daemon drops the archives from its path when the installed pyspark and py4j can be
imported without them and pyspark is the archived version; then it runs pyspark's own daemon,
whose forks (the workers) inherit its path. Anything it cannot tell keeps the path as it is.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from importlib.machinery import PathFinder
from pathlib import Path

VERSION_FILE = "pyspark/version.py"
_VERSION = re.compile(r"""__version__(?::\s*str)?\s*=\s*["']([^"']+)["']""")


def _version(text: str) -> str | None:
    found = _VERSION.search(text)
    return found.group(1) if found else None


def _archived_version(archive: str) -> str | None:
    """The version of the pyspark a zip holds; None if it holds none."""
    with zipfile.ZipFile(archive) as zipped:
        if VERSION_FILE not in zipped.namelist():
            return None
        return _version(zipped.read(VERSION_FILE).decode())


def spark_archives(path: list[str], spark_home: str | None) -> list[str]:
    """The entries of `path` that are Spark's archives (zip or jar files under `spark_home`)."""
    if not spark_home:
        return []
    home = Path(spark_home).resolve()
    return [
        entry
        for entry in path
        if entry.endswith((".zip", ".jar"))
        and os.path.isfile(entry)
        and Path(entry).resolve().is_relative_to(home)
    ]


def without_archives(path: list[str], spark_home: str | None) -> list[str]:
    """`path` without Spark's archives when the same pyspark, and py4j, are importable without
    them; else `path` unchanged."""
    archives = spark_archives(path, spark_home)
    if not archives:
        return path
    kept = [entry for entry in path if entry not in archives]
    try:
        archived = {_archived_version(entry) for entry in archives if entry.endswith(".zip")}
        archived.discard(None)
        installed = PathFinder.find_spec("pyspark", kept)
        if len(archived) != 1 or installed is None or PathFinder.find_spec("py4j", kept) is None:
            return path
        locations = list(installed.submodule_search_locations or [])
        version = _version(Path(locations[0], "version.py").read_text()) if locations else None
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):
        return path
    return kept if version in archived else path


def main() -> None:
    try:
        sys.path[:] = without_archives(sys.path, os.environ.get("SPARK_HOME"))
    except Exception:  # the workers then run as Spark set them up
        pass
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
