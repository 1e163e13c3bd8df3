"""Typed configuration: the platform profile and the use cases, loaded from ``config/``.

Every file is validated with pydantic at load. A bad file fails with a :class:`ConfigError` naming the file,
the field and what is expected, so a user can fix the YAML without reading this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


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
    alerts_connection_id: str | None = Field(
        default=None,
        description="Airflow connection the alerts of every use case go to unless its `alerts.connection_id` "
        "names another (http/https: a JSON POST; smtp: an e-mail); unset: the task log only",
    )
    spark_direct_read_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="The features step's Spark executors read a raw table's Parquet files themselves (the file "
        "list and partition values from the Delta log) when the partitions a job needs hold at least this many "
        "bytes, the lake is local and the master is local[...]; smaller inputs (and S3 lakes) reach Spark as "
        "Arrow through the driver. 0: always read directly where possible",
    )
    spark_direct_write_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="The features step's Spark executors write an output (features, online snapshot, labels) as "
        "Parquet under its table, committed as it is, when its rows would hold at least this many bytes (8 a "
        "value), the lake is local and the master is local[...]; smaller outputs come back to the driver as "
        "Arrow (faster for them). 0: always write directly where possible",
    )
    step_timeouts: dict[Literal["base", "spark", "train"], PositiveFloat] = Field(
        default_factory=lambda: {"base": 3600.0, "spark": 7200.0, "train": 14400.0},
        description="seconds a step task of each kind (pipelines.steps.STEP_KINDS) may run before Airflow fails it "
        "(its execution_timeout); the step's process or container is stopped with it. A kind not named: no limit",
    )
    approval: Literal["none", "required"] = Field(
        default="none",
        description="The default of every use case's `approval.mode` (MLOPS_APPROVAL): required: a passed gate "
        "waits for a person's approval before `champion` moves",
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="Where people open the MLflow UI (MLOPS_MLFLOW_UI_URL), for links in approvals; unset: the "
        "tracking URI when it is http(s)",
    )
    docker: DockerSettings = Field(default_factory=lambda: DockerSettings())

    def step_timeout(self, kind: str) -> float | None:
        """The execution timeout of a step task of ``kind`` in seconds, or None (no limit)."""
        value = self.step_timeouts.get(kind)  # type: ignore[call-overload]
        return None if value is None else float(value)


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
    known_with_outcome: bool = Field(
        default=False,
        description="The value is known only once the outcome is (e.g. a flight's departure delay in the file "
        "that also carries its arrival delay): never a model input, nor anything a transform makes from it",
    )


PREDICTION_TIME = "prediction_time"  # features and predictions: when the event is (or was) predicted, UTC
OUTCOME_KNOWN_AT = "outcome_known_at"  # features: when the event's outcome became known, UTC (NULL: not yet)
RESERVED_COLUMNS = {"date", "_source_file", "_arrived_at", PREDICTION_TIME, OUTCOME_KNOWN_AT}


class SourceSpec(_Strict):
    """One kind of landed file: its name pattern, format and schema with expectations."""

    file_pattern: str = Field(description="glob on the file name, e.g. flights_*.csv")
    format: Literal["csv", "parquet"] = "csv"
    encoding: str = "utf-8"
    null_values: list[str] = Field(default_factory=lambda: ["", "NA"])
    columns: dict[str, ColumnSpec]
    min_rows: int = Field(default=1, ge=0, description="A file with fewer data rows is rejected")
    event_time: str | None = Field(
        default=None,
        description="events sources: timestamp column whose local date (time.timezone) is each row's date; a "
        "file with rows of another date than its landing date is quarantined",
    )
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
                f"column name(s) {reserved} are reserved (date: the partition column of every table; "
                "_source_file, _arrived_at: the landed file of each raw row and when it arrived; "
                "prediction_time, outcome_known_at: the time "
                "columns of the features); rename the column in the files (e.g. event_date)"
            )
        return value

    @model_validator(mode="after")
    def _event_time_is_a_timestamp(self) -> SourceSpec:
        if self.event_time is not None:
            column = self.columns.get(self.event_time)
            if column is None or column.type != "timestamp":
                raise ValueError(
                    f"event_time {self.event_time!r} must be one of this source's timestamp columns: "
                    f"{sorted(n for n, c in self.columns.items() if c.type == 'timestamp')}"
                )
        return self


class TransformSpec(_Strict):
    name: str = Field(description="Name in pipelines.features.transforms.TRANSFORMS")
    params: dict[str, Any] = Field(default_factory=dict)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, field: str) -> int:
    """Seconds in a duration such as ``90m``, ``6h`` or ``2d``; ValueError names ``field`` and the format."""
    value = str(text).strip()
    unit = value[-1:].lower()
    if unit not in _DURATION_UNITS or not value[:-1].isdigit():
        raise ValueError(f"{field}: expected a duration such as 90m, 6h or 2d, got {text!r}")
    return int(value[:-1]) * _DURATION_UNITS[unit]


class PredictionTimeSpec(_Strict):
    """When the prediction for an event is made, one of three ways:

    - daily (the default): ``days_before`` the event's local date at the local clock time ``at``; every event of
      a day is predicted at the same moment, and batch scoring makes the predictions then;
    - ``lead``: each event at its own time minus a duration (e.g. ``2h`` before a departure);
    - ``column``: each event at the time in a timestamp column of the primary source (e.g. when it was booked),
      at most ``max_lead`` before the event (a row outside that fails the features step).

    With ``lead`` or ``column`` every event gets its own prediction time and its features are what had arrived
    by then; the day's features are built, and its events batch-scored (marked late: after their prediction
    times), once the last prediction time of the day has passed (:meth:`TimeSpec.prediction_time_of`)."""

    days_before: int = Field(default=1, ge=0, description="daily: days before the event's local date")
    at: str = Field(default="18:00", description="daily: local clock time HH:MM of the prediction")
    lead: str | None = Field(
        default=None, description="per event: the event time minus this duration (e.g. 2h, 90m, 1d)"
    )
    column: str | None = Field(
        default=None, description="per event: a timestamp column (UTC) of the primary source, e.g. booked_at"
    )
    max_lead: str | None = Field(
        default=None,
        description="with column: how long before its event a prediction time may lie (e.g. 30d); bounds the "
        "history the features step reads",
    )

    @field_validator("at")
    @classmethod
    def _clock(cls, value: str) -> str:
        hours, _, minutes = value.partition(":")
        if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
            raise ValueError(f"expected a local clock time HH:MM such as 18:00, got {value!r}")
        return f"{int(hours):02d}:{int(minutes):02d}"

    @field_validator("lead", "max_lead")
    @classmethod
    def _duration(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            parse_duration(value, info.field_name)
        return value

    @model_validator(mode="after")
    def _one_way(self) -> PredictionTimeSpec:
        if self.lead is not None and self.column is not None:
            raise ValueError(
                "set lead (the event time minus a duration) or column (a time per event), not both"
            )
        daily = sorted({"days_before", "at"} & self.model_fields_set)
        if self.per_event and daily:
            raise ValueError(
                f"{daily} describe a daily prediction time; with lead or column every event has its own: "
                "remove them"
            )
        if self.column is not None and self.max_lead is None:
            raise ValueError(
                "column needs max_lead: how long before its event a prediction time may lie (e.g. 30d)"
            )
        if self.max_lead is not None and self.column is None:
            raise ValueError("max_lead goes with column; with lead the bound is the lead itself")
        return self

    @property
    def per_event(self) -> bool:
        """Every event has its own prediction time (``lead`` or ``column``)."""
        return self.lead is not None or self.column is not None

    @property
    def lead_seconds(self) -> int:
        """The shortest time between a prediction and its event: ``lead``, else 0 (a column's time may be the
        event's own)."""
        return parse_duration(self.lead, "lead") if self.lead is not None else 0

    @property
    def max_lead_seconds(self) -> int:
        """The longest time between a prediction and its event (per-event modes)."""
        if self.max_lead is not None:
            return parse_duration(self.max_lead, "max_lead")
        return self.lead_seconds

    @property
    def day_offset(self) -> int:
        """How many days the event date lies after the local date of the day's (last) prediction time: the score
        run of date D predicts the events of D + ``day_offset`` (-1 when the last prediction is at midnight)."""
        if not self.per_event:
            return self.days_before
        return -(-self.lead_seconds // 86400) - 1

    @property
    def minutes_after_midnight(self) -> int:
        """The local clock time (minutes) of the day's (last) prediction time: ``at``, or midnight minus the
        lead."""
        if self.per_event:
            return (-self.lead_seconds // 60) % 1440
        hours, minutes = self.at.split(":")
        return int(hours) * 60 + int(minutes)

    @property
    def clock(self) -> str:
        """:attr:`minutes_after_midnight` as HH:MM."""
        return f"{self.minutes_after_midnight // 60:02d}:{self.minutes_after_midnight % 60:02d}"

    @property
    def days_back(self) -> int:
        """Whole days between an event's local date and the local date of its earliest possible prediction
        time."""
        if not self.per_event:
            return self.days_before
        return -(-self.max_lead_seconds // 86400)


class OutcomeSpec(_Strict):
    """Where the label comes from and when it becomes known."""

    source: str | None = Field(
        default=None, description="Source carrying the outcome (default: the primary source itself)"
    )
    keys: list[str] = Field(
        default_factory=list,
        description="Columns joining an outcome row to its event (needed when the outcome is another source)",
    )
    label_delay: str = Field(default="0h", description="The outcome is known this long after the event time")

    @field_validator("label_delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        parse_duration(value, "label_delay")
        return value

    @property
    def delay_seconds(self) -> int:
        return parse_duration(self.label_delay, "label_delay")


class TimeSpec(_Strict):
    """The time semantics of a use case: what an event's time is, when it is predicted, when its outcome is known."""

    timezone: str = Field(
        default="UTC", description="IANA time zone of the local calendar (dates, clock times)"
    )
    event_time: str = Field(
        description="Timestamp column (UTC) of the primary source: when the event happens"
    )
    prediction_time: PredictionTimeSpec = Field(default_factory=PredictionTimeSpec)
    outcome: OutcomeSpec = Field(default_factory=OutcomeSpec)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'UTC' or 'America/New_York'"
            ) from None
        return value

    def prediction_time_of(self, event_date: date) -> datetime:
        """The prediction time (UTC) of the events whose local date is ``event_date``: the daily one, or, with
        a per-event prediction time, the latest any of them can have (the day's end minus the lead), by which
        every one of them has been predicted."""
        from zoneinfo import ZoneInfo

        spec = self.prediction_time
        if spec.per_event:
            return self.local_midnight(event_date + timedelta(days=1)) - timedelta(seconds=spec.lead_seconds)
        local = datetime.combine(
            event_date - timedelta(days=spec.days_before),
            time(spec.minutes_after_midnight // 60, spec.minutes_after_midnight % 60),
            tzinfo=ZoneInfo(self.timezone),
        )
        return local.astimezone(UTC)

    def predicted_through(self, day: date) -> date:
        """The last event date whose (last) prediction time falls on ``day``: the schedule up to that date is
        ingested, featurized and scored on ``day``."""
        return day + timedelta(days=self.prediction_time.day_offset)

    def ingested_through(self, day: date) -> date:
        """The last landing date the ingest run of ``day`` takes: the day's own files and the schedule predicted
        that day."""
        return max(day, self.predicted_through(day))

    def local_midnight(self, day: date) -> datetime:
        """Start of the local calendar day ``day`` (UTC)."""
        from zoneinfo import ZoneInfo

        return datetime.combine(day, time(0, 0), tzinfo=ZoneInfo(self.timezone)).astimezone(UTC)

    @property
    def lookback_needed_days(self) -> int:
        """Whole days between an event's local date and the earliest outcome a prediction may count: the days
        back to its earliest prediction time, plus the label delay rounded up."""
        return self.prediction_time.days_back + -(-self.outcome.delay_seconds // 86400)


class FeatureSpec(_Strict):
    primary_source: str
    keys: list[str] = Field(description="Columns that identify one row in the feature table")
    transforms: list[TransformSpec] = Field(default_factory=list)
    numeric: list[str]
    categorical: list[str] = Field(default_factory=list)
    lookback_days: int = Field(default=28, ge=0, description="Raw history needed by time-aware transforms")


class TargetSpec(_Strict):
    """The binary label: 1 when the outcome's ``source_column`` is above ``threshold`` (numeric column), is one of
    ``positive_values`` (any column, e.g. ``[YES]``), or is true (a bool column)."""

    column: str = Field(description="Label column written by the features step")
    source_column: str = Field(description="Column of the outcome source the label is computed from")
    kind: Literal["above_threshold", "positive_values", "boolean", "regression"] = "above_threshold"
    threshold: float | None = Field(
        default=None, description="kind above_threshold: positive when value > it"
    )
    positive_values: list[str | int | float | bool] | None = Field(
        default=None,
        description="kind positive_values: the values meaning positive (1); any other value is 0",
    )
    transform: Literal["none", "log1p"] = Field(
        default="none",
        description="kind regression: fit on log1p(value) and predict expm1 of the model's output (for positive, "
        "skewed values such as prices); metrics are always in the original units",
    )
    missing_outcome: Literal["positive", "negative", "drop"] = Field(
        default="drop",
        description="Label of an event whose outcome arrived without a value (e.g. a cancelled flight): "
        "positive (1), negative (0) or drop (no label, not trained on)",
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> TargetSpec:
        given = {"threshold": self.threshold is not None, "positive_values": self.positive_values is not None}
        needed = {
            "above_threshold": "threshold",
            "positive_values": "positive_values",
            "boolean": None,
            "regression": None,
        }[self.kind]
        if self.kind == "regression" and self.missing_outcome != "drop":
            raise ValueError(
                "target.missing_outcome must be drop for kind regression: a missing value has no number to learn"
            )
        if self.kind != "regression" and self.transform != "none":
            raise ValueError(
                f"target.transform applies to kind regression only, not {self.kind!r}; remove it"
            )
        if needed is not None and not given[needed]:
            raise ValueError(f"target.kind {self.kind!r} needs target.{needed}")
        if needed == "positive_values" and not self.positive_values:
            raise ValueError("target.positive_values must list at least one value")
        extra = [name for name, present in given.items() if present and name != needed]
        if extra:
            kind_of = {"threshold": "above_threshold", "positive_values": "positive_values"}[extra[0]]
            raise ValueError(
                f"target.{extra[0]} does not apply to target.kind {self.kind!r}; remove it, or set "
                f"target.kind: {kind_of}"
            )
        return self


class SplitSpec(_Strict):
    train_window_days: int = Field(gt=0)
    holdout_days: int = Field(gt=0)
    max_train_rows: int | None = Field(default=None, gt=0)
    seed: int = 42
    min_days_share: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Each part of the training window (train, validation, holdout) needs at least this share of "
        "its expected days as committed feature partitions, else train fails naming the missing days. Expected "
        "days count from the features table's first partition (a window reaching back before the first data is "
        "short by design). The default 0.8 lets a 7-day part miss one day (a quarantined file)",
    )
    min_labelled_share: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Each part of the training window needs at least this share of labelled events among those "
        "whose outcome is due before the training date (event time + time.outcome.label_delay), else train "
        "fails; the events whose outcome never arrived are counted in the train result (unlabelled_events)",
    )

    @model_validator(mode="after")
    def _holdout_fits(self) -> SplitSpec:
        if self.holdout_days >= self.train_window_days:
            raise ValueError("holdout_days must be smaller than train_window_days")
        return self


class CostSpec(_Strict):
    false_positive: float = Field(gt=0, description="Cost of acting on an event that turns out negative")
    false_negative: float = Field(gt=0, description="Cost of missing an event that turns out positive")


class DecisionSpec(_Strict):
    """How a probability becomes a decision (predicted positive when probability >= the threshold).

    ``rule: fixed`` uses ``threshold``; the other rules choose the threshold of each candidate on its
    **validation window**, the last ``validation_days`` days before the holdout, which the candidate is not fitted
    on: ``best_f1`` (highest F1), ``min_precision`` (the highest recall with precision >= ``target``),
    ``min_recall`` (the highest precision with recall >= ``target``), ``min_cost`` (the lowest
    ``costs.false_positive`` x FP + ``costs.false_negative`` x FN). The candidate is then refitted on train +
    validation, and the threshold moves to the refit's own scores (``pipelines.steps.train.registered_decision``).
    The threshold is recorded with the model (its MLflow metadata, params and version tags, with
    ``threshold_source``) and used by every scorer.
    """

    rule: Literal["fixed", "best_f1", "min_precision", "min_recall", "min_cost"] = "best_f1"
    threshold: float | None = Field(default=None, gt=0, lt=1, description="rule fixed: the threshold")
    target: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="rule min_precision / min_recall: the precision or recall to reach",
    )
    costs: CostSpec | None = Field(default=None, description="rule min_cost: the cost of each kind of error")
    validation_days: int = Field(
        default=7,
        ge=1,
        description="rules other than fixed: days before the holdout the threshold is chosen on",
    )

    @model_validator(mode="after")
    def _rule_fields(self) -> DecisionSpec:
        needed = {
            "fixed": "threshold",
            "min_precision": "target",
            "min_recall": "target",
            "min_cost": "costs",
        }
        field = needed.get(self.rule)
        if field is not None and getattr(self, field) is None:
            raise ValueError(f"decision.rule {self.rule!r} needs decision.{field}")
        extra = [f for f in ("threshold", "target", "costs") if f != field and getattr(self, f) is not None]
        if extra:
            raise ValueError(f"decision.{extra[0]} does not apply to decision.rule {self.rule!r}; remove it")
        return self

    @property
    def uses_validation(self) -> bool:
        """Whether the threshold is chosen on a validation window (every rule but fixed)."""
        return self.rule != "fixed"


class CandidateSpec(_Strict):
    name: str
    family: Literal["logistic_regression", "ridge", "hist_gradient_boosting", "keras_mlp"]
    params: dict[str, Any] = Field(default_factory=dict)
    gpu: bool = False


Metric = Literal["roc_auc", "pr_auc", "log_loss", "brier", "rmse", "mae", "r2", "mape"]
HIGHER_IS_BETTER: dict[str, bool] = {
    "roc_auc": True,
    "pr_auc": True,
    "log_loss": False,
    "brier": False,
    "rmse": False,
    "mae": False,
    "r2": True,
    "mape": False,
}
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("roc_auc", "pr_auc", "log_loss", "brier"),
    "regression": ("rmse", "mae", "r2", "mape"),
}
# defaults of a use case's task when its file does not say (metrics, gate.primary_metric)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"metrics": list(TASK_METRICS["classification"]), "primary_metric": "roc_auc"},
    "regression": {"metrics": ["rmse", "mae", "r2"], "primary_metric": "rmse"},
}
TASK_FAMILIES: dict[str, tuple[str, ...]] = {
    "classification": ("logistic_regression", "hist_gradient_boosting", "keras_mlp"),
    "regression": ("ridge", "hist_gradient_boosting", "keras_mlp"),
}


class Bound(_Strict):
    min: float | None = None
    max: float | None = None


class ChangeBound(_Strict):
    min_delta: float = Field(
        default=0.0,
        description="Candidate must beat the champion by at least this much (in the better direction)",
    )


class SliceGateSpec(_Strict):
    """Robustness over the ``slices`` columns (carrier, region, ...): the worst slice and the spread of slices."""

    metric: Metric = "roc_auc"
    min_slice_rows: int = Field(default=200, ge=1)
    min_slice_positives: int = Field(
        default=30,
        ge=0,
        description="classification: a slice with fewer positives, or fewer negatives (or fewer rows than "
        "min_slice_rows), is gated on its bootstrap interval only (its point value is noise: a 515-row group with "
        "3 positives failed every model); one with no interval is shown and named as not gated",
    )
    min_value: float | None = Field(default=None, description="every gated slice must reach this value")
    max_gap: float | None = Field(default=None, description="Best minus worst slice may be at most this")


class FairnessBounds(_Strict):
    """Thresholds of one sensitive attribute's groups (any may be left out)."""

    min_value: float | None = Field(default=None, description="every gated group's metric must reach this")
    max_gap: float | None = Field(default=None, description="best minus worst group may be at most this")
    min_ratio: float | None = Field(
        default=None, gt=0, le=1, description="worst over best group (the better direction) at least this"
    )
    max_worst_drop: float | None = Field(
        default=None,
        ge=0,
        description="no group may be more than this much worse than the same group under the champion",
    )
    max_tpr_gap: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="classification: largest minus smallest group true-positive rate at the decision threshold "
        "(a part of fairlearn's equalized_odds_difference) at most this",
    )
    max_fpr_gap: float | None = Field(
        default=None, ge=0, le=1, description="classification: the same for the false-positive rate"
    )
    max_selection_rate_gap: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="classification: the same for the selection rate (fairlearn's demographic_parity_difference)",
    )


