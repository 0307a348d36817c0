"""The storage resource: the input and output roots, and the output root's lock for the run."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from fruits_assets.storage import filesystem


class FruitsStorage(dg.ConfigurableResource):
    """Where images are read from and where each asset writes `<output_root>/<asset name>/`.

    While a run executes, it holds the output root's lock: one writer per output root. A run the
    `fruits` command starts finds the lock already taken by the command itself; a run the UI,
    a sensor or a backfill starts waits up to `lock_wait_seconds` for another run to finish.
    """

    images_root: str
    output_root: str
    # EMR reads s3:// natively through EMRFS; local Spark needs Hadoop's S3A (s3a://).
    native_s3: bool = False
    # False in an EMR step: the process that launched the step holds the lock for its run.
    hold_lock: bool = True
    lock_wait_seconds: float = 1800.0
    _held: Any = PrivateAttr(default=None)

    @property
    def images(self) -> str:
        return filesystem.normalize_uri(self.images_root)

    @property
    def output(self) -> str:
        return filesystem.normalize_uri(self.output_root)

    def spark_path(self, uri: str) -> str:
        return filesystem.spark_uri(uri, native_s3=self.native_s3)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from fruits_assets import runs
        from fruits_assets.storage import datasets, lock

        if not self.hold_lock or context.run is None:  # a sensor needs no lock
            return
        run_id = context.run.run_id
        held = lock.hold(
            self.output,
            lock.holder(run_id, command="dagster run"),
            wait_seconds=self.lock_wait_seconds,
            on_wait=context.log.info if context.log else None,
        )
        taken = held.__enter__()
        self._held = held
        if context.instance is not None and run_id:
            context.instance.add_run_tags(run_id, runs.this_process_tags())
        if taken:
            datasets.clean_staging(self.output, keep_run=run_id)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        from fruits_assets.storage import datasets

        if self._held is not None:
            if context.run is not None:
                datasets.finish_staging(self.output, context.run.run_id)
            self._held.__exit__(None, None, None)
            self._held = None
