"""Explain the candidate the gate judged and render the evaluation report, after the gate and beside register.

Reads the evaluate result of the same logical date and run (the chosen candidate's model URI, the holdout window,
the metrics, intervals and fairness the gate read), the holdout scores evaluate wrote
(``holdout_scores.parquet``), the gate's decision when there is one, and the holdout rows train recorded (time
travel, the same rows in the same order). Writes:

- ``reports/<usecase>/evaluation/date=<D>/run=<run>/report.json`` and ``report.html``: the decision, the models,
  the comparison with the champion, curves, calibration, permutation importance, SHAP, error cohorts,
  counterfactuals, fairness, slices and the data explorer, and ``parts``: each part's status (``done``,
  ``skipped: <why>``, ``cut: <why>`` or ``failed: <error>``), seconds and budget;
- both files as artifacts of the candidate's MLflow run (``evaluation/``), and the tag ``evaluation_report_uri``
  on every candidate's run.

A part that raises is recorded as failed and the others still run: the report never fails for an explanation,
and since it runs beside register and promote, nothing it does changes the decision or the promotion.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.evaluation.evaluation_data import (
    holdout_errors,
    load_holdout,
    load_train_sample,
    read_holdout_scores,
)
from pipelines.results import needed_step_result

DECISION_KEYS = (
    "passed",
    "candidate",
    "selected_on",
    "primary_metric",
    "candidate_value",
    "champion_value",
    "champion_version",
    "checks",
    "reasons",
    "decision_id",
    "significance",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--importance-rows",
        type=int,
        default=None,
        help="holdout sample for feature importance (report config)",
    )
    parser.add_argument(
        "--importance-repeats", type=int, default=None, help="shuffles per feature (report config)"
    )


class Parts:
    """Runs each part of the report under a guard: its seconds, its budget and its status. A part returns its
    section, or ``(section, note)`` where it cut its work to the budget; an exception is the part's failure,
    recorded as ``failed: <Type>: <message>`` and never raised."""

    def __init__(self, budgets: Callable[[str], float], skip: list[str]) -> None:
        self.budget = budgets
        self.skip = set(skip)
        self.status: dict[str, dict[str, Any]] = {}

    def run(self, name: str, compute: Callable[[float], Any]) -> Any:
        budget = self.budget(name)
        if name in self.skip:
            self.status[name] = {
                "status": "skipped: report.skip names it",
                "seconds": 0.0,
                "budget_s": budget,
            }
            return None
        start = time.perf_counter()
        note = None
        try:
            value = compute(budget)
            if isinstance(value, tuple):
                value, note = value
            status = "done" if note is None else f"cut: {note}"
        except Exception as exc:  # an explanation's failure is reported, never the run's
            value, status = None, f"failed: {type(exc).__name__}: {exc}"
            progress(f"report: {name} {status}")
        self.status[name] = {
            "status": status,
            "seconds": round(time.perf_counter() - start, 3),
            "budget_s": budget,
        }
        return value

    def skipped(self, name: str, why: str) -> None:
        self.status[name] = {"status": f"skipped: {why}", "seconds": 0.0, "budget_s": self.budget(name)}


def importance_plan(
    predict: Callable[[Any], Any], X: Any, rows: int, repeats: int, budget: float
) -> tuple[int, int, float]:
    """Rows and repeats for permutation importance that fit ``budget`` seconds: the run scores
    ``rows x (features x repeats + 1)`` rows in one call, whose cost is a fixed part (a pyfunc's schema checks, a
    Keras graph call) plus a part per row, measured from two timed predictions of 200 and 2000 rows after a
    warm-up (a per-row cost from one small call counted the fixed part again for every row: 40 s estimated for
    a run that took 0.7 s). Fewer repeats first (down to 1), then fewer rows (down to 100). Returns them and
    the full run's estimated seconds."""
    predict(X.iloc[: min(len(X), 50)])  # the first call of a loaded model pays its own warm-up

    def timed(n: int) -> tuple[int, float]:
        n = min(len(X), n)
        start = time.perf_counter()
        predict(X.iloc[:n])
        return n, time.perf_counter() - start

    (small, t_small), (large, t_large) = timed(200), timed(2000)
    per_row = max((t_large - t_small) / (large - small), 1e-9) if large > small else t_large / max(large, 1)
    fixed = max(t_small - per_row * small, 0.0)
    features = X.shape[1]

    def cost(r: int, k: int) -> float:
        return fixed + per_row * r * (features * k + 1)

    estimate = cost(rows, repeats)
    while repeats > 1 and cost(rows, repeats) > budget:
        repeats -= 1
    if cost(rows, repeats) > budget:
        rows = max(min(rows, 100), int(max(budget - fixed, 0.0) / (per_row * (features * repeats + 1))))
    return rows, repeats, estimate


