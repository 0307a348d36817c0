"""The EMR wiring's pure parts: spec checks, prices, bootstrap pins, settings per environment."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from fruits_assets.emr.bootstrap import bootstrap_script, pinned_requirements
from fruits_assets.emr.pricing import cluster_price
from fruits_assets.emr.spec import ClusterSpec
from fruits_assets.resources.environments import emr_resources
from fruits_assets.resources.spark import emr_spark_config, s3a_spark_config
from fruits_assets.settings import FruitsSettings


def test_spec_defaults_are_the_documented_cluster():
    spec = ClusterSpec.load(staging_bucket="bucket")
    request = spec.run_job_flow_request()
    assert spec.region == "eu-west-3" and spec.instance_count == 3
    assert request["AutoTerminationPolicy"]["IdleTimeout"] == 3600
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert "Ec2KeyName" not in request["Instances"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"staging_bucket": ""}, "no staging_bucket"),
        ({"staging_bucket": "b", "release_label": "emr-6.15.0"}, "EMR 7.x"),
        ({"staging_bucket": "b", "idle_timeout_seconds": 0}, "idle_timeout_seconds"),
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
