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
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import OUTCOME_KNOWN_AT
from pipelines.context import StepContext, StepFailed, progress
from pipelines.features.scoring_time import SCORED_AT, made_ahead
from pipelines.lake import (
    COMMIT_ATTEMPTS,
    DATE,
    CommitConflict,
    LakeError,
    captures_table,
    features_table,
    monitoring_table,
    predictions_table,
    predictions_with_outcomes_table,
    table_key,
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


def _window(ctx: StepContext) -> list[str]:
    usecase = ctx.usecase
    last = usecase.time.predicted_through(ctx.day)
    return [(last - timedelta(days=k)).isoformat() for k in reversed(range(usecase.monitoring.window_days))]


def _scored_rows(ctx: StepContext, days: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The window's batch predictions made by the end of D joined to their events' features (model inputs,
    slices, sensitive attributes), as the lake holds them."""
    import pandas as pd

    usecase = ctx.usecase
    keys = [k for k in usecase.features.keys if k != DATE]
    predictions = ctx.lake.snapshot(predictions_table(usecase.name), facts=False)
    present = [d for d in days if d in predictions.partitions]
    read = {predictions.table: predictions.version} if predictions.version is not None else {}
    if not present:
        return _empty(), read
    from pipelines.features.model_inputs import model_columns

    score = "prediction" if usecase.task == "regression" else "probability"
    made = [SCORED_AT] if SCORED_AT in predictions.columns else []
    scored = ctx.lake.read_frame(
        predictions.table, present, [*keys, DATE, score, "model_version", *made], predictions.version
    )
    if made:  # a day scored late, by a run after D, was not there at D: a rerun of D leaves it out again
        end = pd.Timestamp(usecase.time.local_midnight(ctx.day + timedelta(days=1)))
        scored = scored[pd.to_datetime(scored[SCORED_AT], utc=True) < end].drop(columns=made)
    features = ctx.lake.snapshot(features_table(usecase.name), facts=False)
    read[features.table] = features.version
    wanted = list(
        dict.fromkeys([*keys, DATE, *model_columns(usecase), *usecase.slices, *usecase.sensitive_attributes])
    )
    wanted = [c for c in wanted if c in features.columns]
    rows = ctx.lake.read_frame(
        features.table, [d for d in present if d in features.partitions], wanted, features.version
    )
    joined = scored.merge(rows, on=[*keys, DATE], how="left", validate="one_to_one")
    return joined.rename(columns={score: "_score"}), read


def _empty() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({DATE: pd.Series([], dtype=object)})


def _captured_rows(ctx: StepContext, days: list[str], version: int) -> tuple[pd.DataFrame | None, str | None]:
    """The service's captured rows of the window answered by ``version`` and received by the end of D, with
    their model inputs rebuilt; None (and why) when there are none or they cannot be rebuilt."""
    from datetime import date

    import pandas as pd

    from pipelines.serving.recapture import read_captured, rebuild_model_inputs

    if ctx.lake.version(captures_table(ctx.usecase.name)) is None:
        return None, "no captured requests"
    captured = read_captured(ctx.lake, ctx.usecase, date.fromisoformat(days[0]), date.fromisoformat(days[-1]))
    if captured.num_rows == 0:
        return None, "no captured requests in the window"
    try:
        rebuilt = rebuild_model_inputs(ctx.lake, ctx.usecase, captured)
    except LakeError as exc:
        return None, f"the captured requests' model inputs cannot be rebuilt: {exc}"
    end = pd.Timestamp(ctx.usecase.time.local_midnight(ctx.day + timedelta(days=1)))
    keep = pd.Series(True, index=rebuilt.index)
    if "received_at" in rebuilt.columns:
        keep &= pd.to_datetime(rebuilt["received_at"], utc=True) < end
    if "shadow" in rebuilt.columns:
        keep &= ~rebuilt["shadow"].fillna(False).astype(bool)
    if "model_version" in rebuilt.columns:
        keep &= rebuilt["model_version"] == version
    rows = rebuilt[keep].rename(columns={"score": "_score"})
    return (rows, None) if len(rows) else (None, "no captured requests of this model version by the end of D")


def _labelled_rows(
    ctx: StepContext, days: list[str], version: int, known_before: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Predictions of ``version`` of the events of ``days`` made ahead whose outcome was known before
    ``known_before`` (default: the end of D)."""
    import pandas as pd

    usecase = ctx.usecase
    table = predictions_with_outcomes_table(usecase.name)
    joined = ctx.lake.snapshot(table, facts=False)
    present = [d for d in days if d in joined.partitions]
    if not present:
        return _empty()
    frame = ctx.lake.read_frame(table, present, version=joined.version)
    end = pd.Timestamp(usecase.time.local_midnight(ctx.day + timedelta(days=1)))
    if known_before is not None:
        end = min(end, known_before)
    known = pd.to_datetime(frame[OUTCOME_KNOWN_AT], utc=True) < end
    frame = frame[known & made_ahead(frame) & (frame["model_version"] == version)]
    score = "prediction" if usecase.task == "regression" else "probability"
    return frame.rename(columns={score: "_score"}).reset_index(drop=True)


def _calibration_set(ctx: StepContext, days: list[str], version: int, reference: Reference) -> CalibrationSet:
    """The labelled scores the estimate is calibrated on: the model's predictions of the
    ``monitoring.calibration_days`` before the window whose outcomes had arrived when the window began (its
    freshest evidence of how scores and outcomes relate, none of the window's own), when there are at least
    ``monitoring.min_labelled_rows``; otherwise its holdout."""
    import pandas as pd

    from pipelines.monitoring.performance import CalibrationSet

    usecase = ctx.usecase
    spec = usecase.monitoring
    label = usecase.target.column
    first = date.fromisoformat(days[0])
    recent = _empty()
    if spec.calibration_days:
        before = [(first - timedelta(days=k)).isoformat() for k in range(spec.calibration_days, 0, -1)]
        began = pd.Timestamp(usecase.time.local_midnight(first))
        recent = _labelled_rows(ctx, before, version, known_before=began)
        if len(recent) >= spec.min_labelled_rows:
            return CalibrationSet.of(
                recent,
                label,
                f"{len(recent)} outcomes of the {recent[DATE].nunique()} days before the window, known when "
                "it began",
            )
    holdout = reference.holdout
    why = (
        "monitoring.calibration_days is 0"
        if not spec.calibration_days
        else f"{len(recent)} outcomes before the window, fewer than monitoring.min_labelled_rows "
        f"{spec.min_labelled_rows}"
    )
    return CalibrationSet.of(
        holdout, label, f"the model's holdout, {len(holdout)} rows of {holdout[DATE].nunique()} days ({why})"
    )


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
    days = _window(ctx)
    scored_all, tables_read = _scored_rows(ctx, days)
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
    captured, why_not = _captured_rows(ctx, days, version)
    service = None
    if captured is not None:
        service_rows, service = _drift_rows("service", reference.train, captured, ctx, watched)
        rows += service_rows
        if service["breach"] and "data_drift" not in breaches:
            breaches.append("data_drift")
    prediction_rows, prediction_breaches = _prediction_rows(ctx, reference, scored)
    rows += prediction_rows
    breaches += prediction_breaches
    labelled = _labelled_rows(ctx, days, version)
    if len(labelled):  # the slices and sensitive attributes of the labelled events, from their features
        keys = [k for k in usecase.features.keys if k != DATE]
        extra = [c for c in dict.fromkeys([*usecase.slices, *usecase.sensitive_attributes]) if c in scored]
        extra = [c for c in extra if c not in labelled.columns]
        labelled = labelled.merge(scored[[*keys, DATE, *extra]], on=[*keys, DATE], how="left")
    calibration = (
        _calibration_set(ctx, days, version, reference) if usecase.task == "classification" else None
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
