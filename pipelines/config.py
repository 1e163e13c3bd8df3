"""Typed configuration: the platform profile and the use cases, loaded from ``config/``.

Every file is validated with pydantic at load. A bad file fails with a :class:`ConfigError` naming the file,
the field and what is expected, so a user can fix the YAML without reading this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file is missing or invalid; the message names the file, the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- platform


class DockerSettings(_Strict):
    """How tasks run with ``task_runtime: docker``: one container per task, started by Airflow's DockerOperator."""

    images: dict[str, str] = Field(
        default_factory=lambda: {
            "base": "mlops-base:{tag}",
            "spark": "mlops-spark:{tag}",
            "train": "mlops-train:{tag}",
        },
        description="Image per task kind (see pipelines.steps.STEP_KINDS); {tag} is replaced by image_tag",
    )
    image_tag: str = Field(default="dev", description="Tag of the images (MLOPS_IMAGE_TAG)")
    docker_url: str | None = Field(
        default=None, description="Docker engine (default: DOCKER_HOST, else the local socket)"
    )
    docker_conn_id: str | None = Field(default=None, description="Airflow connection to log in to a registry")
    network_mode: str | None = Field(
        default=None,
        description="Network of the task containers (MLOPS_DOCKER_NETWORK), e.g. host or a compose network",
    )
    gpus: bool = Field(
        default=False,
        description="The Docker host has NVIDIA GPUs: GPU steps request them (MLOPS_DOCKER_GPUS)",
    )
    host_home: str | None = Field(
        default=None,
        description="MLOPS_HOME as the Docker host sees it, when Airflow itself runs in a container",
    )
    user: str | None = Field(
        default=None,
        description="uid:gid of the task containers (default: the worker's when local paths are mounted)",
    )
    auto_remove: Literal["never", "success", "force"] = "success"
    force_pull: bool = False
    mem_limit: str | None = None
    environment: dict[str, str] = Field(
        default_factory=dict, description="More variables for every task container (no secrets)"
    )

    def image_for(self, kind: str) -> str:
        if kind not in self.images:
            raise ConfigError(
                f"docker.images has no image for task kind {kind!r}; known: {sorted(self.images)}"
            )
        return self.images[kind].replace("{tag}", self.image_tag)


class Profile(_Strict):
    """Where the lake, MLflow and Spark live, and how tasks run."""

    lake_uri: str = Field(description="Local folder (relative to MLOPS_HOME) or s3://bucket/prefix")
    mlflow_tracking_uri: str
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="Where runs store artifacts (folder or URI); unset: the tracking server's default "
        "(e.g. an MLflow server that proxies artifacts with --serve-artifacts)",
    )
    spark_master: str = "local[*]"
    spark_conf: dict[str, str] = Field(default_factory=dict)
    task_runtime: Literal["local", "subprocess", "docker"] = "local"
    s3_connection_id: str | None = Field(
        default=None, description="Airflow connection holding the S3 endpoint and credentials"
    )
    threads_per_task: int = Field(default=2, ge=1, description="Cap on BLAS/OpenMP/TF threads per task")
    docker: DockerSettings = Field(default_factory=lambda: DockerSettings())


class PlatformConfig(_Strict):
    default_profile: str = "local"
    profiles: dict[str, Profile]

    @model_validator(mode="after")
    def _default_exists(self) -> PlatformConfig:
        if self.default_profile not in self.profiles:
            raise ValueError(
                f"default_profile {self.default_profile!r} is not one of the profiles {sorted(self.profiles)}"
            )
        return self


# --------------------------------------------------------------------------------------------------- use case

ColumnType = Literal["int", "float", "string", "timestamp", "bool"]


class ColumnSpec(_Strict):
    type: ColumnType
    required: bool = Field(default=False, description="No nulls allowed")
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = Field(default=None, description="Allowed values (strings)")


RESERVED_COLUMNS = {"date", "_source_file"}


