"""Model quality measures: holdout metrics, slices, calibration, errors and permutation importance.

Conventions: probabilities are P(label == 1); labels are 0/1. A metric that is undefined (empty data, a single
class for the ranking metrics, NaN predictions) is ``None``, never NaN, so results stay valid JSON; the gate treats
``None`` and NaN alike and fails on them. Which way is better is ``pipelines.config.HIGHER_IS_BETTER``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pipelines.config import HIGHER_IS_BETTER, DecisionSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

ALL_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier")  # classification
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")
NULL_SLICE = "(null)"
PROBABILITY_EPS = 1e-7


def is_missing(value: Any) -> bool:
    """True for None, NaN and infinities: a value no check may pass on."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def clean(value: Any) -> float | None:
    """A finite float, or None."""
    return None if is_missing(value) else float(value)


def better_direction(metric: str) -> int:
    """+1 when higher is better for ``metric``, -1 when lower is better."""
    return 1 if HIGHER_IS_BETTER[metric] else -1


def classification_metrics(
    y_true: Iterable[Any], proba: Iterable[Any], metrics: Iterable[str] = ALL_METRICS
) -> dict[str, float | None]:
    """``roc_auc``, ``pr_auc`` (average precision), ``log_loss`` and ``brier`` of ``proba`` against 0/1 labels."""
    import numpy as np
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y_true, dtype="float64").reshape(-1)
    p = np.asarray(proba, dtype="float64").reshape(-1)
    wanted = list(metrics)
    out: dict[str, float | None] = dict.fromkeys(wanted)
    if len(y) == 0 or len(y) != len(p) or not np.isfinite(p).all() or not np.isfinite(y).all():
        return out
    y = y.astype("int64")
    two_classes = len(np.unique(y)) == 2
    clipped = np.clip(p, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    for name in wanted:
        if name == "roc_auc":
            value = roc_auc_score(y, p) if two_classes else None
        elif name == "pr_auc":
            value = average_precision_score(y, p) if two_classes else None
        elif name == "log_loss":
            value = log_loss(y, clipped, labels=[0, 1])
        elif name == "brier":
            value = brier_score_loss(y, p, pos_label=1)
        else:
            raise ValueError(f"unknown metric {name!r}; known: {list(ALL_METRICS)}")
        out[name] = clean(value)
    return out


def regression_metrics(
    y_true: Iterable[Any], predicted: Iterable[Any], metrics: Iterable[str] = REGRESSION_METRICS
) -> dict[str, float | None]:
    """``rmse``, ``mae``, ``r2`` and ``mape`` of predicted values against the true ones; ``mape`` is undefined
    (None) when a true value is 0, ``r2`` when the true values do not vary."""
    import numpy as np

    y = np.asarray(y_true, dtype="float64").reshape(-1)
    p = np.asarray(predicted, dtype="float64").reshape(-1)
    wanted = list(metrics)
    out: dict[str, float | None] = dict.fromkeys(wanted)
    if len(y) == 0 or len(y) != len(p) or not np.isfinite(p).all() or not np.isfinite(y).all():
        return out
    error = p - y
    for name in wanted:
        if name == "rmse":
            value = float(np.sqrt(np.mean(error**2)))
        elif name == "mae":
            value = float(np.mean(np.abs(error)))
        elif name == "r2":
            spread = float(np.sum((y - y.mean()) ** 2))
            value = 1.0 - float(np.sum(error**2)) / spread if spread > 0 else None
        elif name == "mape":
            value = float(np.mean(np.abs(error / y))) if (y != 0).all() else None
        else:
            raise ValueError(f"unknown metric {name!r}; known: {list(REGRESSION_METRICS)}")
        out[name] = clean(value)
    return out


def model_metrics(y_true: Any, scores: Any, metrics: Iterable[str]) -> dict[str, float | None]:
    """The named metrics of ``scores`` (probabilities of a classifier, values of a regressor) against the true
    labels: classification and regression metrics are told apart by their names."""
    wanted = list(metrics)
    out: dict[str, float | None] = dict.fromkeys(wanted)
    classification = [m for m in wanted if m in ALL_METRICS]
    regression = [m for m in wanted if m in REGRESSION_METRICS]
    unknown = [m for m in wanted if m not in ALL_METRICS and m not in REGRESSION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {[*ALL_METRICS, *REGRESSION_METRICS]}")
    if classification:
        out.update(classification_metrics(y_true, scores, classification))
    if regression:
        out.update(regression_metrics(y_true, scores, regression))
    return out


def slice_label(value: Any) -> str:
    return NULL_SLICE if is_missing(value) and not isinstance(value, str) else str(value)


def slice_labels(values: Any) -> np.ndarray:
    """:func:`slice_label` of every value, as an object array: labelled once per distinct value (a day's rows
    hold few), not once per row."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(values), use_na_sentinel=False)
    labels = np.array([slice_label(v) for v in uniques] or [NULL_SLICE], dtype=object)
    return labels[codes]


def slice_metrics(
    groups: pd.DataFrame, y_true: Any, proba: Any, metrics: Iterable[str] = ALL_METRICS
) -> dict[str, dict[str, dict[str, Any]]]:
    """Metrics per value of each column of ``groups``: ``{column: {value: {"rows", "positives", metric...}}}``
    (a regression's slices have ``label_mean`` instead of ``positives``).

    Values are strings (nulls are ``"(null)"``), largest slices first.
    """
    import numpy as np

    y = np.asarray(y_true, dtype="float64").reshape(-1)
    p = np.asarray(proba, dtype="float64").reshape(-1)
    wanted = list(metrics)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for column in groups.columns:
        labels = slice_labels(groups[column].to_numpy())
        values, counts = np.unique(labels, return_counts=True)
        order = sorted(zip(values, counts, strict=True), key=lambda item: (-item[1], item[0]))
        column_out: dict[str, dict[str, Any]] = {}
        for value, count in order:
            mask = labels == value
            entry: dict[str, Any] = {"rows": int(count)}
            if any(m in ALL_METRICS for m in wanted):
                entry["positives"] = int(np.nansum(y[mask]))
            else:
                entry["label_mean"] = clean(np.nanmean(y[mask]))
            entry.update(model_metrics(y[mask], p[mask], wanted))
            column_out[str(value)] = entry
        out[str(column)] = column_out
    return out


def worst_slices(
    slices: dict[str, dict[str, dict[str, Any]]], metric: str, min_rows: int, limit: int = 5
) -> list[dict[str, Any]]:
    """The ``limit`` worst slices (rows >= ``min_rows``) by ``metric``; undefined values come first."""
    direction = better_direction(metric)
    found = []
    for column, values in slices.items():
        for value, entry in values.items():
            if entry.get("rows", 0) >= min_rows:
                found.append(
                    {"column": column, "value": value, "rows": entry["rows"], metric: entry.get(metric)}
                )

    def badness(item: dict[str, Any]) -> tuple[int, float]:
        score = item[metric]
        return (0, 0.0) if is_missing(score) else (1, direction * float(score))

    return sorted(found, key=badness)[:limit]


def confusion(y_true: Any, proba: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Confusion matrix at ``threshold`` (predict 1 when proba >= threshold) with precision/recall/accuracy."""
    import numpy as np

    y = np.asarray(y_true, dtype="int64").reshape(-1)
    predicted = (np.asarray(proba, dtype="float64").reshape(-1) >= threshold).astype("int64")
    tp = int(((predicted == 1) & (y == 1)).sum())
    fp = int(((predicted == 1) & (y == 0)).sum())
    tn = int(((predicted == 0) & (y == 0)).sum())
    fn = int(((predicted == 0) & (y == 1)).sum())
    total = tp + fp + tn + fn
    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": clean(tp / (tp + fp)) if tp + fp else None,
        "recall": clean(tp / (tp + fn)) if tp + fn else None,
        "accuracy": clean((tp + tn) / total) if total else None,
    }


class ThresholdError(ValueError):
    """No threshold can be chosen by the rule on these rows (a single class, or an unreachable target)."""


def choose_threshold(y_true: Any, proba: Any, decision: DecisionSpec) -> dict[str, Any]:
    """The decision threshold by ``decision.rule`` on validation rows, with the confusion matrix there.

    Every distinct probability is a possible threshold (predict 1 when proba >= it). Ties go to the higher
    threshold (fewer positives predicted). ``fixed`` returns ``decision.threshold`` and its confusion matrix.
    Raises :class:`ThresholdError` when the rows have a single class or no threshold reaches the target.
    """
    import numpy as np

    y = np.asarray(y_true, dtype="int64").reshape(-1)
    p = np.asarray(proba, dtype="float64").reshape(-1)
    if decision.rule == "fixed":
        return {"rule": "fixed", **confusion(y, p, float(decision.threshold or 0.5))}
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise ThresholdError(
            f"the validation rows ({len(y)}) have a single class: no threshold can be chosen by {decision.rule}"
        )
    # sweep the distinct scores from high to low: predicting 1 for proba >= t
    order = np.argsort(-p, kind="stable")
    scores, labels = p[order], y[order]
    last_of_value = np.r_[scores[1:] != scores[:-1], True]
    tp = np.cumsum(labels)[last_of_value].astype("float64")
    fp = np.cumsum(1 - labels)[last_of_value].astype("float64")
    thresholds = scores[last_of_value]
    fn = positives - tp
    precision = tp / (tp + fp)
    recall = tp / positives
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    if decision.rule == "best_f1":
        objective, allowed = f1, np.ones_like(f1, dtype=bool)
    elif decision.rule == "min_precision":
        objective, allowed = recall, precision >= float(decision.target or 0) - 1e-12
    elif decision.rule == "min_recall":
        objective, allowed = precision, recall >= float(decision.target or 0) - 1e-12
    else:
        costs = decision.costs
        assert costs is not None
        objective = -(costs.false_positive * fp + costs.false_negative * fn)
        allowed = np.ones_like(objective, dtype=bool)
    if not allowed.any():
        what = "precision" if decision.rule == "min_precision" else "recall"
        raise ThresholdError(
            f"no threshold reaches {what} {decision.target} on the validation rows (best: "
            f"{float((precision if what == 'precision' else recall).max()):.4f}); lower decision.target"
        )
    best = np.flatnonzero(allowed & (objective == objective[allowed].max()))[0]
    threshold = float(thresholds[best])
    return {"rule": decision.rule, **confusion(y, p, threshold), "f1": clean(f1[best]), "rows": int(len(y))}


def rate_threshold(positive_rate: float, scores: Any) -> dict[str, Any]:
    """The threshold at which ``scores`` flag ``positive_rate`` of their rows, labels unused: the ``k``-th highest
    score, ``k = round(positive_rate * n)`` (predict 1 when score >= it), an observed score as in
    :func:`choose_threshold`; the ``1 - k/n`` quantile of the scores. Ties at it flag a few more rows
    (``target_positive_rate``); ``k = 0`` gives a threshold just above the highest score. Returns ``threshold``,
    ``rows``, ``positives`` (``k``), ``positive_rate`` (asked) and ``target_positive_rate`` (flagged)."""
    import numpy as np

    p = np.asarray(scores, dtype="float64").reshape(-1)
    if len(p) == 0:
        raise ValueError("no scores to take a rate's threshold from")
    if not 0.0 <= float(positive_rate) <= 1.0:
        raise ValueError(f"a positive rate is in [0, 1], got {positive_rate}")
    k = int(round(float(positive_rate) * len(p)))
    ordered = np.sort(p)[::-1]
    threshold = float(ordered[k - 1]) if k else float(np.nextafter(ordered[0], np.inf))
    return {
        "threshold": threshold,
        "rows": int(len(p)),
        "positives": k,
        "positive_rate": clean(float(positive_rate)),
        "target_positive_rate": clean(float((p >= threshold).mean())),
    }


def residuals(
    y_true: Any, predicted: Any, bins: int = 10, sample: int = 400, seed: int = 0
) -> dict[str, Any]:
    """A regression's errors (predicted - true): mean, spread and quantiles, the mean error per decile of the
    predicted value (a bias that depends on the prediction shows here), and a seeded sample of (predicted,
    residual) points for the report's plot."""
    import numpy as np

    y = np.asarray(y_true, dtype="float64").reshape(-1)
    p = np.asarray(predicted, dtype="float64").reshape(-1)
    error = p - y
    if len(y) == 0:
        return {"rows": 0, "mean": None, "std": None, "quantiles": {}, "by_predicted": [], "sample": []}
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    by_predicted = []
    for b in range(max(len(edges) - 1, 1)):
        mask = index == b
        if mask.any():
            by_predicted.append(
                {
                    "lower": clean(edges[b]),
                    "upper": clean(edges[min(b + 1, len(edges) - 1)]),
                    "rows": int(mask.sum()),
                    "mean_predicted": clean(p[mask].mean()),
                    "mean_actual": clean(y[mask].mean()),
                    "mean_residual": clean(error[mask].mean()),
                }
            )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(y), size=min(sample, len(y)), replace=False))
    return {
        "rows": int(len(y)),
        "mean": clean(error.mean()),
        "std": clean(error.std()),
        "quantiles": {f"p{q}": clean(np.quantile(error, q / 100)) for q in (5, 25, 50, 75, 95)},
        "by_predicted": by_predicted,
        "sample": [[clean(p[i]), clean(error[i])] for i in chosen],
    }


