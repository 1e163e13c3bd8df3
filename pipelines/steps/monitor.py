"""Watch the model in production: drift, live and estimated performance, and whether to retrain early.

``python -m pipelines monitor --usecase NAME --date D``

For run date D the step looks at the events predicted by D (event dates in the ``monitoring.window_days`` days up
to ``time.predicted_through(D)``), as the lake holds them, and measures, against the reference of the model
version that scored the window's last day (``pipelines.monitoring.reference``: its training rows and holdout):

- data drift of each watched model input (``drift.features``, default all) of the batch predictions, and of the
  REST service's captured requests (their model inputs rebuilt from the snapshot version they were answered
  with), told apart as sources ``batch`` and ``service``; Evidently chooses each column's method by type and
  sample size unless ``drift.method`` is set; a window with fewer than ``drift.min_rows`` rows raises no drift;
- drift of the scores and the decision rate;
- live performance of the predictions made ahead whose outcomes were known by the end of D: the primary metric
  with a day-bootstrap interval, the calibration error, and the metric per slice and sensitive attribute;
- the performance estimated from the calibrated scores before any outcome of the window (classification: ROC
  AUC and the expected confusion matrix at the decision threshold, with a prediction interval), calibrated on
  the model's predictions whose outcomes had arrived when the window began (``monitoring.calibration_days``),
  or on its holdout until there are enough.

A decay is a live or estimated metric worse than the model's holdout value by more than ``monitoring.max_drop`` at
the favourable end of its interval. A breach listed in ``monitoring.retrain_on`` asks for an early retraining,
unless one was asked within ``monitoring.cooldown_days`` before D (the DAG also refuses while one runs). Results:
the partition D of the Delta table ``monitoring/<usecase>`` (one row per measured value, the run that measured
it), the metrics in MLflow, and ``reports/<usecase>/monitoring/index.html`` with every value over time. Never the
wall clock: a rerun of D reads what had arrived by D and writes the same rows.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.lake import (
    COMMIT_ATTEMPTS,
    DATE,
    CommitConflict,
    monitoring_table,
    table_key,
)
from pipelines.monitoring.window import (
    calibration_set,
    captured_rows,
    labelled_rows,
    outcomes_snapshot,
    scored_rows,
    window_days,
)

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.monitoring.performance import CalibrationSet
    from pipelines.monitoring.reference import Reference

COLUMNS = [
    "source",
    "category",
    "name",
    "value",
    "low",
    "high",
    "reference",
    "threshold",
    "rows",
    "breach",
    "method",
    "detail",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The monitor step needs only --usecase and --date."""


def page_key(usecase: str) -> str:
    return table_key("reports", usecase, "monitoring", "index.html")


