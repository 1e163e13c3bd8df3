"""Evaluate the trained candidates and the current champion on the holdout window; explain the best model.

Reads the train result of the same logical date and the same run (``MLOPS_RUN_ID``), scores every candidate and
the registry's champion (alias ``champion``, loaded by its pinned version) on the same holdout rows, and writes:

- ``runs/<usecase>/evaluate/date=<D>/run=<run>/result.json``: metrics overall and per slice for each model, the
  best candidate: the one train chose by ``gate.primary_metric`` on the validation window and refitted on train +
  validation (the others, fitted on train only, are scored for comparison; see ``select_best``);
- ``reports/<usecase>/evaluation/date=<D>/run=<run>/report.json`` and ``report.html``: why the best model looks
  the way it does: permutation feature importance, slices, errors (confusion matrix at the candidate's decision threshold, worst slices), calibration.

Holdout metrics are also logged to each candidate's MLflow run (``holdout_<metric>``).
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.lake import LakeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--importance-rows", type=int, default=4000, help="holdout sample for feature importance"
    )
    parser.add_argument("--importance-repeats", type=int, default=3, help="shuffles per feature")


def read_step_result(ctx: StepContext, step: str, needed_by: str) -> dict[str, Any]:
    """The result JSON of ``step`` for this use case, date and run, or StepFailed saying what to run."""
    key = f"{ctx.run_key(step)}/result.json"
    if not ctx.lake.storage.exists(key):
        raise StepFailed(
            f"{ctx.lake.storage.uri(key)}: no {step} result for {ctx.usecase.name} on {ctx.ds} in run "
            f"{ctx.run_id!r}; {needed_by} needs it: run python -m pipelines {step} --usecase {ctx.usecase.name} "
            f"--date {ctx.ds} first, in the same run"
        )
    return ctx.lake.read_json(key)


def evaluated_metrics(ctx: StepContext) -> list[str]:
    """The config's metrics plus every metric the gate reads."""
    gate = ctx.usecase.gate
    wanted = [*ctx.usecase.metrics, gate.primary_metric, *gate.absolute, *gate.change]
    if gate.fairness is not None:
        wanted.append(gate.fairness.metric)
    return list(dict.fromkeys(wanted))


def load_holdout(ctx: StepContext, train_result: dict[str, Any]) -> Any:
    """The labeled holdout rows the candidates were trained for, read from the features and labels versions train
    read (time travel), so a rebuild or an outcome arriving since training cannot change what the candidates are
    judged on."""
    from pipelines import modeling
    from pipelines.steps.train import (
        features_snapshot,
        labels_known_before,
        read_labeled,
        recorded_labels,
        window_partitions,
    )

    window = train_result["window"]
    version = train_result.get("features_version")
    if version is None:
        raise StepFailed(
            f"the train result for {ctx.ds} records no features table version (written by an older release); "
            f"rerun train (python -m pipelines train --usecase {ctx.usecase.name} --date {ctx.ds}) then evaluate"
        )
    try:
        snapshot = features_snapshot(ctx, int(version))
    except LakeError as exc:
        raise StepFailed(f"{exc}; rerun train for {ctx.ds}, then evaluate") from None
    labels = recorded_labels(ctx, train_result)
    parts = window_partitions(snapshot, window["holdout_start"], window["holdout_end"])
    columns = list(
        dict.fromkeys(
            [
                *modeling.feature_columns(ctx.usecase),
                ctx.usecase.target.column,
                *ctx.usecase.evaluated_columns,
                *ctx.usecase.gate.significance.cluster_by,  # the bootstrap's clusters (date by default)
            ]
        )
    )
    return read_labeled(ctx, snapshot, parts, columns, labels_known_before(ctx, window), labels=labels)


def model_quality(proba: Any, y: Any, groups: Any, metrics: list[str]) -> dict[str, Any]:
    """The metrics of ``proba`` (probabilities, or a regression's values) on the holdout, overall and by slice."""
    from pipelines.metrics import model_metrics, slice_metrics

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
    from pipelines import metrics as quality

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


def load_train_sample(ctx: StepContext, train_result: dict[str, Any], max_rows: int) -> Any:
    """A seeded sample of the train window's labeled rows (the data explorer's training side)."""
    from pipelines import modeling
    from pipelines.steps.train import (
        features_snapshot,
        labels_known_before,
        read_labeled,
        recorded_labels,
        window_partitions,
    )

    window = train_result["window"]
    snapshot = features_snapshot(ctx, int(train_result["features_version"]))
    labels = recorded_labels(ctx, train_result)
    parts = window_partitions(snapshot, window["train_start"], window["train_end"])
    columns = [*modeling.feature_columns(ctx.usecase), ctx.usecase.target.column]
    frame = read_labeled(ctx, snapshot, parts, columns, labels_known_before(ctx, window), labels=labels)
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=ctx.usecase.split.seed).sort_index()
    return frame


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


