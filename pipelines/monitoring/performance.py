"""Live performance of predictions whose outcomes arrived, and performance estimated from the scores alone.

Both come with a bootstrap interval that resamples whole days (the gate's resampling, ``pipelines.evaluation.significance``),
so a window of a few days says how little it knows. The estimate is confidence-based (NannyML's CBPE): the
champion's scores are calibrated (isotonic) on labelled scores of the same model, read as the probability that each
event is positive, and the expected confusion matrix and ROC AUC follow. It needs no outcome of the window, so decay
shows before the window's labels do, as long as the calibration holds.

The labelled scores are the model's own most recent predictions whose outcomes had arrived before the window began
(:class:`CalibrationSet`; the model's holdout where there are too few yet). A calibration from the holdout alone
cannot see that how the label depends on the inputs has moved since training, and over the demo year it put the
estimate above the live figure in 10 months of 11. How well the scores separate the outcomes also varies from
day to day, so the estimate's interval is a prediction interval for a window of this many days: each draw
resamples the window's days and refits the calibration on as many days drawn from the calibration set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.evaluation.metrics import better_direction, calibration, clean, model_metrics
from pipelines.evaluation.significance import (
    Resampling,
    cluster_index,
    draw_resampling,
    expected_roc_auc,
    expected_roc_auc_per_draw,
    interval,
    metric_interval,
)


def day_resampling(frame: Any, resamples: int, seed: int) -> Resampling:
    """Resamples of whole days (column ``date``) of ``frame``'s rows; rows when they are of one day only (one
    cluster would give an interval of zero width)."""
    clusters = cluster_index(frame, ["date"])
    if len(clusters) and clusters.max() < 1:
        return draw_resampling(len(frame), resamples, seed)
    return draw_resampling(len(frame), resamples, seed, clusters, ("date",))


@dataclass(frozen=True)
class CalibrationSet:
    """Labelled scores of one model that an estimate is calibrated on, with the day of each (``day``: a cluster
    index, 0 to ``days - 1``) and where they come from (``source``, shown with the estimate)."""

    scores: np.ndarray
    labels: np.ndarray
    day: np.ndarray
    source: str

    @property
    def days(self) -> int:
        return int(self.day.max()) + 1 if len(self.day) else 0

    @classmethod
    def of(cls, frame: Any, label: str, source: str) -> CalibrationSet:
        """The rows of ``frame`` (columns ``_score``, ``label`` and ``date``)."""
        return cls(
            scores=frame["_score"].to_numpy(dtype="float64"),
            labels=frame[label].to_numpy(dtype="float64"),
            day=cluster_index(frame, ["date"]),
            source=source,
        )


class _IsotonicMaps:
    """Isotonic maps from scores to the observed positive rate, fitted on one :class:`CalibrationSet` under any
    weights of its days: the scores are sorted and their ties pooled once, so a refit is one pass of the
    pool-adjacent-violators algorithm (what scikit-learn's ``IsotonicRegression`` fits, clipped at the ends)."""

    def __init__(self, labelled: CalibrationSet) -> None:
        self.x, self.unique = np.unique(labelled.scores, return_inverse=True)
        self.labels = labelled.labels
        self.day = labelled.day

    def apply(self, scores: np.ndarray, day_weights: np.ndarray | None = None) -> np.ndarray:
        """The calibrated probability of each of ``scores`` (linear between the steps) under a fit on the
        calibration rows weighted by their day's weight (all 1: None)."""
        from scipy.optimize import isotonic_regression

        weight = None if day_weights is None else day_weights[self.day].astype("float64")
        total = np.bincount(self.unique, weights=weight, minlength=len(self.x))
        positive = np.bincount(
            self.unique,
            weights=self.labels if weight is None else self.labels * weight,
            minlength=len(self.x),
        )
        kept = total > 0
        # observed rates lie in [0, 1], so the fit does too (no clipping needed)
        fitted = isotonic_regression(positive[kept] / total[kept], weights=total[kept]).x
        return np.interp(scores, self.x[kept], fitted)


def expected_confusion(probability: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The confusion matrix the calibrated ``probability`` implies at the decision ``threshold`` (on scores)."""
    flagged = scores >= threshold
    return {
        "tp": float(probability[flagged].sum()),
        "fp": float((1 - probability[flagged]).sum()),
        "fn": float(probability[~flagged].sum()),
        "tn": float((1 - probability[~flagged]).sum()),
    }


def estimated_performance(
    scores: np.ndarray,
    labelled: CalibrationSet,
    threshold: float | None,
    resampling: Resampling,
    confidence: float,
) -> dict[str, Any]:
    """ROC AUC and the confusion matrix that ``scores`` imply once calibrated on ``labelled``, with the ROC
    AUC's prediction interval: under each of ``resampling``'s draws of the window's days, the calibration is
    refitted on a draw (with replacement) of as many of its own days, seeded by ``resampling.seed``."""
    maps = _IsotonicMaps(labelled)
    probability = maps.apply(scores)
    whole = Resampling(np.ones((1, resampling.clusters), dtype="int32"), resampling.cluster, resampling.seed)
    value = expected_roc_auc(probability, scores, whole)[0]
    window_days = int(resampling.clusters) if resampling.cluster_by else 1
    rng = np.random.default_rng(resampling.seed)

    def refitted() -> Iterator[np.ndarray]:
        for _ in range(resampling.resamples):
            drawn = rng.integers(0, labelled.days, size=window_days)
            yield maps.apply(scores, np.bincount(drawn, minlength=labelled.days))

    draws = expected_roc_auc_per_draw(refitted(), scores, resampling)
    low, high = interval(draws, confidence, value, resampling.clusters)
    # the widening for few days can pass ROC AUC's range; the interval says no more than the range does
    low, high = (None if low is None else max(0.0, low)), (None if high is None else min(1.0, high))
    out: dict[str, Any] = {
        "roc_auc": {"value": value, "low": low, "high": high},
        "expected_positive_rate": clean(probability.mean()) if len(probability) else None,
        "calibrated_on": labelled.source,
    }
    if threshold is not None and len(scores):
        out["confusion"] = expected_confusion(probability, scores, threshold)
    return out


def live_performance(
    y: np.ndarray,
    scores: np.ndarray,
    metric: str,
    classification: bool,
    resampling: Resampling,
    confidence: float,
) -> dict[str, Any]:
    """The primary metric with its day-bootstrap interval, and (classification) the calibration error."""
    out = {
        metric: metric_interval(
            metric,
            y,
            scores,
            resamples=resampling.resamples,
            confidence=confidence,
            seed=resampling.seed,
            resampling=resampling,
        )
    }
    if classification and len(y):
        out["calibration_error"] = {"value": calibration(y, scores)["ece"], "low": None, "high": None}
    return out


def decayed(metric: str, measured: dict[str, Any], reference: float | None, max_drop: float) -> bool:
    """True when the metric is worse than ``reference`` by more than ``max_drop`` even at the favourable end of
    its interval (no interval: never, since a point value alone cannot tell decay from noise)."""
    if reference is None:
        return False
    direction = better_direction(metric)
    favourable = measured.get("high") if direction > 0 else measured.get("low")
    if favourable is None:
        return False
    return bool(direction * (reference - favourable) > max_drop)


def point_metric(metric: str, y: Any, scores: Any) -> float | None:
    """The metric on these rows (None where undefined)."""
    return model_metrics(y, scores, [metric])[metric]
