"""Is a difference larger than the noise? Seeded bootstrap intervals of a metric and of a paired difference.

The bootstrap draws ``resamples`` multisets of the holdout rows (multinomial counts, the classic bootstrap) and
evaluates the metric on each as a *weighted* metric, so no resample is materialised: ROC AUC from one sort of the
scores and cumulative weights, the per-row losses (log loss, Brier, RMSE, MAE, MAPE) and R² as weighted means,
average precision with scikit-learn's ``sample_weight``. The candidate and the champion are scored on the same
rows of each resample (paired), which removes the variance the two share. The same seed gives the same interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.config import HIGHER_IS_BETTER
from pipelines.metrics import PROBABILITY_EPS, clean

if TYPE_CHECKING:
    import numpy as np

METHOD = "paired bootstrap"


def bootstrap_weights(rows: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` x ``rows`` multinomial counts (each row sums to ``rows``): the bootstrap resamples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.multinomial(rows, np.full(rows, 1.0 / rows), size=resamples).astype("float64")


def _weighted_roc_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of ``weights`` (ties count one half), vectorised over the resamples."""
    import numpy as np

    order = np.argsort(scores, kind="stable")
    s, labels, w = scores[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    positive = np.add.reduceat(w * labels, starts, axis=1)
    negative = np.add.reduceat(w * (1 - labels), starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (positive * (below + 0.5 * negative)).sum(axis=1) / pairs, np.nan)


def weighted_metric(metric: str, y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``metric`` of ``scores`` against ``y`` under each row of ``weights`` (NaN where it is undefined)."""
    import numpy as np

    total = weights.sum(axis=1)
    if metric == "roc_auc":
        return _weighted_roc_auc(y, scores, weights)
    if metric == "pr_auc":
        from sklearn.metrics import average_precision_score

        out = []
        for w in weights:
            keep = w > 0
            labels = y[keep]
            ok = labels.min() != labels.max() if len(labels) else False
            out.append(average_precision_score(labels, scores[keep], sample_weight=w[keep]) if ok else np.nan)
        return np.asarray(out)
    if metric in ("log_loss", "brier"):
        if metric == "log_loss":
            p = np.clip(scores, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
            loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        else:
            loss = (scores - y) ** 2
        return weights @ loss / total
    error = scores - y
    if metric == "rmse":
        return np.sqrt(weights @ error**2 / total)
    if metric == "mae":
        return weights @ np.abs(error) / total
    if metric == "mape":
        if (y == 0).any():
            return np.full(len(weights), np.nan)
        return weights @ np.abs(error / y) / total
    if metric == "r2":
        mean = weights @ y / total
        spread = (weights * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(spread > 0, 1.0 - weights @ error**2 / spread, np.nan)
    raise ValueError(f"no bootstrap for metric {metric!r}; known: {sorted(HIGHER_IS_BETTER)}")


def _interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    import numpy as np

    finite = values[np.isfinite(values)]
    if len(finite) < max(10, len(values) // 2):  # most resamples undefined: no credible interval
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return clean(low), clean(high)


def metric_interval(
    metric: str,
    y: Any,
    scores: Any,
    *,
    resamples: int,
    confidence: float,
    seed: int,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """The metric and its percentile bootstrap interval: ``{"value", "low", "high"}``."""
    import numpy as np

    from pipelines.metrics import model_metrics

    y = np.asarray(y, dtype="float64").reshape(-1)
    scores = np.asarray(scores, dtype="float64").reshape(-1)
    value = model_metrics(y, scores, [metric])[metric]
    if len(y) == 0 or value is None:
        return {"value": value, "low": None, "high": None}
    w = bootstrap_weights(len(y), resamples, seed) if weights is None else weights
    low, high = _interval(weighted_metric(metric, y, scores, w), confidence)
    return {"value": value, "low": low, "high": high}


def paired_difference(
    metric: str,
    y: Any,
    candidate: Any,
    champion: Any,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Candidate minus champion on the same rows, signed so that positive is an improvement (the metric's better
    direction), with its paired bootstrap interval at ``confidence`` and everything needed to repeat it."""
    import numpy as np

    from pipelines.metrics import model_metrics

    y = np.asarray(y, dtype="float64").reshape(-1)
    a = np.asarray(candidate, dtype="float64").reshape(-1)
    b = np.asarray(champion, dtype="float64").reshape(-1)
    direction = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    value_a = model_metrics(y, a, [metric])[metric]
    value_b = model_metrics(y, b, [metric])[metric]
    out: dict[str, Any] = {
        "metric": metric,
        "candidate": value_a,
        "champion": value_b,
        "difference": None,
        "low": None,
        "high": None,
        "confidence": confidence,
        "resamples": resamples,
        "seed": seed,
        "rows": len(y),
        "method": METHOD,
    }
    if value_a is None or value_b is None or not np.isfinite(a).all() or not np.isfinite(b).all():
        return out
    weights = bootstrap_weights(len(y), resamples, seed)
    differences = direction * (
        weighted_metric(metric, y, a, weights) - weighted_metric(metric, y, b, weights)
    )
    low, high = _interval(differences, confidence)
    return out | {"difference": clean(direction * (value_a - value_b)), "low": low, "high": high}


WORSE = "worse"
WITHIN_NOISE = "within the noise"
CLEARS = "clears min_delta"


def change_reading(low: Any, high: Any, min_delta: Any = 0.0, tolerance: float = 1e-12) -> str | None:
    """How the interval ``[low, high]`` of an improvement (positive = the candidate is better, in the metric's
    better direction) reads against zero and ``min_delta``: ``CLEARS`` when its lower bound reaches
    ``min_delta`` (the change check passes), ``WORSE`` when the whole interval lies below zero (the candidate is
    worse than the champion), else ``WITHIN_NOISE`` (it straddles zero or ``min_delta``, or lies between them:
    not shown to beat the champion by ``min_delta``); None without an interval."""
    from pipelines.metrics import is_missing

    if is_missing(low) or is_missing(high):
        return None
    delta = 0.0 if is_missing(min_delta) else float(min_delta)
    if float(low) >= delta - tolerance:
        return CLEARS
    if float(high) < 0.0:
        return WORSE
    return WITHIN_NOISE


def direction_words(metric: str) -> tuple[str, str]:
    """``(better, worse)``: what a better and a worse value of ``metric`` is, e.g. ``("lower", "higher")`` for
    an error such as RMSE, MAE or log loss."""
    return ("higher", "lower") if HIGHER_IS_BETTER.get(metric, True) else ("lower", "higher")
