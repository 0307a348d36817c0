"""Every setting of fruits_assets: its type, default, environment variable and where it travels.

The CLI, the Dagster definitions (and so the UI, sensors and backfills), the EMR launcher and the
tests all read settings through `FruitsSettings`; nothing else reads `FRUITS_*` variables.
Precedence: command-line options > `FRUITS_*` environment variables > `fruits.toml` in the working
directory (or the file `FRUITS_SETTINGS_FILE` names) > the defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ENV_PREFIX = "FRUITS_"
SETTINGS_FILE = "fruits.toml"
SETTINGS_FILE_VARIABLE = "FRUITS_SETTINGS_FILE"
CACHE_ROOT = Path.home() / ".cache" / "fruits_assets"
DEMO_IMAGES = str(CACHE_ROOT / "demo_images")


def _local(description: str) -> Any:
    """A setting that names something on this machine: never shipped to EMR steps."""
    return {"description": description, "json_schema_extra": {"forward": False}}


class FruitsSettings(BaseModel):
    """The settings of one run (or of the UI's code location), validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: Literal["local", "emr"] = Field("local", description="local Spark, or EMR steps")
    images: str = Field(DEMO_IMAGES, description="input root: <root>/<class>/<image>")
    output: str = Field("fruits_output", description="output root of every asset")
    weights: str = Field("imagenet", description="imagenet | random | .h5 path | s3:// URI")
    allow_random_fallback: bool = Field(
        False, description="demo only: random weights when ImageNet can't be downloaded"
    )
    precision: Literal["float32", "int8"] = Field(
        "float32",
        description="the featurizer's arithmetic: float32 (Keras's features) or int8 (faster on "
        "CPUs with int8 dot products, such as AVX-512 VNNI; different features)",
    )
    variance: float = Field(0.99, gt=0, le=1, description="PCA target explained variance")
    accuracy_floor: float = Field(0.9, ge=0, le=1, description="classifier top-1 floor (WARN)")
    classifier_max_iter: int = Field(100, ge=1, description="logistic regression iterations")
    classifier_warm_start_iter: int = Field(
        5, ge=0, description="iterations of a refit from the published classifier (0: from zero)"
    )
    lock_wait_seconds: float = Field(
        1800.0, ge=0, description="how long a run launched by the UI waits for the output root"
    )
    # Local Spark and caches: machine-local.
    spark_cores: int = Field(
        0,
        ge=0,
        **_local("local Spark cores (0: the CPUs this process may use, container limits included)"),
    )
    driver_memory: str = Field("4g", **_local("local Spark driver heap"))
    spark_ui: bool = Field(False, **_local("serve Spark's own web UI"))
    spark_master: str = Field("", **_local("a spark:// master instead of local[N]"))
    spark_codegen: bool = Field(
        False, **_local("compile Spark SQL plans to JVM bytecode (pays off on big tables only)")
    )
    spark_jit: Literal["ml", "all"] = Field(
        "ml",
        **_local(
            "JVM code a run's local Spark compiles with the optimizing compiler (C2): Spark ML's "
            "(the rest with the quick one; a run without the classifier: none) or all"
        ),
    )
    class_archive: bool = Field(
        True,
        **_local("local Spark JVMs map the class archive `fruits jvm-archive` recorded, if any"),
    )
    ui_warm_spark: bool = Field(
        True, **_local("`fruits ui` keeps one warm Spark JVM for the local runs it launches")
    )
    cache_dir: str = Field(
        str(CACHE_ROOT), **_local("downloaded weights, converted models, the class archive")
    )
    jars_dir: str = Field(str(CACHE_ROOT / "jars"), **_local("S3A and Delta jars"))
    remote_step: bool = Field(False, **_local("set by the EMR step main: the step of a run"))
    failpoint: str = Field("", description="fault-injection tests only: <asset>:pause|exit")
    # EMR (FRUITS_ENV=emr).
    emr_cluster_id: str = Field("", description="the cluster, j-…")
    emr_staging_bucket: str = Field("", description="private bucket for steps and logs")
    emr_region: str = Field("", description="default: the cluster spec's")
    emr_spec: str = Field("", description="a cluster spec TOML of yours")
    emr_poll_seconds: float = Field(15.0, gt=0, description="step status poll interval")
    emr_log_wait_seconds: float = Field(330.0, ge=0, description="wait for a failed step's logs")

    @field_validator("images", "output")
    @classmethod
    def _normalized(cls, uri: str) -> str:
        from fruits_assets.storage.filesystem import normalize_uri

        return normalize_uri(uri)

    @property
    def demo(self) -> bool:
        return self.images == DEMO_IMAGES

    @property
    def uses_s3(self) -> bool:
        """Local Spark then needs Hadoop's S3A."""
        return any(uri.startswith("s3") for uri in (self.images, self.output, self.weights))

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> FruitsSettings:
        """Defaults < settings file < `FRUITS_*` variables < non-None `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = dict(_settings_file(environ))
        for name in cls.model_fields:
            raw = environ.get(cls.env_name(name))
            if raw not in (None, ""):
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self, forwarded_only: bool = False) -> dict[str, str]:
        """The `FRUITS_*` variables that recreate these settings (`forwarded_only`: for EMR)."""
        env = {}
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra or {}
            if forwarded_only and isinstance(extra, dict) and extra.get("forward") is False:
                continue
            value = getattr(self, name)
            env[self.env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
        return env


def _settings_file(environ: Mapping[str, str]) -> dict[str, Any]:
    """The `[fruits]` table of fruits.toml (or the file FRUITS_SETTINGS_FILE names), if any."""
    named = environ.get(SETTINGS_FILE_VARIABLE)
    path = Path(named) if named else Path.cwd() / SETTINGS_FILE
    if not path.is_file():
        if named:
            raise FileNotFoundError(f"{SETTINGS_FILE_VARIABLE}={named}: no such file")
        return {}
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    table = data.get("fruits", data)
    unknown = sorted(set(table) - set(FruitsSettings.model_fields))
    if unknown:
        raise ValueError(
            f"{path}: unknown settings {unknown}; known: {', '.join(FruitsSettings.model_fields)}"
        )
    return table
