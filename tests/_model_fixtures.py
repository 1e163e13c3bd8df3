"""Small, real fixtures for the model steps: a fast test use case, synthetic feature partitions, a tmp MLflow.

Helper modules may import these (read-only). Everything is made in the test's tmp_path; nothing touches var/.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from _labels import write_features_and_labels

from pipelines.config import (
    REPO_ROOT,
    Bound,
    CandidateSpec,
    GateSpec,
    SplitSpec,
    UseCase,
    load_model,
    load_profile,
)
from pipelines.context import StepContext
from pipelines.lake import Lake

CARRIERS = ["AA", "B6", "DL", "EV", "UA"]
ORIGINS = ["EWR", "JFK", "LGA"]

FAST_CANDIDATES = [
    CandidateSpec(name="logreg", family="logistic_regression", params={"C": 1.0, "max_iter": 200}),
    CandidateSpec(name="hgb", family="hist_gradient_boosting", params={"max_iter": 30, "max_leaf_nodes": 15}),
    CandidateSpec(
        name="mlp", family="keras_mlp", params={"hidden_units": [16], "epochs": 5, "batch_size": 64}
    ),
]


def fast_usecase(
    candidates: list[CandidateSpec] | None = None, *, name: str = "flight_delay", **split: Any
) -> UseCase:
    """The flight_delay use case with a short window (35 days, 7 holdout) and small, fast candidates."""
    base = load_model(REPO_ROOT / "config" / "usecases" / "flight_delay.yaml", UseCase)
    split_values = {"train_window_days": 35, "holdout_days": 7, "max_train_rows": 2000, "seed": 7, **split}
    return base.model_copy(
        update={
            "name": name,
            "split": SplitSpec(**split_values),
            "candidates": list(candidates if candidates is not None else FAST_CANDIDATES),
        }
    )


def manual_usecase(**update: Any) -> UseCase:
    """One fast candidate, a gate of absolute bounds only (a second run's candidate passes against the first as
    champion) and no scheduled training (unpausing the DAG on trigger must not start a scheduled run beside the
    test's): the use case the live-Airflow tests trigger by hand. ``update``: more fields (e.g. ``approval``)."""
    base = fast_usecase([FAST_CANDIDATES[0]])
    gate = GateSpec(
        primary_metric="roc_auc",
        absolute={"roc_auc": Bound(min=0.5)},
        allow_absolute_only=True,
        infrastructure_check=False,
    )
    schedules = base.schedules.model_copy(update={"train_monthly": None, "train_nightly": None})
    return base.model_copy(update={"gate": gate, "schedules": schedules, **update})


def use_tmp_platform(monkeypatch: Any, tmp_path: Path) -> None:
    """Point the lake and MLflow (tracking DB and artifacts) at ``tmp_path``."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLOPS_CODE_VERSION", "test-code")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


def make_context(usecase: UseCase, day: date) -> StepContext:
    profile = load_profile()
    return StepContext(usecase=usecase, day=day, profile=profile, lake=Lake(profile.lake_uri))


def _value_effect(value: str) -> float:
    """A stable effect in [-0.6, 0.6] for a categorical value."""
    digest = hashlib.sha256(value.encode()).digest()
    return (digest[0] / 255.0 - 0.5) * 1.2


def synthetic_day(
    usecase: UseCase, day: date, rows: int, *, seed: int = 0, trend: float = 0.01
) -> pd.DataFrame:
    """One feature partition with a learnable signal and a time trend.

    The label's log-odds are a fixed linear mix of the first numeric features, a per-value effect of each
    categorical feature, and an intercept that rises by ``trend`` a day. About 3% of numeric values and 1% of
    categorical values are null. The same (usecase, day, seed) always gives the same frame.
    """
    rng = np.random.default_rng([seed, day.toordinal()])
    numeric = usecase.features.numeric
    categorical = usecase.features.categorical
    frame: dict[str, Any] = {}
    z = rng.normal(size=(rows, len(numeric)))
    weights = np.array([1.2, -0.8, 0.6, 0.4, -0.3][: len(numeric)] + [0.0] * max(0, len(numeric) - 5))
    logit = -1.0 + (day.toordinal() - date(2013, 1, 1).toordinal()) * trend + z @ weights
    for index, column in enumerate(numeric):
        values = z[:, index] * 10.0 + 50.0
        values[rng.random(rows) < 0.03] = np.nan
        frame[column] = values
    for column in categorical:
        pool = CARRIERS if column != "origin" else ORIGINS
        values = rng.choice(pool, size=rows).astype(object)
        logit = logit + np.array([_value_effect(f"{column}={v}") for v in values])
        values[rng.random(rows) < 0.01] = None
        frame[column] = values
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype("float64")
    label[rng.random(rows) < 0.02] = np.nan  # label unknown (e.g. cancelled flight)
    keys = {
        "year": np.full(rows, day.year),
        "month": np.full(rows, day.month),
        "day": np.full(rows, day.day),
        "flight": np.arange(rows) + 1,
        "sched_dep_time": rng.integers(500, 2300, size=rows),
    }
    for key, values in keys.items():
        if key not in frame:
            frame[key] = values
    for key in usecase.features.keys:
        if key not in frame:
            frame[key] = rng.choice(CARRIERS, size=rows)
    time = usecase.time
    start = time.local_midnight(day)
    event_times = pd.Series([start + timedelta(minutes=int(m)) for m in rng.integers(0, 1440, rows)])
    frame[time.event_time] = event_times
    frame["prediction_time"] = pd.Series([time.prediction_time_of(day)] * rows)
    known_at = event_times + timedelta(seconds=time.outcome.delay_seconds)
    frame["outcome_known_at"] = known_at.where(~np.isnan(label))  # like the features step: when labelled
    frame["date"] = day.isoformat()
    frame[usecase.target.column] = label
    return pd.DataFrame(frame)


def write_feature_partitions(
    lake: Lake, usecase: UseCase, start: date, days: int, rows_per_day: int = 120, **kwargs: Any
) -> list[str]:
    """Commit ``days`` feature partitions from ``start`` in one commit; return their ISO dates."""
    written, frames, facts = [], [], {}
    for offset in range(days):
        day = start + timedelta(days=offset)
        frames.append(synthetic_day(usecase, day, rows_per_day, **kwargs))
        # like the features step: {source: {raw partition date: content id}}
        inputs = {source: {day.isoformat(): f"hash-{source}-{day}"} for source in sorted(usecase.sources)}
        fingerprint = hashlib.sha256(repr(sorted(inputs.items())).encode()).hexdigest()[:16]
        facts[day.isoformat()] = {
            "inputs": inputs,
            "inputs_fingerprint": fingerprint,
            "raw_versions": {f"raw/{usecase.name}/{s}": 0 for s in sorted(usecase.sources)},
        }
        written.append(day.isoformat())
    write_features_and_labels(lake, usecase, pd.concat(frames, ignore_index=True), facts=facts)
    return written


def write_config_dir(target: Path, usecase: UseCase) -> Path:
    """A config dir (platform.yaml + one use case YAML) for CLI tests via MLOPS_CONFIG_DIR."""
    (target / "usecases").mkdir(parents=True, exist_ok=True)
    (target / "platform.yaml").write_text((REPO_ROOT / "config" / "platform.yaml").read_text())
    body = usecase.model_dump(mode="json")
    (target / "usecases" / f"{usecase.name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return target