class FairnessSpec(FairnessBounds):
    """Fairness over ``sensitive_attributes`` (fairlearn ``MetricFrame`` by group), with bootstrap intervals.

    A group with fewer than ``min_group_rows`` rows or, for a classification, fewer than ``min_group_positives``
    positives or negatives is gated on its bootstrap interval (it fails only when the interval's favourable end
    fails); a group with no interval at all is shown and named as not gated. The bounds apply to every attribute
    unless ``attributes`` overrides them for one. ``max_calibration_error`` bounds the candidate's expected
    calibration error (classification)."""

    metric: Metric = "roc_auc"
    min_group_rows: int = Field(default=100, ge=1)
    min_group_positives: int = Field(
        default=30,
        ge=0,
        description="classification: positives and negatives a group needs to be judged on its value (not rows: "
        "a 515-row group with 3 positives failed every model on a public dataset); a smaller group is judged on "
        "its interval",
    )
    max_calibration_error: float | None = Field(default=None, gt=0, le=1)
    attributes: dict[str, FairnessBounds] = Field(
        default_factory=dict, description="per sensitive attribute: bounds replacing the ones above"
    )

    def bounds(self, attribute: str) -> FairnessBounds:
        """The bounds that apply to ``attribute``: its own entry's set fields over the common ones."""
        common = {k: getattr(self, k) for k in FairnessBounds.model_fields}
        own = self.attributes.get(attribute)
        return FairnessBounds(**(common | (own.model_dump(exclude_unset=True) if own else {})))


