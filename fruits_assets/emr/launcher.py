"""The EMR step launcher: dagster-aws's, plus the settings, partitions and cost of each step.

Events come back as Dagster's JSON serialization, never as a pickle: whatever runs on a node can
write its step's events object, and reading it must not run code here.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
from botocore.exceptions import ClientError

# Private Dagster API, as a step launcher needs it: interrupts while polling, the event types,
# the step reference and the event log entry.
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import PIPELINE_EVENTS, DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.external_step import (
    PICKLED_STEP_RUN_REF_FILE_NAME,
    step_context_to_step_run_ref,
)
from dagster_aws.emr import EmrError
from dagster_aws.emr.pyspark_step_launcher import CODE_ZIP_NAME, EmrPySparkStepLauncher

from fruits_assets.emr import step_main
from fruits_assets.emr.pricing import ClusterPrice
from fruits_assets.emr.spec import StagingLayout
from fruits_assets.partitions import FRUIT_CLASS_PARTITIONS_NAME, PARTITION_RANGE_START_TAG

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # fruits_assets/
# A step's events are a few MB at most; a larger object is not ours.
MAX_EVENTS_BYTES = 64 * 1024 * 1024
SPARK_LOG_LINE = re.compile(r"^\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} (TRACE|DEBUG|INFO|WARN) ")
# Dagster marks step launchers as superseded by Pipes; the design card asks for this one.
warnings.filterwarnings("ignore", message=".*StepLauncher.*", category=Warning)


class FruitsEmrStepLauncher(EmrPySparkStepLauncher):
    """Runs each asset step on an EMR cluster with spark-submit, relaying its events back."""

    def __init__(
        self,
        *,
        region_name: str,
        cluster_id: str,
        staging_bucket: str,
        staging_prefix: str,
        spark_config: dict[str, Any],
        forwarded_env: dict[str, str] | None = None,
        poll_seconds: float = 15.0,
        log_wait_seconds: float = 330.0,
        price: ClusterPrice | None = None,
    ) -> None:
        super().__init__(
            region_name=region_name,
            staging_bucket=staging_bucket,
            staging_prefix=staging_prefix,
            wait_for_logs=False,
            # One failed asset must not cancel steps queued by other runs.
            action_on_failure="CONTINUE",
            cluster_id=cluster_id,
            spark_config=spark_config,
            local_job_package_path=str(PACKAGE_DIR.parent),
            deploy_local_job_package=True,
        )
        # The run's settings (`FruitsSettings.to_env(forwarded_only=True)`), for the remote step.
        self.forwarded_env = dict(forwarded_env or {})
        self.poll_seconds = poll_seconds
        self.log_wait_seconds = log_wait_seconds
        self.price = price
        self.layout = StagingLayout(staging_prefix.strip("/"))

    def _main_file_local_path(self) -> str:
        return step_main.__file__

    def _artifact_s3_key(self, run_id: str, step_key: str, filename: str) -> str:
        """Where the operator stages a step's files: read-only to the nodes."""
        name = os.path.basename(filename)
        return self.layout.step_key(run_id, self._sanitize_step_key(step_key), name)

    def _events_s3_key(self, run_id: str, step_key: str) -> str:
        """The one object a step's driver writes."""
        return self.layout.events_key(run_id, self._sanitize_step_key(step_key))

    def _get_emr_step_def(self, run_id: str, step_key: str, solid_name: str) -> dict[str, Any]:
        """dagster-aws's spark-submit step; the events key is the step main's third argument."""
        step_def = super()._get_emr_step_def(run_id, step_key, solid_name)
        step_def["HadoopJarStep"]["Args"].append(self._events_s3_key(run_id, step_key))
        return step_def

    def read_events(self, s3, run_id: str, step_key: str) -> list[EventLogEntry]:
        """The step's events so far, from its JSON events object (none yet: an empty list).

        Replaces dagster-aws's reader, which unpickles what the node wrote. Anything that is not
        this step's Dagster events fails the step; nothing in it is executed.
        """
        key = self._events_s3_key(run_id, step_key)
        try:
            found = s3.Object(self.staging_bucket, key).get()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return []
            raise
        source = f"s3://{self.staging_bucket}/{key}"
        if found["ContentLength"] > MAX_EVENTS_BYTES:
            raise _rejected(step_key, source, f"{found['ContentLength']} bytes, over the limit")
        return parse_events(found["Body"].read(), run_id, step_key, source)

    def _post_artifacts(self, log, step_run_ref, run_id, step_key) -> None:
        """Upload the step main, this package (only it, as code.zip) and the step reference."""
        s3 = boto3.client("s3", region_name=self.region_name)
        with tempfile.TemporaryDirectory() as temp_dir:
            code_zip = os.path.join(temp_dir, CODE_ZIP_NAME)
            _zip_package(PACKAGE_DIR, code_zip)
            ref_path = os.path.join(temp_dir, PICKLED_STEP_RUN_REF_FILE_NAME)
            with open(ref_path, "wb") as handle:
                pickle.dump(step_run_ref, handle)
            for local_path in (self._main_file_local_path(), code_zip, ref_path):
                key = self._artifact_s3_key(run_id, step_key, local_path)
                log.debug(f"uploading {local_path} to s3://{self.staging_bucket}/{key}")
                s3.upload_file(Filename=local_path, Bucket=self.staging_bucket, Key=key)

    def _post_step_context(self, step_context, run_id: str, step_key: str) -> None:
        """The settings and partitions the remote (ephemeral) Dagster instance needs."""
        name = FRUIT_CLASS_PARTITIONS_NAME
        partitions = {name: list(step_context.instance.get_dynamic_partitions(name))}
        env = dict(self.forwarded_env)
        env.setdefault("AWS_REGION", self.region_name)
        body = json.dumps({"env": env, "dynamic_partitions": partitions}).encode()
        boto3.client("s3", region_name=self.region_name).put_object(
            Bucket=self.staging_bucket,
            Key=self._artifact_s3_key(run_id, step_key, step_main.STEP_CONTEXT_FILE),
            Body=body,
        )

    def launch_step(self, step_context) -> Iterator[DagsterEvent]:
        step_run_ref = step_context_to_step_run_ref(step_context, self.local_job_package_path)
        run_id, step_key, log = (
            step_context.dagster_run.run_id,
            step_run_ref.step_key,
            step_context.log,
        )
        self._post_artifacts(log, step_run_ref, run_id, step_key)
        self._post_step_context(step_context, run_id, step_key)
        step_def = self._get_emr_step_def(run_id, step_key, step_context.op.name)
        emr_step_id = self.emr_job_runner.add_job_flow_steps(log, self.cluster_id, [step_def])[0]
        span = step_context.dagster_run.tags.get(PARTITION_RANGE_START_TAG)
        log.info(
            f"{step_key}: EMR step {emr_step_id} submitted to cluster {self.cluster_id}"
            + (f" (partitions from {span})" if span else "")
        )
        started = time.monotonic()
        try:
            yield from self._relay_events(step_context, run_id, step_key, emr_step_id, started)
        except EmrError as exc:
            # spark-submit merges the Python driver's stderr into the step's stdout.
            logs = [self._step_log(emr_step_id, name) for name in ("stdout", "stderr")]
            tail = _error_tail("\n".join(text for text in logs if text)) or "(no driver log)"
            log.error(f"EMR step {emr_step_id} failed; Spark driver output (tail):\n{tail}")
            raise dg.Failure(
                description=f"EMR step {emr_step_id} for {step_key} failed ({exc}); "
                f"the Spark driver's output ends with: {tail.splitlines()[-1]}",
                metadata={
                    "emr_step_id": emr_step_id,
                    "driver_output_tail": dg.MetadataValue.text(tail),
                },
            ) from None  # the description says it all; the CLI shows root causes

    def _relay_events(
        self, step_context, run_id: str, step_key: str, emr_step_id: str, started: float
    ) -> Iterator[DagsterEvent]:
        """Poll the step; forward each new remote event, with the cost added to materializations."""
        s3 = boto3.resource("s3", region_name=self.region_name)
        seen = 0
        done = False
        while not done:
            with raise_execution_interrupts():
                time.sleep(self.poll_seconds)
                done = self.emr_job_runner.is_emr_step_complete(
                    step_context.log, self.cluster_id, emr_step_id
                )
                events = self.read_events(s3, run_id, step_key)
            for event in events[seen:]:
                event = self._with_cost(event, time.monotonic() - started)
                step_context.instance.handle_new_event(event)
                if event.is_dagster_event:
                    yield event.dagster_event
            seen = max(seen, len(events))

    def _with_cost(self, event, seconds: float):
        dagster_event = event.dagster_event
        if (
            self.price is None
            or dagster_event is None
            or dagster_event.event_type != DagsterEventType.ASSET_MATERIALIZATION
        ):
            return event
        data = dagster_event.event_specific_data
        materialization = data.materialization
        metadata = {**materialization.metadata, **self.price.estimate(seconds)}
        data = data._replace(materialization=materialization.with_metadata(metadata))
        return event._replace(dagster_event=dagster_event._replace(event_specific_data=data))

    def _step_log(self, emr_step_id: str, name: str) -> str | None:
        """A step log from the cluster's S3 logs (EMR ships them every ~5 minutes)."""
        try:
            bucket, prefix = self.emr_job_runner.log_location_for_cluster(self.cluster_id)
        except EmrError:
            return None
        key = f"{prefix}{self.cluster_id}/steps/{emr_step_id}/{name}.gz"
        s3 = boto3.client("s3", region_name=self.region_name)
        deadline = time.monotonic() + self.log_wait_seconds
        while True:
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                return gzip.decompress(body).decode("utf-8", errors="replace")
            except ClientError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(min(10.0, self.poll_seconds))


