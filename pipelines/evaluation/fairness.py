"""Fairness over sensitive attributes: per group metric (with a bootstrap interval), selection rate, true- and
false-positive rates at the decision threshold (each with a bootstrap interval), computed with fairlearn's
``MetricFrame``; the worst and best group, their gap and ratio; per group, the change against the same group of
the champion (paired bootstrap on the group's rows).

How a group is gated (``gated_on``, read by the gate):

- ``"value"``: the group has ``min_group_rows`` rows and, for a classification, ``min_group_positives`` positives
  and as many negatives: it is judged on its point value;
- ``"interval"``: a smaller group with a bootstrap interval is judged on the favourable end of its interval: it
  fails a floor only when even its interval's best end is short of it (the smallest groups, where harm
  concentrates, are gated, but not on noise);
- ``None``: a group too small to have any interval (one class only, too few rows to bootstrap): shown and listed
  as not gated, and the gate's decision names it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.config import HIGHER_IS_BETTER, FairnessSpec, SliceGateSpec
from pipelines.evaluation.metrics import clean, model_metrics, slice_labels

if TYPE_CHECKING:
    from pipelines.evaluation.significance import Resampling

RATES = ("selection_rate", "tpr", "fpr")
RATE_NAMES = {"selection_rate": "selection rate", "tpr": "true-positive rate", "fpr": "false-positive rate"}


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


def rate_intervals(
    y: Any,
    scores: Any,
    threshold: float,
    *,
    resamples: int,
    confidence: float,
    seed: int,
    resampling: Resampling | None = None,
) -> dict[str, dict[str, float | None]]:
    """Percentile bootstrap intervals of one group's selection rate, true- and false-positive rate at
    ``threshold`` (the evaluation's draws restricted to the group, ``resampling``, else rows resampled with
    ``seed``; None where undefined)."""
    import numpy as np

    from pipelines.evaluation.significance import _interval, draw_resampling

    y = np.asarray(y, dtype="float64").reshape(-1)
    decided = (np.asarray(scores, dtype="float64").reshape(-1) >= threshold).astype("float64")
    if len(y) == 0:
        return {rate: {"low": None, "high": None} for rate in RATES}
    draws = resampling or draw_resampling(len(y), resamples, seed)
    # rates are ratios of weighted sums: per-cluster sums times the cluster counts, no per-row expansion
    w = draws.counts.astype("float64")

    def total(values: Any) -> Any:
        return w @ np.bincount(draws.cluster, weights=values, minlength=draws.clusters)

    with np.errstate(invalid="ignore", divide="ignore"):
        values = {
            "selection_rate": total(decided) / total(np.ones(len(y))),
            "tpr": total(decided * y) / total(y),
            "fpr": total(decided * (1 - y)) / total(1 - y),
        }
    out = {}
    for rate, found in values.items():
        low, high = _interval(np.where(np.isfinite(found), found, np.nan), confidence)
        out[rate] = {"low": low, "high": high}
    return out


def _gating(
    rows: int, positives: int | None, spec: FairnessSpec, has_interval: bool
) -> tuple[str | None, str]:
    reasons = []
    if rows < spec.min_group_rows:
        reasons.append(f"{rows} rows < {spec.min_group_rows}")
    if positives is not None and min(positives, rows - positives) < spec.min_group_positives:
        reasons.append(
            f"{positives} positives / {rows - positives} negatives (< {spec.min_group_positives} of either)"
        )
    if not reasons:
        return "value", ""
    if has_interval:
        return "interval", "gated on its interval (" + "; ".join(reasons) + ")"
    return None, "not gated: no interval (" + "; ".join(reasons) + ")"


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
    resampling: Resampling | None = None,
) -> dict[str, Any]:
    """One model's fairness over one sensitive attribute (``groups``, aligned with ``y`` and ``scores``)."""
    import numpy as np
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count

    from pipelines.evaluation.significance import metric_interval

    y = np.asarray(y, dtype="float64")
    scores = np.asarray(scores, dtype="float64")
    labels = pd.Series(slice_labels(groups), name="group")
    with_rates = task == "classification" and threshold is not None
    functions: dict[str, Any] = {"rows": count, "value": _metric_function(spec.metric)}
    if with_rates:
        functions |= _rate_functions(threshold)
    frame = MetricFrame(metrics=functions, y_true=y, y_pred=scores, sensitive_features=labels)
    by_group = frame.by_group
    direction = 1.0 if HIGHER_IS_BETTER[spec.metric] else -1.0
    entries = []
    for position, (group, row) in enumerate(by_group.iterrows()):
        mask = (labels == group).to_numpy()
        rows = int(row["rows"])
        positives = int(y[mask].sum()) if task == "classification" else None
        common = {
            "resamples": resamples,
            "confidence": confidence,
            "seed": seed + position,
            "resampling": None if resampling is None else resampling.subset(mask),
        }
        interval = metric_interval(spec.metric, y[mask], scores[mask], **common)
        gated_on, note = _gating(rows, positives, spec, interval["low"] is not None)
        entry = {
            "group": str(group),
            "rows": rows,
            "positives": positives,
            "value": clean(row["value"]),
            "low": interval["low"],
            "high": interval["high"],
            "selection_rate": clean(row.get("selection_rate")),
            "tpr": clean(row.get("tpr")),
            "fpr": clean(row.get("fpr")),
            "gated": gated_on is not None,
            "gated_on": gated_on,
            "note": note,
        }
        if with_rates:
            entry["rate_intervals"] = rate_intervals(y[mask], scores[mask], threshold, **common)
        entries.append(entry)
    # the summary (worst, best, gap, ratio) is over the groups judged on their value, as fairlearn reads them;
    # the gate also judges the smaller groups on their intervals
    gated = [e for e in entries if e["gated_on"] == "value" and e["value"] is not None]
    undefined = [e["group"] for e in entries if e["gated_on"] == "value" and e["value"] is None]
    worst = min(gated, key=lambda e: direction * e["value"]) if gated else None
    best = max(gated, key=lambda e: direction * e["value"]) if gated else None
    gap = ratio = None
    if worst is not None and best is not None:
        gap = abs(best["value"] - worst["value"])
        low, high = sorted((abs(worst["value"]), abs(best["value"])))
        ratio = clean(low / high) if high > 0 else None
    rate_gaps = {}
    if with_rates:
        for rate in RATES:  # fairlearn's difference (max minus min over the groups where the rate is defined)
            found = [e[rate] for e in entries if e[rate] is not None]
            rate_gaps[rate] = clean(max(found) - min(found)) if len(found) > 1 else None
    return {
        "metric": spec.metric,
        "threshold": threshold if with_rates else None,
        "groups": entries,
        "worst": None if worst is None else worst["group"],
        "worst_value": None if worst is None else worst["value"],
        "best": None if best is None else best["group"],
        "best_value": None if best is None else best["value"],
        "gap": clean(gap),
        "ratio": ratio,
        "rate_gaps": rate_gaps,
        "undefined": undefined,
    }


