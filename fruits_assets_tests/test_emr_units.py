"""The EMR wiring's pure parts: spec checks, prices, bootstrap pins, settings per environment,
the events transport (against moto's S3, in process) and the IAM policy documents."""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import pickle
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.handle import StepHandle
from dagster._serdes import serialize_value
from moto import mock_aws

from fruits_assets import cli
from fruits_assets.emr import policies
from fruits_assets.emr.bootstrap import bootstrap_script, pinned_requirements
from fruits_assets.emr.launcher import FruitsEmrStepLauncher, parse_events
from fruits_assets.emr.pricing import cluster_price
from fruits_assets.emr.spec import (
    MANAGED_TAG,
    TLS_PEM_FILES,
    ClusterSpec,
    security_configuration,
    security_configuration_name,
)
from fruits_assets.resources.environments import emr_resources
from fruits_assets.resources.spark import emr_spark_config, s3a_spark_config
from fruits_assets.settings import FruitsSettings
from fruits_assets_tests.emr_helpers import allowed, certificates_zip, listed

REPO = Path(__file__).resolve().parents[1]
REGION, STAGING = "eu-west-3", "fruits-staging"
RUN_ID, STEP = "0b7d1c9e-run", "raw_images"


def test_spec_defaults_are_the_documented_cluster():
    spec = ClusterSpec.load(staging_bucket="bucket")
    request = spec.run_job_flow_request("fruits-assets-tls-0123")
    assert spec.region == "eu-west-3" and spec.instance_count == 3
    assert request["AutoTerminationPolicy"]["IdleTimeout"] == 3600
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert "Ec2KeyName" not in request["Instances"]
    assert request["SecurityConfiguration"] == "fruits-assets-tls-0123"
    assert {"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]} in request["Tags"]
    assert spec.in_transit_encryption is True and spec.tls_certificates == ""


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"staging_bucket": ""}, "no staging_bucket"),
        ({"staging_bucket": "b", "release_label": "emr-6.15.0"}, "EMR 7.x"),
        ({"staging_bucket": "b", "idle_timeout_seconds": 0}, "idle_timeout_seconds"),
        ({"staging_bucket": "b", "log_prefix": "fruits_staging/steps"}, "log_prefix"),
        ({"staging_bucket": "b", "log_prefix": "fruits_staging"}, "not inside one another"),
    ],
)
def test_spec_rejects_unsafe_or_incomplete_settings(overrides, message):
    spec = ClusterSpec.load(staging_bucket="b")
    values = {**spec.__dict__, **overrides}
    with pytest.raises(ValueError, match=message):
        ClusterSpec(**values).validate()


def test_price_is_instance_hours_times_on_demand_rate():
    price = cluster_price("eu-west-3", {"m5.xlarge": 3})
    assert price is not None and price.per_hour == pytest.approx(3 * (0.224 + 0.056))
    estimate = price.estimate(1800)
    assert estimate["emr_cost_estimate_usd"] == pytest.approx(0.42)
    assert estimate["emr_instance_hours"] == pytest.approx(1.5)
    assert cluster_price("eu-west-3", {"x9.huge": 1}) is None


def test_bootstrap_pins_the_installed_versions_and_leaves_the_ui_out():
    pins = pinned_requirements()
    assert f"tensorflow=={md.version('tensorflow')}" in pins
    assert f"pyarrow=={md.version('pyarrow')}" in pins
    assert not any(p.startswith("dagster-webserver") for p in pins)
    script = bootstrap_script(ClusterSpec.load(staging_bucket="b"), pins)
    assert script.startswith("#!/bin/bash") and "set -euxo pipefail" in script


def test_emr_environment_needs_s3_roots_and_a_cluster(monkeypatch):
    monkeypatch.setenv("FRUITS_IMAGES", "/local/images")
    monkeypatch.setenv("FRUITS_OUTPUT", "s3://b/out")
    with pytest.raises(ValueError, match="images root must be an s3:// URI"):
        emr_resources(FruitsSettings.from_env())
    monkeypatch.setenv("FRUITS_IMAGES", "s3://b/images")
    monkeypatch.delenv("FRUITS_EMR_CLUSTER_ID", raising=False)
    monkeypatch.setenv("FRUITS_EMR_STAGING_BUCKET", "stage")
    with pytest.raises(ValueError, match="FRUITS_EMR_CLUSTER_ID"):
        emr_resources(FruitsSettings.from_env())
    monkeypatch.setenv("FRUITS_EMR_CLUSTER_ID", "j-TEST")
    resources = emr_resources(FruitsSettings.from_env())
    assert resources["storage"].native_s3 is True  # EMRFS: s3:// as is, no S3A shipped
    launcher = resources["step_launcher"].resource_fn(None)
    assert launcher.region_name == "eu-west-3" and launcher.cluster_id == "j-TEST"
    assert not any("s3a" in key for key in launcher.spark_config)
    assert launcher.spark_config == emr_spark_config("/opt/fruits/venv/bin/python")