class SourceSpec(_Strict):
    """One kind of landed file: its name pattern, format and schema with expectations."""

    file_pattern: str = Field(description="glob on the file name, e.g. flights_*.csv")
    format: Literal["csv", "parquet"] = "csv"
    encoding: str = "utf-8"
    null_values: list[str] = Field(default_factory=lambda: ["", "NA"])
    columns: dict[str, ColumnSpec]
    min_rows: int = Field(default=1, ge=0, description="A file with fewer data rows is rejected")
    kind: Literal["events", "reference"] = Field(
        default="events",
        description="events: partitioned by landing date; reference: slowly changing table, newest snapshot "
        "committed on or before the logical date is used",
    )

    @field_validator("columns")
    @classmethod
    def _non_empty(cls, value: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        if not value:
            raise ValueError("a source needs at least one column")
        reserved = sorted(set(value) & RESERVED_COLUMNS)
        if reserved:
            raise ValueError(
                f"column name(s) {reserved} are reserved by the lake (date: the partition column of every table; "
                "_source_file: the landed file of each raw row); rename the column in the files, or read it "
                "under another name"
            )
        return value


class TransformSpec(_Strict):
    name: str = Field(description="Name in pipelines.transforms.TRANSFORMS")
    params: dict[str, Any] = Field(default_factory=dict)


class FeatureSpec(_Strict):
    primary_source: str
    event_time: str = Field(description="Timestamp column of the primary source used for time-aware features")
    keys: list[str] = Field(description="Columns that identify one row in the feature table")
    transforms: list[TransformSpec] = Field(default_factory=list)
    numeric: list[str]
    categorical: list[str] = Field(default_factory=list)
    lookback_days: int = Field(default=28, ge=0, description="Raw history needed by time-aware transforms")


class TargetSpec(_Strict):
    column: str = Field(description="Label column written by the features step")
    source_column: str
    kind: Literal["above_threshold"] = "above_threshold"
    threshold: float


class SplitSpec(_Strict):
    train_window_days: int = Field(gt=0)
    holdout_days: int = Field(gt=0)
    max_train_rows: int | None = Field(default=None, gt=0)
    seed: int = 42

    @model_validator(mode="after")
    def _holdout_fits(self) -> SplitSpec:
        if self.holdout_days >= self.train_window_days:
            raise ValueError("holdout_days must be smaller than train_window_days")
        return self


class CandidateSpec(_Strict):
    name: str
    family: Literal["logistic_regression", "hist_gradient_boosting", "keras_mlp"]
    params: dict[str, Any] = Field(default_factory=dict)
    gpu: bool = False


Metric = Literal["roc_auc", "pr_auc", "log_loss", "brier"]
HIGHER_IS_BETTER: dict[str, bool] = {"roc_auc": True, "pr_auc": True, "log_loss": False, "brier": False}


class Bound(_Strict):
    min: float | None = None
    max: float | None = None


class ChangeBound(_Strict):
    min_delta: float = Field(
        default=0.0,
        description="Candidate must beat the champion by at least this much (in the better direction)",
    )


class FairnessSpec(_Strict):
    metric: Metric = "roc_auc"
    min_slice_rows: int = Field(default=200, ge=1)
    min_value: float | None = Field(default=None, description="Worst slice must reach this value")
    max_gap: float | None = Field(default=None, description="Best minus worst slice may be at most this")


class GateSpec(_Strict):
    primary_metric: Metric = "roc_auc"
    absolute: dict[Metric, Bound] = Field(default_factory=dict)
    change: dict[Metric, ChangeBound] = Field(default_factory=dict)
    fairness: FairnessSpec | None = None


class ScheduleSpec(_Strict):
    ingest: str | None = Field(default="@daily", description="How often the arrival sensor run starts")
    score: str = "0 3 * * *"
    train_monthly: str = "0 4 1 * *"
    train_nightly: str | None = Field(
        default="0 5 2-31 * *", description="Nightly refresh; skip the day the monthly retraining runs"
    )
    maintenance: str | None = Field(
        default="0 6 * * 0", description="Lake maintenance (vacuum, log cleanup keeping versions models name)"
    )
    start_date: str = "2013-01-01"
    score_catch_up_days: int = Field(default=35, ge=1)


class DriftSpec(_Strict):
    psi_threshold: float = 0.2
    features: list[str] = Field(default_factory=list)


class UseCase(_Strict):
    name: str
    description: str = ""
    owner: str = "ml-platform"
    tags: list[str] = Field(default_factory=list)
    sources: dict[str, SourceSpec]
    features: FeatureSpec
    target: TargetSpec
    split: SplitSpec
    candidates: list[CandidateSpec]
    metrics: list[Metric] = Field(default_factory=lambda: ["roc_auc", "pr_auc", "log_loss", "brier"])
    gate: GateSpec = Field(default_factory=GateSpec)
    slices: list[str] = Field(default_factory=list)
    schedules: ScheduleSpec = Field(default_factory=ScheduleSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)

    @model_validator(mode="after")
    def _cross_checks(self) -> UseCase:
        if self.features.primary_source not in self.sources:
            raise ValueError(
                f"features.primary_source {self.features.primary_source!r} is not one of the sources "
                f"{sorted(self.sources)}"
            )
        names = [c.name for c in self.candidates]
        if not names:
            raise ValueError("candidates: at least one candidate model is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"candidates: names must be unique, got {names}")
        return self

    def candidate(self, name: str) -> CandidateSpec:
        for spec in self.candidates:
            if spec.name == name:
                return spec
        raise ConfigError(
            f"use case {self.name!r} has no candidate {name!r}; known: {[c.name for c in self.candidates]}"
        )

    @property
    def config_hash(self) -> str:
        """Stable hash of the validated use case, recorded on every model version."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- loading


def config_dir() -> Path:
    return Path(os.environ.get("MLOPS_CONFIG_DIR", REPO_ROOT / "config"))


def mlops_home() -> Path:
    """Root of the embedded default state (Airflow home, MLflow, local lake): ``$MLOPS_HOME`` or ``./var``."""
    return Path(os.environ.get("MLOPS_HOME", REPO_ROOT / "var")).resolve()


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({error.error_count()} problem(s))"]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "<top level>"
        got = item.get("input")
        got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  - field '{field}': {item['msg']}{got_text}")
    lines.append("  Fix the field(s) above; see docs/configuration.md for every field.")
    return "\n".join(lines)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_model(path: Path, model: type[BaseModel]) -> Any:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None


@lru_cache(maxsize=8)
def _load_platform(path: str) -> PlatformConfig:
    return load_model(Path(path), PlatformConfig)


# profile field -> environment variable that overrides it
PROFILE_ENV_OVERRIDES = {
    "lake_uri": "MLOPS_LAKE_URI",
    "task_runtime": "MLOPS_TASK_RUNTIME",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_artifact_root": "MLOPS_MLFLOW_ARTIFACT_ROOT",
    "spark_master": "MLOPS_SPARK_MASTER",
}
DOCKER_ENV_OVERRIDES = {
    "image_tag": "MLOPS_IMAGE_TAG",
    "network_mode": "MLOPS_DOCKER_NETWORK",
    "gpus": "MLOPS_DOCKER_GPUS",
    "host_home": "MLOPS_DOCKER_HOST_HOME",
    "auto_remove": "MLOPS_DOCKER_AUTO_REMOVE",
}


def _apply_env_overrides(values: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    for field, env in overrides.items():
        if os.environ.get(env):
            values[field] = os.environ[env]
    return values


def load_profile(name: str | None = None) -> Profile:
    """The active platform profile (``MLOPS_PROFILE`` or the file's default) with environment overrides.

    Paths are resolved against ``MLOPS_HOME``; ``MLOPS_LAKE_URI``, ``MLOPS_TASK_RUNTIME``,
    ``MLFLOW_TRACKING_URI``, ``MLOPS_MLFLOW_ARTIFACT_ROOT`` and ``MLOPS_SPARK_MASTER`` override the file, and
    ``MLOPS_IMAGE_TAG``, ``MLOPS_DOCKER_NETWORK``, ``MLOPS_DOCKER_GPUS``, ``MLOPS_DOCKER_HOST_HOME`` and
    ``MLOPS_DOCKER_AUTO_REMOVE`` the ``docker`` section.
    """
    path = config_dir() / "platform.yaml"
    platform = _load_platform(str(path))
    name = name or os.environ.get("MLOPS_PROFILE") or platform.default_profile
    if name not in platform.profiles:
        raise ConfigError(
            f"{path}: profile {name!r} (from MLOPS_PROFILE) is not defined; known: {sorted(platform.profiles)}"
        )
    profile = platform.profiles[name]
    home = str(mlops_home())
    values = {k: (v.replace("${MLOPS_HOME}", home) if isinstance(v, str) else v) for k, v in profile}
    _apply_env_overrides(values, PROFILE_ENV_OVERRIDES)
    values["docker"] = _apply_env_overrides(dict(values.get("docker") or {}), DOCKER_ENV_OVERRIDES)
    try:
        return Profile.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None


def usecase_path(name: str) -> Path:
    return config_dir() / "usecases" / f"{name}.yaml"


def list_usecases() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "usecases").glob("*.yaml"))


@lru_cache(maxsize=32)
def _load_usecase(path: str) -> UseCase:
    return load_model(Path(path), UseCase)


def load_usecase(name: str) -> UseCase:
    """Load and validate ``config/usecases/<name>.yaml``."""
    path = usecase_path(name)
    if not path.is_file():
        raise ConfigError(f"{path}: no such use case {name!r}; known: {list_usecases()}")
    usecase = _load_usecase(str(path))
    if usecase.name != name:
        raise ConfigError(f"{path}: field 'name' is {usecase.name!r} but the file is named {name!r}.yaml")
    return usecase
