"""The IAM policies in iam/, and their placeholders filled in from a cluster spec."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from fruits_assets.emr.spec import ClusterSpec

# Who gets which: the cluster's EC2 instance profile, whoever runs `fruits`, and whoever runs
# `fruits cluster secure-account` (an account-and-region setting) once.
POLICY_FILES = {
    "nodes": "cluster-nodes-policy.json",
    "operator": "operator-policy.json",
    "account-admin": "account-admin-policy.json",
}
# The operator's EMR actions that take no cluster resource, hence `"Resource": "*"` (README).
OPERATOR_ACTIONS_ON_ANY_RESOURCE = frozenset(
    {
        "elasticmapreduce:RunJobFlow",  # allowed only with the managed tag in the request
        "elasticmapreduce:CreateSecurityConfiguration",
        "elasticmapreduce:DescribeSecurityConfiguration",
    }
)
PLACEHOLDER = re.compile(r"<([A-Z_]+)>")


def policy_text(name: str) -> str:
    """A policy file as shipped, with its `<PLACEHOLDERS>`."""
    return resources.files("fruits_assets.emr").joinpath("iam", POLICY_FILES[name]).read_text()


def placeholders(
    spec: ClusterSpec, account_id: str, data_bucket: str, output_prefix: str
) -> dict[str, str]:
    return {
        "ACCOUNT_ID": account_id,
        "REGION": spec.region,
        "STAGING_BUCKET": spec.staging_bucket,
        "LOG_PREFIX": spec.log_prefix.strip("/"),
        "DATA_BUCKET": data_bucket,
        "OUTPUT_PREFIX": output_prefix.strip("/"),
        **spec.layout.placeholders(),
    }


def render(name: str, values: dict[str, str]) -> dict[str, Any]:
    """A policy with every placeholder replaced; KeyError names one without a value."""
    return json.loads(PLACEHOLDER.sub(lambda m: values[m.group(1)], policy_text(name)))


def render_all(
    spec: ClusterSpec, account_id: str, data_bucket: str, output_prefix: str
) -> dict[str, dict[str, Any]]:
    """File name -> policy, ready for `aws iam create-policy --policy-document`."""
    values = placeholders(spec, account_id, data_bucket, output_prefix)
    return {POLICY_FILES[name]: render(name, values) for name in POLICY_FILES}
