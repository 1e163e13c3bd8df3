"""The performance estimated from scores alone (pipelines.monitoring.performance): the calibration it refits, and
how often its prediction interval holds the ROC AUC the window's outcomes later give.

Synthetic days where how strongly the outcome depends on the score varies from day to day, as the flights' delays
do with the weather: the estimate is judged against the realised outcomes of windows it never saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from pipelines.evaluation.significance import Resampling, expected_roc_auc, expected_roc_auc_per_draw
from pipelines.monitoring.performance import (
    CalibrationSet,
    _IsotonicMaps,
    day_resampling,
    estimated_performance,
)

ROWS_A_DAY = 300


def _days(rng: np.random.Generator, first: int, count: int, slope: float, spread: float) -> pd.DataFrame:
    """``count`` days of scored events: the model's score is a logistic of ``x``; the outcome's log-odds are
    ``slope * x`` plus a day's own departure (normal, sd ``spread``) from it."""
    frames = []
    for day in range(first, first + count):
        x = rng.normal(size=ROWS_A_DAY)
        day_slope = slope + spread * rng.normal()
        outcome = rng.random(ROWS_A_DAY) < 1 / (1 + np.exp(-(day_slope * x - 1.0)))
        frames.append(
            pd.DataFrame(
                {"date": f"d{day:03d}", "_score": np.round(1 / (1 + np.exp(-x)), 3), "y": outcome * 1.0}
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_the_refitted_map_is_scikit_learns_isotonic_fit_with_ties_pooled() -> None:
    rng = np.random.default_rng(0)
    frame = _days(rng, 0, 5, slope=1.0, spread=0.0)  # scores rounded to 3 places: many ties
    maps = _IsotonicMaps(CalibrationSet.of(frame, "y", "test"))
    grid = np.linspace(-0.1, 1.1, 301)
    expected = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(frame["_score"], frame["y"])
    np.testing.assert_allclose(maps.apply(grid), expected.predict(grid), atol=1e-12)
    # day weights: the fit on days drawn with repetition is the fit on those rows repeated
    weights = np.array([2, 0, 1, 0, 3])
    repeated = pd.concat(
        [frame[frame["date"] == f"d{d:03d}"] for d in range(5) for _ in range(weights[d])], ignore_index=True
    )
    expected = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        repeated["_score"], repeated["y"]
    )
    np.testing.assert_allclose(maps.apply(grid, weights), expected.predict(grid), atol=1e-12)


def test_the_per_draw_auc_is_the_gates_soft_label_auc_of_each_draw() -> None:
    rng = np.random.default_rng(1)
    frame = _days(rng, 0, 7, slope=1.0, spread=0.3)
    resampling = day_resampling(frame, 50, 3)
    scores = frame["_score"].to_numpy()
    probability = rng.random(len(frame))
    _, draws = expected_roc_auc(probability, scores, resampling)
    np.testing.assert_allclose(
        expected_roc_auc_per_draw((probability for _ in range(50)), scores, resampling), draws, rtol=1e-12
    )
    # one draw of its own probabilities: that draw alone, as a resampling of one
    other = rng.random(len(frame))
    per_draw = expected_roc_auc_per_draw(
        [other if r == 7 else probability for r in range(50)], scores, resampling
    )
    single = Resampling(resampling.counts[7:8], resampling.cluster, 3)
    assert per_draw[7] == pytest.approx(expected_roc_auc(other, scores, single)[1][0], rel=1e-12)


def test_the_prediction_interval_holds_the_live_auc_of_windows_it_never_saw() -> None:
    """Calibrated on 28 days, each estimate is judged against the realised ROC AUC of the next 7 days. Collapsing
    the same calibration rows into one day (a fixed calibration, the interval of the window's days alone: what
    the estimate had before) covers far fewer windows, because a week's separation varies more than its scores
    do."""
    rng = np.random.default_rng(7)
    held = {"by day": 0, "fixed": 0}
    windows = 24
    for _ in range(windows):
        recent = _days(rng, 0, 28, slope=1.2, spread=0.5)
        window = _days(rng, 28, 7, slope=1.2, spread=0.5)
        live = roc_auc_score(window["y"], window["_score"])
        resampling = day_resampling(window, 200, 11)
        scores = window["_score"].to_numpy()
        for name, frame in (("by day", recent), ("fixed", recent.assign(date="all"))):
            estimate = estimated_performance(
                scores, CalibrationSet.of(frame, "y", name), 0.5, resampling, 0.95
            )["roc_auc"]
            held[name] += estimate["low"] <= live <= estimate["high"]
    assert held["by day"] >= 0.8 * windows, held
    assert held["fixed"] < held["by day"] - 0.2 * windows, held


def test_calibrated_on_recent_outcomes_the_estimate_follows_a_decay_the_holdout_cannot_see() -> None:
    rng = np.random.default_rng(5)
    holdout = _days(rng, 0, 14, slope=2.0, spread=0.2)  # as trained: the score separates well
    recent = _days(rng, 100, 28, slope=0.6, spread=0.2)  # since: much less
    window = _days(rng, 128, 7, slope=0.6, spread=0.2)
    live = roc_auc_score(window["y"], window["_score"])
    resampling = day_resampling(window, 200, 11)
    scores = window["_score"].to_numpy()
    from_holdout = estimated_performance(scores, CalibrationSet.of(holdout, "y", "h"), None, resampling, 0.95)
    from_recent = estimated_performance(scores, CalibrationSet.of(recent, "y", "r"), None, resampling, 0.95)
    assert from_holdout["roc_auc"]["low"] > live + 0.05, (from_holdout, live)
    assert from_recent["roc_auc"]["low"] <= live <= from_recent["roc_auc"]["high"], (from_recent, live)
    assert from_recent["calibrated_on"] == "r" and "confusion" not in from_recent