def parse_events(body: bytes, run_id: str, step_key: str, source: str) -> list[EventLogEntry]:
    """A step's events, checked: Dagster JSON, of this run and step, no run-level event."""
    try:
        # Dagster's JSON serialization builds only whitelisted record classes: no code runs.
        events = dg.deserialize_value(body.decode("utf-8"))
    except Exception as exc:  # whatever a node wrote: a failed step, nothing more
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _rejected(step_key, source, f"not Dagster events JSON ({cause[:200]})") from None
    if not isinstance(events, list):
        raise _rejected(step_key, source, f"a {type(events).__name__}, not a list of events")
    for event in events:
        if not isinstance(event, EventLogEntry):
            raise _rejected(step_key, source, f"holds a {type(event).__name__}, not an event")
        dagster_event = event.dagster_event
        if event.run_id != run_id:
            raise _rejected(step_key, source, f"holds an event of run {event.run_id!r}")
        other = {event.step_key, dagster_event.step_key if dagster_event else step_key}
        if other != {step_key}:
            named = sorted(str(key) for key in other - {step_key})
            raise _rejected(step_key, source, f"holds an event of step {', '.join(named)}")
        if dagster_event and dagster_event.event_type in PIPELINE_EVENTS:
            raise _rejected(step_key, source, f"holds a run event ({dagster_event.event_type})")
    return events


def _rejected(step_key: str, source: str, cause: str) -> dg.Failure:
    return dg.Failure(
        description=f"step {step_key}: rejected the events object {source}: {cause}. Nothing in "
        "it was executed here; whatever wrote it ran on the cluster, with the nodes' role.",
        metadata={"events_object": source},
    )


def _error_tail(stderr: str, lines: int = 40) -> str:
    """The end of a driver's output without Spark's log chatter, which follows the error."""
    kept = [line for line in stderr.strip().splitlines() if not SPARK_LOG_LINE.match(line)]
    return "\n".join(kept[-lines:])


def _zip_package(package_dir: Path, target: str) -> None:
    """Zip the package (sources and data files, no caches) for spark-submit --py-files."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package_dir.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                archive.write(path, path.relative_to(package_dir.parent).as_posix())
