"""Storage failures explained: the first line a user sees names the cause and the place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

# Substrings of the Java/Python messages (of any exception in the chain) and what they mean.
_CAUSES = (
    ("No space left on device", "No space left on device"),
    ("Disk quota exceeded", "Disk quota exceeded"),
    ("Read-only file system", "Read-only file system"),
    ("Permission denied", "Permission denied"),
    ("AccessDenied", "Access denied"),
    ("Not a directory", "Not a folder (a file is in the way)"),
    ("ParentNotDirectoryException", "Not a folder (a file is in the way)"),
    ("FileAlreadyExistsException", "Not a folder (a file is in the way)"),
    ("NoSuchBucket", "No such bucket"),
)


def _messages(exc: BaseException) -> list[str]:
    """The messages of an exception and of everything that caused it (Java causes included)."""
    found, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found.append(str(current))
        java = getattr(current, "java_exception", None)
        while java is not None:
            found.append(str(java.toString()))
            java = java.getCause()
        current = current.__cause__ or current.__context__
    return found


def cause_of(exc: BaseException) -> str | None:
    """The storage cause an exception reports, in plain words, or None if none is recognized."""
    text = "\n".join(_messages(exc))
    for needle, meaning in _CAUSES:
        if needle in text:
            return meaning
    return None


@contextmanager
def explained(location: str) -> Iterator[None]:
    """Turn a storage failure while writing `location` into a failure whose first line is
    `<cause>: <location>`; the original error (a Java trace, often) follows as its cause."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        cause = cause_of(exc)
        if cause is None:
            raise
        raise dg.Failure(
            description=f"{cause}: {location}",
            metadata={"error": dg.MetadataValue.text("\n".join(_messages(exc))[:4000])},
        ) from exc