def test_s3a_settings_follow_the_aws_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    config = s3a_spark_config(schemes=("s3", "s3a"))
    assert config["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert config["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert config["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert config["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert config["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-3"


# --- Encryption in transit -------------------------------------------------------------------


def test_in_transit_encryption_needs_certificates_or_an_explicit_opt_out(tmp_path):
    spec = ClusterSpec.load(staging_bucket="b")
    with pytest.raises(ValueError, match="--no-in-transit-encryption"):
        spec.check_encryption()
    partial = certificates_zip(tmp_path / "partial.zip", TLS_PEM_FILES[:2])
    with pytest.raises(ValueError, match="lacks trustedCertificates.pem"):
        ClusterSpec.load(staging_bucket="b", tls_certificates=str(partial)).check_encryption()
    ClusterSpec.load(staging_bucket="b", in_transit_encryption=False).check_encryption()
    good = certificates_zip(tmp_path / "certs.zip")
    ClusterSpec.load(staging_bucket="b", tls_certificates=str(good)).check_encryption()


def test_cluster_create_refuses_without_certificates_before_any_aws_call(capsys):
    assert cli.main(["cluster", "create", "--staging-bucket", "b"]) == 2
    err = capsys.readouterr().err
    assert "in-transit encryption needs TLS certificates" in err and "README" in err


def test_security_configuration_turns_tls_on_with_the_pem_zip():
    on = security_configuration("s3://b/fruits_staging/tls/certificates-ab.zip")
    encryption = on["EncryptionConfiguration"]
    assert encryption["EnableInTransitEncryption"] is True
    assert encryption["EnableAtRestEncryption"] is True
    assert encryption["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"] == {
        "CertificateProviderType": "PEM",
        "S3Object": "s3://b/fruits_staging/tls/certificates-ab.zip",
    }
    off = security_configuration(None)
    assert off["EncryptionConfiguration"]["EnableInTransitEncryption"] is False
    # Named by content: a configuration never changes under an existing name.
    assert security_configuration_name(on).startswith("fruits-assets-tls-")
    assert security_configuration_name(off).startswith("fruits-assets-s3-")
    other = security_configuration("s3://b/fruits_staging/tls/certificates-cd.zip")
    assert security_configuration_name(other) != security_configuration_name(on)


# --- Events: Dagster JSON, never a pickle ----------------------------------------------------


class _Exploit:
    """Unpickling it runs a shell command: what code on a node could leave as a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _launcher() -> FruitsEmrStepLauncher:
    return FruitsEmrStepLauncher(
        region_name=REGION,
        cluster_id="j-TEST",
        staging_bucket=STAGING,
        staging_prefix="fruits_staging",
        spark_config={},
    )


def _entry(
    run_id: str = RUN_ID,
    step_key: str = STEP,
    event_type: DagsterEventType | None = DagsterEventType.STEP_START,
) -> EventLogEntry:
    """A step's event, or (no event type) a log message of the step."""
    event = event_type and DagsterEvent(
        event_type_value=event_type.value,
        job_name="fruits_job",
        step_handle=StepHandle(NodeHandle(step_key, None)),
    )
    return EventLogEntry(
        error_info=None,
        level=logging.DEBUG,
        user_message="" if event else "featurizing 10 images",
        run_id=run_id,
        timestamp=time.time(),
        step_key=step_key,
        job_name="fruits_job",
        dagster_event=event,
    )


def test_a_pickled_events_object_from_a_node_runs_nothing_here(tmp_path):
    marker = tmp_path / "code-ran-on-the-operator"
    exploit = pickle.dumps(_Exploit(marker))
    # The payload is live: unpickled in a process of its own, it creates the marker.
    unpickle = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", unpickle], input=exploit, check=True)
    assert marker.exists()
    marker.unlink()

    launcher = _launcher()
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=STAGING, CreateBucketConfiguration={"LocationConstraint": REGION})
        keys = [
            f"fruits_staging/{RUN_ID}/{STEP}/events.pkl",  # where dagster-aws's reader looks
            launcher._artifact_s3_key(RUN_ID, STEP, "events.pkl"),
            launcher._events_s3_key(RUN_ID, STEP),  # the key this launcher reads
        ]
        for key in keys:
            s3.put_object(Bucket=STAGING, Key=key, Body=exploit)
        with pytest.raises(dg.Failure) as failure:
            launcher.read_events(boto3.resource("s3", region_name=REGION), RUN_ID, STEP)
    assert not marker.exists()
    first_line = failure.value.description.splitlines()[0]
    assert first_line.startswith(
        f"step {STEP}: rejected the events object "
        f"s3://{STAGING}/fruits_staging/events/{RUN_ID}/{STEP}/events.json: "
        "not Dagster events JSON"
    ), first_line
    assert "Nothing in it was executed here" in first_line


def test_no_events_object_yet_is_no_events():
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=STAGING, CreateBucketConfiguration={"LocationConstraint": REGION})
        resource = boto3.resource("s3", region_name=REGION)
        launcher = _launcher()
        assert launcher.read_events(resource, RUN_ID, STEP) == []
        events = [_entry(), _entry(event_type=None)]
        key = launcher._events_s3_key(RUN_ID, STEP)
        s3.put_object(Bucket=STAGING, Key=key, Body=serialize_value(events).encode())
        assert launcher.read_events(resource, RUN_ID, STEP) == events


@pytest.mark.parametrize(
    ("payload", "cause"),
    [
        (
            json.dumps([{"__class__": "Popen", "args": ["touch", "/tmp/x"]}]),
            'not Dagster events JSON (Attempted to deserialize class "Popen" which is not in '
            "the whitelist.)",
        ),
        (
            # Whitelisted, and names code: built as a plain record, refused, never loaded.
            json.dumps(
                [
                    {
                        "__class__": "ConfigurableClassData",
                        "module_name": "os",
                        "class_name": "system",
                        "config_yaml": "{}",
                    }
                ]
            ),
            "holds a ConfigurableClassData, not an event",
        ),
        ("{not json", "not Dagster events JSON (Expecting property name"),
        (serialize_value({"events": []}), "a dict, not a list of events"),
        (serialize_value([_entry(run_id="another-run")]), "holds an event of run 'another-run'"),
        (serialize_value([_entry(step_key="fruit_classifier")]), "of step fruit_classifier."),
        (
            serialize_value([_entry()._replace(dagster_event=_entry(RUN_ID, "pca").dagster_event)]),
            "holds an event of step pca.",
        ),
        (
            serialize_value([_entry(event_type=DagsterEventType.RUN_SUCCESS)]),
            "holds a run event (DagsterEventType.RUN_SUCCESS)",
        ),
    ],
    ids=[
        "foreign-class",
        "class-loader-record",
        "malformed",
        "not-a-list",
        "other-run",
        "other-step",
        "other-step-inside",
        "run-event",
    ],
)
def test_foreign_or_tampered_events_fail_the_step(payload, cause):
    with pytest.raises(dg.Failure) as failure:
        parse_events(payload.encode(), RUN_ID, STEP, "s3://stage/events.json")
    first_line = failure.value.description.splitlines()[0]
    assert first_line.startswith(f"step {STEP}: rejected the events object s3://stage/events.json")
    assert cause in first_line, first_line


def test_step_main_writes_json_events_to_the_key_the_launcher_reads():
    launcher = _launcher()
    step = launcher._get_emr_step_def(RUN_ID, STEP, STEP)
    args = step["HadoopJarStep"]["Args"]
    assert args[-3:] == [
        STAGING,
        launcher._artifact_s3_key(RUN_ID, STEP, "step_run_ref.pkl"),
        launcher._events_s3_key(RUN_ID, STEP),
    ]
    source = (REPO / "fruits_assets" / "emr" / "step_main.py").read_text()
    assert "pickle.dumps" not in source and 'serialize_value(events).encode("utf-8")' in source


# --- IAM policy documents --------------------------------------------------------------------

ACCOUNT, DATA, OUTPUT = "123456789012", "fruits-data", "fruits_output"
WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:PutObjectAcl", "s3:RestoreObject")


def _rendered(name: str) -> dict[str, Any]:
    spec = ClusterSpec.load(staging_bucket=STAGING)
    return policies.render(name, policies.placeholders(spec, ACCOUNT, DATA, OUTPUT))


def _object(key: str) -> str:
    return f"arn:aws:s3:::{STAGING}/{key}"


def test_every_policy_placeholder_has_a_value_and_no_s3_statement_is_on_any_resource():
    for name in policies.POLICY_FILES:
        policy = _rendered(name)
        assert "<" not in json.dumps(policy), name
        for statement in policy["Statement"]:
            if any(a.startswith("s3:") for a in listed(statement["Action"])):
                assert "*" not in listed(statement["Resource"]), (name, statement["Sid"])


def test_nodes_write_only_events_logs_and_outputs():
    nodes, launcher = _rendered("nodes"), _launcher()
    spec = ClusterSpec.load(staging_bucket=STAGING)
    operator_files = [
        launcher._artifact_s3_key(RUN_ID, STEP, name)
        for name in ("step_run_ref.pkl", "code.zip", "step_main.py", "fruits_step.json")
    ] + [spec.bootstrap_key(), spec.layout.tls_key("0123456789abcdef")]
    for key in operator_files:
        assert allowed(nodes, "s3:GetObject", _object(key)), key
        for action in WRITES:
            assert not allowed(nodes, action, _object(key)), (action, key)
    # dagster-aws's flat layout, and anywhere else in the staging bucket: not writable either.
    for key in (f"fruits_staging/{RUN_ID}/{STEP}/events.pkl", "elsewhere/x", "fruits_staging/x"):
        assert not allowed(nodes, "s3:PutObject", _object(key)), key
    assert not allowed(nodes, "s3:PutBucketPolicy", f"arn:aws:s3:::{STAGING}")
    for key in (launcher._events_s3_key(RUN_ID, STEP), "emr-logs/j-1/steps/s-1/stdout.gz"):
        assert allowed(nodes, "s3:PutObject", _object(key)), key
        assert not allowed(nodes, "s3:GetObject", _object(key)), key
    assert allowed(nodes, "s3:PutObject", f"arn:aws:s3:::{DATA}/{OUTPUT}/features/x.parquet")
    assert not allowed(nodes, "s3:PutObject", f"arn:aws:s3:::{DATA}/Fruits_Cloud/a.jpg")
    assert all("*" not in listed(s["Resource"]) for s in nodes["Statement"]), (
        "the nodes' policy names every resource"
    )


def test_operator_acts_only_on_tagged_clusters_and_documents_each_wildcard():
    operator = _rendered("operator")
    tag_key, tag_value = MANAGED_TAG
    readme = (REPO / "README.md").read_text()
    security = readme[readme.index("### Security and trust model") :]
    for statement in operator["Statement"]:
        emr_actions = [a for a in listed(statement["Action"]) if a.startswith("elasticmapreduce:")]
        if not emr_actions:
            continue
        conditions = statement["Condition"]["StringEquals"]
        if statement["Resource"] == "*":
            assert set(emr_actions) <= policies.OPERATOR_ACTIONS_ON_ANY_RESOURCE, emr_actions
            if "elasticmapreduce:RunJobFlow" in emr_actions:
                assert conditions[f"aws:RequestTag/{tag_key}"] == tag_value
            assert conditions["aws:RequestedRegion"] == REGION
        else:
            assert statement["Resource"] == f"arn:aws:elasticmapreduce:{REGION}:{ACCOUNT}:cluster/*"
            assert conditions == {f"aws:ResourceTag/{tag_key}": tag_value}
    for action in policies.OPERATOR_ACTIONS_ON_ANY_RESOURCE:
        assert f"`{action.split(':')[1]}`" in security, f"README: why {action} is on *"
    every = json.dumps(operator)
    assert "BlockPublicAccess" not in every and "ListClusters" not in every
    assert "AddTags" not in every and "RemoveTags" not in every  # the tag cannot be moved
    admin = _rendered("account-admin")
    (statement,) = admin["Statement"]
    assert set(statement["Action"]) == {
        "elasticmapreduce:GetBlockPublicAccessConfiguration",
        "elasticmapreduce:PutBlockPublicAccessConfiguration",
    }
    # The operator stages steps, bootstrap and certificates, and only reads the nodes' events.
    launcher = _launcher()
    assert allowed(operator, "s3:PutObject", _object(launcher._artifact_s3_key(RUN_ID, STEP, "a")))
    assert not allowed(operator, "s3:PutObject", _object(launcher._events_s3_key(RUN_ID, STEP)))
    assert allowed(operator, "s3:GetObject", _object(launcher._events_s3_key(RUN_ID, STEP)))


def test_cluster_iam_prints_the_three_policies_filled_in(capsys):
    args = ["cluster", "iam", "--staging-bucket", STAGING, "--account-id", ACCOUNT,
            "--data-bucket", DATA]  # fmt: skip
    assert cli.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == set(policies.POLICY_FILES.values())
    assert printed["cluster-nodes-policy.json"] == _rendered("nodes")
    assert cli.main(["cluster", "iam", "--staging-bucket", STAGING]) == 2
