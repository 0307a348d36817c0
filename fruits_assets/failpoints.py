"""Failpoints for the fault-injection tests: stop a run exactly where a crash hurts most.

The `failpoint` setting (`FRUITS_FAILPOINT=<asset>:<action>`) acts when that asset's audited
data is about to be published: `pause` writes `<output>/_staging/PAUSED-<asset>` and waits
while that file exists (a test kills the run there, or fills the disk and lets it go on),
`exit` ends the process at once as a kill would (no cleanup, exit code 137). Unset, nothing
happens; it is never needed outside tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fruits_assets.storage import filesystem, layout

KILLED_EXIT_CODE = 137
_suspended = False


@contextmanager
def suspended() -> Iterator[None]:
    """No failpoint acts in this process meanwhile (`fruits ui`'s rehearsal is not a run)."""
    global _suspended
    _suspended = True
    try:
        yield
    finally:
        _suspended = False


def reached(asset: str, output_root: str) -> None:
    """Called just before an asset publishes."""
    from fruits_assets.settings import FruitsSettings

    point = FruitsSettings.from_env().failpoint
    if not point or _suspended:
        return
    name, _, action = point.partition(":")
    if name != asset:
        return
    if action == "exit":
        os._exit(KILLED_EXIT_CODE)
    if action == "pause":
        marker = filesystem.join(layout.staging_root(output_root), f"PAUSED-{asset}")
        filesystem.write_bytes(marker, str(os.getpid()).encode())
        while filesystem.exists(marker):
            time.sleep(0.2)
