"""Evaluate the trained candidates and the current champion on the holdout window: the decision path only.

Reads the train result of the same logical date and the same run (``MLOPS_RUN_ID``), scores every candidate and
the registry's champion (alias ``champion``, loaded by its pinned version) on the same holdout rows, and writes:

- ``runs/<usecase>/evaluate/date=<D>/run=<run>/result.json``: metrics overall and per slice for each model, the
  best candidate (the one train chose by ``gate.primary_metric`` on the validation window and refitted on
  train + validation; the others, fitted on train only, are scored for comparison; see ``select_best``), the intervals of one shared bootstrap draw, fairness, the slices'
  intervals, the infrastructure check and calibration: everything the gate reads, and a short ``summary``;
- ``holdout_scores.parquet`` beside it: the holdout's labels and the chosen candidate's and champion's scores,
  which the ``report`` step explains (permutation importance, SHAP, error cohorts, data explorer,
  counterfactuals) in its own task, beside register and promote, so an explanation never delays or fails a
  decision.

Holdout metrics are also logged to each candidate's MLflow run (``holdout_<metric>``).
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.evaluation.evaluation_data import (
    evaluated_metrics,
    load_holdout,
    write_holdout_scores,
)
from pipelines.results import needed_step_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Evaluate takes no options of its own: what it computes is the gate's config."""


def model_quality(proba: Any, y: Any, groups: Any, metrics: list[str]) -> dict[str, Any]:
    """The metrics of ``proba`` (probabilities, or a regression's values) on the holdout, overall and by slice."""
    from pipelines.evaluation.metrics import model_metrics, slice_metrics

    return {
        "metrics": model_metrics(y, proba, metrics),
        "slices": slice_metrics(groups, y, proba, metrics),
    }


def select_best(
    candidates: dict[str, dict[str, Any]], primary: str, chosen: dict[str, Any] | None = None
) -> tuple[str | None, str]:
    """The candidate to gate and the data it was chosen on. Train ``chosen`` it on the validation window (and
    refitted only it on train + validation: the others are fitted on train, not to be gated), so that choice is
    kept; a train result without one (no validation window: a single candidate; or an older release) is chosen
    by the primary metric on validation when every candidate has it there, else on the holdout, which the
    report says."""
    from pipelines.evaluation import metrics as quality

    if chosen is not None:
        if chosen.get("candidate") not in candidates:
            raise StepFailed(
                f"the train result chose candidate {chosen.get('candidate')!r}, which is not among its candidates "
                f"({sorted(candidates)}); rerun train"
            )
        return str(chosen["candidate"]), str(chosen.get("on") or "validation")
    on_validation = {name: {"metrics": c.get("validation_metrics") or {}} for name, c in candidates.items()}
    if all(not quality.is_missing(c["metrics"].get(primary)) for c in on_validation.values()):
        return quality.best_candidate(on_validation, primary), "validation"
    return quality.best_candidate(candidates, primary), "holdout"


class _Stopwatch:
    """Seconds spent on each part of the step (``laps``), for the cost of the report per training run."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def decision_summary(
    best: str,
    selected_on: str,
    primary: str,
    candidates: dict[str, dict[str, Any]],
    champion: dict[str, Any] | None,
    comparison: dict[str, Any],
    infrastructure: dict[str, Any] | None,
) -> dict[str, Any]:
    """A few lines a person reads before the gate decides: the chosen candidate, its primary metric and
    interval, the champion's value on the same rows, the paired differences and the load check."""
    interval = candidates[best].get("intervals", {}).get(primary) or {}
    return {
        "best": best,
        "selected_on": selected_on,
        "primary_metric": primary,
        "candidate_value": candidates[best]["metrics"].get(primary),
        "candidate_interval": [interval.get("low"), interval.get("high")] if interval else None,
        "champion_version": None if champion is None else champion.get("version"),
        "champion_value": None if champion is None else (champion.get("metrics") or {}).get(primary),
        "differences": {
            metric: {k: c.get(k) for k in ("difference", "low", "high", "min_delta") if k in c}
            for metric, c in comparison.items()
        },
        "infrastructure_passed": None if infrastructure is None else infrastructure.get("passed"),
    }


