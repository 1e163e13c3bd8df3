"""Fixtures for the register/promote/score tests: an isolated lake and MLflow store, synthetic feature partitions,
and the train/evaluate/gate artifacts those steps read, produced here by following the model-step contracts
(real scikit-learn models logged as MLflow pyfunc runs, result JSONs written through the lake)."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.config import UseCase, load_usecase
from pipelines.lake import LATEST, Lake, content_hash, features_table

USECASE = "flight_delay"
CARRIERS = ["AA", "B6", "DL", "EV", "UA"]
ORIGINS = ["EWR", "JFK", "LGA"]
# skops refuses unknown types on load; these are the ones our small test pipelines contain
TRUSTED_TYPES = ["numpy.dtype", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


@dataclass
class ServeEnv:
    lake: Lake
    usecase: UseCase
    tmp: Path


_TEMPLATE_DB: dict[str, Path] = {}


def _template_db(tmp_root: Path) -> Path:
    """An empty, fully migrated MLflow SQLite store, made once per test session (migrations take seconds)."""
    if "path" not in _TEMPLATE_DB:
        from mlflow import MlflowClient

        path = tmp_root / "template-mlflow.db"
        MlflowClient(
            tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}"
        ).search_registered_models()
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        _TEMPLATE_DB["path"] = path
    return _TEMPLATE_DB["path"]


def make_serve_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_root: Path) -> ServeEnv:
    """A temporary MLOPS_HOME with its own lake and SQLite MLflow store (never ./var).

    ``tmp_root`` is a session-wide folder (``tmp_path_factory.getbasetemp()``) for the migrated template store.
    """
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_template_db(tmp_root), db)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLOPS_CODE_VERSION", "test-code-1")
    monkeypatch.setenv("MLFLOW_UV_AUTO_DETECT", "false")
    monkeypatch.delenv("MLOPS_PROFILE", raising=False)
    # steps written by other modules may not exist yet in a partial checkout: leave only the importable ones
    import pipelines.cli
    import pipelines.steps

    present = {n: m for n, m in pipelines.steps.STEPS.items() if importlib.util.find_spec(m) is not None}
    monkeypatch.setattr(pipelines.cli, "STEPS", present)
    from pipelines.config import load_profile
    from pipelines.tracking import configure_mlflow

    usecase = load_usecase(USECASE)
    configure_mlflow(load_profile(), usecase)
    return ServeEnv(lake=Lake(str(tmp_path / "lake")), usecase=usecase, tmp=tmp_path)


def feature_frame(usecase: UseCase, day: date, rows: int, seed: int) -> pd.DataFrame:
    """Synthetic feature rows for one day with a learnable signal, a time trend and some nulls."""
    rng = np.random.default_rng(seed)
    dep_hour = rng.integers(5, 23, rows)
    carrier = rng.choice(CARRIERS, rows)
    origin = rng.choice(ORIGINS, rows)
    frame = pd.DataFrame(
        {
            "year": day.year,
            "month": day.month,
            "day": day.day,
            "carrier": carrier,
            "flight": np.arange(1, rows + 1) + 1000 * (seed % 7),
            "origin": origin,
            "sched_dep_time": dep_hour * 100 + rng.integers(0, 60, rows),
            "time_hour": pd.Timestamp(usecase.time.local_midnight(day)) + pd.to_timedelta(dep_hour, unit="h"),
            "prediction_time": pd.Timestamp(usecase.time.prediction_time_of(day)),
            "date": day.isoformat(),
        }
    )
    frame["outcome_known_at"] = frame["time_hour"] + pd.Timedelta(seconds=usecase.time.outcome.delay_seconds)
    numeric = {
        "dep_hour": dep_hour.astype(float),
        "day_of_week": float(day.weekday()),
        "month": float(day.month),
        "distance": rng.uniform(100, 2500, rows),
        "wx_temp": rng.normal(50, 15, rows),
        "wx_humid": rng.uniform(20, 100, rows),
        "wx_wind_speed": rng.gamma(2, 5, rows),
        "wx_precip": rng.exponential(0.02, rows),
        "wx_visib": rng.uniform(1, 10, rows),
        "wx_pressure": rng.normal(1015, 8, rows),
        "plane_year": rng.integers(1990, 2013, rows).astype(float),
        "plane_seats": rng.choice([50.0, 140.0, 180.0, 300.0], rows),
        "route_delay_rate_28d": rng.beta(2, 8, rows),
        "carrier_delay_rate_7d": rng.beta(2, 8, rows),
        "origin_delay_rate_1d": rng.beta(2, 8, rows),
    }
    for column in usecase.features.numeric:
        frame[column] = numeric[column]
    trend = (day - date(2013, 1, 1)).days / 200
    logit = (
        0.25 * (dep_hour - 14)
        + 8 * (frame["route_delay_rate_28d"] - 0.2)
        + 20 * frame["wx_precip"]
        + np.where(carrier == "EV", 0.8, 0.0)
        + trend
        - 1.2
    )
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("float64")
    for column in ("wx_temp", "wx_visib", "plane_year"):
        frame.loc[rng.uniform(size=rows) < 0.05, column] = np.nan
    frame[usecase.target.column] = label
    return frame


def write_features(env: ServeEnv, days: list[date], rows: int = 40) -> dict[str, pd.DataFrame]:
    """Commit one synthetic feature partition per day (one commit); returns the frames by ISO date."""
    frames, facts = {}, {}
    for index, day in enumerate(days):
        frames[day.isoformat()] = feature_frame(env.usecase, day, rows, seed=index + day.toordinal())
        facts[day.isoformat()] = {
            "inputs": {"flights": {day.isoformat(): f"hash-{day}"}},
            "inputs_fingerprint": f"fp-{day.isoformat()}",
            "raw_versions": {f"raw/{env.usecase.name}/flights": 0},
        }
    env.lake.write_partitions(
        features_table(env.usecase.name),
        pd.concat(frames.values(), ignore_index=True),
        read_version=LATEST,
        facts=facts,
    )
    return frames


def _pipeline(usecase: UseCase, family: str, seed: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")
    )
    if family == "hist_gradient_boosting":
        columns = ColumnTransformer(
            [
                ("num", "passthrough", usecase.features.numeric),
                ("cat", categorical, usecase.features.categorical),
            ],
            sparse_threshold=0,
        )
        return make_pipeline(columns, HistGradientBoostingClassifier(max_iter=20, random_state=seed))
    numeric = make_pipeline(SimpleImputer(), StandardScaler())
    columns = ColumnTransformer(
        [("num", numeric, usecase.features.numeric), ("cat", categorical, usecase.features.categorical)]
    )
    return make_pipeline(columns, LogisticRegression(max_iter=300, random_state=seed))


def log_candidate(env: ServeEnv, name: str, family: str, day: date, train: pd.DataFrame) -> dict[str, str]:
    """Fit a small model and log it as one MLflow run the way the train step does; returns the candidate entry."""
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.tracking import feature_columns

    columns = feature_columns(env.usecase)
    frame = train.dropna(subset=[env.usecase.target.column])
    x, y = frame[columns], frame[env.usecase.target.column].astype(int)
    model = _pipeline(env.usecase, family, seed=env.usecase.split.seed).fit(x, y)
    tags = {
        "usecase": env.usecase.name,
        "logical_date": day.isoformat(),
        "mode": "full",
        "candidate": name,
        "family": family,
        "config_hash": env.usecase.config_hash,
        "code_version": "test-code-1",
    }
    with mlflow.start_run(run_name=f"{name}@{day.isoformat()}", tags=tags) as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(x.head(50), model.predict_proba(x.head(50))),
            pip_requirements=["scikit-learn"],
            skops_trusted_types=TRUSTED_TYPES,
        )
    return {"name": name, "family": family, "run_id": run.info.run_id, "model_uri": info.model_uri}


def produce_day(
    env: ServeEnv,
    day: date,
    gate_passed: bool,
    candidates: tuple[tuple[str, str], ...] = (("logreg", "logistic_regression"),),
) -> dict[str, Any]:
    """Train/evaluate/gate artifacts for ``day`` per the contracts: feature partitions for the window, one MLflow
    run per candidate, and the three result JSONs. The gate outcome is forced to ``gate_passed``."""
    from sklearn.metrics import roc_auc_score

    from pipelines.tracking import feature_columns, load_model, predict_proba

    uc = env.usecase.name
    feature_days = [day - timedelta(days=n) for n in range(6, 0, -1)]  # 4 train days then 2 holdout days
    frames = write_features(env, feature_days, rows=120)
    dates = sorted(frames)
    train_frame = pd.concat([frames[d] for d in dates[:4]], ignore_index=True)
    holdout = pd.concat([frames[d] for d in dates[4:]], ignore_index=True)
    logged = [log_candidate(env, name, family, day, train_frame) for name, family in candidates]

    def run_key(step: str) -> str:
        return f"{Lake.dated_key('runs', uc, day, step)}/result.json"

    window = {
        "train_start": dates[0],
        "train_end": dates[4],
        "holdout_start": dates[4],
        "holdout_end": day.isoformat(),
    }
    raw = sorted(f"raw/{uc}/flights/date={d}" for d in dates)
    train_result = {
        "mode": "full",
        "window": window,
        "feature_partitions": dates,
        "features_version": env.lake.version(features_table(uc)),
        "tables_read": {features_table(uc): env.lake.version(features_table(uc))},
        "raw_versions": {f"raw/{uc}/flights": 0},
        "data_hashes": {"train": content_hash(train_frame), "holdout": content_hash(holdout)},
        "inputs": raw,
        "rows": {"train": len(train_frame), "holdout": len(holdout)},
        "candidates": logged,
        "result_uri": env.lake.storage.uri(run_key("train")),
    }
    env.lake.write_json(run_key("train"), train_result)

    evaluated = {}
    for entry in logged:
        scores = predict_proba(load_model(entry["model_uri"]), holdout[feature_columns(env.usecase)])
        auc = float(roc_auc_score(holdout[env.usecase.target.column].astype(int), scores))
        evaluated[entry["name"]] = {
            "run_id": entry["run_id"],
            "model_uri": entry["model_uri"],
            "metrics": {"roc_auc": auc},
            "slices": {},
        }
    best = max(evaluated, key=lambda n: evaluated[n]["metrics"]["roc_auc"])
    env.lake.write_json(
        run_key("evaluate"),
        {
            "candidates": evaluated,
            "best": best,
            "champion": None,
            "holdout_rows": len(holdout),
            "result_uri": env.lake.storage.uri(run_key("evaluate")),
        },
    )

    bound = 0.0 if gate_passed else 1.01  # an absolute bound the candidate can (not) reach
    value = evaluated[best]["metrics"]["roc_auc"]
    check = {
        "name": "absolute roc_auc min",
        "kind": "absolute",
        "metric": "roc_auc",
        "value": value,
        "threshold": bound,
        "baseline": None,
        "passed": value >= bound,
        "skipped": False,
        "reason": "" if value >= bound else f"roc_auc {value:.4f} < min {bound}",
    }
    gate_result = {
        "passed": gate_passed,
        "candidate": best,
        "run_id": evaluated[best]["run_id"],
        "model_uri": evaluated[best]["model_uri"],
        "primary_metric": "roc_auc",
        "candidate_value": value,
        "champion_value": None,
        "champion_version": None,
        "checks": [check],
        "reasons": [] if gate_passed else [check["reason"]],
        "result_uri": env.lake.storage.uri(run_key("gate")),
    }
    env.lake.write_json(run_key("gate"), gate_result)
    return {"train": train_result, "evaluate": evaluated, "gate": gate_result, "best": best, "frames": frames}
