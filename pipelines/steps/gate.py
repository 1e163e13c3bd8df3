"""Decide whether the best candidate may replace the champion: absolute, change and fairness checks.

Reads the evaluate result of the same logical date and run and writes the decision to
``runs/<usecase>/gate/date=<D>/run=<run>/result.json`` (what register and promote of that run read) and keeps it
as a record, never overwritten, at ``decisions/<usecase>/date=<D>/<run>--<decision id>.json`` with the config hash, code
version and table versions it was taken on. The decision id hashes the decision's inputs only (``decision_id``): the
same inputs give the same id, in any Airflow run, whatever the timings. Checks (config ``gate``):

- configuration: with no absolute and no change threshold there is nothing to decide on: not promoted;
- absolute: the candidate's metric within ``gate.absolute[metric].min/max`` (its bootstrap interval is recorded);
  the primary metric must be defined;
- change: the improvement over the champion on the same holdout rows, signed by the metric's better direction
  (``config.HIGHER_IS_BETTER``), has a paired bootstrap interval (``gate.significance``, seeded) whose lower
  bound reaches ``gate.change[metric].min_delta``. The bootstrap resamples clusters of rows (the events' date by
  default, ``gate.significance.cluster_by``), and a nightly refresh's interval is held to the month's error budget
  (``gate.significance.nightly``, ``significance.change_rule``: Bonferroni over the nightly tests the schedule
  allows in a month); the record's ``significance`` says the method, the number of clusters, the rule and the
  confidence used. The reason reads the interval in the metric's direction
  (``significance.change_reading``): wholly below zero is *worse* than the champion (a higher RMSE, a lower ROC
  AUC); straddling zero or ``min_delta`` is *within the noise* (not shown to beat the champion by ``min_delta``);
  neither passes. With no champion yet these are recorded as skipped (first run: absolute thresholds only);
- robustness: over the ``slices``, every slice reaches ``min_value`` and best minus worst is at most ``max_gap``
  (``gate.robustness``);
- fairness: over the ``sensitive_attributes`` (fairlearn ``MetricFrame`` by group, with bootstrap intervals):
  every group's floor, the gap, the ratio, each group against the *same* group under the champion, and the gaps
  in true-positive, false-positive and selection rate at the decision threshold, per attribute
  (``gate.fairness``, ``attributes`` overrides); the expected calibration error within ``max_calibration_error``.
  In both, a group with the minimum counts is judged on its value, a smaller one on the favourable end of its
  bootstrap interval (it fails only when even that end fails); a group too small to have any interval is shown
  and named as not gated (a skipped check lists them), and a bound no group can be judged on fails;
- infrastructure: the candidate loaded in a fresh process exactly as the scorer loads it scored the sample rows
  the same.

The candidate was chosen among the trained ones on the validation window (``selected_on``) by train, which refitted
only it on train + validation, so the holdout it is gated on took no part in the choice.

A missing/NaN value, or a champion baseline that is missing, NaN or zero, fails its check with a reason: nothing
passes silently. "Not passed" is a normal outcome: the step exits 0 with ``passed: false``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from typing import Any

from pipelines.config import HIGHER_IS_BETTER, FairnessSpec, GateSpec, SliceGateSpec
from pipelines.context import StepContext, StepFailed, progress
from pipelines.evaluation.significance import CLEARS, WORSE, change_reading, change_rule, direction_words
from pipelines.lake import Lake

FIRST_RUN_REASON = "no champion yet (first run): absolute thresholds only"
TOLERANCE = 1e-12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate takes no options beyond --usecase and --date."""


def _missing(value: Any) -> bool:
    from pipelines.evaluation.metrics import is_missing

    return is_missing(value)


def _number(value: Any) -> float | None:
    return None if _missing(value) else float(value)


def _check(
    name: str,
    kind: str,
    metric: str | None,
    value: Any,
    threshold: Any,
    passed: bool,
    reason: str,
    *,
    baseline: Any = None,
    skipped: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "metric": metric,
        "value": _number(value),
        "threshold": _number(threshold),
        "baseline": _number(baseline),
        "passed": bool(passed),
        "skipped": skipped,
        "reason": reason,
    }


def _show(value: Any) -> str:
    return "missing/NaN" if _missing(value) else f"{float(value):.4f}"


