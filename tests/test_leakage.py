"""A model input that predicts the label almost perfectly on its own fails the train with the column named, unless
the use case allows it by name; honest inputs (the synthetic days' signal, an identifier column) pass."""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from _model_fixtures import (
    FAST_CANDIDATES,
    fast_usecase,
    make_context,
    synthetic_day,
    use_tmp_platform,
    write_features_and_labels,
)

from pipelines.config import LeakageSpec
from pipelines.context import StepFailed
from pipelines.features.model_inputs import model_inputs
from pipelines.lake import Lake
from pipelines.modeling.leakage import check_leakage, single_feature_scores
from pipelines.steps import train as train_step

DAY = date(2013, 2, 10)  # train [01-06, 01-27), validation [01-27, 02-03), holdout [02-03, 02-10)


def _with_inputs(usecase, numeric=(), categorical=(), **leakage):
    features = usecase.features.model_copy(
        update={
            "numeric": [*usecase.features.numeric, *numeric],
            "categorical": [*usecase.features.categorical, *categorical],
        }
    )
    return usecase.model_copy(update={"features": features, "leakage": LeakageSpec(**leakage)})


def _days(usecase, days: int, rows: int, proxy) -> pd.DataFrame:
    """``days`` synthetic feature partitions from 2013-01-05, with the columns ``proxy(frame, rng)`` adds."""
    frames = []
    for offset in range(days):
        day = date(2013, 1, 5) + timedelta(days=offset)
        frame = synthetic_day(usecase, day, rows)
        proxy(frame, np.random.default_rng(offset))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _arrival_hours(frame: pd.DataFrame, rng) -> None:
    """A proxy of the label: the arrival delay in hours, late (label 1) flights mostly above 0.25 h."""
    label = frame["is_delayed"].to_numpy()
    frame["arr_delay_hours"] = np.where(label == 1, 0.5, -0.1) + rng.normal(0, 0.05, len(frame))
    frame.loc[np.isnan(label), "arr_delay_hours"] = np.nan


def test_train_fails_on_a_near_perfect_proxy_naming_the_column(tmp_path, monkeypatch):
    use_tmp_platform(monkeypatch, tmp_path)
    usecase = _with_inputs(fast_usecase([FAST_CANDIDATES[0]]), numeric=["arr_delay_hours"])
    ctx = make_context(usecase, DAY)
    write_features_and_labels(Lake(str(tmp_path / "lake")), usecase, _days(usecase, 36, 60, _arrival_hours))
    args = SimpleNamespace(mode="full", candidates=None, retrain=False)
    with pytest.raises(StepFailed, match=r"model input\(s\) 'arr_delay_hours' \(ROC AUC 1\.0000\)") as failed:
        train_step.run(ctx, args)
    message = str(failed.value)
    assert "the training rows [2013-01-06, 2013-01-27)" in message
    assert "config/usecases/flight_delay.yaml" in message and "features.numeric" in message
    assert "known_with_outcome: true" in message and "leakage.allowed" in message
    assert failed.value.result["leaky"] == ["arr_delay_hours"]
    honest = {c: s for c, s in failed.value.result["single_feature_scores"].items() if c != "arr_delay_hours"}
    assert max(s for s in honest.values() if s is not None) < 0.8, honest
    assert not list((tmp_path / "artifacts").rglob("*")), "nothing is fitted or logged before the check"


def test_an_allowed_input_passes_and_honest_inputs_score_low(tmp_path, monkeypatch):
    usecase = _with_inputs(
        fast_usecase(), numeric=["arr_delay_hours"], categorical=["flight_id"], allowed=["arr_delay_hours"]
    )

    def proxy_and_id(frame: pd.DataFrame, rng) -> None:
        _arrival_hours(frame, rng)
        frame["flight_id"] = [f"f{rng.integers(1 << 40)}" for _ in range(len(frame))]  # one row per value

    frame = _days(usecase, 21, 100, proxy_and_id)
    frame = frame[frame["is_delayed"].notna()]
    X, y = model_inputs(usecase, frame, "rows"), frame["is_delayed"].to_numpy()
    scores = check_leakage(usecase, X, y, "rows")  # allowed by name: no failure
    assert scores["arr_delay_hours"] == 1.0
    assert scores["flight_id"] is not None and scores["flight_id"] < 0.6  # an identifier predicts nothing
    assert scores["dep_hour"] > 0.6  # the synthetic signal is there, far from perfect


def test_a_regression_proxy_is_caught_by_r_squared_also_when_not_linear():
    usecase = fast_usecase().model_copy(deep=True)
    target = usecase.target.model_copy(
        update={
            "column": "arr_delay_minutes",
            "kind": "regression",
            "threshold": None,
            "missing_outcome": "drop",
        }
    )
    usecase = _with_inputs(
        usecase.model_copy(update={"target": target}),
        numeric=["arr_delay_hours", "log_delay"],
        categorical=["delay_band"],
        max_single_feature_score=0.99,
    )
    rng = np.random.default_rng(3)
    rows = 2000
    y = rng.uniform(-10, 90, rows)  # minutes of delay
    X = pd.DataFrame({c: rng.normal(size=rows) for c in usecase.features.numeric})
    for column in usecase.features.categorical:
        X[column] = rng.choice(["a", "b", "c"], rows).astype(object)
    X["arr_delay_hours"] = y / 60 + rng.normal(0, 0.01, rows)  # linear
    X["log_delay"] = np.log(y + 11)  # monotone, not linear
    X["delay_band"] = pd.Series(np.floor(y / 5)).map(lambda v: f"band{int(v)}").astype(object)
    scores = single_feature_scores(usecase, X, y)
    assert scores["arr_delay_hours"] > 0.99 and scores["log_delay"] > 0.99
    assert scores["delay_band"] > 0.99  # learnt on one half, scored on the other
    assert scores["distance"] < 0.01
    with pytest.raises(StepFailed) as failed:
        check_leakage(usecase, X, y, "the training rows")
    assert failed.value.result["leaky"] == ["arr_delay_hours", "delay_band", "log_delay"]
    assert "R-squared" in str(failed.value) and "'features.categorical', 'features.numeric'" in str(
        failed.value
    )