def group_changes(
    metric: str,
    y: Any,
    candidate_scores: Any,
    champion_scores: Any,
    groups: Any,
    *,
    resamples: int,
    confidence: float,
    seed: int,
    resampling: Resampling | None = None,
) -> dict[str, dict[str, Any]]:
    """Per group: the candidate's improvement over the champion on that group's rows (positive = better, in the
    metric's direction), with its paired bootstrap interval (``significance.paired_difference``)."""
    import numpy as np

    from pipelines.evaluation.significance import paired_difference

    y = np.asarray(y, dtype="float64")
    a = np.asarray(candidate_scores, dtype="float64")
    b = np.asarray(champion_scores, dtype="float64")
    labels = slice_labels(groups)
    out = {}
    for position, group in enumerate(sorted(set(labels.tolist()))):
        mask = labels == group
        found = paired_difference(
            metric,
            y[mask],
            a[mask],
            b[mask],
            resamples=resamples,
            confidence=confidence,
            seed=seed + position,
            resampling=None if resampling is None else resampling.subset(mask),
        )
        out[str(group)] = {
            k: found[k] for k in ("candidate", "champion", "difference", "low", "high", "rows")
        }
    return out


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
    resampling: Resampling | None = None,
) -> dict[str, Any]:
    """Per sensitive attribute: the candidate's groups and, when the champion could be scored, the champion's
    groups and the candidate's change against the same group of the champion (``changes``)."""
    out: dict[str, Any] = {}
    common = {
        "spec": spec,
        "task": task,
        "resamples": resamples,
        "confidence": confidence,
        "seed": seed,
        "resampling": resampling,
    }
    for attribute in attributes:
        groups = frame[attribute].to_numpy()
        out[attribute] = {
            "metric": spec.metric,
            "candidate": group_fairness(y, candidate_scores, groups, threshold=candidate_threshold, **common),
            "champion": None
            if champion_scores is None
            else group_fairness(y, champion_scores, groups, threshold=champion_threshold, **common),
            "changes": None
            if champion_scores is None
            else group_changes(
                spec.metric,
                y,
                candidate_scores,
                champion_scores,
                groups,
                resamples=resamples,
                confidence=confidence,
                seed=seed,
                resampling=resampling,
            ),
        }
    return out


def slice_gated_on_value(entry: dict[str, Any], spec: SliceGateSpec) -> bool:
    """Whether a robustness slice is large enough to be judged on its value: ``min_slice_rows`` rows and, for a
    classification (its slices count positives), ``min_slice_positives`` positives and as many negatives."""
    rows = int(entry.get("rows", 0))
    if rows < spec.min_slice_rows:
        return False
    if "positives" not in entry:
        return True
    positives = int(entry["positives"])
    return min(positives, rows - positives) >= spec.min_slice_positives


def add_slice_intervals(
    slices: dict[str, dict[str, dict[str, Any]]],
    groups: Any,
    y: Any,
    scores: Any,
    *,
    spec: SliceGateSpec,
    resamples: int,
    confidence: float,
    seed: int,
    resampling: Resampling | None = None,
) -> None:
    """Give each robustness slice too small to be judged on its value (``slice_gated_on_value``) the bootstrap
    interval of ``spec.metric`` on its rows, as ``intervals: {metric: {"low", "high"}}`` (in place): the gate
    judges it on that interval. ``groups`` holds the slice columns, aligned with ``y`` and ``scores``."""
    import numpy as np

    from pipelines.evaluation.significance import metric_interval

    y = np.asarray(y, dtype="float64").reshape(-1)
    scores = np.asarray(scores, dtype="float64").reshape(-1)
    for column, values in slices.items():
        labels = slice_labels(groups[column].to_numpy())
        for position, (value, entry) in enumerate(values.items()):
            if slice_gated_on_value(entry, spec):
                continue
            mask = labels == value
            found = metric_interval(
                spec.metric,
                y[mask],
                scores[mask],
                resamples=resamples,
                confidence=confidence,
                seed=seed + position,
                resampling=None if resampling is None else resampling.subset(mask),
            )
            entry["intervals"] = {spec.metric: {"low": found["low"], "high": found["high"]}}