class SignificanceSpec(_Strict):
    """How a change check tells an improvement from noise: a seeded paired bootstrap of the holdout that resamples
    clusters of rows (``cluster_by``, the events' date by default), with an error rule for the nightly tests."""

    method: Literal["paired_bootstrap"] = "paired_bootstrap"
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    resamples: int = Field(
        default=1000,
        ge=100,
        le=20000,
        description="bootstrap resamples (a nightly Bonferroni test draws at least 4N/alpha, see nightly)",
    )
    seed: int | None = Field(default=None, description="default: split.seed")
    cluster_by: list[str] = Field(
        default_factory=lambda: ["date"],
        description="columns whose distinct values are the bootstrap's clusters: a resample draws whole clusters "
        "(default: the events' local date, the features table's partition column; rows of one day share its "
        "weather and traffic, so resampling rows gives intervals too narrow). Each must be date, a features.keys "
        "column, a model input, a slice or a sensitive attribute (the columns the features table carries). [] "
        "resamples rows, for holdouts of independent events only",
    )
    nightly: Literal["bonferroni", "uncorrected"] = Field(
        default="bonferroni",
        description="error rule of a nightly refresh (train mode refresh): it retests an almost identical refit "
        "on a holdout overlapping the previous night's, up to N times a month (N: the most runs "
        "schedules.train_nightly fires in a month, 30 for '0 5 2-31 * *'). bonferroni: the month's N nightly "
        "tests share one error budget alpha = 1 - confidence, each using confidence 1 - alpha/N, so a candidate "
        "no better than the champion is promoted on some night of the month with probability at most alpha "
        "whatever the overlap (and at least 4N/alpha resamples are drawn, two beyond each interval end). "
        "uncorrected: each night at confidence (about 30 tests a month at 5% each: a false promotion most "
        "months is not unlikely). A monthly run is one test at confidence",
    )

    @field_validator("cluster_by")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"cluster_by {value} names a column twice")
        return value


