"""Live performance of predictions whose outcomes arrived, and performance estimated from the scores alone.

Both come with a bootstrap interval that resamples whole days (the gate's resampling, ``pipelines.evaluation.significance``),
so a window of a few days says how little it knows. The estimate is confidence-based (NannyML's CBPE): the
champion's scores, calibrated on its own holdout (isotonic, fitted once per champion in its reference), are read
as the probability that each event is positive; the expected confusion matrix at the decision threshold and the
expected ROC AUC follow. It needs no outcome, so decay shows weeks before the labels do, as long as the model's
calibration holds (a change in how the label depends on the inputs is seen only by the live figure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.evaluation.metrics import better_direction, calibration, clean, model_metrics
from pipelines.evaluation.significance import (
    Resampling,
    cluster_index,
    draw_resampling,
    expected_roc_auc,
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


def fit_calibration(scores: Any, labels: Any) -> dict[str, list[float]]:
    """An isotonic map from scores to the observed positive rate, as the two arrays of its steps (stored in the
    reference as plain numbers, no pickle), applied by :func:`calibrate`."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    model.fit(np.asarray(scores, dtype="float64"), np.asarray(labels, dtype="float64"))
    return {"x": [float(v) for v in model.X_thresholds_], "y": [float(v) for v in model.y_thresholds_]}


def calibrate(mapping: dict[str, list[float]], scores: Any) -> np.ndarray:
    """The calibrated probability of each score (linear between the isotonic steps, clipped at the ends)."""
    return np.interp(np.asarray(scores, dtype="float64"), mapping["x"], mapping["y"])


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
    mapping: dict[str, list[float]],
    threshold: float | None,
    resampling: Resampling,
    confidence: float,
) -> dict[str, Any]:
    """ROC AUC and the confusion matrix the champion's scores imply, with the ROC AUC's day-bootstrap interval."""
    probability = calibrate(mapping, scores)
    value, draws = expected_roc_auc(probability, scores, resampling)
    low, high = interval(draws, confidence, value, resampling.clusters)
    out: dict[str, Any] = {
        "roc_auc": {"value": value, "low": low, "high": high},
        "expected_positive_rate": clean(probability.mean()) if len(probability) else None,
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
