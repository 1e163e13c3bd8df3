"""Decide whether the best candidate may replace the champion: absolute, change and fairness checks.

Reads the evaluate result of the same logical date and writes the decision to
``runs/<usecase>/gate/date=<D>/result.json`` (what register and promote of that date read) and keeps it as a
record, never overwritten, at ``decisions/<usecase>/date=<D>/<run>--<decision id>.json`` with the config hash, code
version and table versions it was taken on. Checks (config ``gate``):

- absolute: the candidate's metric within ``gate.absolute[metric].min/max``; the primary metric must be defined;
- change: the candidate beats the champion by ``gate.change[metric].min_delta`` in the metric's better direction
  (``config.HIGHER_IS_BETTER``); with no champion yet these are recorded as skipped (first run: absolute
  thresholds only);
- fairness: over the slices with at least ``min_slice_rows`` rows (and, for a classification,
  ``min_slice_positives`` positives and as many negatives), the worst reaches ``min_value`` and best minus worst is
  at most ``max_gap``, per slice column; smaller slices are named in the reason, not gated.

A missing/NaN value, or a champion baseline that is missing, NaN or zero, fails its check with a reason: nothing
passes silently. "Not passed" is a normal outcome: the step exits 0 with ``passed: false``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from typing import Any

from pipelines.config import HIGHER_IS_BETTER, FairnessSpec, GateSpec
from pipelines.context import StepContext, StepFailed, progress
from pipelines.lake import Lake

FIRST_RUN_REASON = "no champion yet (first run): absolute thresholds only"
TOLERANCE = 1e-12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate takes no options beyond --usecase and --date."""


def _missing(value: Any) -> bool:
    from pipelines.metrics import is_missing

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