def write_holdout_scores(
    ctx: StepContext,
    holdout: Any,
    y: Any,
    candidate: Any,
    champion: Any | None,
    cluster: Any,
    cluster_by: list[str],
) -> str:
    """Keep the holdout's labels, the chosen candidate's and the champion's scores and each row's clusters
    (``holdout_scores.parquet`` beside the evaluate result, about 20 bytes a row), so an interval can be
    recomputed later (another bootstrap, another rule) without reloading the models: ``bench/gate.py`` reads
    them to put the row and the cluster bootstrap of the same decisions side by side."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        "label": np.asarray(y, dtype="float64"),
        "candidate": np.asarray(candidate, dtype="float64"),
        "champion": None if champion is None else np.asarray(champion, dtype="float64"),
        "cluster": np.asarray(cluster, dtype="int64"),
    }
    for name in dict.fromkeys(["date", *cluster_by]):
        if name in holdout.columns:
            columns[name] = holdout[name].astype("string").to_numpy()
    table = pa.table({k: v for k, v in columns.items() if v is not None})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    key = f"{ctx.run_key('evaluate')}/holdout_scores.parquet"
    ctx.lake.storage.write_bytes(key, buffer.getvalue())
    return ctx.lake.storage.uri(key)


def _errors(task: str, y: Any, scores: Any, threshold: float | None) -> Any:
    import numpy as np

    if task == "classification":
        return ((np.asarray(scores) >= (threshold or 0.5)).astype("int64") != y).astype("int64")
    return np.abs(np.asarray(scores, dtype="float64") - y)


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Score candidates and champion on the holdout, pick the best, write result and report."""
    import numpy as np
    from mlflow import MlflowClient

    from pipelines import explain, modeling
    from pipelines import metrics as quality
    from pipelines.fairness import fairness_report
    from pipelines.loadcheck import start_infrastructure_check
    from pipelines.model_inputs import model_inputs
    from pipelines.report import render_report_html
    from pipelines.significance import (
        change_rule,
        cluster_index,
        draw_resampling,
        metric_interval,
        paired_difference,
    )
    from pipelines.tracking import (
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
    train_result = read_step_result(ctx, "train", "evaluate")
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
    groups = holdout[list(usecase.slices)] if usecase.slices else holdout.iloc[:, :0]
    wanted = evaluated_metrics(ctx)
    primary = gate.primary_metric
    classification = usecase.task == "classification"
    configure_mlflow(ctx.profile, usecase)

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
                {"validation_metrics": entry["validation_metrics"]} if entry.get("validation_metrics") else {}
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
    best, selected_on = select_best(candidates, primary, train_result.get("chosen"))
    best_proba = predictions[best]
    best_threshold = candidates[best].get("decision_threshold")
    progress(f"evaluate: {best} chosen by {primary} on the {selected_on}")
    pending = None
    if gate.infrastructure_check:  # a fresh process loads the model while this one explains it
        sample = X.sample(n=min(len(X), 50), random_state=seed)
        progress(f"evaluate: infrastructure check: loading {best} in a fresh process as the scorer does")
        pending = start_infrastructure_check(candidates[best]["model_uri"], sample)
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
            from pipelines.fairness import add_slice_intervals

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
        robustness = gate.robustness
        min_slice_rows = robustness.min_slice_rows if robustness is not None else 1
        progress(f"evaluate: explaining {best} (permutation importance, SHAP, error cohorts, data explorer)")
        best_model = models[best]
        importance = quality.permutation_importance(
            lambda frame: predict_proba(best_model, frame),
            X,
            y,
            primary,
            repeats=args.importance_repeats,
            seed=usecase.split.seed,
            max_rows=args.importance_rows,
        )
        clock.lap("permutation_importance")
        families = {entry["name"]: entry.get("family") for entry in train_result["candidates"]}
        shap = explain.shap_summary(best_model, X, family=families.get(best) or "", seed=usecase.split.seed)
        clock.lap("shap")
        numeric, categorical = list(usecase.features.numeric), list(usecase.features.categorical)
        error_analysis = explain.error_cohorts(
            X,
            _errors(usecase.task, y, best_proba, best_threshold),
            task=usecase.task,
            numeric=numeric,
            categorical=categorical,
            seed=usecase.split.seed,
        )
        clock.lap("error_analysis")
        train_sample = load_train_sample(ctx, train_result, max_rows=20000)
        train_X = model_inputs(usecase, train_sample, "the training sample")
        explorer = explain.data_explorer(train_X, X, numeric=numeric, categorical=categorical)
        clock.lap("data_explorer")
        counterfactuals = None
        if classification:
            progress(f"evaluate: counterfactuals of {best} (dice-ml, random method)")
            counterfactuals = explain.counterfactuals(
                best_model,
                train_X,
                train_sample[usecase.target.column].to_numpy(dtype="int64"),
                X,
                y,
                best_proba,
                threshold=float(best_threshold if best_threshold is not None else 0.5),
                numeric=numeric,
                categorical=categorical,
                seed=usecase.split.seed,
            )
        clock.lap("counterfactuals")
    except BaseException:
        if pending is not None:
            pending.close()
        raise
    infrastructure = (
        None if pending is None else pending.result(best_proba[X.index.get_indexer(sample.index)])
    )
    clock.lap("infrastructure_check")  # what is left to wait for once the explanations are done
    report_prefix = ctx.report_prefix("evaluation")
    report = {
        "usecase": usecase.name,
        "logical_date": ctx.ds,
        "primary_metric": primary,
        "holdout": {
            "start": train_result["window"]["holdout_start"],
            "end_exclusive": train_result["window"]["holdout_end"],
            "rows": len(X),
            ("positive_rate" if classification else "label_mean"): quality.clean(np.mean(y)),
        },
        "window": train_result["window"],
        "task": usecase.task,
        "best": best,
        "selected_on": selected_on,
        "candidates": {
            name: {
                "run_id": c["run_id"],
                "metrics": c["metrics"],
                "validation_metrics": c.get("validation_metrics"),
                **{k: c[k] for k in ("decision_threshold", "threshold_source", "fitted_on") if k in c},
            }
            for name, c in candidates.items()
        },
        "champion": None
        if champion is None
        else {k: champion.get(k) for k in ("version", "candidate", "metrics", "error")},
        "comparison": comparison,
        "fairness": fairness,
        "infrastructure": infrastructure,
        "explanation": {
            "feature_importance": {"metric": primary, "method": "permutation", "features": importance},
            "slices": candidates[best]["slices"],
            "errors": {
                "worst_slices": quality.worst_slices(candidates[best]["slices"], primary, min_slice_rows),
                "min_slice_rows": min_slice_rows,
            },
            "error_analysis": error_analysis,
            "shap": shap,
            "counterfactuals": counterfactuals,
        },
        "data_explorer": explorer,
    }
    if classification:
        report["explanation"]["errors"]["confusion_matrix"] = quality.confusion(y, best_proba, best_threshold)
        report["explanation"]["calibration"] = quality.calibration(y, best_proba)
        report["curves"] = {f"{best} (candidate)": quality.curves(y, best_proba)}
        if champion_proba is not None:
            label = f"champion v{champion['version']}"
            report["explanation"]["calibration_champion"] = quality.calibration(y, champion_proba)
            report["curves"][label] = quality.curves(y, champion_proba)
    else:
        report["explanation"]["residuals"] = quality.residuals(y, best_proba, seed=usecase.split.seed)
    report_uri = ctx.lake.write_json(f"{report_prefix}/report.json", report)
    report_html_uri = ctx.lake.write_text(f"{report_prefix}/report.html", render_report_html(report))
    clock.lap("report_files")

    client = MlflowClient()
    for c in candidates.values():
        for name, value in c["metrics"].items():
            if value is not None:
                client.log_metric(c["run_id"], f"holdout_{name}", value)
        client.set_tag(c["run_id"], "evaluation_report_uri", report_uri)

    result: dict[str, Any] = {
        "candidates": candidates,
        "best": best,
        "selected_on": selected_on,
        "primary_metric": primary,
        "champion": champion,
        "comparison": comparison,
        "fairness": fairness,
        "calibration_error": report["explanation"].get("calibration", {}).get("ece"),
        "infrastructure": infrastructure,
        "holdout_rows": len(X),
        "mode": train_result.get("mode"),
        "significance": resampling.record() | {"rule": rule, "holdout_scores_uri": scores_uri},
        "tables_read": train_result.get("tables_read", {}),
        "seconds": clock.laps,
        "report_uri": report_uri,
        "report_html_uri": report_html_uri,
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
        "report_uri": report_uri,
        "report_html_uri": report_html_uri,
        "result_uri": result["result_uri"],
    }