class GateSpec(_Strict):
    primary_metric: Metric = "roc_auc"
    absolute: dict[Metric, Bound] = Field(default_factory=dict)
    change: dict[Metric, ChangeBound] = Field(default_factory=dict)
    significance: SignificanceSpec = Field(default_factory=SignificanceSpec)
    robustness: SliceGateSpec | None = Field(default=None, description="bounds over the slices columns")
    fairness: FairnessSpec | None = Field(default=None, description="bounds over the sensitive_attributes")
    infrastructure_check: bool = Field(
        default=True,
        description="load the candidate in a fresh process as the scorer does and score sample rows",
    )
    allow_absolute_only: bool = Field(
        default=False,
        description="allow a gate without change bounds: a candidate worse than the champion may then replace it "
        "as long as it meets the absolute bounds (mlops validate refuses such a gate unless this is true)",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_slice_bounds(cls, data: Any) -> Any:
        fairness = data.get("fairness") if isinstance(data, dict) else None
        if isinstance(fairness, dict) and {"min_slice_rows", "min_slice_positives"} & set(fairness):
            raise ValueError(
                "gate.fairness now applies to sensitive_attributes (groups by fairlearn MetricFrame, with "
                "min_group_rows / min_group_positives); bounds over the slices columns are gate.robustness: rename "
                "gate.fairness to gate.robustness, or declare sensitive_attributes and use min_group_* keys"
            )
        return data

    @property
    def has_thresholds(self) -> bool:
        """Whether any absolute or change threshold is configured (without one the gate promotes nothing)."""
        return any(b.min is not None or b.max is not None for b in self.absolute.values()) or bool(
            self.change
        )


class ScheduleSpec(_Strict):
    ingest: str | None = Field(
        default="@continuous",
        description="When the arrival sensor's run starts: @continuous (default) starts the next run as soon as "
        "one ends, so every arrival is ingested as it lands; a cron batches arrivals",
    )
    score: str = Field(
        default="0 18 * * *",
        description="When the score DAG runs: at the prediction time (time.prediction_time.at, local time; "
        "with a per-event prediction time, when the day's last one has passed); unset, derived from it",
    )
    train_monthly: str | None = Field(
        default="0 4 1 * *",
        description="Monthly full retraining; null: <usecase>_train runs only when triggered",
    )
    train_nightly: str | None = Field(
        default="0 5 2-31 * *", description="Nightly refresh; skip the day the monthly retraining runs"
    )
    maintenance: str | None = Field(
        default="0 6 * * 0", description="Lake maintenance (vacuum, log cleanup keeping versions models name)"
    )
    start_date: str = "2013-01-01"
    score_catch_up_days: int = Field(default=35, ge=1)
    score_grace: str = Field(
        default="30m",
        description="How long after the prediction time the score run waits for the day's features; past it the "
        "run fails naming the missing day, and the day is scored late by the next run",
    )

    @field_validator("score_grace")
    @classmethod
    def _grace(cls, value: str) -> str:
        parse_duration(value, "score_grace")
        return value

    @property
    def score_grace_seconds(self) -> int:
        return parse_duration(self.score_grace, "score_grace")


class DriftSpec(_Strict):
    """Data and prediction drift of the scored events against the champion's training rows (monitor step,
    Evidently)."""

    features: list[str] = Field(
        default_factory=list, description="model inputs watched for drift (default: every model input)"
    )
    method: str | None = Field(
        default=None,
        description="an Evidently drift method for every column (psi, ks, wasserstein, jensenshannon, "
        "chisquare, ...); unset: Evidently's choice per column by type and sample size (distances, not p-values, "
        "on large samples, so a large day does not flag every column)",
    )
    threshold: float | None = Field(default=None, description="the method's threshold (unset: its default)")
    min_rows: int = Field(
        default=1000, ge=1, description="a window with fewer scored rows is measured but raises no drift"
    )
    drift_share: float = Field(
        default=0.5, gt=0, le=1, description="data drift when at least this share of the watched inputs drift"
    )

    @model_validator(mode="before")
    @classmethod
    def _psi_shorthand(cls, data: Any) -> Any:
        """``psi_threshold: X`` (older files) is ``method: psi, threshold: X``."""
        if isinstance(data, dict) and "psi_threshold" in data:
            data = {**data}
            value = data.pop("psi_threshold")
            data.setdefault("method", "psi")
            data.setdefault("threshold", value)
        return data


RetrainReason = Literal["data_drift", "prediction_drift", "live_decay", "estimated_decay"]


class MonitoringSpec(_Strict):
    """The monitor step: what it looks at, when performance counts as decayed, and when it retrains early."""

    window_days: int = Field(default=7, ge=1, description="days of scored events each monitor run looks at")
    reference_rows: int = Field(
        default=20000, ge=100, description="seeded sample of the champion's training rows used as reference"
    )
    min_labelled_rows: int = Field(
        default=500, ge=1, description="fewer predictions with outcomes: live performance shown, not judged"
    )
    calibration_days: int = Field(
        default=28,
        ge=0,
        description="the estimate is calibrated on the model's predictions of the events of this many days "
        "before the window whose outcomes had arrived when the window began (at least min_labelled_rows of "
        "them; otherwise, and with 0, on the model's holdout)",
    )
    max_drop: float = Field(
        default=0.05,
        ge=0,
        description="decay: the primary metric (live, or estimated from the scores) is worse than the "
        "champion's holdout value by more than this, even at the favourable end of its interval",
    )
    retrain_on: list[RetrainReason] = Field(
        default_factory=lambda: ["data_drift", "prediction_drift", "live_decay", "estimated_decay"],
        description="breaches that trigger the train DAG early (the gate still decides)",
    )
    cooldown_days: int = Field(
        default=14, ge=0, description="no early retraining within this many days of the last one requested"
    )


AlertEvent = Literal[
    "quarantine",
    "gate_rejected",
    "gate_failed",
    "task_failure",
    "late_data",
    "drift",
    "decay",
    "approval_requested",
]
ALERT_EVENTS: tuple[str, ...] = get_args(AlertEvent)


class AlertSpec(_Strict):
    """Where the use case's alerts go. Every alert is written to the task log; with a connection it is also sent:
    an Airflow connection of type http or https receives it as a JSON POST (a webhook), one of type smtp as an
    e-mail to ``to``. Credentials live in the connection, never here."""

    connection_id: str | None = Field(
        default=None,
        description="Airflow connection id (http/https: webhook; smtp: e-mail); unset: the profile's "
        "alerts_connection_id (MLOPS_ALERTS_CONNECTION); neither: the task log only",
    )
    to: list[str] = Field(default_factory=list, description="e-mail recipients, for an smtp connection")
    on: list[AlertEvent] = Field(
        default_factory=lambda: list(ALERT_EVENTS),
        description="the events that are sent (the others are only logged): " + ", ".join(ALERT_EVENTS),
    )


class RetentionSpec(_Strict):
    """What maintenance keeps of the registry's history: a registered version that never held `champion` is
    archived (tagged, not deleted) once its training date is older than ``archive_after_days`` before the
    maintenance run's date, and the lake versions its lineage named are no longer kept for it. Every version that
    ever was champion keeps its lineage (the current champion's and its predecessors')."""

    archive_after_days: int | None = Field(
        default=90,
        ge=1,
        description="days after its training date when a never-champion version is archived; null: never",
    )


class ApprovalSpec(_Strict):
    """A person's approval between a passed gate and the move of ``champion`` (Airflow's ApprovalOperator)."""

    mode: Literal["none", "required"] | None = Field(
        default=None,
        description="required: the train DAGs wait after a passed gate for Approve or Reject (Required Actions in "
        "the Airflow UI); none: a passed gate promotes; unset: the profile's `approval`",
    )
    approvers: list[str] = Field(
        default_factory=list,
        description="Airflow user ids allowed to answer; empty: any user who may act on the DAG",
    )
    timeout: str = Field(
        default="72h",
        description="how long the approval waits (a duration such as 90m, 6h or 2d); then it counts as "
        "rejected: the champion stays",
    )

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        parse_duration(value, "approval.timeout")
        return value

    @property
    def timeout_seconds(self) -> int:
        return parse_duration(self.timeout, "approval.timeout")


class CaptureSpec(_Strict):
    """What the REST scoring service appends to ``captures/<usecase>`` for each answered request."""

    model_inputs: bool = Field(
        default=False,
        description="Also store each row's model inputs (a struct column). Off by default: every captured row "
        "keeps its request fields (the record as sent, typed as the primary source declares), model version, "
        "snapshot day and version, request id and time and the answer, from which `mlops capture inputs` "
        "rebuilds the model inputs with the service's own feature code. On costs the service throughput and "
        "capture queue room",
    )
    sample: float = Field(
        default=1.0,
        description="The share of requests captured, from 0 (none) to 1 (all, the default). Which requests are "
        "kept is decided by a hash of the request id, not at random: the same request id is always kept or "
        "always left out (a rerun keeps the same ones), and a request's rows and its shadow copy go together "
        "(as SageMaker data capture's sampling percentage)",
    )

    @field_validator("sample")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"serving.capture.sample is {value}: a share of requests between 0 (capture none) and 1 "
                "(capture all) is expected; to turn capture off for one service use `mlops serve --no-capture`"
            )
        return value


