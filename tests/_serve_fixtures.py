"""Fixtures for the register/promote/score tests: an isolated lake and MLflow store, synthetic feature partitions,
and the train/evaluate/gate artifacts those steps read, produced here by following the model-step contracts
(real scikit-learn models logged as MLflow pyfunc runs, result JSONs written through the lake)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _labels import write_features_and_labels

from pipelines.config import UseCase, load_usecase
from pipelines.lake import LATEST, Lake, content_hash, features_table, online_table, raw_table

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
    from pipelines.modeling.tracking import configure_mlflow

    usecase = load_usecase(USECASE)
    configure_mlflow(load_profile(), usecase)
    return ServeEnv(lake=Lake(str(tmp_path / "lake")), usecase=usecase, tmp=tmp_path)


DESTS = [f"D{i:02d}" for i in range(40)]
TAILNUMS = [f"N{i:03d}XX" for i in range(300)]


def _rate_table(rng: np.random.Generator, keys: list[tuple], n: int = 20) -> dict[tuple, tuple[int, int]]:
    """(outcomes, positives) per key: rates k/n that the online function reproduces exactly."""
    return {key: (n, int(rng.binomial(n, rng.beta(2, 8)))) for key in keys}


def synthetic_day(
    usecase: UseCase, day: date, rows: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """One day of flights with a learnable signal, a time trend and some nulls, three ways: the feature rows
    (as the features step writes them), the schedule rows they come from (raw ``flights``) and the online
    snapshot rows (lookups per origin, tailnum, route, carrier) that give those rows those features."""
    rng = np.random.default_rng(seed)
    assert [t.name for t in usecase.features.transforms] == [
        "calendar",
        "asof_join",
        "join_source",
        "past_rate",
        "past_rate",
        "past_rate",
    ], "the fixture follows config/usecases/flight_delay.yaml's transforms"
    at = pd.Timestamp(usecase.time.prediction_time_of(day))
    dep_hour = rng.integers(5, 23, rows)
    carrier = rng.choice(CARRIERS, rows)
    origin = rng.choice(ORIGINS, rows)
    dest = rng.choice(DESTS, rows)
    tailnum = rng.choice(np.array(TAILNUMS + [None] * 15, dtype=object), rows)
    records = pd.DataFrame(
        {
            "year": day.year,
            "month": day.month,
            "day": day.day,
            "sched_dep_time": dep_hour * 100 + rng.integers(0, 60, rows),
            "sched_arr_time": ((dep_hour + 3) % 24) * 100,
            "carrier": carrier,
            "flight": np.arange(1, rows + 1) + 1000 * (seed % 7),
            "tailnum": tailnum,
            "origin": origin,
            "dest": dest,
            "distance": rng.uniform(100, 2500, rows),
            "hour": dep_hour,
            "minute": 0,
            "time_hour": pd.Timestamp(usecase.time.local_midnight(day)) + pd.to_timedelta(dep_hour, unit="h"),
        }
    )
    weather = {
        o: {
            "wx_temp": float(rng.normal(50, 15)),
            "wx_humid": float(rng.uniform(20, 100)),
            "wx_wind_speed": float(rng.gamma(2, 5)),
            "wx_precip": float(rng.exponential(0.02)),
            "wx_visib": None if o == ORIGINS[seed % 3] else float(rng.uniform(1, 10)),
            "wx_pressure": float(rng.normal(1015, 8)),
        }
        for o in ORIGINS
    }
    planes = {
        t: {
            "plane_year": None if i % 17 == 0 else int(rng.integers(1990, 2013)),
            "plane_seats": int(rng.choice([50, 140, 180, 300])),
            "plane_engines": 2,
        }
        for i, t in enumerate(TAILNUMS)
    }
    routes = _rate_table(rng, [(o, d) for o in ORIGINS for d in DESTS])
    carriers = _rate_table(rng, [(c,) for c in CARRIERS])
    origins = _rate_table(rng, [(o,) for o in ORIGINS])

    frame = records[
        ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time", "time_hour"]
    ].copy()
    frame["prediction_time"] = at
    frame["date"] = day.isoformat()
    frame["outcome_known_at"] = frame["time_hour"] + pd.Timedelta(seconds=usecase.time.outcome.delay_seconds)
    numeric = {
        "dep_hour": dep_hour.astype(float),
        "day_of_week": float(day.isoweekday()),
        "month": float(day.month),
        "distance": records["distance"].to_numpy(),
        **{
            column: np.array([weather[o][column] for o in origin], dtype=float)
            for column in ("wx_temp", "wx_humid", "wx_wind_speed", "wx_precip", "wx_visib", "wx_pressure")
        },
        **{
            column: np.array([planes[t][column] if t else None for t in tailnum], dtype=float)
            for column in ("plane_year", "plane_seats")
        },
        "route_delay_rate_28d": np.array([routes[(o, d)][1] / 20 for o, d in zip(origin, dest, strict=True)]),
        "carrier_delay_rate_7d": np.array([carriers[(c,)][1] / 20 for c in carrier]),
        "origin_delay_rate_1d": np.array([origins[(o,)][1] / 20 for o in origin]),
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
    frame[usecase.target.column] = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("float64")

    def row(lookup: str, key: dict, value: dict, observed_at: Any = None) -> dict[str, Any]:
        value = {k: v for k, v in value.items() if v is not None}
        return {
            "date": day.isoformat(),
            "prediction_time": at,
            "lookup": lookup,
            "key": json.dumps(key),
            "value": json.dumps(value),
            "observed_at": observed_at,
        }

    lookups = [row("_day", {}, {})]
    lookups += [row("1:asof_join", {"origin": o}, v, at - pd.Timedelta(hours=1)) for o, v in weather.items()]
    lookups += [row("2:join_source", {"tailnum": t}, v) for t, v in planes.items()]
    for index, table, names in (
        (3, routes, ["origin", "dest"]),
        (4, carriers, ["carrier"]),
        (5, origins, ["origin"]),
    ):
        for key, (n, positives) in table.items():
            lookups.append(
                row(
                    f"{index}:past_rate", dict(zip(names, key, strict=True)), {"n": n, "positives": positives}
                )
            )
    return frame, records.assign(date=day.isoformat()), lookups


def feature_frame(usecase: UseCase, day: date, rows: int, seed: int) -> pd.DataFrame:
    """Synthetic feature rows for one day (see :func:`synthetic_day`)."""
    return synthetic_day(usecase, day, rows, seed)[0]


def write_features(
    env: ServeEnv, days: list[date], rows: int = 40, config_hash: str | None = None
) -> dict[str, pd.DataFrame]:
    """Commit one synthetic feature partition per day (one commit), and, as the features step does, the online
    snapshot of those days and the schedule rows (raw ``flights``) they were built from; returns the feature
    frames by ISO date. ``config_hash``: the features config hash their facts record (default: the use case's)."""
    from pipelines.features.feature_identity import features_config_hash

    uc = env.usecase.name
    frames, facts, records, lookups = {}, {}, [], []
    for index, day in enumerate(days):
        frame, day_records, day_lookups = synthetic_day(env.usecase, day, rows, seed=index + day.toordinal())
        frames[day.isoformat()] = frame
        records.append(day_records)
        lookups += day_lookups
    raw = env.lake.write_partitions(
        raw_table(uc, "flights"), pd.concat(records, ignore_index=True), read_version=LATEST
    )
    for day in days:
        facts[day.isoformat()] = {
            "inputs": {"flights": {day.isoformat(): f"hash-{day}"}},
            "inputs_fingerprint": f"fp-{day.isoformat()}",
            "raw_versions": {raw_table(uc, "flights"): raw.version},
            "config_hash": config_hash or features_config_hash(env.usecase),
        }
    commit = write_features_and_labels(
        env.lake, env.usecase, pd.concat(frames.values(), ignore_index=True), facts=facts
    )
    snapshot = pd.DataFrame(lookups)
    snapshot["observed_at"] = pd.to_datetime(snapshot["observed_at"], utc=True)
    env.lake.write_partitions(
        online_table(uc),
        snapshot,
        read_version=LATEST,
        facts={day: {**day_facts, "features_version": commit.version} for day, day_facts in facts.items()},
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


def log_candidate(
    env: ServeEnv, name: str, family: str, day: date, train: pd.DataFrame, threshold: float | None = None
) -> dict[str, Any]:
    """Fit a small model and log it as one MLflow run the way the train step does, with ``threshold`` as its
    recorded decision threshold (none: a model from before thresholds); returns the candidate entry."""
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.modeling.tracking import feature_columns, record_logged_digest

    columns = feature_columns(env.usecase)
    frame = train.dropna(subset=[env.usecase.target.column])
    x, y = frame[columns], frame[env.usecase.target.column].astype(int)
    tags = {
        "usecase": env.usecase.name,
        "logical_date": day.isoformat(),
        "mode": "full",
        "candidate": name,
        "family": family,
        "config_hash": env.usecase.config_hash,
        "code_version": "test-code-1",
    }
    metadata = None if threshold is None else {"decision_threshold": threshold, "decision_rule": "fixed"}
    with mlflow.start_run(run_name=f"{name}@{day.isoformat()}", tags=tags) as run:
        # a Keras candidate: the train step's own fit and logging (a pyfunc wrapper around a .keras file)
        if family == "keras_mlp":
            from pipelines.config import CandidateSpec
            from pipelines.modeling import fit_candidate, input_example, log_fitted_model

            spec = CandidateSpec(name=name, family=family, params={"hidden_units": [16, 8], "epochs": 3})
            fitted = fit_candidate(spec, env.usecase, x, y.to_numpy(), seed=env.usecase.split.seed)
            info = log_fitted_model(fitted, input_example(x), metadata)
        else:
            model = _pipeline(env.usecase, family, seed=env.usecase.split.seed).fit(x, y)
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                pyfunc_predict_fn="predict_proba",
                signature=infer_signature(x.head(50), model.predict_proba(x.head(50))),
                # the rows a scoring service scores before it serves the model
                input_example=x.dropna().head(5),
                pip_requirements=["scikit-learn"],
                skops_trusted_types=TRUSTED_TYPES,
                metadata=metadata,
            )
            record_logged_digest(info)  # as log_fitted_model does: what every loader checks
    entry = {"name": name, "family": family, "run_id": run.info.run_id, "model_uri": info.model_uri}
    return entry if threshold is None else {**entry, "decision_threshold": threshold}


def produce_day(
    env: ServeEnv,
    day: date,
    gate_passed: bool,
    candidates: tuple[tuple[str, str], ...] = (("logreg", "logistic_regression"),),
    threshold: float | None = None,
) -> dict[str, Any]:
    """Train/evaluate/gate artifacts for ``day`` per the contracts: feature partitions for the window, one MLflow
    run per candidate, and the three result JSONs. The gate outcome is forced to ``gate_passed``."""
    from sklearn.metrics import roc_auc_score

    from pipelines.context import MANUAL_RUN, run_result_key
    from pipelines.modeling.tracking import champion_version, feature_columns, load_model, predict_proba

    uc = env.usecase.name
    feature_days = [day - timedelta(days=n) for n in range(6, 0, -1)]  # 4 train days then 2 holdout days
    frames = write_features(env, feature_days, rows=120)
    dates = sorted(frames)
    train_frame = pd.concat([frames[d] for d in dates[:4]], ignore_index=True)
    holdout = pd.concat([frames[d] for d in dates[4:]], ignore_index=True)
    logged = [log_candidate(env, name, family, day, train_frame, threshold) for name, family in candidates]

    def run_key(step: str) -> str:  # the steps' own runs: from the command line, run "manual"
        return run_result_key(uc, day, step, MANUAL_RUN)

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
    champion = champion_version(
        env.usecase
    )  # what evaluate would have re-scored, and the gate compared against
    gate_result = {
        "passed": gate_passed,
        "candidate": best,
        "run_id": evaluated[best]["run_id"],
        "model_uri": evaluated[best]["model_uri"],
        "primary_metric": "roc_auc",
        "candidate_value": value,
        "champion_value": None,
        "champion_version": None if champion is None else str(champion.version),
        "checks": [check],
        "reasons": [] if gate_passed else [check["reason"]],
        "result_uri": env.lake.storage.uri(run_key("gate")),
    }
    env.lake.write_json(run_key("gate"), gate_result)
    return {"train": train_result, "evaluate": evaluated, "gate": gate_result, "best": best, "frames": frames}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_uvicorn(app: Any) -> tuple[Any, threading.Thread, int]:
    """``app`` under a real uvicorn server on a free loopback port in a daemon thread, as ``mlops serve`` runs it
    (uvloop, httptools); returns (server, thread, port) once it listens."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            log_config=None,  # uvicorn's dictConfig would close the handlers pytest captures logs with
            loop="uvloop",
            http="httptools",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, port


def use_mlflow_of(env: ServeEnv) -> None:
    """Point MLflow's client back at ``env``'s store (another test of the process may have moved it)."""
    import mlflow

    uri = f"sqlite:///{env.tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def serving_step(name: str, day: date) -> dict:
    """Run step ``name`` of the serving tests' use case for ``day`` in-process; its result."""
    from pipelines.cli import run_step

    return run_step([name, "--usecase", USECASE, "--date", day.isoformat()])


def champion_from(
    env: ServeEnv,
    day: date,
    *,
    promote: bool = True,
    threshold: float = 0.3,
    candidates: tuple[tuple[str, str], ...] = (("logreg", "logistic_regression"),),
) -> str:
    """A candidate trained on ``day`` whose gate passed, registered (and promoted unless ``promote`` is False);
    its registry version."""
    produce_day(env, day, gate_passed=True, threshold=threshold, candidates=candidates)
    version = str(serving_step("register", day)["gate_candidate_version"])
    if promote:
        serving_step("promote", day)
    return version


def client_records(env: ServeEnv, day: date, *, without_nulls: bool = False) -> list[dict]:
    """The events of ``day`` as a client sends them: the primary source's columns, JSON values (``without_nulls``:
    only the records with no null, as a tensor cannot carry one)."""
    from pipelines.features.online import read_records

    frame = read_records(env.lake, env.usecase, [day.isoformat()]).drop(columns=["date"])
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    return [r for r in records if None not in r.values()] if without_nulls else records


def prediction_at(env: ServeEnv, day: date) -> str:
    """``day``'s prediction time, as a client's ``at``."""
    return env.usecase.time.prediction_time_of(day).isoformat()
