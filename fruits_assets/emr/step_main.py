"""The program each EMR step runs (spark-submit's main file): one Dagster step, events to S3.

It is dagster-aws's emr_step_main plus two things the remote process cannot know by itself: the
FRUITS_* settings of the launching process and the registered fruit-class partitions (the
remote Dagster instance is ephemeral and empty: dagster issue #14987). Its events go back as
Dagster's JSON serialization (UTF-8), to the one key the launcher names: never as a pickle, which
the launching machine would have to unpickle.

Arguments: the staging bucket, the step reference's key, the events key.
"""

import json
import os
import pickle
import posixpath
import sys
from queue import Queue
from threading import Thread

import boto3

STEP_CONTEXT_FILE = "fruits_step.json"


def main(bucket: str, step_run_ref_key: str, events_key: str) -> None:
    s3 = boto3.client("s3")
    step_dir = posixpath.dirname(step_run_ref_key)
    context = json.loads(
        s3.get_object(Bucket=bucket, Key=f"{step_dir}/{STEP_CONTEXT_FILE}")["Body"].read()
    )
    # Before anything imports the definitions: they read their settings from the environment.
    os.environ.update(context["env"])
    # A step of a run that the launching process holds the output root's lock for.
    os.environ["FRUITS_REMOTE_STEP"] = "true"

    # Private Dagster API, as a step launcher's remote side needs it: running a step reference.
    from dagster import serialize_value
    from dagster._core.execution.plan.external_step import (
        external_instance_from_step_run_ref,
        run_step_from_ref,
    )
    from dagster_aws.emr.emr_step_main import DONE, event_writing_loop

    # Written by the operator into a prefix the nodes can only read.
    step_run_ref = pickle.loads(s3.get_object(Bucket=bucket, Key=step_run_ref_key)["Body"].read())

    def put_events(events: list) -> None:
        s3.put_object(
            Bucket=bucket,
            Key=events_key,
            Body=serialize_value(events).encode("utf-8"),
            ContentType="application/json",
        )

    events_queue: Queue = Queue()
    writer = Thread(
        target=event_writing_loop,
        kwargs={"events_queue": events_queue, "put_events_fn": put_events},
    )
    writer.start()
    try:
        instance = external_instance_from_step_run_ref(
            step_run_ref, event_listener_fn=events_queue.put
        )
        for name, keys in context["dynamic_partitions"].items():
            instance.add_dynamic_partitions(name, keys)
        print(f"fruits_assets: running step {step_run_ref.step_key}", flush=True)
        list(run_step_from_ref(step_run_ref, instance))
    finally:
        events_queue.put(DONE)
        writer.join()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