def calibration(y_true: Any, proba: Any, bins: int = 10) -> dict[str, Any]:
    """Reliability bins of equal width on [0, 1] and the expected calibration error (ECE)."""
    import numpy as np

    y = np.asarray(y_true, dtype="float64").reshape(-1)
    p = np.asarray(proba, dtype="float64").reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        mean_predicted = clean(p[mask].mean()) if count else None
        observed = clean(y[mask].mean()) if count else None
        if count and mean_predicted is not None and observed is not None:
            ece += count / max(len(p), 1) * abs(mean_predicted - observed)
        rows.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "rows": count,
                "mean_predicted": mean_predicted,
                "observed_rate": observed,
            }
        )
    return {"bins": rows, "ece": clean(ece) if len(p) else None}


def permutation_importance(
    predict: Callable[[pd.DataFrame], np.ndarray],
    X: pd.DataFrame,
    y_true: Any,
    metric: str,
    *,
    repeats: int = 3,
    seed: int = 0,
    max_rows: int = 4000,
) -> list[dict[str, Any]]:
    """How much ``metric`` worsens when each column of ``X`` is shuffled (mean and std over ``repeats``).

    Works on any predictor (pyfunc models included). Uses a seeded sample of at most ``max_rows`` rows. Every
    shuffled copy (``columns x repeats`` of them, plus the unshuffled rows) is scored in ONE ``predict`` call on
    their concatenation: a pyfunc call has a fixed cost (schema enforcement, a Keras graph call) that one call
    per copy paid again and again. Positive importance = the model relies on the column. Sorted by importance,
    largest first.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = np.asarray(y_true, dtype="float64").reshape(-1)
    if len(X) > max_rows:
        rows = np.sort(rng.choice(len(X), size=max_rows, replace=False))
        X, y = X.iloc[rows].reset_index(drop=True), y[rows]
    else:
        X = X.reset_index(drop=True)
    direction = better_direction(metric)
    copies = [X]
    for column in X.columns:  # the same draws, in the same order, as one call per copy made
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[column] = X[column].to_numpy()[rng.permutation(len(X))]
            copies.append(shuffled)
    scores = np.asarray(predict(pd.concat(copies, ignore_index=True)), dtype="float64").reshape(-1)
    blocks = scores.reshape(len(copies), len(X))
    baseline = model_metrics(y, blocks[0], [metric])[metric]
    results = []
    for index, column in enumerate(X.columns):
        drops = []
        for repeat in range(repeats):
            score = model_metrics(y, blocks[1 + index * repeats + repeat], [metric])[metric]
            if baseline is not None and score is not None:
                drops.append(direction * (baseline - score))
        results.append(
            {
                "feature": str(column),
                "importance": clean(np.mean(drops)) if drops else None,
                "std": clean(np.std(drops)) if drops else None,
            }
        )
    return sorted(results, key=lambda r: (r["importance"] is None, -(r["importance"] or 0.0), r["feature"]))


def best_candidate(candidates: dict[str, dict[str, Any]], metric: str) -> str | None:
    """Name of the candidate with the best defined ``metric`` (ties: config order), else the first name."""
    direction = better_direction(metric)
    best, best_score = None, None
    for name, entry in candidates.items():
        value = entry.get("metrics", {}).get(metric)
        if is_missing(value):
            continue
        if best_score is None or direction * float(value) > direction * best_score:
            best, best_score = name, float(value)
    return best if best is not None else next(iter(candidates), None)


def curves(y_true: Any, proba: Any, points: int = 200) -> dict[str, Any]:
    """ROC and precision-recall curves of ``proba``, each thinned to about ``points`` points for plotting."""
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y = np.asarray(y_true, dtype="int64").reshape(-1)
    p = np.asarray(proba, dtype="float64").reshape(-1)
    if len(y) == 0 or y.min() == y.max() or not np.isfinite(p).all():
        return {}

    def thin(*arrays: Any) -> list[list[float]]:
        keep = np.unique(np.linspace(0, len(arrays[0]) - 1, min(points, len(arrays[0]))).round().astype(int))
        return [[round(float(v), 5) for v in a[keep]] for a in arrays]

    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    fpr_l, tpr_l = thin(fpr, tpr)
    recall_l, precision_l = thin(recall[::-1], precision[::-1])
    return {
        "roc": {"fpr": fpr_l, "tpr": tpr_l, "auc": clean(roc_auc_score(y, p))},
        "pr": {
            "recall": recall_l,
            "precision": precision_l,
            "average_precision": clean(average_precision_score(y, p)),
            "base_rate": clean(y.mean()),
        },
    }