class ServingSpec(_Strict):
    """How the REST scoring service (``mlops serve``) judges what it serves."""

    capture: CaptureSpec = Field(
        default_factory=CaptureSpec,
        description="What is captured of each answered request (captures/<usecase>): model_inputs, sample",
    )

    max_snapshot_age: str | None = Field(
        default="36h",
        description="The service is unready (503 on /ready) when the newest online feature snapshot's prediction "
        "time is longer ago than this (a duration such as 36h or 2d; the service's clock): the features step "
        "has not published the day's snapshot. null: no limit (e.g. replaying old data); `mlops serve "
        "--max-snapshot-age` overrides it",
    )

    @field_validator("max_snapshot_age")
    @classmethod
    def _age(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value, "max_snapshot_age")
        return value

    @property
    def max_snapshot_age_seconds(self) -> int | None:
        return (
            None
            if self.max_snapshot_age is None
            else parse_duration(self.max_snapshot_age, "max_snapshot_age")
        )


class LeakageSpec(_Strict):
    """Train's check for model inputs that give the label away: a model input whose single-feature score on the
    training rows (classification: ROC AUC of the feature alone, either direction; regression: R-squared of the
    label on the feature alone) reaches ``max_single_feature_score`` fails the train naming the column, unless
    ``allowed`` names it."""

    max_single_feature_score: float = Field(
        default=0.99,
        gt=0.5,
        le=1,
        description="A model input scoring this or more on its own fails the train (1: only a perfect one)",
    )
    allowed: list[str] = Field(
        default_factory=list,
        description="Model inputs allowed to score above it: known at prediction time, and strong by nature",
    )