def optional_result(ctx: StepContext, step: str) -> dict[str, Any] | None:
    """The result of ``step`` in this run, or None (the report runs even when the gate task failed)."""
    key = f"{ctx.run_key(step)}/result.json"
    return ctx.lake.read_json(key) if ctx.lake.storage.exists(key) else None


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Explain the chosen candidate on the holdout the gate judged it on; write and log the report."""
    import numpy as np

    from pipelines import modeling
    from pipelines.evaluation import explain
    from pipelines.evaluation import metrics as quality
    from pipelines.evaluation.report import render_report_html
    from pipelines.features.model_inputs import model_inputs
    from pipelines.modeling.tracking import configure_mlflow, load_model, predict_proba

    usecase = ctx.usecase
    spec = usecase.report
    evaluation = needed_step_result(ctx, "evaluate", "report")
    train_result = needed_step_result(ctx, "train", "report")
    decision = optional_result(ctx, "gate")
    configure_mlflow(ctx.profile, usecase)
    best = evaluation["best"]
    primary = evaluation["primary_metric"]
    classification = usecase.task == "classification"
    chosen = evaluation["candidates"][best]
    threshold = chosen.get("decision_threshold")
    seed = usecase.split.seed

    holdout = load_holdout(ctx, train_result)
    scores = read_holdout_scores(ctx)
    if len(scores) != len(holdout):  # evaluate's rows are the report's rows, or nothing is explained
        raise StepFailed(
            f"the holdout has {len(holdout)} rows but evaluate scored {len(scores)}; rerun evaluate in this run"
        )
    X = model_inputs(usecase, holdout, "the holdout rows")
    y = holdout[usecase.target.column].to_numpy(dtype=modeling.label_dtype(usecase))
    best_proba = scores["candidate"].to_numpy()
    champion_proba = scores["champion"].to_numpy() if "champion" in scores.columns else None
    numeric, categorical = list(usecase.features.numeric), list(usecase.features.categorical)
    parts = Parts(spec.budget, list(spec.skip))
    model: dict[str, Any] = {}

    def best_model() -> Any:
        # loaded once, by the first part that needs it; a load error fails each part that needs the model
        if "model" not in model:
            model["model"] = load_model(evaluation.get("best_model_uri") or chosen["model_uri"])
        return model["model"]

    def performance(budget: float) -> dict[str, Any]:
        robustness = usecase.gate.robustness
        min_slice_rows = robustness.min_slice_rows if robustness is not None else 1
        out: dict[str, Any] = {
            "slices": chosen.get("slices", {}),
            "errors": {
                "worst_slices": quality.worst_slices(chosen.get("slices", {}), primary, min_slice_rows),
                "min_slice_rows": min_slice_rows,
            },
        }
        if classification:
            out["errors"]["confusion_matrix"] = quality.confusion(y, best_proba, threshold)
            out["calibration"] = quality.calibration(y, best_proba)
            out["curves"] = {f"{best} (candidate)": quality.curves(y, best_proba)}
            champion = evaluation.get("champion")
            if champion_proba is not None and champion is not None:
                out["calibration_champion"] = quality.calibration(y, champion_proba)
                out["curves"][f"champion v{champion['version']}"] = quality.curves(y, champion_proba)
        else:
            out["residuals"] = quality.residuals(y, best_proba, seed=seed)
        return out

    def importance(budget: float) -> Any:
        rows = min(args.importance_rows or spec.importance_rows, len(X))
        repeats = args.importance_repeats or spec.importance_repeats
        wanted = (rows, repeats)
        rows, repeats, estimate = importance_plan(
            lambda frame: predict_proba(best_model(), frame), X, rows, repeats, budget
        )
        progress(f"report: permutation importance of {best} ({repeats} shuffles of {X.shape[1]} features)")
        found = quality.permutation_importance(
            lambda frame: predict_proba(best_model(), frame),
            X,
            y,
            primary,
            repeats=repeats,
            seed=seed,
            max_rows=rows,
        )
        section = {
            "metric": primary,
            "method": "permutation",
            "features": found,
            "rows": rows,
            "repeats": repeats,
        }
        if (rows, repeats) != wanted:
            note = (
                f"{rows} rows x {repeats} shuffles instead of {wanted[0]} x {wanted[1]}: the full run was "
                f"estimated at {estimate:.0f} s, over the {budget:g} s budget"
            )
            return section | {"cut": note}, note
        return section

    def shap(budget: float) -> Any:
        progress(f"report: SHAP of {best}")
        found = explain.shap_summary(
            best_model(),
            X,
            family=chosen.get("family") or "",
            seed=seed,
            rows=spec.shap_rows,
            budget_s=budget,
            task=usecase.task,
        )
        return (found, found["cut"]) if found.get("cut") else found

    def error_analysis(budget: float) -> Any:
        return explain.error_cohorts(
            X,
            holdout_errors(usecase.task, y, best_proba, threshold),
            task=usecase.task,
            numeric=numeric,
            categorical=categorical,
            seed=seed,
        )

    train: dict[str, Any] = {}

    def train_sample() -> tuple[Any, Any]:
        if "X" not in train:
            sample = load_train_sample(ctx, train_result, max_rows=20000)
            train["X"] = model_inputs(usecase, sample, "the training sample")
            train["y"] = sample[usecase.target.column].to_numpy()
        return train["X"], train["y"]

    def data_explorer(budget: float) -> Any:
        return explain.data_explorer(train_sample()[0], X, numeric=numeric, categorical=categorical)

    def counterfactuals(budget: float) -> Any:
        progress(f"report: counterfactuals of {best} (dice-ml, random method)")
        train_X, train_y = train_sample()
        found = explain.counterfactuals(
            best_model(),
            train_X,
            train_y.astype("int64"),
            X,
            y,
            best_proba,
            threshold=float(threshold if threshold is not None else 0.5),
            numeric=numeric,
            categorical=categorical,
            seed=seed,
            budget_s=budget,
        )
        left = sum(1 for row in found["rows"] if "budget" in str(row.get("error", "")))
        if left:
            return (
                found,
                f"{left} of {len(found['rows'])} rows left unsearched when the {budget:g} s budget was spent",
            )
        return found

    basics = parts.run("performance", performance) or {}
    found_importance = parts.run("feature_importance", importance)
    found_shap = parts.run("shap", shap)
    found_errors = parts.run("error_analysis", error_analysis)
    explorer = parts.run("data_explorer", data_explorer)
    found_counterfactuals = None
    if classification:
        found_counterfactuals = parts.run("counterfactuals", counterfactuals)
    else:
        parts.skipped("counterfactuals", "a regression has no decision to turn around")

    champion = evaluation.get("champion")
    report: dict[str, Any] = {
        "usecase": usecase.name,
        "logical_date": ctx.ds,
        "primary_metric": primary,
        "holdout": evaluation.get("holdout")
        or {
            "rows": len(X),
            ("positive_rate" if classification else "label_mean"): quality.clean(np.mean(y)),
        },
        "window": evaluation.get("window") or train_result["window"],
        "task": usecase.task,
        "best": best,
        "selected_on": evaluation.get("selected_on"),
        "candidates": {
            name: {
                "run_id": c["run_id"],
                "metrics": c["metrics"],
                "validation_metrics": c.get("validation_metrics"),
                **{k: c[k] for k in ("decision_threshold", "threshold_source", "fitted_on") if k in c},
            }
            for name, c in evaluation["candidates"].items()
        },
        "champion": None
        if champion is None
        else {k: champion.get(k) for k in ("version", "candidate", "metrics", "error")},
        "comparison": evaluation.get("comparison") or {},
        "fairness": evaluation.get("fairness"),
        "infrastructure": evaluation.get("infrastructure"),
        "explanation": {
            "feature_importance": found_importance,
            "slices": basics.get("slices", chosen.get("slices", {})),
            "errors": basics.get("errors", {}),
            "error_analysis": found_errors,
            "shap": found_shap,
            "counterfactuals": found_counterfactuals,
            **{k: basics[k] for k in ("calibration", "calibration_champion", "residuals") if k in basics},
        },
        "data_explorer": explorer,
        "parts": parts.status,
    }
    if "curves" in basics:
        report["curves"] = basics["curves"]
    if decision is not None:
        report["decision"] = {k: decision.get(k) for k in DECISION_KEYS}
    prefix = ctx.report_prefix("evaluation")  # this run's report: another run of the date has its own
    page = render_report_html(report)
    report_uri = ctx.lake.write_json(f"{prefix}/report.json", report)
    report_html_uri = ctx.lake.write_text(f"{prefix}/report.html", page)
    log_report(evaluation, report, page, report_uri)

    failed = {name: p["status"] for name, p in parts.status.items() if p["status"].startswith("failed")}
    result = {
        "best": best,
        "report_uri": report_uri,
        "report_html_uri": report_html_uri,
        "parts": parts.status,
        "failed_parts": failed,
        "decision_id": None if decision is None else decision.get("decision_id"),
    }
    key = f"{ctx.run_key('report')}/result.json"
    result["result_uri"] = ctx.lake.storage.uri(key)
    ctx.lake.write_json(key, result)
    if failed:
        progress(f"report: written with failed parts: {failed}")
    return result


def log_report(evaluation: dict[str, Any], report: dict[str, Any], page: str, report_uri: str) -> None:
    """Attach the report to the chosen candidate's MLflow run (``evaluation/``) and tag every candidate's run
    with its URI, as evaluate and gate did before the report became its own step."""
    import tempfile
    from pathlib import Path

    from mlflow import MlflowClient

    client = MlflowClient()
    chosen = evaluation["candidates"][evaluation["best"]]
    with tempfile.TemporaryDirectory(prefix="mlops-report-") as folder:
        for name, text in (("report.html", page), ("report.json", json.dumps(report, default=str))):
            (Path(folder) / name).write_text(text)
            client.log_artifact(chosen["run_id"], str(Path(folder) / name), "evaluation")
    for candidate in evaluation["candidates"].values():
        client.set_tag(candidate["run_id"], "evaluation_report_uri", report_uri)
