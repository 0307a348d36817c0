"""`fruits cluster create|terminate`: a private, encrypted, self-terminating EMR cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import ClientError
from dagster_aws.emr import EmrJobRunner

from fruits_assets.emr import bootstrap
from fruits_assets.emr.spec import SECURITY_CONFIGURATION, ClusterSpec, security_configuration

Say = Callable[[str], None]
READY_STATES = {"WAITING", "RUNNING"}
ENDED_STATES = {"TERMINATED", "TERMINATED_WITH_ERRORS"}


class _PrintLog:
    """The `log` EmrJobRunner expects, printing to the terminal."""

    def __init__(self, say: Say) -> None:
        self.say = say

    def info(self, msg: str) -> None:
        self.say(msg)

    debug = info
    warning = info
    error = info


def ensure_private_bucket(s3: Any, bucket: str, region: str, say: Say) -> None:
    """Create the staging bucket if needed; always block public access and encrypt by default."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
        config = {} if region == "us-east-1" else {"LocationConstraint": region}
        s3.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": config} if config else {}))
        say(f"created staging bucket s3://{bucket} in {region}")
    # Step references are pickles: whoever can write them runs code on the cluster.
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )


def ensure_security_configuration(emr: Any, say: Say) -> None:
    try:
        emr.describe_security_configuration(Name=SECURITY_CONFIGURATION)
    except ClientError:
        emr.create_security_configuration(
            Name=SECURITY_CONFIGURATION,
            SecurityConfiguration=json.dumps(security_configuration()),
        )
        say(f"created EMR security configuration {SECURITY_CONFIGURATION} (S3 SSE at rest)")


def block_public_ingress(emr: Any, say: Say) -> None:
    """EMR's block public access, with no exception: not even port 22 faces the internet."""
    current = emr.get_block_public_access_configuration()["BlockPublicAccessConfiguration"]
    permitted = current.get("PermittedPublicSecurityGroupRuleRanges") or []
    if current.get("BlockPublicSecurityGroupRules") and not permitted:
        return
    emr.put_block_public_access_configuration(
        BlockPublicAccessConfiguration={
            "BlockPublicSecurityGroupRules": True,
            "PermittedPublicSecurityGroupRuleRanges": [],
        }
    )
    say(
        "EMR block public access (this account, this region) now blocks every public port; "
        f"it permitted {permitted or 'all'} before. Reach nodes through SSM, not SSH."
    )


def create(spec: ClusterSpec, say: Say = print, wait: bool = False, poll: float = 30.0) -> str:
    """Stage the bootstrap script, then start the cluster; returns its id."""
    s3 = boto3.client("s3", region_name=spec.region)
    emr = boto3.client("emr", region_name=spec.region)
    ensure_private_bucket(s3, spec.staging_bucket, spec.region, say)
    s3.put_object(
        Bucket=spec.staging_bucket,
        Key=spec.bootstrap_key(),
        Body=bootstrap.bootstrap_script(spec).encode(),
    )
    say(f"uploaded bootstrap script to s3://{spec.staging_bucket}/{spec.bootstrap_key()}")
    ensure_security_configuration(emr, say)
    block_public_ingress(emr, say)
    runner = EmrJobRunner(region=spec.region)
    cluster_id = runner.run_job_flow(_PrintLog(say), spec.run_job_flow_request())
    say(
        f"cluster {cluster_id}: {spec.core_count + 1} x {spec.core_type}, {spec.release_label}, "
        f"terminates after {spec.idle_timeout_seconds} s idle; logs in {spec.log_uri}"
    )
    if wait:
        wait_for_state(runner, cluster_id, READY_STATES, say, poll)
    return cluster_id


def wait_for_state(
    runner: EmrJobRunner, cluster_id: str, wanted: set[str], say: Say, poll: float
) -> str:
    """Poll the cluster, printing each state change, until it reaches one of `wanted`."""
    last = None
    while True:
        state = runner.describe_cluster(cluster_id)["Cluster"]["Status"]["State"]
        if state != last:
            say(f"cluster {cluster_id}: {state}")
            last = state
        if state in wanted:
            return state
        if state in ENDED_STATES:
            raise RuntimeError(f"cluster {cluster_id} ended ({state}) before reaching {wanted}")
        time.sleep(poll)


def terminate(cluster_id: str, region: str, say: Say = print, wait: bool = False) -> None:
    runner = EmrJobRunner(region=region)
    runner.make_emr_client().terminate_job_flows(JobFlowIds=[cluster_id])
    say(f"cluster {cluster_id}: termination requested")
    if wait:
        wait_for_state(runner, cluster_id, ENDED_STATES, say, poll=30.0)


def env_lines(spec: ClusterSpec, cluster_id: str) -> list[str]:
    """What to export so that `FRUITS_ENV=emr` runs use this cluster."""
    return [
        "export FRUITS_ENV=emr",
        f"export FRUITS_EMR_CLUSTER_ID={cluster_id}",
        f"export FRUITS_EMR_REGION={spec.region}",
        f"export FRUITS_EMR_STAGING_BUCKET={spec.staging_bucket}",
    ]