def _begin_load_check(
    ctx: StepContext, entry: dict[str, Any], sample: Any, verified_loads: Any
) -> tuple[Any, dict[str, Any] | None, str | None]:
    """Start the infrastructure check of a trained candidate in a fresh process, unless a model of the same
    load fingerprint passed it before: (pending check or None, the reused result or None, the fingerprint)."""
    from pipelines.evaluation.loadcheck import load_fingerprint, reused_check, start_infrastructure_check

    name, uri = entry["name"], entry["model_uri"]
    fingerprint = load_fingerprint(uri, str(entry.get("family") or name), ctx.code_version)
    verified = verified_loads.find(fingerprint)
    if verified is not None:
        progress(
            f"evaluate: infrastructure check: {name}'s family and requirements loaded in a fresh process before "
            f"(fingerprint {fingerprint}); not rerun"
        )
        return None, reused_check(uri, fingerprint, verified), fingerprint
    progress(f"evaluate: infrastructure check: loading {name} in a fresh process as the scorer does")
    return start_infrastructure_check(uri, sample), None, fingerprint


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Score candidates and champion on the holdout, pick the best, compute what the gate reads, write the
    result and the holdout scores (the report step explains them)."""
    import numpy as np
    from mlflow import MlflowClient

    from pipelines import modeling
    from pipelines.evaluation import metrics as quality
    from pipelines.evaluation.fairness import fairness_report
    from pipelines.evaluation.loadcheck import VerifiedLoads
    from pipelines.evaluation.significance import (
        change_rule,
        cluster_index,
        draw_resampling,
        metric_interval,
        paired_difference,
    )
    from pipelines.features.model_inputs import model_inputs
    from pipelines.modeling.tracking import (
        LEGACY_THRESHOLD,
        champion_version,
        configure_mlflow,
        decision_threshold,
        load_model,
        model_name,
        predict_proba,
    )

    usecase = ctx.usecase
    gate = usecase.gate
    significance = gate.significance
    clock = _Stopwatch()
    seed = usecase.split.seed if significance.seed is None else significance.seed
    train_result = needed_step_result(ctx, "train", "evaluate")
    # a nightly refresh is one of the month's N tests: its change check uses the rule's confidence
    rule = change_rule(significance, train_result.get("mode"), usecase.schedules.train_nightly)
    bootstrap = {"resamples": rule["resamples"], "confidence": significance.confidence}
    holdout = load_holdout(ctx, train_result)
    if len(holdout) == 0:
        raise StepFailed(f"the holdout window {train_result['window']} has no labeled rows; rerun train")
    cluster_by = list(significance.cluster_by)
    # ONE draw of the resamples for the whole evaluation: every interval below reads the same clusters
    resampling = draw_resampling(
        len(holdout),
        rule["resamples"],
        seed,
        cluster_index(holdout, cluster_by) if cluster_by else None,
        cluster_by,
    )
    X = model_inputs(usecase, holdout, "the holdout rows")
    y = holdout[usecase.target.column].to_numpy(dtype=modeling.label_dtype(usecase))
    clock.lap("holdout")
    groups = holdout[list(usecase.slices)] if usecase.slices else holdout.iloc[:, :0]
    wanted = evaluated_metrics(ctx)
    primary = gate.primary_metric
    classification = usecase.task == "classification"
    configure_mlflow(ctx.profile, usecase)

    # the candidate chosen on the validation window is known before the holdout is scored: a fresh process starts
    # loading it now (about 15-20 s of imports and loading) while this one scores and computes the intervals
    sample = X.sample(n=min(len(X), 50), random_state=seed)
    entries = {e["name"]: e for e in train_result["candidates"]}
    verified_loads = VerifiedLoads(ctx.lake, usecase.name)
    checked: str | None = (
        None  # the candidate whose load is checked (pending) or was verified before (reused)
    )
    pending = reused = fingerprint = None
    chosen_early, chosen_on = select_best(
        {
            e["name"]: {"validation_metrics": e.get("validation_metrics"), "metrics": {}}
            for e in train_result["candidates"]
        },
        primary,
        train_result.get("chosen"),
    )
    if gate.infrastructure_check and chosen_early is not None and chosen_on == "validation":
        checked = chosen_early
        pending, reused, fingerprint = _begin_load_check(ctx, entries[checked], sample, verified_loads)
    try:
        candidates: dict[str, dict[str, Any]] = {}
        predictions: dict[str, Any] = {}
        models: dict[str, Any] = {}
        for entry in train_result["candidates"]:
            progress(f"evaluate: scoring {entry['name']} on {len(X)} holdout rows")
            try:
                models[entry["name"]] = load_model(entry["model_uri"])
                proba = predict_proba(models[entry["name"]], X)
            except Exception as exc:
                raise StepFailed(
                    f"candidate {entry['name']} ({entry['model_uri']}, run {entry['run_id']}) could not be loaded or "
                    f"scored: {type(exc).__name__}: {exc}; rerun train with --retrain"
                ) from exc
            predictions[entry["name"]] = proba
            candidates[entry["name"]] = {
                "run_id": entry["run_id"],
                "model_uri": entry["model_uri"],
                "family": entry.get("family"),
                # the window parts it is fitted on: train + validation for the chosen one's refit, else train
                **({"fitted_on": entry["fitted_on"]} if entry.get("fitted_on") else {}),
                **(
                    {
                        "decision_threshold": float(entry.get("decision_threshold", LEGACY_THRESHOLD)),
                        "threshold_source": entry.get("threshold_source")
                        or "not recorded by train (0.5 for a model logged before thresholds were)",
                    }
                    if classification
                    else {}
                ),
                **(
                    {"validation_metrics": entry["validation_metrics"]}
                    if entry.get("validation_metrics")
                    else {}
                ),
                **model_quality(proba, y, groups, wanted),
            }
        if not candidates:
            raise StepFailed(f"the train result of {ctx.ds} lists no candidates; rerun train")

        champion = None
        champion_proba = None
        champion_threshold = None
        version = champion_version(usecase)  # a registry failure raises: the gate never runs on a guess
        if version is not None:
            uri = f"models:/{model_name(usecase)}/{version.version}"
            champion = {
                "version": str(version.version),
                "run_id": version.run_id,
                "candidate": (version.tags or {}).get("candidate"),
                "model_uri": uri,
            }
            progress(f"evaluate: re-scoring champion version {version.version} on the same holdout")
            try:
                champion_model = load_model(uri)
                champion_proba = predict_proba(champion_model, X)
                champion_threshold = decision_threshold(champion_model) if classification else None
                champion.update(model_quality(champion_proba, y, groups, wanted))
            except Exception as exc:  # the gate fails closed on the missing baseline, and says why
                champion_proba = None
                champion.update(
                    {"metrics": dict.fromkeys(wanted), "slices": {}, "error": f"{type(exc).__name__}: {exc}"}
                )

        clock.lap("scoring")
    except BaseException:
        if pending is not None:
            pending.close()
        raise
    best, selected_on = select_best(candidates, primary, train_result.get("chosen"))
    best_proba = predictions[best]
    best_threshold = candidates[best].get("decision_threshold")
    progress(f"evaluate: {best} chosen by {primary} on the {selected_on}")
    if checked is not None and best != checked:  # the same rule on the same metrics: a safeguard only
        if pending is not None:
            pending.close()
        checked, pending, reused, fingerprint = None, None, None, None
    if gate.infrastructure_check and checked is None:  # chosen on the holdout: known only now
        checked = best
        pending, reused, fingerprint = _begin_load_check(ctx, entries[checked], sample, verified_loads)
    try:
        progress("evaluate: intervals and the champion comparison")
        candidates[best]["intervals"] = {
            metric: metric_interval(metric, y, best_proba, seed=seed, resampling=resampling, **bootstrap)
            for metric in dict.fromkeys([primary, *gate.absolute])
        }
        comparison: dict[str, Any] = {}
        if champion_proba is not None and candidates[best]["run_id"] != (champion or {}).get("run_id"):
            for metric, bound in gate.change.items():
                comparison[metric] = paired_difference(
                    metric,
                    y,
                    best_proba,
                    champion_proba,
                    seed=seed,
                    resamples=rule["resamples"],
                    confidence=rule["confidence"],
                    resampling=resampling,
                ) | {"min_delta": bound.min_delta}

        fairness = None
        if usecase.sensitive_attributes:
            from pipelines.config import FairnessSpec

            progress(f"evaluate: fairness over {usecase.sensitive_attributes} (fairlearn MetricFrame)")
            fairness = fairness_report(
                y,
                best_proba,
                champion_proba,
                holdout,
                attributes=list(usecase.sensitive_attributes),
                spec=gate.fairness or FairnessSpec(metric=primary),
                task=usecase.task,
                candidate_threshold=best_threshold,
                champion_threshold=champion_threshold,
                seed=seed,
                resampling=resampling,
                **bootstrap,
            )
        if gate.robustness is not None and usecase.slices:
            from pipelines.evaluation.fairness import add_slice_intervals

            # the slices too small to be judged on their value are judged on their interval in the gate
            add_slice_intervals(
                candidates[best]["slices"],
                groups,
                y,
                best_proba,
                spec=gate.robustness,
                seed=seed,
                resampling=resampling,
                **bootstrap,
            )

        clock.lap("intervals_and_fairness")
        scores_uri = write_holdout_scores(
            ctx, holdout, y, best_proba, champion_proba, resampling.cluster, cluster_by
        )
    except BaseException:
        if pending is not None:
            pending.close()
        raise
    infrastructure = reused
    if pending is not None:
        infrastructure = pending.result(best_proba[X.index.get_indexer(sample.index)]) | {
            "fingerprint": fingerprint
        }
        verified_loads.record(fingerprint, infrastructure, day=ctx.ds, run=ctx.run_id)
    clock.lap("infrastructure_check")  # what is left to wait for once the intervals are done
    # the gate's calibration check reads the expected calibration error of the chosen candidate
    calibration_error = quality.calibration(y, best_proba).get("ece") if classification else None

    summary = decision_summary(best, selected_on, primary, candidates, champion, comparison, infrastructure)
    client = MlflowClient()
    for c in candidates.values():
        for name, value in c["metrics"].items():
            if value is not None:
                client.log_metric(c["run_id"], f"holdout_{name}", value)

    clock.lap("record")  # the decision summary and the holdout metrics logged to MLflow
    result: dict[str, Any] = {
        "candidates": candidates,
        "best": best,
        "selected_on": selected_on,
        "primary_metric": primary,
        "champion": champion,
        "comparison": comparison,
        "fairness": fairness,
        "calibration_error": calibration_error,
        "infrastructure": infrastructure,
        "holdout_rows": len(X),
        # what the report step needs to explain the same rows and the same model
        "holdout": {
            "start": train_result["window"]["holdout_start"],
            "end_exclusive": train_result["window"]["holdout_end"],
            "rows": len(X),
            ("positive_rate" if classification else "label_mean"): quality.clean(np.mean(y)),
        },
        "window": train_result["window"],
        "best_model_uri": candidates[best]["model_uri"],
        "summary": summary,
        "mode": train_result.get("mode"),
        "significance": resampling.record() | {"rule": rule, "holdout_scores_uri": scores_uri},
        "tables_read": train_result.get("tables_read", {}),
        "seconds": clock.laps,
    }
    key = f"{ctx.run_key('evaluate')}/result.json"
    result["result_uri"] = ctx.lake.storage.uri(key)
    ctx.lake.write_json(key, result)
    return {
        "best": best,
        "selected_on": selected_on,
        "primary_metric": primary,
        "holdout_rows": len(X),
        "tables_read": result["tables_read"],
        "candidates": {name: c["metrics"] for name, c in candidates.items()},
        **(
            {
                "decision_thresholds": {
                    name: {"threshold": c["decision_threshold"], "source": c["threshold_source"]}
                    for name, c in candidates.items()
                }
            }
            if classification
            else {}
        ),
        "champion": None
        if champion is None
        else {"version": champion["version"], "metrics": champion["metrics"]},
        "summary": summary,
        "result_uri": result["result_uri"],
        "seconds": clock.laps,  # the decision path's parts (holdout, scoring, intervals_and_fairness, ...)
    }