def absolute_checks(gate: GateSpec, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The primary metric is defined, and each configured bound holds."""
    primary = gate.primary_metric
    value = metrics.get(primary)
    checks = [
        _check(
            f"{primary}_defined",
            "absolute",
            primary,
            value,
            None,
            not _missing(value),
            f"primary metric {primary} is {_show(value)}"
            + (": the candidate could not be evaluated on the holdout" if _missing(value) else ""),
        )
    ]
    for metric, bound in gate.absolute.items():
        value = metrics.get(metric)
        for side, threshold in (("min", bound.min), ("max", bound.max)):
            if threshold is None:
                continue
            if _missing(value):
                passed, reason = False, f"{metric} is missing/NaN: cannot check {side} {threshold}"
            elif side == "min":
                passed = float(value) >= threshold - TOLERANCE
                reason = f"{metric} {_show(value)} {'>=' if passed else 'is below the minimum'} {threshold}"
            else:
                passed = float(value) <= threshold + TOLERANCE
                reason = f"{metric} {_show(value)} {'<=' if passed else 'is above the maximum'} {threshold}"
            checks.append(_check(f"{metric}_{side}", "absolute", metric, value, threshold, passed, reason))
    return checks


def _change_reason(
    metric: str,
    value: Any,
    baseline: Any,
    version: Any,
    found: dict[str, Any],
    min_delta: float,
    reading: str,
) -> str:
    """The change check's reason in the metric's own direction: better, worse, or within the noise."""
    better, worse = direction_words(metric)
    low, high = float(found["low"]), float(found["high"])
    head = (
        f"{metric} {_show(value)} vs champion v{version} {_show(baseline)} ({better} is better): improvement "
        f"{float(found['difference']):+.4f}, {float(found['confidence']):.0%} interval [{low:+.4f}, "
        f"{high:+.4f}] over {found['resamples']} paired resamples of {found['rows']} rows"
        + (
            f" ({found['method']}: {found['clusters']} clusters)"
            if found.get("clusters") is not None and found.get("method") != "paired bootstrap"
            else ""
        )
    )
    if reading == CLEARS:
        return f"{head}; its lower bound clears min_delta {min_delta}: better than the champion"
    if reading == WORSE:
        return (
            f"{head}: worse than the champion, the whole interval lies below zero (a {worse} {metric} than the "
            "champion's on the same rows)"
        )
    where = (
        "straddles zero: no clear difference from the champion"
        if low < 0.0
        else f"lies above zero but its lower bound is short of min_delta {min_delta}"
    )
    return (
        f"{head}: within the noise, not shown to beat the champion by min_delta {min_delta} (the interval "
        f"{where})"
    )


def change_checks(
    gate: GateSpec,
    metrics: dict[str, Any],
    champion: dict[str, Any] | None,
    run_id: str | None = None,
    comparison: dict[str, Any] | None = None,
    rule: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The candidate beats the champion by more than the noise: the lower bound of the paired bootstrap interval
    of its improvement on the same holdout rows (``comparison``, computed by evaluate) reaches ``min_delta``
    (skipped on the first run). ``rule`` (``significance.change_rule``): the confidence the interval must have
    (a nightly test's share of the month's error budget); an interval computed at less fails closed.

    When the champion *is* the candidate (same MLflow run ``run_id``: a rerun after promotion), the comparison
    is skipped with that reason, so a rerun keeps the decision instead of failing against itself.
    """
    checks = []
    for metric, bound in gate.change.items():
        name = f"{metric}_vs_champion"
        value = metrics.get(metric)
        if champion is None:
            checks.append(
                _check(name, "change", metric, value, bound.min_delta, True, FIRST_RUN_REASON, skipped=True)
            )
            continue
        if run_id and champion.get("run_id") == run_id:
            reason = (
                f"the candidate is already the champion (v{champion.get('version')}, same run {run_id}): "
                "a rerun after promotion, nothing to compare"
            )
            baseline = (champion.get("metrics") or {}).get(metric)
            checks.append(
                _check(
                    name,
                    "change",
                    metric,
                    value,
                    bound.min_delta,
                    True,
                    reason,
                    baseline=baseline,
                    skipped=True,
                )
            )
            continue
        baseline = (champion.get("metrics") or {}).get(metric)
        version = champion.get("version")
        if _missing(value):
            passed, reason = (
                False,
                f"candidate {metric} is missing/NaN: cannot compare with champion v{version}",
            )
        elif _missing(baseline):
            error = f" ({champion['error']})" if champion.get("error") else ""
            passed = False
            reason = (
                f"champion v{version} baseline {metric} is missing/NaN{error}: the champion cannot be scored on "
                "the new holdout (a changed feature schema?), so nothing shows the candidate is better. Way "
                "forward (docs/configuration.md, 'When the champion cannot be scored'): review the report; if the "
                "change is intended, a person promotes the candidate's version, recorded: `mlops models promote "
                "--usecase <usecase> <version> --force --reason '...'`: the gate never does"
            )
        elif float(baseline) == 0.0:
            passed = False
            reason = f"champion v{version} baseline {metric} is 0: not a credible baseline, cannot compare"
        else:
            found = (comparison or {}).get(metric) or {}
            low, high = found.get("low"), found.get("high")
            reading = change_reading(low, high, bound.min_delta, TOLERANCE)
            required = None if rule is None else float(rule["confidence"])
            if required is not None and float(found.get("confidence") or 0.0) < required - TOLERANCE:
                passed = False
                reason = (
                    f"{metric}: the interval was computed at confidence {found.get('confidence')}, but the "
                    f"error rule ({rule['text']}) needs {required:.5f}; rerun evaluate"
                )
            elif reading is None or _missing(found.get("difference")):
                passed = False
                reason = (
                    f"{metric} {_show(value)} vs champion v{version} {_show(baseline)}: no paired interval of the "
                    "difference on the holdout rows (the evaluation did not compute one); rerun evaluate"
                )
            else:
                passed = reading == CLEARS
                reason = _change_reason(metric, value, baseline, version, found, bound.min_delta, reading)
            interval = (
                None
                if _missing(low)
                else {
                    k: found.get(k)
                    for k in ("low", "high", "confidence", "resamples", "seed", "rows", "method", "clusters")
                    if k in found
                }
            )
            checks.append(
                _check(name, "change", metric, value, bound.min_delta, passed, reason, baseline=baseline)
                | {"difference": _number(found.get("difference")), "interval": interval}
            )
            continue
        checks.append(
            _check(name, "change", metric, value, bound.min_delta, passed, reason, baseline=baseline)
        )
    return checks


def _gated(entry: dict[str, Any], fairness: SliceGateSpec) -> bool:
    """Whether a slice is large enough to be judged on its value (``fairness.slice_gated_on_value``)."""
    from pipelines.evaluation.fairness import slice_gated_on_value

    return slice_gated_on_value(entry, fairness)


# A group (a robustness slice, a sensitive attribute's group) is judged on a range: its value when it has the
# minimum counts, else its bootstrap interval. Every bound reads the range at its most favourable end (the group
# fails only when even that end fails): a small group is gated, but not on noise. A group with no range at all
# (no interval: one class only, too few rows) is shown and named as not gated in the decision.


def _item(
    name: str, rows: Any, gated_on: str | None, value: Any, low: Any, high: Any
) -> dict[str, Any] | None:
    """A judged group ``{name, rows, on, value, lo, hi}``, or None when it has no range."""
    if gated_on == "value" and not _missing(value):
        return {
            "name": name,
            "rows": rows,
            "on": "value",
            "value": float(value),
            "lo": float(value),
            "hi": float(value),
        }
    if gated_on == "interval" and not _missing(low) and not _missing(high):
        return {
            "name": name,
            "rows": rows,
            "on": "interval",
            "value": _number(value),
            "lo": float(low),
            "hi": float(high),
        }
    return None


def _ends(item: dict[str, Any], direction: float) -> tuple[float, float]:
    """``(good, bad)``: the favourable and the unfavourable end of a group's range in the metric's direction."""
    return (item["hi"], item["lo"]) if direction > 0 else (item["lo"], item["hi"])


def _describe(item: dict[str, Any]) -> str:
    if item["on"] == "value":
        return f"{item['name']!r} ({item['rows']} rows) {item['value']:.4f}"
    return (
        f"{item['name']!r} ({item['rows']} rows, gated on its interval) {_show(item['value'])} "
        f"[{item['lo']:.4f}, {item['hi']:.4f}]"
    )


def _below_floor(
    items: list[dict[str, Any]], floor: float, direction: float
) -> tuple[dict[str, Any], list[str]]:
    """The worst group at its favourable end, and every group whose favourable end is short of ``floor``."""
    worst = min(items, key=lambda i: direction * _ends(i, direction)[0])
    failing = [i["name"] for i in items if direction * (_ends(i, direction)[0] - floor) < -TOLERANCE]
    return worst, failing


def _pairs(items: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every ordered pair of distinct groups (a candidate better one, a candidate worse one)."""
    return [(a, b) for a in items for b in items if a is not b]


def _widest_gap(items: list[dict[str, Any]], direction: float) -> tuple[float, Any, Any]:
    """The largest gap the groups' ranges show for certain (0 with one group), and the pair showing it."""
    gap, best, worst = 0.0, None, None
    for a, b in _pairs(items):
        found = direction * (_ends(a, direction)[1] - _ends(b, direction)[0])
        if found > gap:
            gap, best, worst = found, a, b
    if best is None and items:  # no certain gap: name the groups at the two ends
        best = max(items, key=lambda i: direction * _ends(i, direction)[1])
        worst = min(items, key=lambda i: direction * _ends(i, direction)[0])
    return gap, best, worst


def _smallest_ratio(items: list[dict[str, Any]], direction: float) -> tuple[float | None, Any, Any]:
    """Worse over better (in absolute values) for the pair whose ranges show the smallest ratio for certain."""
    ratio: float | None = 1.0
    best = worst = items[0] if items else None
    for a, b in _pairs(items):
        x, z = _ends(a, direction)[1], _ends(b, direction)[0]
        if direction * (x - z) <= 0:
            continue
        low, high = sorted((abs(x), abs(z)))
        found = low / high if high > 0 else None
        if found is None:
            return None, a, b
        if ratio is not None and found < ratio:
            ratio, best, worst = found, a, b
    return ratio, best, worst


def robustness_checks(fairness: SliceGateSpec | None, slices: dict[str, Any]) -> list[dict[str, Any]]:
    """Per slice column: every gated slice reaches ``min_value`` and best minus worst is at most ``max_gap``.
    Slices with the minimum counts are judged on their value, smaller ones on the favourable end of their
    bootstrap interval; a slice with no interval is named as not gated, and when no slice can be gated the check
    fails (nothing passes unchecked)."""
    if fairness is None or (fairness.min_value is None and fairness.max_gap is None):
        return []
    metric = fairness.metric
    if not slices:
        return [
            _check(
                f"robustness_{metric}",
                "robustness",
                metric,
                None,
                None,
                True,
                "no slices were evaluated (config 'slices' is empty): robustness not checked",
                skipped=True,
            )
        ]
    direction = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    rules = f">= {fairness.min_slice_rows} rows, >= {fairness.min_slice_positives} positives and negatives"
    checks = []
    for column, values in slices.items():
        items, not_gated, undefined = [], [], []
        for value, entry in values.items():
            on_value = _gated(entry, fairness)
            interval = ((entry.get("intervals") or {}).get(metric)) or {}
            item = _item(
                value,
                entry.get("rows"),
                "value" if on_value else "interval",
                entry.get(metric),
                interval.get("low"),
                interval.get("high"),
            )
            if item is not None:
                items.append(item)
            elif on_value:
                undefined.append(value)
            else:
                not_gated.append(value)
        note = (
            f" (not gated, no interval of their metric: {sorted(not_gated)}; judged on the value: {rules}, smaller "
            "slices on their interval)"
            if not_gated
            else ""
        )
        if not_gated:
            checks.append(
                _check(
                    f"robustness_{column}_not_gated",
                    "robustness",
                    metric,
                    None,
                    None,
                    True,
                    f"{column} slices {sorted(not_gated)} are shown but not gated: too small to have any interval "
                    f"of {metric}",
                    skipped=True,
                )
            )
        if not items and not undefined:
            checks.append(
                _check(
                    f"robustness_{column}",
                    "robustness",
                    metric,
                    None,
                    None,
                    False,
                    f"no {column} slice could be gated (none has {rules} nor an interval of {metric}): robustness "
                    f"cannot be shown, not promoted{note}",
                )
            )
            continue
        if fairness.min_value is not None:
            name = f"robustness_{column}_min_{metric}"
            if undefined:
                passed, value = False, None
                reason = f"{metric} is missing/NaN for {column} slices {sorted(undefined)}: cannot check robustness"
                group = None
            else:
                worst, failing = _below_floor(items, fairness.min_value, direction)
                value, group, passed = _ends(worst, direction)[0], worst["name"], not failing
                reason = (
                    f"worst {column} slice {_describe(worst)}"
                    + (f", short of {fairness.min_value}: failing {failing}" if failing else "")
                    + f" (required {fairness.min_value}){note}"
                )
            checks.append(
                _check(name, "robustness", metric, value, fairness.min_value, passed, reason)
                | {"group": group}
            )
        if fairness.max_gap is not None:
            name = f"robustness_{column}_gap_{metric}"
            if undefined:
                passed, gap = False, None
                reason = (
                    f"{metric} is missing/NaN for {column} slices {sorted(undefined)}: cannot check the gap"
                )
            else:
                gap, best, worst = _widest_gap(items, direction)
                passed = gap <= fairness.max_gap + TOLERANCE
                reason = (
                    f"{column} gap {gap:.4f} between best {_describe(best)} and worst {_describe(worst)} "
                    f"{'<=' if passed else 'exceeds'} {fairness.max_gap}{note}"
                )
            checks.append(_check(name, "robustness", metric, gap, fairness.max_gap, passed, reason))
    return checks


def _group_interval(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if not entry or _missing(entry.get("low")):
        return None
    return {"low": entry["low"], "high": entry["high"]}


def _gated_on(entry: dict[str, Any]) -> str | None:
    """How evaluate gated a group (``fairness.group_fairness``); an older result only says whether it did."""
    if "gated_on" in entry:
        return entry["gated_on"]
    return "value" if entry.get("gated") else None


def fairness_checks(
    fairness: FairnessSpec | None, report: dict[str, Any] | None, calibration_error: Any = None
) -> list[dict[str, Any]]:
    """Per sensitive attribute (evaluate's fairlearn ``MetricFrame`` by group, ``report``): every gated group
    reaches ``min_value``, best minus worst is at most ``max_gap``, worst over best at least ``min_ratio``, no
    group is more than ``max_worst_drop`` worse than the same group under the champion, and the gaps in true- and
    false-positive rate and selection rate at the decision threshold are within ``max_tpr_gap``, ``max_fpr_gap``,
    ``max_selection_rate_gap``. Groups with the minimum counts are judged on their value, smaller ones on the
    favourable end of their bootstrap interval; a group with no interval is named as not gated, and a bound that
    no group can be judged on fails. ``max_calibration_error`` bounds the ECE."""
    from pipelines.evaluation.fairness import RATE_NAMES

    if fairness is None:
        return []
    checks: list[dict[str, Any]] = []
    if fairness.max_calibration_error is not None:
        passed = (
            not _missing(calibration_error) and float(calibration_error) <= fairness.max_calibration_error
        )
        checks.append(
            _check(
                "calibration_error_max",
                "fairness",
                "ece",
                calibration_error,
                fairness.max_calibration_error,
                passed,
                f"expected calibration error {_show(calibration_error)} "
                + ("<=" if passed else "exceeds (or is missing)")
                + f" {fairness.max_calibration_error}",
            )
        )
    if not report:
        return [
            *checks,
            _check(
                "fairness",
                "fairness",
                fairness.metric,
                None,
                None,
                False,
                "gate.fairness is configured but the evaluation has no fairness assessment (no sensitive_attributes "
                "evaluated): not promoted; declare sensitive_attributes and rerun evaluate",
            ),
        ]
    metric = fairness.metric
    direction = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    rules = f">= {fairness.min_group_rows} rows, >= {fairness.min_group_positives} positives and negatives"
    for attribute, found in report.items():
        bounds = fairness.bounds(attribute)
        candidate = found.get("candidate") or {}
        entries = candidate.get("groups") or []
        items, not_gated, undefined = [], [], []
        for g in entries:
            item = _item(g["group"], g.get("rows"), _gated_on(g), g.get("value"), g.get("low"), g.get("high"))
            if item is not None:
                items.append(item)
            elif _gated_on(g) == "value":
                undefined.append(g["group"])
            else:
                not_gated.append(g["group"])
        note = (
            f" (not gated, no interval of their metric: {not_gated}; judged on the value: {rules}, smaller groups "
            "on their interval)"
            if not_gated
            else ""
        )
        prefix = f"fairness_{attribute}"

        def add(
            kind: str,
            value: Any,
            threshold: Any,
            passed: bool,
            reason: str,
            prefix: str = prefix,
            attribute: str = attribute,
            check_metric: str = metric,
            skipped: bool = False,
            **extra: Any,
        ) -> None:
            checks.append(
                _check(
                    f"{prefix}_{kind}_{check_metric}",
                    "fairness",
                    check_metric,
                    value,
                    threshold,
                    passed,
                    reason,
                    skipped=skipped,
                )
                | {"attribute": attribute, **extra}
            )

        if not_gated:
            add(
                "not_gated",
                None,
                None,
                True,
                f"{attribute} groups {not_gated} are shown but not gated: too small to have any interval of {metric}",
                skipped=True,
                groups=not_gated,
            )
        if any(b is not None for b in (bounds.min_value, bounds.max_gap, bounds.min_ratio)) and (
            undefined or not items
        ):
            add(
                "defined",
                None,
                None,
                False,
                f"{metric} is undefined for {attribute} groups {undefined}: cannot check fairness{note}"
                if undefined
                else f"no {attribute} group could be gated (none has {rules} nor an interval of {metric}): "
                f"fairness cannot be shown, not promoted{note}",
            )
        elif items:
            if bounds.min_value is not None:
                worst, failing = _below_floor(items, bounds.min_value, direction)
                add(
                    "min",
                    _ends(worst, direction)[0],
                    bounds.min_value,
                    not failing,
                    f"worst {attribute} group {_describe(worst)}"
                    + (f", short of {bounds.min_value}: failing {failing}" if failing else "")
                    + f" (required {bounds.min_value}){note}",
                    group=worst["name"],
                    interval=None if worst["on"] == "value" else {"low": worst["lo"], "high": worst["hi"]},
                )
            if bounds.max_gap is not None:
                gap, best, worst = _widest_gap(items, direction)
                passed = gap <= bounds.max_gap + TOLERANCE
                add(
                    "gap",
                    gap,
                    bounds.max_gap,
                    passed,
                    f"{attribute} gap {gap:.4f} between best group {_describe(best)} and worst group "
                    f"{_describe(worst)} {'<=' if passed else 'exceeds'} {bounds.max_gap}{note}",
                    group=worst["name"],
                )
            if bounds.min_ratio is not None:
                ratio, best, worst = _smallest_ratio(items, direction)
                passed = not _missing(ratio) and float(ratio) >= bounds.min_ratio - TOLERANCE
                add(
                    "ratio",
                    ratio,
                    bounds.min_ratio,
                    passed,
                    f"{attribute} ratio worst/best {_show(ratio)} ({_describe(worst)} over {_describe(best)}) "
                    f"{'>=' if passed else 'is below'} {bounds.min_ratio}{note}",
                    group=worst["name"],
                )
        if bounds.max_worst_drop is not None:
            checks.extend(
                _same_group_checks(found, entries, bounds.max_worst_drop, metric, direction, attribute)
            )
        for rate, bound in (
            ("tpr", bounds.max_tpr_gap),
            ("fpr", bounds.max_fpr_gap),
            ("selection_rate", bounds.max_selection_rate_gap),
        ):
            if bound is None:
                continue
            add(
                "gap",
                *_rate_gap(candidate, entries, rate, RATE_NAMES[rate], bound, attribute, rules),
                check_metric=rate,
            )
            checks[-1]["point_gap"] = (candidate.get("rate_gaps") or {}).get(rate)
    return checks


def _same_group_checks(
    found: dict[str, Any],
    entries: list[dict[str, Any]],
    bound: float,
    metric: str,
    direction: float,
    attribute: str,
) -> list[dict[str, Any]]:
    """No group is more than ``bound`` worse than the same group under the champion: a group with the minimum
    counts on its values, a smaller one on the favourable end of the paired interval of its change."""
    name = f"fairness_{attribute}_worst_drop_{metric}"
    champion = found.get("champion") or {}
    champion_groups = {g["group"]: g for g in champion.get("groups") or []}
    if not champion_groups:
        return [
            _check(
                name,
                "fairness",
                metric,
                None,
                bound,
                True,
                f"no champion {attribute} groups to compare with (first run or champion not scored)",
                skipped=True,
            )
            | {"attribute": attribute}
        ]
    changes = found.get("changes") or {}
    drops, not_compared = [], []
    for g in entries:
        group, theirs = g["group"], champion_groups.get(g["group"]) or {}
        on = _gated_on(g)
        if on == "value" and not _missing(g.get("value")) and not _missing(theirs.get("value")):
            drop = direction * (float(theirs["value"]) - float(g["value"]))
            drops.append(
                (drop, group, f"{float(g['value']):.4f} vs {float(theirs['value']):.4f}", theirs["value"])
            )
            continue
        change = changes.get(group) or {}
        if on is not None and not _missing(change.get("high")):
            drop = -float(change["high"])  # the smallest drop the paired interval of the improvement allows
            drops.append(
                (
                    drop,
                    group,
                    f"{_show(g.get('value'))} vs {_show(theirs.get('value'))}, gated on the paired interval "
                    f"[{float(change['low']):+.4f}, {float(change['high']):+.4f}] of the improvement "
                    f"({g.get('rows')} rows)",
                    theirs.get("value"),
                )
            )
            continue
        not_compared.append(group)
    listed = f" (not compared, no value or interval on both sides: {not_compared})" if not_compared else ""
    if not drops:
        return [
            _check(
                name,
                "fairness",
                metric,
                None,
                bound,
                False,
                f"no {attribute} group could be compared with the same group under the champion: not promoted"
                f"{listed}",
            )
            | {"attribute": attribute}
        ]
    drop, group, shown, baseline = max(drops, key=lambda d: d[0])
    failing = [d[1] for d in drops if d[0] > bound + TOLERANCE]
    passed = not failing
    return [
        _check(
            name,
            "fairness",
            metric,
            drop,
            bound,
            passed,
            f"{attribute} group {group!r} against the same group under the champion: {shown}, {drop:+.4f} worse "
            f"{'<=' if passed else 'exceeds'} {bound}" + (f": failing {failing}" if failing else "") + listed,
            baseline=baseline,
        )
        | {"attribute": attribute, "group": group}
    ]


def _rate_gap(
    candidate: dict[str, Any],
    entries: list[dict[str, Any]],
    rate: str,
    label: str,
    bound: float,
    attribute: str,
    rules: str,
) -> tuple[Any, float, bool, str]:
    """``(gap, bound, passed, reason)`` of a rate's gap at the decision threshold: the largest minus the smallest
    group rate, groups with the minimum counts on their rate, smaller ones on its bootstrap interval (the gap
    the ranges show for certain). A reviewer wants a gap rejected when the data show it, and the small groups'
    noise not to reject on its own: as with the floors, a small group counts at the favourable end of its
    interval; the groups with the minimum counts count at their value, like fairlearn's difference."""
    threshold = candidate.get("threshold")
    if threshold is None and not any(g.get(rate) is not None for g in entries):
        return (
            None,
            bound,
            False,
            f"{attribute}: no {label} at a decision threshold in the evaluation (a regression, or an older "
            "evaluation): cannot check the bound, not promoted",
        )
    items, not_gated = [], []
    for g in entries:
        interval = (g.get("rate_intervals") or {}).get(rate) or {}
        item = _item(
            g["group"], g.get("rows"), _gated_on(g), g.get(rate), interval.get("low"), interval.get("high")
        )
        if item is not None:
            items.append(item)
        else:
            not_gated.append(g["group"])
    listed = f" (not gated for this rate, no value or interval: {not_gated})" if not_gated else ""
    if not items:
        return (
            None,
            bound,
            False,
            f"no {attribute} group has a {label} to gate on ({rules}): not promoted{listed}",
        )
    gap, high, low = _widest_gap(items, 1.0)
    passed = gap <= bound + TOLERANCE
    at = "" if threshold is None else f" at threshold {float(threshold):.4f}"
    return (
        gap,
        bound,
        passed,
        f"{attribute} {label} gap{at} {gap:.4f} between {_describe(high)} and {_describe(low)} "
        f"{'<=' if passed else 'exceeds'} {bound}{listed}",
    )


def threshold_check(gate: GateSpec) -> list[dict[str, Any]]:
    """No absolute and no change threshold configured: nothing to decide on, so nothing is promoted."""
    if gate.has_thresholds:
        return []
    return [
        _check(
            "thresholds_configured",
            "configuration",
            None,
            None,
            None,
            False,
            "the gate has no absolute or change thresholds (gate.absolute, gate.change): nothing says the "
            "candidate is good enough, so it is not promoted; add thresholds to the use case's gate",
        )
    ]


def infrastructure_checks(gate: GateSpec, infrastructure: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The candidate loaded in a fresh process as the scorer loads it and scored the sample rows the same."""
    if not gate.infrastructure_check:
        return []
    if not infrastructure:
        return [
            _check(
                "infrastructure",
                "infrastructure",
                None,
                None,
                None,
                False,
                "the evaluation did not check that the scorer can load the candidate: rerun evaluate",
            )
        ]
    return [
        _check(
            "infrastructure",
            "infrastructure",
            None,
            infrastructure.get("max_abs_difference"),
            None,
            bool(infrastructure.get("passed")),
            str(infrastructure.get("reason")),
        )
    ]


def decide(gate: GateSpec, evaluation: dict[str, Any], rule: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gate decision for the best candidate of an evaluate result (see the module docstring). ``rule``
    (``significance.change_rule`` of the run): the error rule its change checks are held to; the record says it,
    with the bootstrap's method and clusters (``significance``)."""
    best = evaluation.get("best")
    candidates = evaluation.get("candidates") or {}
    if best not in candidates:
        raise StepFailed(
            f"the evaluate result names best candidate {best!r}, which is not among its candidates "
            f"{sorted(candidates)}; rerun evaluate"
        )
    candidate = candidates[best]
    metrics = candidate.get("metrics") or {}
    champion = evaluation.get("champion")
    intervals = candidate.get("intervals") or {}
    absolute = [
        c | ({"interval": _group_interval(intervals.get(c["metric"]))} if c["metric"] in intervals else {})
        for c in absolute_checks(gate, metrics)
    ]
    checks = [
        *threshold_check(gate),
        *absolute,
        *change_checks(gate, metrics, champion, candidate.get("run_id"), evaluation.get("comparison"), rule),
        *robustness_checks(gate.robustness, candidate.get("slices") or {}),
        *fairness_checks(gate.fairness, evaluation.get("fairness"), evaluation.get("calibration_error")),
        *infrastructure_checks(gate, evaluation.get("infrastructure")),
    ]
    primary = gate.primary_metric
    return {
        "passed": all(c["passed"] for c in checks),
        "candidate": best,
        "selected_on": evaluation.get("selected_on", "holdout"),
        "run_id": candidate.get("run_id"),
        "model_uri": candidate.get("model_uri"),
        "primary_metric": primary,
        "candidate_value": _number(metrics.get(primary)),
        "champion_value": None if champion is None else _number((champion.get("metrics") or {}).get(primary)),
        "champion_version": None if champion is None else champion.get("version"),
        "checks": checks,
        "reasons": [c["reason"] for c in checks if not c["passed"]],
        "significance": significance_record(evaluation, rule),
    }


def significance_record(evaluation: dict[str, Any], rule: dict[str, Any] | None) -> dict[str, Any]:
    """What the decision record says of its statistics: how the resamples were drawn (method, the clusters and
    their count, resamples, seed, the draws' bytes) and the error rule with the confidence actually used."""
    drawn = dict(evaluation.get("significance") or {})
    drawn.pop("holdout_scores_uri", None)
    used = sorted({c.get("confidence") for c in (evaluation.get("comparison") or {}).values() if c})
    held = rule or drawn.get("rule")
    return drawn | {
        "rule": None if held is None else held.get("rule"),
        "rule_text": None if held is None else held.get("text"),
        "tests_per_month": None if held is None else held.get("tests_per_month"),
        "required_confidence": None if held is None else held.get("confidence"),
        "confidence_used": used[0] if len(used) == 1 else used or None,
    }


def decision_inputs(ctx: StepContext, evaluation: dict[str, Any]) -> dict[str, Any]:
    """What a decision was taken on: the use case config's hash, the code version, and the table versions and
    runs the evaluation read (train's features version, the candidates' and the champion's runs)."""
    champion = evaluation.get("champion") or {}
    return {
        "config_hash": ctx.usecase.config_hash,
        "code_version": ctx.code_version,
        "tables_read": evaluation.get("tables_read") or {},
        "holdout_rows": evaluation.get("holdout_rows"),
        "candidate_runs": {
            name: (candidate or {}).get("run_id")
            for name, candidate in (evaluation.get("candidates") or {}).items()
        },
        "champion_version": champion.get("version"),
        "champion_run": champion.get("run_id"),
    }


# what of a check the decision id covers: its identity, the numbers it compared and its outcome; never the reason
# text (the infrastructure check's tells how many seconds the fresh process took) nor anything measured in time
_CHECK_ID_FIELDS = (
    "name",
    "kind",
    "metric",
    "attribute",
    "group",
    "threshold",
    "baseline",
    "value",
    "difference",
)
_INTERVAL_ID_FIELDS = ("low", "high", "confidence", "resamples", "seed", "rows", "method")


def _id_number(value: Any) -> Any:
    """A number as the id sees it: 12 significant digits, so the last bits of a float do not make a new id."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return None if _missing(value) else float(f"{float(value):.12g}")


def decision_id(decision: dict[str, Any]) -> str:
    """A hash of what the decision was taken on and what it found, from its inputs only: the candidate (name,
    MLflow run), the champion (version, run), ``inputs`` (config hash with the gate's thresholds, code version,
    table versions, holdout rows, the candidates' runs) and each check's metric values, thresholds, interval and
    outcome. Not the reason texts, the Airflow run, URIs or any timing: the same inputs give the same id (a rerun
    in another Airflow run too; its record is kept beside, keyed by run), any changed input a new one."""
    checks = []
    for check in decision.get("checks") or []:
        entry = {k: _id_number(check.get(k)) for k in _CHECK_ID_FIELDS if k in check}
        if check.get("kind") == "infrastructure":  # measured in another process: only its outcome is an input
            entry.pop("value", None)
        interval = check.get("interval")
        if isinstance(interval, dict):
            entry["interval"] = {k: _id_number(interval.get(k)) for k in _INTERVAL_ID_FIELDS if k in interval}
        checks.append(entry | {"passed": bool(check.get("passed")), "skipped": bool(check.get("skipped"))})
    body = {
        "passed": bool(decision.get("passed")),
        "candidate": decision.get("candidate"),
        "selected_on": decision.get("selected_on"),
        "candidate_run": decision.get("run_id"),
        "primary_metric": decision.get("primary_metric"),
        "candidate_value": _id_number(decision.get("candidate_value")),
        "champion_value": _id_number(decision.get("champion_value")),
        "champion_version": decision.get("champion_version"),
        "inputs": decision.get("inputs") or {},
        "checks": checks,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def decision_key(usecase: str, day: Any, run: str, identifier: str) -> str:
    """``decisions/<usecase>/date=<D>/<run>--<decision id>.json``: one record per run and decision."""
    safe_run = re.sub(r"[^A-Za-z0-9._-]+", "_", run)
    return f"{Lake.dated_key('decisions', usecase, day)}/{safe_run}--{identifier}.json"


def record_decision(ctx: StepContext, decision: dict[str, Any]) -> str:
    """Keep the decision as its own record, never overwritten: a rerun with the same inputs in the same run finds
    its record already there; a changed config, code or data makes a new decision beside the old."""
    key = decision_key(ctx.usecase.name, ctx.day, decision["run"], decision["decision_id"])
    if not ctx.lake.storage.exists(key):
        ctx.lake.write_json(key, {**decision, "date": ctx.ds, "usecase": ctx.usecase.name})
    return ctx.lake.storage.uri(key)


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Check the best candidate of the evaluate result; write and return the decision (passed or not)."""
    from pipelines.results import needed_step_result

    evaluation = needed_step_result(ctx, "evaluate", "gate")
    usecase = ctx.usecase
    # the rule comes from the config and the run's train mode, not from evaluate: an interval computed under
    # another rule (an older evaluate, a changed config) fails closed
    rule = change_rule(usecase.gate.significance, evaluation.get("mode"), usecase.schedules.train_nightly)
    decision = decide(usecase.gate, evaluation, rule)
    decision["inputs"] = decision_inputs(ctx, evaluation)
    decision["decision_id"] = decision_id(decision)
    decision["run"] = ctx.run_id
    decision["decision_uri"] = record_decision(ctx, decision)
    key = f"{ctx.run_key('gate')}/result.json"
    decision["result_uri"] = ctx.lake.storage.uri(key)
    ctx.lake.write_json(key, decision)
    verdict = "PASSED" if decision["passed"] else "NOT PASSED: " + "; ".join(decision["reasons"])
    progress(f"gate: {decision['candidate']} {verdict}")
    return decision
