"""`fruits cluster create|terminate|secure-account`: a private, encrypted, self-terminating EMR
cluster, and the one account-wide setting it relies on."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from dagster_aws.emr import EmrJobRunner

from fruits_assets.emr import bootstrap
from fruits_assets.emr.spec import (
    ClusterSpec,
    security_configuration,
    security_configuration_name,
)

Say = Callable[[str], None]
READY_STATES = {"WAITING", "RUNNING"}
ENDED_STATES = {"TERMINATED", "TERMINATED_WITH_ERRORS"}


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


def upload_certificates(s3: Any, spec: ClusterSpec, say: Say) -> str | None:
    """Stage the TLS certificates zip where only the operator writes; returns its s3:// URI."""
    if not spec.in_transit_encryption:
        return None
    body = Path(spec.tls_certificates).read_bytes()
    key = spec.layout.tls_key(hashlib.sha256(body).hexdigest()[:16])
    s3.put_object(Bucket=spec.staging_bucket, Key=key, Body=body)
    say(f"uploaded TLS certificates {spec.tls_certificates} to s3://{spec.staging_bucket}/{key}")
    return f"s3://{spec.staging_bucket}/{key}"


def ensure_security_configuration(emr: Any, certificates_uri: str | None, say: Say) -> str:
    """The security configuration for these settings (created once, named by content)."""
    configuration = security_configuration(certificates_uri)
    name = security_configuration_name(configuration)
    try:
        emr.describe_security_configuration(Name=name)
    except ClientError:
        emr.create_security_configuration(
            Name=name, SecurityConfiguration=json.dumps(configuration)
        )
        transit = "TLS in transit" if certificates_uri else "NO encryption in transit"
        say(f"created EMR security configuration {name} (S3 SSE at rest, {transit})")
    return name


def _ranges(permitted: list[dict[str, int]]) -> str:
    return ", ".join(
        str(r["MinRange"]) if r["MinRange"] == r.get("MaxRange", r["MinRange"])
        else f"{r['MinRange']}-{r['MaxRange']}"
        for r in permitted
    )  # fmt: skip


def secure_account(region: str, say: Say = print) -> bool:
    """EMR's block public access, with no exception: not even port 22 faces the internet.

    An account-and-region setting, so a command of its own for whoever administers the account
    (`fruits cluster secure-account`); returns whether it changed anything.
    """
    emr = boto3.client("emr", region_name=region)
    current = emr.get_block_public_access_configuration()["BlockPublicAccessConfiguration"]
    permitted = current.get("PermittedPublicSecurityGroupRuleRanges") or []
    if current.get("BlockPublicSecurityGroupRules") and not permitted:
        say(f"EMR block public access in {region} already blocks every public port: no change")
        return False
    if not current.get("BlockPublicSecurityGroupRules"):
        before = "was off (any port could face the internet)"
    else:
        before = f"permitted public rules on ports {_ranges(permitted)}"
    emr.put_block_public_access_configuration(
        BlockPublicAccessConfiguration={
            "BlockPublicSecurityGroupRules": True,
            "PermittedPublicSecurityGroupRuleRanges": [],
        }
    )
    say(
        f"EMR block public access in {region} (this whole account and region): {before}; it "
        "now blocks every public port, no exception. Reach nodes through SSM, not SSH."
    )
    return True


def create(spec: ClusterSpec, say: Say = print, wait: bool = False, poll: float = 30.0) -> str:
    """Stage the bootstrap script (and certificates), then start the tagged cluster; its id.

    Raises ValueError, before any AWS call, when in-transit encryption lacks certificates.
    """
    spec.check_encryption()
    s3 = boto3.client("s3", region_name=spec.region)
    emr = boto3.client("emr", region_name=spec.region)
    ensure_private_bucket(s3, spec.staging_bucket, spec.region, say)
    s3.put_object(
        Bucket=spec.staging_bucket,
        Key=spec.bootstrap_key(),
        Body=bootstrap.bootstrap_script(spec).encode(),
    )
    say(f"uploaded bootstrap script to s3://{spec.staging_bucket}/{spec.bootstrap_key()}")
    certificates_uri = upload_certificates(s3, spec, say)
    configuration = ensure_security_configuration(emr, certificates_uri, say)
    # boto3 itself, not EmrJobRunner.run_job_flow: that one tags the cluster again afterwards,
    # which would need elasticmapreduce:AddTags for the operator.
    cluster_id = emr.run_job_flow(**spec.run_job_flow_request(configuration))["JobFlowId"]
    say(
        f"cluster {cluster_id}: {spec.core_count + 1} x {spec.core_type}, {spec.release_label}, "
        f"terminates after {spec.idle_timeout_seconds} s idle; logs in {spec.log_uri}"
    )
    if not certificates_uri:
        say("warning: in-transit encryption is off (--no-in-transit-encryption)")
    if wait:
        wait_for_state(EmrJobRunner(region=spec.region), cluster_id, READY_STATES, say, poll)
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
