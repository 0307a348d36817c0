"""The cluster spec (cluster_spec.toml), the staging bucket's layout and the RunJobFlow request."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# Set by `fruits cluster create`; the operator's IAM policy allows cluster actions only with it.
MANAGED_TAG = ("fruits-assets:managed", "true")
# The three PEM files EMR expects in the zip of a PEM certificate provider.
TLS_PEM_FILES = ("privateKey.pem", "certificateChain.pem", "trustedCertificates.pem")


@dataclass(frozen=True)
class StagingLayout:
    """Who writes where in the staging bucket: separate prefixes, so that IAM tells them apart.

    The operator writes `steps/` (step main, code, step references, step context), `bootstrap/`
    and `tls/`; nodes only read them. Nodes write `events/` (one JSON object per step) and the
    EMR log prefix, which lies outside `prefix`.
    """

    prefix: str

    @property
    def steps(self) -> str:
        return f"{self.prefix}/steps"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def bootstrap(self) -> str:
        return f"{self.prefix}/bootstrap"

    @property
    def tls(self) -> str:
        return f"{self.prefix}/tls"

    def step_key(self, run_id: str, step_key: str, filename: str) -> str:
        """An operator-written artifact of one step."""
        return f"{self.steps}/{run_id}/{step_key}/{filename}"

    def events_key(self, run_id: str, step_key: str) -> str:
        """The one object a step's driver writes: its events, as Dagster's JSON serialization."""
        return f"{self.events}/{run_id}/{step_key}/events.json"

    def bootstrap_key(self) -> str:
        return f"{self.bootstrap}/install_fruits_assets.sh"

    def tls_key(self, digest: str) -> str:
        return f"{self.tls}/certificates-{digest}.zip"

    def placeholders(self) -> dict[str, str]:
        """The values of the prefix placeholders in the IAM policy files."""
        return {
            "STEPS_PREFIX": self.steps,
            "EVENTS_PREFIX": self.events,
            "BOOTSTRAP_PREFIX": self.bootstrap,
            "TLS_PREFIX": self.tls,
        }


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
    in_transit_encryption: bool = True
    tls_certificates: str = ""  # a local zip of TLS_PEM_FILES, uploaded by `cluster create`

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> ClusterSpec:
        """Read a spec file (the packaged one by default); non-empty overrides win."""
        raw = tomllib.loads(_read_text(path, "cluster_spec.toml"))
        instances, roles, python = raw["instances"], raw["roles"], raw["python"]
        encryption = raw.get("encryption", {})
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
            "in_transit_encryption": bool(encryption.get("in_transit", True)),
            "tls_certificates": encryption.get("tls_certificates", ""),
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
        staging, logs = self.staging_prefix.strip("/"), self.log_prefix.strip("/")
        if not staging or not logs or _nested(staging, logs):
            raise ValueError(
                f"staging_prefix {staging!r} and log_prefix {logs!r} must be distinct, non-empty "
                "and not inside one another: nodes write logs, never step references"
            )

    def check_encryption(self) -> None:
        """What `cluster create` needs for in-transit encryption: certificates, or an opt-out."""
        if not self.in_transit_encryption:
            return
        if not self.tls_certificates:
            raise ValueError(
                "in-transit encryption needs TLS certificates: pass --tls-certificates "
                "certificates.zip (see the README, 'Encryption in transit'), or "
                "--no-in-transit-encryption to create a cluster whose nodes talk in plain text"
            )
        path = Path(self.tls_certificates)
        if not path.is_file():
            raise ValueError(f"TLS certificates {path}: no such file")
        try:
            with zipfile.ZipFile(path) as archive:
                missing = sorted(set(TLS_PEM_FILES) - set(archive.namelist()))
        except zipfile.BadZipFile:
            raise ValueError(f"TLS certificates {path}: not a zip file") from None
        if missing:
            raise ValueError(f"TLS certificates {path}: the zip lacks {', '.join(missing)}")

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

    @property
    def cluster_tags(self) -> dict[str, str]:
        """The spec's tags and the one that marks the cluster as this project's."""
        return {**self.tags, MANAGED_TAG[0]: MANAGED_TAG[1]}

    @property
    def layout(self) -> StagingLayout:
        return StagingLayout(self.staging_prefix.strip("/"))

    def bootstrap_key(self) -> str:
        return self.layout.bootstrap_key()

    def run_job_flow_request(self, security_configuration: str) -> dict[str, Any]:
        """The boto3 `run_job_flow` arguments: private, encrypted, self-terminating, tagged."""
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
                },
                # EMR 7 ships Delta Lake: this puts its jars on Spark's class path.
                {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}},
            ],
            "AutoTerminationPolicy": {"IdleTimeout": self.idle_timeout_seconds},
            "SecurityConfiguration": security_configuration,
            "ServiceRole": self.service_role,
            "JobFlowRole": self.instance_profile,
            "VisibleToAllUsers": True,
            "StepConcurrencyLevel": 1,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(self.cluster_tags.items())],
        }


def _group(name: str, role: str, instance_type: str, count: int) -> dict[str, Any]:
    return {
        "Name": name,
        "Market": "ON_DEMAND",
        "InstanceRole": role,
        "InstanceType": instance_type,
        "InstanceCount": count,
    }


def security_configuration(tls_certificates_uri: str | None) -> dict[str, Any]:
    """EMRFS writes to S3 encrypted at rest (SSE-S3); nodes talk TLS when given certificates."""
    # Local-disk encryption needs a customer KMS key of the user's: add it here if you have one.
    encryption: dict[str, Any] = {
        "EnableInTransitEncryption": tls_certificates_uri is not None,
        "EnableAtRestEncryption": True,
        "AtRestEncryptionConfiguration": {
            "S3EncryptionConfiguration": {"EncryptionMode": "SSE-S3"},
        },
    }
    if tls_certificates_uri is not None:
        encryption["InTransitEncryptionConfiguration"] = {
            "TLSCertificateConfiguration": {
                "CertificateProviderType": "PEM",
                "S3Object": tls_certificates_uri,
            }
        }
    return {"EncryptionConfiguration": encryption}


def security_configuration_name(configuration: dict[str, Any]) -> str:
    """Named after its content: EMR security configurations cannot change once created."""
    text = json.dumps(configuration, sort_keys=True)
    kind = "tls" if configuration["EncryptionConfiguration"]["EnableInTransitEncryption"] else "s3"
    return f"fruits-assets-{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _read_text(path: str | Path | None, packaged: str) -> str:
    """A user file, or the packaged default (read through importlib: the package may be zipped)."""
    if path:
        return Path(path).read_text()
    return resources.files("fruits_assets.emr").joinpath(packaged).read_text()
