"""The cluster spec (cluster_spec.toml) and the RunJobFlow request built from it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

SECURITY_CONFIGURATION = "fruits-assets-s3-encryption"


@dataclass(frozen=True)
class ClusterSpec:
    """What `fruits cluster create` asks EMR for; every field comes from the TOML file."""

    name: str
    region: str
    release_label: str
    applications: list[str]
    staging_bucket: str
    staging_prefix: str
    log_prefix: str
    idle_timeout_seconds: int
    primary_type: str
    core_type: str
    core_count: int
    subnet_id: str
    key_name: str
    service_role: str
    instance_profile: str
    python_interpreter: str
    venv: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> ClusterSpec:
        """Read a spec file (the packaged one by default); non-empty overrides win."""
        raw = tomllib.loads(_read_text(path, "cluster_spec.toml"))
        instances, roles, python = raw["instances"], raw["roles"], raw["python"]
        values = {
            "name": raw["name"],
            "region": raw["region"],
            "release_label": raw["release_label"],
            "applications": list(raw["applications"]),
            "staging_bucket": raw.get("staging_bucket", ""),
            "staging_prefix": raw.get("staging_prefix", "fruits_staging"),
            "log_prefix": raw.get("log_prefix", "emr-logs"),
            "idle_timeout_seconds": int(raw["idle_timeout_seconds"]),
            "primary_type": instances["primary_type"],
            "core_type": instances["core_type"],
            "core_count": int(instances["core_count"]),
            "subnet_id": instances.get("subnet_id", ""),
            "key_name": instances.get("key_name", ""),
            "service_role": roles["service_role"],
            "instance_profile": roles["instance_profile"],
            "python_interpreter": python["interpreter"],
            "venv": python["venv"],
            "tags": dict(raw.get("tags", {})),
        }
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        spec = cls(**values)
        spec.validate()
        return spec

    def validate(self) -> None:
        if not self.staging_bucket:
            raise ValueError(
                "the cluster spec has no staging_bucket: set it in the spec or pass "
                "--staging-bucket (a private bucket of yours, in the cluster's region)"
            )
        if not re.fullmatch(r"emr-7\.\d+\.\d+", self.release_label):
            raise ValueError(
                f"release_label {self.release_label!r}: use an EMR 7.x release (Spark 3.5, "
                "the Spark minor of the pinned local pyspark)"
            )
        if self.idle_timeout_seconds < 60 or self.idle_timeout_seconds > 7 * 24 * 3600:
            raise ValueError("idle_timeout_seconds must be between 60 s and 7 days")
        if self.core_count < 1:
            raise ValueError("core_count must be at least 1")

    @property
    def instance_count(self) -> int:
        return 1 + self.core_count

    @property
    def instances(self) -> dict[str, int]:
        """Instance type -> count, over the primary and core groups."""
        counts = {self.primary_type: 1}
        counts[self.core_type] = counts.get(self.core_type, 0) + self.core_count
        return counts

    @property
    def log_uri(self) -> str:
        return f"s3://{self.staging_bucket}/{self.log_prefix.strip('/')}/"

    @property
    def python(self) -> str:
        return f"{self.venv}/bin/python"

    def bootstrap_key(self) -> str:
        return f"{self.staging_prefix.strip('/')}/bootstrap/install_fruits_assets.sh"

    def run_job_flow_request(self) -> dict[str, Any]:
        """The boto3 `run_job_flow` arguments: private, encrypted, self-terminating."""
        instances: dict[str, Any] = {
            "InstanceGroups": [
                _group("Primary", "MASTER", self.primary_type, 1),
                _group("Core", "CORE", self.core_type, self.core_count),
            ],
            # Steps arrive one by one from Dagster; idle time is bounded by auto-termination.
            "KeepJobFlowAliveWhenNoSteps": True,
            "TerminationProtected": False,
        }
        if self.subnet_id:
            instances["Ec2SubnetId"] = self.subnet_id
        if self.key_name:
            instances["Ec2KeyName"] = self.key_name
        return {
            "Name": self.name,
            "ReleaseLabel": self.release_label,
            "LogUri": self.log_uri,
            "Applications": [{"Name": name} for name in self.applications],
            "Instances": instances,
            "BootstrapActions": [
                {
                    "Name": "install fruits_assets dependencies",
                    "ScriptBootstrapAction": {
                        "Path": f"s3://{self.staging_bucket}/{self.bootstrap_key()}",
                        "Args": [],
                    },
                }
            ],
            "Configurations": [
                {
                    "Classification": "spark-env",
                    "Configurations": [
                        {
                            "Classification": "export",
                            "Properties": {
                                "PYSPARK_PYTHON": self.python,
                                "PYSPARK_DRIVER_PYTHON": self.python,
                            },
                        }
                    ],
                    "Properties": {},
                }
            ],
            "AutoTerminationPolicy": {"IdleTimeout": self.idle_timeout_seconds},
            "SecurityConfiguration": SECURITY_CONFIGURATION,
            "ServiceRole": self.service_role,
            "JobFlowRole": self.instance_profile,
            "VisibleToAllUsers": True,
            "StepConcurrencyLevel": 1,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(self.tags.items())],
        }


def _group(name: str, role: str, instance_type: str, count: int) -> dict[str, Any]:
    return {
        "Name": name,
        "Market": "ON_DEMAND",
        "InstanceRole": role,
        "InstanceType": instance_type,
        "InstanceCount": count,
    }


def security_configuration() -> dict[str, Any]:
    """EMRFS writes to S3 encrypted at rest with S3-managed keys (SSE-S3)."""
    # Local-disk encryption needs a customer KMS key of the user's: add it here if you have one.
    return {
        "EncryptionConfiguration": {
            "EnableInTransitEncryption": False,
            "EnableAtRestEncryption": True,
            "AtRestEncryptionConfiguration": {
                "S3EncryptionConfiguration": {"EncryptionMode": "SSE-S3"},
            },
        }
    }


def _read_text(path: str | Path | None, packaged: str) -> str:
    """A user file, or the packaged default (read through importlib: the package may be zipped)."""
    if path:
        return Path(path).read_text()
    return resources.files("fruits_assets.emr").joinpath(packaged).read_text()