def _row(source: str, category: str, name: str, value: Any = None, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(source=source, category=category, name=name, value=value, breach=False)
    row.update(fields)
    return row


def _number(value: Any) -> float | None:
    from pipelines.evaluation.metrics import clean

    return None if value is None else clean(value)


def _drift_rows(
    source: str, reference: pd.DataFrame, current: pd.DataFrame, ctx: StepContext, watched: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from pipelines.monitoring.drift import column_drift

    usecase = ctx.usecase
    spec = usecase.drift
    numeric = [c for c in usecase.features.numeric if c in watched]
    categorical = [c for c in usecase.features.categorical if c in watched]
    columns = column_drift(reference, current, numeric, categorical, spec)
    enough = len(current) >= spec.min_rows
    rows = [
        _row(
            source,
            "data_drift",
            c["name"],
            _number(c["value"]),
            threshold=_number(c["threshold"]),
            rows=len(current),
            breach=bool(c["drifted"] and enough),
            method=c["method"],
            detail="drifted" if c["drifted"] else None,
        )
        for c in columns
    ]
    measured = [c for c in columns if c["value"] is not None]
    share = sum(c["drifted"] for c in measured) / len(measured) if measured else None
    breach = bool(enough and share is not None and share >= spec.drift_share)
    detail = (
        f"{sum(c['drifted'] for c in measured)} of {len(measured)} inputs drifted"
        if enough
        else f"{len(current)} rows, fewer than drift.min_rows {spec.min_rows}: measured, not judged"
    )
    rows.append(
        _row(
            source,
            "data_drift",
            "_share",
            share,
            threshold=spec.drift_share,
            rows=len(current),
            breach=breach,
            detail=detail,
        )
    )
    return rows, {"source": source, "share": share, "breach": breach, "detail": detail}


def _performance_rows(
    ctx: StepContext,
    reference: Reference,
    scored: pd.DataFrame,
    labelled: pd.DataFrame,
    calibration: CalibrationSet | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    from pipelines.monitoring.performance import (
        day_resampling,
        decayed,
        estimated_performance,
        live_performance,
    )

    usecase = ctx.usecase
    spec = usecase.monitoring
    significance = usecase.gate.significance
    seed = significance.seed if significance.seed is not None else usecase.split.seed
    metric = usecase.gate.primary_metric
    classification = usecase.task == "classification"
    ref_value = reference.facts.get("reference_value")
    rows: list[dict[str, Any]] = []
    breaches: list[str] = []
    if len(labelled):
        resampling = day_resampling(labelled, significance.resamples, seed)
        y = labelled[usecase.target.column].to_numpy(dtype="float64")
        scores = labelled["_score"].to_numpy(dtype="float64")
        live = live_performance(y, scores, metric, classification, resampling, significance.confidence)
        enough = len(labelled) >= spec.min_labelled_rows
        breach = enough and decayed(metric, live[metric], ref_value, spec.max_drop)
        rows.append(
            _row(
                "batch",
                "live",
                metric,
                live[metric]["value"],
                low=live[metric]["low"],
                high=live[metric]["high"],
                reference=ref_value,
                threshold=spec.max_drop,
                rows=len(labelled),
                breach=breach,
                detail=None
                if enough
                else f"fewer than monitoring.min_labelled_rows {spec.min_labelled_rows}",
            )
        )
        if breach:
            breaches.append("live_decay")
        if "calibration_error" in live:
            rows.append(
                _row(
                    "batch",
                    "live",
                    "calibration_error",
                    live["calibration_error"]["value"],
                    rows=len(labelled),
                )
            )
        from pipelines.evaluation.significance import metric_interval

        for column in dict.fromkeys([*usecase.slices, *usecase.sensitive_attributes]):
            if column not in labelled.columns:
                continue
            groups = labelled[column].astype("string").fillna("<null>").to_numpy()
            for value in sorted(set(groups)):
                mask = groups == value
                measured = metric_interval(
                    metric,
                    y[mask],
                    scores[mask],
                    resamples=resampling.resamples,
                    confidence=significance.confidence,
                    seed=seed,
                    resampling=resampling.subset(mask),
                )
                rows.append(
                    _row(
                        "batch",
                        "live",
                        f"{metric}@{column}={value}",
                        measured["value"],
                        low=measured["low"],
                        high=measured["high"],
                        rows=int(mask.sum()),
                    )
                )
    else:
        rows.append(
            _row("batch", "live", metric, None, reference=ref_value, rows=0, detail="no outcomes yet")
        )
    if calibration is not None and len(calibration.scores) and len(scored):
        resampling = day_resampling(scored, significance.resamples, seed)
        estimate = estimated_performance(
            scored["_score"].to_numpy(dtype="float64"),
            calibration,
            reference.facts.get("decision_threshold"),
            resampling,
            significance.confidence,
        )
        auc = estimate["roc_auc"]
        ref_auc = ref_value if metric == "roc_auc" else reference.facts.get("reference_roc_auc")
        enough = len(scored) >= usecase.drift.min_rows
        breach = enough and decayed("roc_auc", auc, ref_auc, spec.max_drop)
        rows.append(
            _row(
                "batch",
                "estimated",
                "roc_auc",
                auc["value"],
                low=auc["low"],
                high=auc["high"],
                reference=ref_auc,
                threshold=spec.max_drop,
                rows=len(scored),
                breach=breach,
                method="confidence-based, a prediction interval",
                detail=f"calibrated on {estimate['calibrated_on']}",
            )
        )
        if breach:
            breaches.append("estimated_decay")
        for cell, value in (estimate.get("confusion") or {}).items():
            rows.append(_row("batch", "estimated", f"expected_{cell}", value, rows=len(scored)))
        rows.append(
            _row(
                "batch",
                "estimated",
                "expected_positive_rate",
                estimate["expected_positive_rate"],
                rows=len(scored),
            )
        )
    return rows, breaches


def _prediction_rows(
    ctx: StepContext, reference: Reference, scored: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[str]]:
    from pipelines.monitoring.drift import column_drift

    usecase = ctx.usecase
    holdout = reference.holdout
    measured = column_drift(
        holdout.rename(columns={"_score": "score"}),
        scored.rename(columns={"_score": "score"}),
        ["score"],
        [],
        usecase.drift,
    )[0]
    enough = len(scored) >= usecase.drift.min_rows
    breach = bool(measured["drifted"] and enough)
    rows = [
        _row(
            "batch",
            "prediction_drift",
            "score",
            _number(measured["value"]),
            threshold=_number(measured["threshold"]),
            rows=len(scored),
            breach=breach,
            method=measured["method"],
        )
    ]
    threshold = reference.facts.get("decision_threshold")
    if threshold is not None and len(scored):
        rate = float((scored["_score"] >= threshold).mean())
        ref_rate = float((holdout["_score"] >= threshold).mean()) if len(holdout) else None
        rows.append(
            _row("batch", "decision_rate", "flagged_share", rate, reference=ref_rate, rows=len(scored))
        )
    return rows, (["prediction_drift"] if breach else [])


def _retrain(ctx: StepContext, breaches: list[str], history: pd.DataFrame) -> dict[str, Any]:
    """Whether to ask for an early retraining: a breach the use case retrains on, and none asked in the
    cool-down before D (earlier monitor runs' records)."""
    spec = ctx.usecase.monitoring
    wanted = [b for b in breaches if b in spec.retrain_on]
    if not wanted:
        return {"requested": False, "reason": None, "breaches": breaches}
    since = (ctx.day - timedelta(days=spec.cooldown_days)).isoformat()
    earlier = (
        history[
            (history["category"] == "retrain")
            & (history["value"] == 1.0)
            & (history[DATE] >= since)
            & (history[DATE] < ctx.ds)
        ]
        if len(history)
        else history
    )
    if len(earlier):
        last = str(earlier[DATE].max())
        return {
            "requested": False,
            "reason": f"{', '.join(wanted)}; cooling down since the retraining asked on {last} "
            f"(monitoring.cooldown_days {spec.cooldown_days})",
            "breaches": breaches,
            "cooling_down_since": last,
        }
    return {"requested": True, "reason": ", ".join(wanted), "breaches": breaches}


def _log_to_mlflow(ctx: StepContext, version: int, rows: list[dict[str, Any]]) -> str | None:
    import mlflow

    metrics = {}
    for row in rows:
        if row["value"] is None or row["category"] == "retrain":
            continue
        name = f"monitor.{row['source']}.{row['category']}.{row['name']}"
        metrics["".join(ch if ch.isalnum() or ch in "._-/ " else "_" for ch in name)] = float(row["value"])
    with mlflow.start_run(
        run_name=f"monitor {ctx.ds}",
        tags={
            "mlops.step": "monitor",
            "date": ctx.ds,
            "model_version": str(version),
            "mlops.run": ctx.run_id,
        },
    ) as run:
        mlflow.log_metrics(metrics)
    return run.info.run_id


def _recorded(ctx: StepContext, result: dict[str, Any]) -> dict[str, Any]:
    """The result, also kept as this run's record (``runs/<uc>/monitor/date=D/run=R/result.json``)."""
    key = f"{ctx.run_key('monitor')}/result.json"
    result["result_uri"] = ctx.lake.storage.uri(key)
    ctx.lake.write_json(key, result)
    return result


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Monitor the window of ``ctx.day``; write its partition of the monitoring table and the page."""
    import pandas as pd

    from pipelines.features.model_inputs import model_columns
    from pipelines.modeling.tracking import configure_mlflow, load_model, model_name
    from pipelines.monitoring.reference import model_reference
    from pipelines.monitoring.trends import monitoring_page

    usecase = ctx.usecase
    configure_mlflow(ctx.profile, usecase)
    days = window_days(ctx)
    scored_all, tables_read = scored_rows(ctx, days)
    if len(scored_all) == 0:
        progress(f"monitor: no predictions in {days[0]}..{days[-1]}")
        return _recorded(
            ctx,
            {
                "date": ctx.ds,
                "window": [days[0], days[-1]],
                "monitored": False,
                "reason": "no predictions in the window",
                "retrain": {"requested": False, "reason": None, "breaches": []},
                "tables_read": tables_read,
                "tables_written": {},
            },
        )
    # the version that scored the window's last day: its reference is what the window is compared with
    version = int(scored_all.loc[scored_all[DATE] == scored_all[DATE].max(), "model_version"].mode().iloc[0])
    scored = scored_all[scored_all["model_version"] == version].reset_index(drop=True)
    reference = model_reference(ctx, version, lambda: load_model(f"models:/{model_name(usecase)}/{version}"))
    watched = usecase.drift.features or model_columns(usecase)
    rows: list[dict[str, Any]] = []
    breaches: list[str] = []
    drift_rows, batch_drift = _drift_rows("batch", reference.train, scored_all, ctx, watched)
    rows += drift_rows
    if batch_drift["breach"]:
        breaches.append("data_drift")
    captured, why_not = captured_rows(ctx, days, version)
    service = None
    if captured is not None:
        service_rows, service = _drift_rows("service", reference.train, captured, ctx, watched)
        rows += service_rows
        if service["breach"] and "data_drift" not in breaches:
            breaches.append("data_drift")
    prediction_rows, prediction_breaches = _prediction_rows(ctx, reference, scored)
    rows += prediction_rows
    breaches += prediction_breaches
    joined = outcomes_snapshot(ctx)
    if joined.version is not None:
        tables_read[joined.table] = joined.version
    labelled = labelled_rows(ctx, joined, days, version)
    if len(labelled):  # the slices and sensitive attributes of the labelled events, from their features
        keys = [k for k in usecase.features.keys if k != DATE]
        extra = [c for c in dict.fromkeys([*usecase.slices, *usecase.sensitive_attributes]) if c in scored]
        extra = [c for c in extra if c not in labelled.columns]
        labelled = labelled.merge(scored[[*keys, DATE, *extra]], on=[*keys, DATE], how="left")
    calibration = (
        calibration_set(ctx, joined, days, version, reference) if usecase.task == "classification" else None
    )
    performance_rows, performance_breaches = _performance_rows(ctx, reference, scored, labelled, calibration)
    rows += performance_rows
    breaches += performance_breaches

    table = monitoring_table(usecase.name)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        existing = ctx.lake.snapshot(table, facts=False)
        history = (
            ctx.lake.read_frame(
                table, [d for d in existing.partitions if d < ctx.ds], version=existing.version
            )
            if existing.partitions
            else pd.DataFrame(columns=[DATE, *COLUMNS])
        )
        retrain = _retrain(ctx, breaches, history)
        out = pd.DataFrame(
            [
                *rows,
                _row(
                    "all",
                    "retrain",
                    "requested",
                    1.0 if retrain["requested"] else 0.0,
                    detail=retrain["reason"],
                    breach=bool(retrain["requested"]),
                ),
            ],
            columns=COLUMNS,
        )
        for column in ("value", "low", "high", "reference", "threshold"):
            out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
        out["rows"] = pd.to_numeric(out["rows"], errors="coerce").astype("Int64")
        out["breach"] = out["breach"].fillna(False).astype(bool)
        for column in ("source", "category", "name", "method", "detail"):
            out[column] = out[column].astype(object).where(out[column].notna(), None)
        out["model_version"] = version
        out["run"] = ctx.run_id
        out["window_start"] = days[0]
        out["window_end"] = days[-1]
        out[DATE] = ctx.ds
        try:
            commit = ctx.lake.write_partitions(
                table,
                out,
                read_version=existing.version,
                commit_info={"mlops.step": "monitor", "mlops.date": ctx.ds},
            )
        except CommitConflict as conflict:
            if attempt == COMMIT_ATTEMPTS:
                raise StepFailed(str(conflict)) from None
            progress(f"monitor: {conflict}; writing again on the new version")
            continue
        break
    every = pd.concat([history, out], ignore_index=True)
    ctx.lake.storage.write_bytes(page_key(usecase.name), monitoring_page(usecase.name, every).encode())
    mlflow_run = _log_to_mlflow(ctx, version, out.to_dict("records"))
    live = next((r for r in rows if r["category"] == "live" and r["name"] == usecase.gate.primary_metric), {})
    estimated = next((r for r in rows if r["category"] == "estimated" and r["name"] == "roc_auc"), {})
    progress(
        f"monitor {ctx.ds}: model v{version}, {len(scored_all)} scored rows, {len(labelled)} with outcomes; "
        f"breaches {breaches or 'none'}; retrain {'requested: ' + retrain['reason'] if retrain['requested'] else 'no'}"
    )
    return _recorded(
        ctx,
        {
            "date": ctx.ds,
            "monitored": True,
            "window": [days[0], days[-1]],
            "model_version": version,
            "rows": len(scored_all),
            "labelled_rows": len(labelled),
            "data_drift": {"batch": batch_drift, "service": service, "service_note": why_not},
            "live": {k: live.get(k) for k in ("value", "low", "high", "rows", "reference")},
            "estimated": {
                k: estimated.get(k) for k in ("value", "low", "high", "rows", "reference", "detail")
            },
            "breaches": breaches,
            "retrain": retrain,
            "page_uri": ctx.lake.storage.uri(page_key(usecase.name)),
            "mlflow_run_id": mlflow_run,
            "tables_read": tables_read,
            "tables_written": {commit.table: commit.version},
        },
    )