def _cron_at(at: Any) -> str | None:
    """The daily cron expression ``M H * * *`` firing at the local clock time ``at`` (HH:MM), or None."""
    hours, _, minutes = str(at).partition(":")
    if not (hours.isdigit() and minutes.isdigit()):
        return None
    return f"{int(minutes)} {int(hours)} * * *"


REPORT_PARTS = (
    "performance",
    "feature_importance",
    "shap",
    "error_analysis",
    "data_explorer",
    "counterfactuals",
)


class ReportSpec(_Strict):
    """The report step (explanations after the gate): a time budget per part, so the report's cost per training
    run stays bounded; a part that would run past its budget is cut (fewer rows, fewer searches) and says so."""

    budgets: dict[Literal[REPORT_PARTS], float] = Field(  # type: ignore[valid-type]
        # the three costly parts within 8 s together, so that a report (with its small parts, the first model
        # load and the rendering) stays within about 10 s a training run on a 2-core machine; a part that would
        # take longer is cut (SHAP of the Keras MLP through its pyfunc explains fewer than 200 rows) and says so
        default_factory=lambda: {
            "feature_importance": 3.0,
            "shap": 3.0,
            "counterfactuals": 2.0,
        },
        description="seconds per part (feature_importance, shap, error_analysis, data_explorer, counterfactuals); "
        "a part not named gets default_budget_s",
    )
    default_budget_s: float = Field(default=30.0, gt=0, description="budget of a part not named in budgets")
    importance_rows: int = Field(default=4000, ge=50, description="holdout sample for permutation importance")
    importance_repeats: int = Field(default=3, ge=1, description="shuffles per feature")
    shap_rows: int = Field(default=200, ge=10, description="holdout rows SHAP explains")
    skip: list[Literal[REPORT_PARTS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="parts not to compute (listed in the report as skipped)"
    )

    def budget(self, part: str) -> float:
        return float(self.budgets.get(part, self.default_budget_s))  # type: ignore[call-overload]


class UseCase(_Strict):
    name: str
    description: str = ""
    owner: str = "ml-platform"
    tags: list[str] = Field(default_factory=list)
    sources: dict[str, SourceSpec]
    time: TimeSpec
    features: FeatureSpec
    target: TargetSpec
    split: SplitSpec
    candidates: list[CandidateSpec]
    metrics: list[Metric] = Field(
        default_factory=lambda: ["roc_auc", "pr_auc", "log_loss", "brier"],
        description="reported metrics (default: the task's; regression: rmse, mae, r2)",
    )
    gate: GateSpec = Field(default_factory=GateSpec)
    slices: list[str] = Field(
        default_factory=list, description="robustness slices: evaluated per value, gated by gate.robustness"
    )
    sensitive_attributes: list[str] = Field(
        default_factory=list,
        description="columns fairness is assessed over (gate.fairness); carried to evaluation, not model inputs "
        "unless listed in features",
    )
    decision: DecisionSpec = Field(default_factory=DecisionSpec)
    schedules: ScheduleSpec = Field(default_factory=ScheduleSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    leakage: LeakageSpec = Field(default_factory=LeakageSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    alerts: AlertSpec = Field(default_factory=AlertSpec)
    approval: ApprovalSpec = Field(default_factory=ApprovalSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """A regression's default metrics and primary metric are regression ones."""
        if isinstance(data, dict) and isinstance(data.get("target"), dict):
            task = "regression" if data["target"].get("kind") == "regression" else "classification"
            defaults = TASK_DEFAULTS[task]
            data = {**data}
            data.setdefault("metrics", defaults["metrics"])
            gate = data.get("gate")
            if gate is None or isinstance(gate, dict):
                data["gate"] = {"primary_metric": defaults["primary_metric"], **(gate or {})}
        # schedules.score unset: at the prediction time (local), so the defaults never contradict each other
        schedules = data.get("schedules") if isinstance(data, dict) else None
        if isinstance(data, dict) and (
            schedules is None or (isinstance(schedules, dict) and "score" not in schedules)
        ):
            time_spec = data.get("time")
            prediction = time_spec.get("prediction_time") if isinstance(time_spec, dict) else None
            try:  # the clock of the (last) prediction time of a day; a bad spec is reported by its own field
                at = PredictionTimeSpec(**(prediction if isinstance(prediction, dict) else {})).clock
            except (ValidationError, TypeError):
                at = "18:00"
            cron = _cron_at(at)
            if cron is not None:
                data = {**data, "schedules": {**(schedules or {}), "score": cron}}
        return data

    @property
    def task(self) -> Literal["classification", "regression"]:
        """``regression`` for ``target.kind: regression``, else ``classification`` (a binary label)."""
        return "regression" if self.target.kind == "regression" else "classification"

    def _check_task(self) -> None:
        task, allowed = self.task, TASK_METRICS[self.task]
        named = {
            "metrics": list(self.metrics),
            "gate.primary_metric": [self.gate.primary_metric],
            "gate.absolute": list(self.gate.absolute),
            "gate.change": list(self.gate.change),
            "gate.fairness.metric": [self.gate.fairness.metric] if self.gate.fairness else [],
            "gate.robustness.metric": [self.gate.robustness.metric] if self.gate.robustness else [],
        }
        for field, metrics in named.items():
            wrong = [m for m in metrics if m not in allowed]
            if wrong:
                raise ValueError(
                    f"{field}: {wrong} are not {task} metrics (target.kind {self.target.kind!r}); use {list(allowed)}"
                )
        families = TASK_FAMILIES[task]
        wrong = [f"{c.name} ({c.family})" for c in self.candidates if c.family not in families]
        if wrong:
            raise ValueError(f"candidates {wrong} are not {task} families; use one of {list(families)}")

    @model_validator(mode="after")
    def _cross_checks(self) -> UseCase:
        if self.features.primary_source not in self.sources:
            raise ValueError(
                f"features.primary_source {self.features.primary_source!r} is not one of the sources "
                f"{sorted(self.sources)}"
            )
        primary = self.sources[self.features.primary_source]
        if (
            self.time.event_time not in primary.columns
            or primary.columns[self.time.event_time].type != "timestamp"
        ):
            raise ValueError(
                f"time.event_time {self.time.event_time!r} must be a timestamp column of the primary source "
                f"{self.features.primary_source!r}; its timestamp columns: "
                f"{sorted(n for n, c in primary.columns.items() if c.type == 'timestamp')}"
            )
        column = self.time.prediction_time.column
        if column is not None and (
            column not in primary.columns or primary.columns[column].type != "timestamp"
        ):
            raise ValueError(
                f"time.prediction_time.column {column!r} must be a timestamp column of the primary source "
                f"{self.features.primary_source!r}; its timestamp columns: "
                f"{sorted(n for n, c in primary.columns.items() if c.type == 'timestamp')}"
            )
        outcome = self.time.outcome
        if outcome.source is not None and outcome.source != self.features.primary_source:
            if outcome.source not in self.sources:
                raise ValueError(
                    f"time.outcome.source {outcome.source!r} is not one of the sources {sorted(self.sources)}"
                )
            spec = self.sources[outcome.source]
            missing = [k for k in outcome.keys if k not in spec.columns or k not in primary.columns]
            if not outcome.keys or missing:
                raise ValueError(
                    f"time.outcome.keys {outcome.keys} must name columns present in both the primary source "
                    f"{self.features.primary_source!r} and the outcome source {outcome.source!r}"
                    + (f" (missing: {missing})" if missing else "")
                )
        outcome_source = self.sources[self.outcome_source]
        if self.target.source_column not in outcome_source.columns:
            raise ValueError(
                f"target.source_column {self.target.source_column!r} is not a column of the outcome source "
                f"{self.outcome_source!r}; columns: {sorted(outcome_source.columns)}"
            )
        label_type = outcome_source.columns[self.target.source_column].type
        fits = {
            "above_threshold": label_type in ("int", "float"),
            "regression": label_type in ("int", "float"),
            "boolean": label_type == "bool",
            "positive_values": label_type in ("int", "float", "string", "bool"),
        }[self.target.kind]
        if not fits:
            suggestion = {
                "string": "kind: positive_values with positive_values: [<the values meaning positive>]",
                "bool": "kind: boolean",
                "timestamp": "a numeric or categorical column",
            }.get(label_type, "kind: above_threshold with a threshold")
            raise ValueError(
                f"target.kind {self.target.kind!r} does not fit target.source_column {self.target.source_column!r}, "
                f"a {label_type} column of source {self.outcome_source!r}; use {suggestion}"
            )
        if self.target.kind == "positive_values":
            python_type = {"int": (int, float), "float": (int, float), "string": (str,), "bool": (bool,)}[
                label_type
            ]
            wrong = [
                v
                for v in self.target.positive_values or []
                if not isinstance(v, python_type) or (label_type != "bool" and isinstance(v, bool))
            ]
            if wrong:
                raise ValueError(
                    f"target.positive_values {wrong} are not {label_type} values like the column "
                    f"{self.target.source_column!r} of source {self.outcome_source!r}"
                    + (
                        "; quote them in YAML (e.g. 'YES', 'NO' and 'ON' read as booleans)"
                        if label_type == "string"
                        else ""
                    )
                )
        if self.uses_validation_window and (
            self.split.train_window_days - self.split.holdout_days - self.decision.validation_days < 1
        ):
            raise ValueError(
                f"decision.validation_days ({self.decision.validation_days}) leaves no training days: "
                f"split.train_window_days ({self.split.train_window_days}) must exceed split.holdout_days "
                f"({self.split.holdout_days}) plus decision.validation_days; shorten validation_days or use "
                "decision.rule: fixed with a single candidate"
            )
        self._check_task()
        names = [c.name for c in self.candidates]
        if not names:
            raise ValueError("candidates: at least one candidate model is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"candidates: names must be unique, got {names}")
        return self

    @property
    def decision_threshold_chosen(self) -> bool:
        """Whether train chooses a decision threshold on a validation window (a classification whose
        ``decision.rule`` is not fixed)."""
        return self.task == "classification" and self.decision.uses_validation

    @property
    def uses_validation_window(self) -> bool:
        """Whether train holds out a validation window (``decision.validation_days`` before the holdout): to choose
        the decision threshold, and to choose among several candidates on rows the gate's holdout is not, so the
        holdout judges the chosen one without the winner's curse."""
        return self.decision_threshold_chosen or len(self.candidates) > 1

    @property
    def min_window_days(self) -> int:
        """The shortest training window train accepts (``--window-days``, the train DAG's Param): the holdout,
        the validation window when there is one, and at least one training day."""
        validation = self.decision.validation_days if self.uses_validation_window else 0
        return self.split.holdout_days + validation + 1

    @property
    def evaluated_columns(self) -> list[str]:
        """Columns the features table carries for evaluation beyond the model inputs: the robustness ``slices``
        and the ``sensitive_attributes``, in that order, once each."""
        return list(dict.fromkeys([*self.slices, *self.sensitive_attributes]))

    @property
    def outcome_source(self) -> str:
        """The source whose rows carry the outcome (the primary source unless ``time.outcome.source`` says)."""
        return self.time.outcome.source or self.features.primary_source

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
    "alerts_connection_id": "MLOPS_ALERTS_CONNECTION",
    "approval": "MLOPS_APPROVAL",
    "mlflow_ui_url": "MLOPS_MLFLOW_UI_URL",
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


def approval_required(usecase: UseCase, profile: Profile | None = None) -> bool:
    """Whether a passed gate of ``usecase`` waits for a person's approval (its ``approval.mode``, else the
    profile's ``approval``)."""
    mode = usecase.approval.mode or (profile or load_profile()).approval
    return mode == "required"


def usecase_path(name: str) -> Path:
    return config_dir() / "usecases" / f"{name}.yaml"


def list_usecases() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "usecases").glob("*.yaml"))


@lru_cache(maxsize=32)
def _load_usecase(path: str, version: tuple[int, int]) -> UseCase:
    """The validated use case at ``path``; ``version`` (modification time, size) keys the cache, so an edited
    file is read again in a long-lived process."""
    return load_model(Path(path), UseCase)


def load_usecase(name: str) -> UseCase:
    """Load and validate ``config/usecases/<name>.yaml``."""
    path = usecase_path(name)
    if not path.is_file():
        raise ConfigError(f"{path}: no such use case {name!r}; known: {list_usecases()}")
    stat = path.stat()
    usecase = _load_usecase(str(path), (stat.st_mtime_ns, stat.st_size))
    if usecase.name != name:
        raise ConfigError(f"{path}: field 'name' is {usecase.name!r} but the file is named {name!r}.yaml")
    return usecase
