"""Fairness over sensitive attributes: per group metric (with a bootstrap interval), selection rate, true- and
false-positive rates, computed with fairlearn's ``MetricFrame``; the worst and best gated group, their gap and
ratio. Groups with too few rows, positives or negatives are shown and flagged, never gated."""

from __future__ import annotations

from typing import Any

from pipelines.config import HIGHER_IS_BETTER, FairnessSpec
from pipelines.metrics import clean, model_metrics, slice_label


def _metric_function(metric: str) -> Any:
    def value(y_true: Any, scores: Any) -> float:
        found = model_metrics(y_true, scores, [metric])[metric]
        return float("nan") if found is None else found

    return value


def _rate_functions(threshold: float) -> dict[str, Any]:
    from fairlearn.metrics import false_positive_rate, selection_rate, true_positive_rate

    def decided(function: Any) -> Any:
        def rate(y_true: Any, scores: Any) -> float:
            import numpy as np

            y = np.asarray(y_true).astype("int64")
            if function is not selection_rate and (y.min() == y.max()):
                return float("nan")  # a rate over one class only is undefined
            return float(function(y, (np.asarray(scores) >= threshold).astype("int64"), pos_label=1))

        return rate

    return {
        "selection_rate": decided(selection_rate),
        "tpr": decided(true_positive_rate),
        "fpr": decided(false_positive_rate),
    }


def group_fairness(
    y: Any,
    scores: Any,
    groups: Any,
    *,
    spec: FairnessSpec,
    task: str,
    threshold: float | None,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """One model's fairness over one sensitive attribute (``groups``, aligned with ``y`` and ``scores``)."""
    import numpy as np
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count

    from pipelines.significance import metric_interval

    y = np.asarray(y, dtype="float64")
    scores = np.asarray(scores, dtype="float64")
    labels = pd.Series([slice_label(v) for v in groups], name="group")
    functions: dict[str, Any] = {"rows": count, "value": _metric_function(spec.metric)}
    if task == "classification" and threshold is not None:
        functions |= _rate_functions(threshold)
    frame = MetricFrame(metrics=functions, y_true=y, y_pred=scores, sensitive_features=labels)
    by_group = frame.by_group
    direction = 1.0 if HIGHER_IS_BETTER[spec.metric] else -1.0
    entries = []
    for position, (group, row) in enumerate(by_group.iterrows()):
        mask = (labels == group).to_numpy()
        rows = int(row["rows"])
        positives = int(y[mask].sum()) if task == "classification" else None
        reasons = []
        if rows < spec.min_group_rows:
            reasons.append(f"{rows} rows < {spec.min_group_rows}")
        if positives is not None and min(positives, rows - positives) < spec.min_group_positives:
            reasons.append(
                f"{positives} positives / {rows - positives} negatives (< {spec.min_group_positives} of either)"
            )
        interval = metric_interval(
            spec.metric,
            y[mask],
            scores[mask],
            resamples=resamples,
            confidence=confidence,
            seed=seed + position,
        )
        entries.append(
            {
                "group": str(group),
                "rows": rows,
                "positives": positives,
                "value": clean(row["value"]),
                "low": interval["low"],
                "high": interval["high"],
                "selection_rate": clean(row.get("selection_rate")),
                "tpr": clean(row.get("tpr")),
                "fpr": clean(row.get("fpr")),
                "gated": not reasons,
                "note": "not gated: " + "; ".join(reasons) if reasons else "",
            }
        )
    gated = [e for e in entries if e["gated"] and e["value"] is not None]
    undefined = [e["group"] for e in entries if e["gated"] and e["value"] is None]
    worst = min(gated, key=lambda e: direction * e["value"]) if gated else None
    best = max(gated, key=lambda e: direction * e["value"]) if gated else None
    gap = ratio = None
    if worst is not None and best is not None:
        gap = abs(best["value"] - worst["value"])
        low, high = sorted((abs(worst["value"]), abs(best["value"])))
        ratio = clean(low / high) if high > 0 else None
    return {
        "metric": spec.metric,
        "groups": entries,
        "worst": None if worst is None else worst["group"],
        "worst_value": None if worst is None else worst["value"],
        "best": None if best is None else best["group"],
        "best_value": None if best is None else best["value"],
        "gap": clean(gap),
        "ratio": ratio,
        "undefined": undefined,
    }


def fairness_report(
    y: Any,
    candidate_scores: Any,
    champion_scores: Any | None,
    frame: Any,
    *,
    attributes: list[str],
    spec: FairnessSpec,
    task: str,
    candidate_threshold: float | None,
    champion_threshold: float | None,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Per sensitive attribute: the candidate's groups and, when the champion could be scored, the champion's."""
    out: dict[str, Any] = {}
    common = {"spec": spec, "task": task, "resamples": resamples, "confidence": confidence, "seed": seed}
    for attribute in attributes:
        groups = frame[attribute].to_numpy()
        out[attribute] = {
            "metric": spec.metric,
            "candidate": group_fairness(y, candidate_scores, groups, threshold=candidate_threshold, **common),
            "champion": None
            if champion_scores is None
            else group_fairness(y, champion_scores, groups, threshold=champion_threshold, **common),
        }
    return out