def change_checks(
    gate: GateSpec, metrics: dict[str, Any], champion: dict[str, Any] | None, run_id: str | None = None
) -> list[dict[str, Any]]:
    """The candidate beats the champion by ``min_delta`` in the better direction (skipped on the first run).

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
                f"champion v{version} baseline {metric} is missing/NaN{error}: cannot compare; investigate the "
                f"champion before promoting"
            )
        elif float(baseline) == 0.0:
            passed = False
            reason = f"champion v{version} baseline {metric} is 0: not a credible baseline, cannot compare"
        else:
            direction = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
            delta = direction * (float(value) - float(baseline))
            passed = delta >= bound.min_delta - TOLERANCE
            better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
            reason = (
                f"{metric} {_show(value)} vs champion v{version} {_show(baseline)}: improvement {delta:+.4f} "
                f"({better} is better) {'>=' if passed else 'is below the required'} {bound.min_delta}"
            )
        checks.append(
            _check(name, "change", metric, value, bound.min_delta, passed, reason, baseline=baseline)
        )
    return checks


def _gated(entry: dict[str, Any], fairness: FairnessSpec) -> bool:
    """Whether a slice is large enough to gate on: ``min_slice_rows`` rows and, for a classification (its
    slices count positives), ``min_slice_positives`` positives and as many negatives."""
    rows = int(entry.get("rows", 0))
    if rows < fairness.min_slice_rows:
        return False
    if "positives" not in entry:
        return True
    positives = int(entry["positives"])
    return min(positives, rows - positives) >= fairness.min_slice_positives


def fairness_checks(fairness: FairnessSpec | None, slices: dict[str, Any]) -> list[dict[str, Any]]:
    """Worst slice reaches ``min_value`` and the best-worst gap is at most ``max_gap``, per slice column."""
    if fairness is None or (fairness.min_value is None and fairness.max_gap is None):
        return []
    metric = fairness.metric
    if not slices:
        return [
            _check(
                f"fairness_{metric}",
                "fairness",
                metric,
                None,
                None,
                True,
                "no slices were evaluated (config 'slices' is empty): fairness not checked",
                skipped=True,
            )
        ]
    direction = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    checks = []
    for column, values in slices.items():
        eligible = {v: e for v, e in values.items() if _gated(e, fairness)}
        flagged = sorted(set(values) - set(eligible))
        note = (
            f" (not gated, too few rows, positives or negatives: {flagged}; the rules: >= {fairness.min_slice_rows} "
            f"rows, >= {fairness.min_slice_positives} positives and negatives)"
            if flagged
            else ""
        )
        if not eligible:
            checks.append(
                _check(
                    f"fairness_{column}",
                    "fairness",
                    metric,
                    None,
                    None,
                    True,
                    f"no {column} slice is large enough to gate: fairness not checked{note}",
                    skipped=True,
                )
            )
            continue
        undefined = sorted(v for v, e in eligible.items() if _missing(e.get(metric)))
        scores = {v: float(e[metric]) for v, e in eligible.items() if v not in undefined}
        worst = min(scores, key=lambda v: direction * scores[v]) if scores else None
        best = max(scores, key=lambda v: direction * scores[v]) if scores else None
        if fairness.min_value is not None:
            name = f"fairness_{column}_min_{metric}"
            if undefined:
                passed = False
                reason = f"{metric} is missing/NaN for {column} slices {undefined}: cannot check fairness"
                value = None
            else:
                value = scores[worst]
                passed = direction * (value - fairness.min_value) >= -TOLERANCE
                reason = (
                    f"worst {column} slice {worst!r} ({eligible[worst]['rows']} rows) has {metric} {value:.4f}"
                    f"{'' if passed else ', short of'} (required {fairness.min_value}){note}"
                )
            checks.append(_check(name, "fairness", metric, value, fairness.min_value, passed, reason))
        if fairness.max_gap is not None:
            name = f"fairness_{column}_gap_{metric}"
            if undefined:
                passed = False
                reason = f"{metric} is missing/NaN for {column} slices {undefined}: cannot check the gap"
                gap = None
            else:
                gap = abs(scores[best] - scores[worst])
                passed = gap <= fairness.max_gap + TOLERANCE
                reason = (
                    f"{column} gap {gap:.4f} between best {best!r} and worst {worst!r} "
                    f"{'<=' if passed else 'exceeds'} {fairness.max_gap}{note}"
                )
            checks.append(_check(name, "fairness", metric, gap, fairness.max_gap, passed, reason))
    return checks


def decide(gate: GateSpec, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The gate decision for the best candidate of an evaluate result (see the module docstring)."""
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
    checks = [
        *absolute_checks(gate, metrics),
        *change_checks(gate, metrics, champion, candidate.get("run_id")),
        *fairness_checks(gate.fairness, candidate.get("slices") or {}),
    ]
    primary = gate.primary_metric
    return {
        "passed": all(c["passed"] for c in checks),
        "candidate": best,
        "run_id": candidate.get("run_id"),
        "model_uri": candidate.get("model_uri"),
        "primary_metric": primary,
        "candidate_value": _number(metrics.get(primary)),
        "champion_value": None if champion is None else _number((champion.get("metrics") or {}).get(primary)),
        "champion_version": None if champion is None else champion.get("version"),
        "checks": checks,
        "reasons": [c["reason"] for c in checks if not c["passed"]],
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


def decision_id(decision: dict[str, Any]) -> str:
    """A content hash of the decision and its inputs: the same inputs give the same id, any change a new one."""
    body = {k: v for k, v in decision.items() if not k.endswith("_uri") and k not in ("decision_id", "run")}
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


def read_decisions(lake: Lake, usecase: str, day: Any) -> list[dict[str, Any]]:
    """Every decision recorded for a use case and date, oldest run first (by key)."""
    prefix = Lake.dated_key("decisions", usecase, day)
    return [lake.read_json(key) for key in sorted(lake.storage.list(prefix)) if key.endswith(".json")]


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Check the best candidate of the evaluate result; write and return the decision (passed or not)."""
    from pipelines.steps.evaluate import read_step_result

    evaluation = read_step_result(ctx, "evaluate", "gate")
    decision = decide(ctx.usecase.gate, evaluation)
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
