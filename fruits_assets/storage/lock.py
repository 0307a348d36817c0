"""One writer per output root: a lock that names its holder and never outlives a dead one.

Locally the lock is `flock` on `<output>/.fruits.lock`: the kernel releases it when the holding
process dies, however it dies. On S3 it is an object created only if absent (a conditional PUT);
its holder refreshes it every HEARTBEAT_SECONDS, and one left unrefreshed for STALE_SECONDS is
taken over (a conditional DELETE of exactly that stale object, then a conditional PUT).
A process may take the lock of a root it already holds (the CLI holds it across its runs).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

from fruits_assets.storage import filesystem

LOCK_NAME = ".fruits.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0
POLL_SECONDS = 2.0
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")


class OutputBusy(RuntimeError):
    """Another live run is writing this output root."""


def holder(run_id: str = "", command: str = "") -> dict[str, Any]:
    """Who takes the lock: shown to whoever finds it taken."""
    return {
        "run_id": run_id,
        "command": command,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    run = f"run {info['run_id']}" if info.get("run_id") else "a run"
    command = f" ({info['command']})" if info.get("command") else ""
    return f"{run}{command}, pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"


class _LocalLock:
    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, LOCK_NAME)
        self.root = root
        self.fd: int | None = None
        self.info: dict[str, Any] = {}

    def try_acquire(self, info: dict[str, Any]) -> dict[str, Any] | None:
        """None when taken; else what the file says of the current holder."""
        import fcntl

        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise NotADirectoryError(f"Not a folder (a file is in the way): {self.root}")
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._read()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return None

    def update(self, info: dict[str, Any]) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as handle:
                return json.loads(handle.read() or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class _S3Lock:
    def __init__(self, root: str) -> None:
        parsed = urlparse(root)
        self.bucket = parsed.netloc
        self.key = f"{parsed.path.strip('/')}/{LOCK_NAME}".lstrip("/")
        self.etag: str | None = None
        self._body: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _client(self):  # a boto3 S3 client
        import boto3

        return boto3.client("s3", endpoint_url=filesystem.s3_endpoint())

    def try_acquire(self, info: dict[str, Any]) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        s3 = self._client()
        body = {**info, "heartbeat": time.time()}
        try:
            self.etag = s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=json.dumps(body).encode(), IfNoneMatch="*"
            )["ETag"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in CONDITION_FAILED:
                raise
            current = s3.get_object(Bucket=self.bucket, Key=self.key)
            found = json.loads(current["Body"].read())
            if time.time() - float(found.get("heartbeat", 0)) > STALE_SECONDS:
                try:  # exactly the stale object: a fresh holder's lock is never deleted
                    s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=current["ETag"])
                except ClientError:
                    return found
                return self.try_acquire(info)
            return found
        self._body = body
        self._beat = threading.Thread(target=self._heartbeat, args=(body,), daemon=True)
        self._beat.start()
        return None

    def update(self, info: dict[str, Any]) -> None:
        self._body.update(info)  # written with the next heartbeat

    def _heartbeat(self, body: dict[str, Any]) -> None:
        from botocore.exceptions import ClientError

        s3 = self._client()
        while not self._stop.wait(HEARTBEAT_SECONDS):
            body["heartbeat"] = time.time()
            try:
                self.etag = s3.put_object(
                    Bucket=self.bucket, Key=self.key, Body=json.dumps(body).encode(),
                    IfMatch=self.etag,
                )["ETag"]  # fmt: skip
            except ClientError:
                return  # taken over after a stall: the new holder's lock stays

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        try:
            self._client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError:
            pass


_HELD: dict[str, tuple[Any, int]] = {}
_GUARD = threading.Lock()


@contextmanager
def hold(
    output_root: str,
    info: dict[str, Any],
    wait_seconds: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[bool]:
    """Hold the output root's lock for the block; yields True when this call took it (False
    when this process already held it). Busy: waits up to `wait_seconds`, then OutputBusy."""
    root = filesystem.normalize_uri(output_root)
    with _GUARD:
        if root in _HELD:
            lock, count = _HELD[root]
            _HELD[root] = (lock, count + 1)
            taken = False
            if info.get("run_id"):  # the process's lock now serves this run: say so
                lock.update({**lock.info, "run_id": info["run_id"]})
        else:
            lock = _S3Lock(root) if filesystem.is_s3(root) else _LocalLock(root)
            deadline, told = time.monotonic() + wait_seconds, False
            while (other := lock.try_acquire(info)) is not None:
                if time.monotonic() >= deadline:
                    raise OutputBusy(
                        f"Output root {root} is being written by {describe(other)}: wait for it "
                        "to finish (or stop it) and run again"
                    )
                if on_wait and not told:
                    on_wait(f"waiting for {describe(other)} to release {root}")
                    told = True
                time.sleep(POLL_SECONDS)
            lock.info = info
            _HELD[root] = (lock, 1)
            taken = True
    try:
        yield taken
    finally:
        with _GUARD:
            lock, count = _HELD[root]
            if count == 1:
                del _HELD[root]
                lock.release()
            else:
                _HELD[root] = (lock, count - 1)
