"""Backtest of the retraining policy: replay a period under ``never``, ``monthly``, ``drift`` or ``nightly`` and
compare what each would have given in production.

``mlops backtest --usecase U --policy never,monthly,drift,nightly [--from D --to D]``

The features and labels are built once, before the backtest (by the features step: ``mlops demo`` or the ingest
and features DAGs), and reused by every policy: each policy gets its own workspace (``$MLOPS_HOME/backtest/<uc>/
<from>_<to>/<policy>``) holding a copy of the lake's feature, online snapshot, label and raw tables (read only
there), its own MLflow registry and its own predictions, so no policy sees another's champion. Then, for each
policy, day by day over the period:

- in the morning of a training day the policy chose, train -> evaluate -> gate -> register -> promote (the gate
  decides; promote only when it passed), the steps themselves (:func:`pipelines.cli.run_step`) keyed by the run
  ``backtest__<policy>__train__<day>``. ``never``: one training on the first day; ``monthly``: the first day and
  the first of every month (``--mode full``); ``nightly``: every day (``--mode refresh``, the champion's family
  refitted; the first day and the first of a month ``full``, as the two train DAGs do); ``drift``: the first day,
  then the morning after a monitor run that asked for a retraining (``monitoring.retrain_on``, with the
  cool-down of ``monitoring.cooldown_days``; the monitor step decides);
- every evening, the policy's current champion scores the events predicted then (event dates
  ``time.predicted_through(day)``) at their prediction time, from the point-in-time features table, with the
  score step's own function (:func:`pipelines.modeling.batch_scoring.score_frame`); a model scores only events predicted on
  or after its training date, as the score step does;
- at the end of each week (and of the period) the outcomes step joins the outcomes known by then to the
  predictions; ``drift`` also runs the monitor step on that date.

Per ISO week of the events it reports the champion's live metric (ROC AUC and the use case's primary metric) on
the predictions made ahead of their outcomes (:func:`pipelines.features.scoring_time.made_ahead`), the model versions that
made them, the retrainings done (and why), the promotions, and the compute seconds spent by each step. Output under
``reports/<uc>/backtest/<from>_<to>/`` of the lake: ``backtest.md``, ``backtest.csv`` (weekly rows),
``backtest.png`` (weekly live ROC AUC per policy), ``index.html`` and ``summary.json``; each policy's own result in
``policies/<policy>.json``, so policies run by separate commands over the same period share one page.

Nothing here goes through Airflow: the backtest calls the steps in this process (the same code the DAG tasks run).
Deterministic: the steps are seeded, every record is keyed by the policy's run ids and dates, never the wall clock
(only the seconds measured are).
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pipelines.config import UseCase, load_profile, load_usecase, mlops_home
from pipelines.context import StepFailed
from pipelines.environ import patched_environ
from pipelines.lake import (
    DATE,
    Lake,
    features_table,
    labels_table,
    online_table,
    predictions_table,
    predictions_with_outcomes_table,
    raw_table,
    table_key,
)

POLICIES = ("never", "monthly", "drift", "nightly")
TRAIN_GRAPH = ("train", "evaluate", "gate", "register", "promote")
FACTS_ZONE = "_meta/partitions"
ORCHESTRATION = (
    "in-process: every step (train, evaluate, gate, register, promote, outcomes, monitor) is called with "
    "pipelines.cli.run_step and the scoring with the score step's score_frame, not through Airflow; the features "
    "and labels were built before, once for all policies, by the features step"
)


class BacktestError(RuntimeError):
    """The backtest cannot run as asked (no features, an S3 lake, an unknown policy)."""


# ------------------------------------------------------------------------------------------------ workspace


def shared_tables(usecase: UseCase) -> list[str]:
    """The tables every policy reads and none writes: features, online snapshot, labels, raw sources."""
    return [
        features_table(usecase.name),
        online_table(usecase.name),
        labels_table(usecase.name),
        *(raw_table(usecase.name, source) for source in sorted(usecase.sources)),
    ]


def prepare_workspace(base: Lake, usecase: UseCase, folder: Path) -> dict[str, Any]:
    """A fresh workspace for one policy: a lake holding a copy of the shared tables (and their partition facts)
    and an empty MLflow store; returns its environment and the versions of the shared tables it copied."""
    root = base.storage.local_path("")
    if root is None:
        raise BacktestError(
            f"{base.uri}: the backtest copies the shared tables into each policy's workspace and needs a local "
            "lake (an S3 lake is not supported yet)"
        )
    shutil.rmtree(folder, ignore_errors=True)
    lake_dir = folder / "lake"
    lake_dir.mkdir(parents=True)
    versions = {}
    for table in shared_tables(usecase):
        for key in (table, f"{FACTS_ZONE}/{table}"):
            source = root / key
            if source.is_dir():
                shutil.copytree(source, lake_dir / key)
        version = base.version(table)
        if version is not None:
            versions[table] = version
    env = {
        "MLOPS_LAKE_URI": str(lake_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "MLOPS_MLFLOW_ARTIFACT_ROOT": str(folder / "artifacts"),
    }
    return {"env": env, "lake": Lake(str(lake_dir)), "tables": versions}


# ------------------------------------------------------------------------------------------------ policy


@dataclass
class PolicyRun:
    """One policy's replay: what it did and what it cost."""

    policy: str
    first: date
    last: date
    retrainings: list[dict[str, Any]] = field(default_factory=list)
    monitors: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)
    scored_rows: int = 0
    weeks: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    tables: dict[str, int] = field(default_factory=dict)
    stopped: dict[str, Any] | None = None  # where a --budget-seconds stopped the replay

    def spend(self, step: str, seconds: float) -> None:
        self.step_seconds[step] = round(self.step_seconds.get(step, 0.0) + seconds, 3)

    @property
    def compute_seconds(self) -> float:
        return round(sum(self.step_seconds.values()), 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "retrainings": self.retrainings,
            "trainings": len(self.retrainings),
            "promotions": sum(1 for r in self.retrainings if r.get("promoted_version") is not None),
            "monitor_runs": self.monitors,
            "scored_rows": self.scored_rows,
            "weeks": self.weeks,
            "compute_seconds": self.compute_seconds,
            "step_seconds": dict(sorted(self.step_seconds.items())),
            "wall_seconds": round(self.wall_seconds, 1),
            "shared_table_versions": self.tables,
            "stopped_early": self.stopped,
            "orchestration": ORCHESTRATION,
        }


def scheduled_training(policy: str, day: date, first: date) -> tuple[str, str] | None:
    """(reason, train mode) when ``policy`` trains on the morning of ``day`` by its calendar, else None
    (``drift`` trains beyond the first day only when its monitor asks)."""
    if day == first:
        return "initial training", "full"
    if policy == "monthly" and day.day == 1:
        return "first of the month", "full"
    if policy == "nightly":
        return ("first of the month", "full") if day.day == 1 else ("nightly refresh", "refresh")
    return None


def chunk_end(policy: str, day: date, last: date) -> date:
    """The last evening scored with the champion of ``day`` before the policy may train again: the day itself
    (nightly), else the end of the week (Sunday), the day before the next first of a month (monthly), or the
    period's last day."""
    if policy == "nightly":
        return day
    end = min(last, day + timedelta(days=6 - day.weekday()))
    if policy == "monthly":
        next_month = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
        end = min(end, next_month - timedelta(days=1))
    return end


class Replay:
    """Replays [first, last] under one policy in its workspace (environment patched by the caller)."""

    def __init__(
        self,
        usecase: UseCase,
        policy: str,
        first: date,
        last: date,
        log: io.TextIOBase,
        say: Callable[[str], Any] | None = None,
    ) -> None:
        self.usecase = usecase
        self.run = PolicyRun(policy, first, last)
        self.log = log
        self.say = say or (lambda line: None)  # one progress line per training: a year of nightly is hours
        self._model: tuple[int, Any, str] | None = None  # (version, model, run id)

    def step(self, step: str, day: date, run: str, *extra: str) -> dict[str, Any]:
        """One step in this process, keyed by ``run``; raises StepFailed. Its wall time is charged to the
        policy."""
        from pipelines.cli import run_step

        started = time.perf_counter()
        try:
            with (
                patched_environ({"MLOPS_RUN_ID": run}),
                contextlib.redirect_stdout(self.log),
                contextlib.redirect_stderr(self.log),
            ):
                return run_step([step, "--usecase", self.usecase.name, "--date", day.isoformat(), *extra])
        finally:
            self.run.spend(step, time.perf_counter() - started)

    def train(self, day: date, reason: str, mode: str) -> dict[str, Any]:
        """train -> evaluate -> gate -> register -> promote (when the gate passed) on the morning of ``day``."""
        run = f"backtest__{self.run.policy}__train__{day.isoformat()}"
        started = time.perf_counter()
        record: dict[str, Any] = {"date": day.isoformat(), "reason": reason, "mode": mode, "run": run}
        results: dict[str, dict[str, Any]] = {}
        for step in TRAIN_GRAPH:
            if step == "promote" and not results["gate"].get("passed"):
                break
            extra = ("--mode", mode) if step == "train" else ()
            try:
                results[step] = self.step(step, day, run, *extra)
            except StepFailed as exc:
                record |= {"failed_step": step, "error": str(exc)[:500]}
                break
        gate = results.get("gate", {})
        record |= {
            "candidate": gate.get("candidate") or results.get("evaluate", {}).get("best"),
            "candidate_metric": gate.get("candidate_value"),
            "champion_metric": gate.get("champion_value"),
            "gate_passed": gate.get("passed"),
            "gate_reasons": [str(r)[:200] for r in gate.get("reasons", [])][:3],
            "registered_versions": [
                v.get("version") for v in results.get("register", {}).get("versions", [])
            ],
            "promoted_version": results.get("promote", {}).get("champion_version")
            if gate.get("passed")
            else None,
        }
        self.run.retrainings.append(record)
        outcome = (
            f"failed in {record['failed_step']}"
            if record.get("failed_step")
            else "promoted v{}".format(record["promoted_version"])
            if record.get("promoted_version")
            else "not promoted"
        )
        self.say(
            f"  {self.run.policy} {day.isoformat()}: training {len(self.run.retrainings)} ({reason}, {mode}): "
            f"{record.get('candidate')} {outcome}, {time.perf_counter() - started:.1f} s; "
            f"compute so far {self.run.compute_seconds:.0f} s"
        )
        return record

    def champion(self) -> tuple[int, Any, str, date | None] | None:
        """(version, model, MLflow run id, training date) of the policy's champion, or None; the model loaded
        once per version."""
        from pipelines.modeling.tracking import champion_version, configure_mlflow, load_model, model_name

        configure_mlflow(load_profile(), self.usecase)
        found = champion_version(self.usecase)
        if found is None:
            return None
        version = int(found.version)
        if self._model is None or self._model[0] != version:
            self._model = (version, load_model(f"models:/{model_name(self.usecase)}/{version}"), found.run_id)
        trained = (found.tags or {}).get("logical_date")
        return version, self._model[1], found.run_id, date.fromisoformat(trained) if trained else None

    def score(self, lake: Lake, days: list[date]) -> int:
        """The champion scores, at each evening of ``days``, the events predicted then, from the features table;
        one commit for the chunk. Returns the rows scored."""
        from pipelines.context import StepContext
        from pipelines.modeling.batch_scoring import score_frame

        started = time.perf_counter()
        try:
            found = self.champion()
            if found is None:
                return 0
            version, model, run_id, trained = found
            time_spec = self.usecase.time
            present = lake.partitions(features_table(self.usecase.name))
            events = [
                time_spec.predicted_through(d) for d in days if trained is None or d >= trained
            ]  # a model predicts nothing before its training date, as the score step
            wanted = [e.isoformat() for e in events if e.isoformat() in present]
            if not wanted:
                return 0
            frame = lake.read_frame(features_table(self.usecase.name), wanted)
            ctx = StepContext(usecase=self.usecase, day=days[-1], profile=load_profile(), lake=lake)
            made = {e: time_spec.prediction_time_of(date.fromisoformat(e)) for e in wanted}
            version_of = lake.version(features_table(self.usecase.name)) or 0
            scored = score_frame(ctx, model, frame, version, run_id, int(version_of), "backtest", made)
            lake.write_partitions(
                predictions_table(self.usecase.name),
                scored,
                read_version=lake.version(predictions_table(self.usecase.name)),
                commit_info={"mlops.step": "backtest-score", "mlops.date": days[-1].isoformat()},
            )
            self.run.scored_rows += len(scored)
            return len(scored)
        finally:
            self.run.spend("score", time.perf_counter() - started)

    def outcomes(self, day: date) -> None:
        try:
            self.step("outcomes", day, f"backtest__{self.run.policy}__outcomes__{day.isoformat()}")
        except StepFailed as exc:
            self.log.write(f"outcomes {day}: {exc}\n")

    def monitor(self, day: date) -> bool:
        """The monitor step on ``day``; whether it asked for a retraining."""
        try:
            result = self.step("monitor", day, f"backtest__{self.run.policy}__monitor__{day.isoformat()}")
        except StepFailed as exc:
            self.run.monitors.append({"date": day.isoformat(), "error": str(exc)[:300]})
            return False
        retrain = result.get("retrain") or {}
        self.run.monitors.append(
            {
                "date": day.isoformat(),
                "model_version": result.get("model_version"),
                "breaches": result.get("breaches") or [],
                "retrain_requested": bool(retrain.get("requested")),
                "reason": retrain.get("reason"),
            }
        )
        return bool(retrain.get("requested"))

    def replay(self, lake: Lake, budget_seconds: float | None = None) -> PolicyRun:
        """Replay the period; with ``budget_seconds``, stop at the first chunk boundary past that much wall time
        (recorded in ``stopped_early``: a measurement of what fits, not a deterministic result)."""
        policy, first, last = self.run.policy, self.run.first, self.run.last
        asked: dict[date, str] = {}  # drift: the mornings the monitor asked to train on, with why
        started = time.perf_counter()
        day = first
        while day <= last:
            if budget_seconds is not None and time.perf_counter() - started > budget_seconds:
                self.run.stopped = {
                    "before": day.isoformat(),
                    "reason": f"--budget-seconds {budget_seconds:.0f} spent; the evenings from this day on were "
                    "not replayed",
                }
                last = day - timedelta(days=1)
                break
            planned = scheduled_training(policy, day, first)
            if planned is not None:
                self.train(day, *planned)
            elif day in asked:
                self.train(day, f"drift: {asked.pop(day)}", "full")
            end = chunk_end(policy, day, last)
            days = [day + timedelta(days=k) for k in range((end - day).days + 1)]
            self.score(lake, days)
            if policy != "nightly" or end.weekday() == 6 or end == last:
                self.outcomes(end)
                if policy == "drift" and self.monitor(end):
                    asked[end + timedelta(days=1)] = self.run.monitors[-1].get("reason") or "monitor"
            day = end + timedelta(days=1)
        if last < first:
            return self.run
        # the outcomes of the last predictions arrive after the period: join them too
        self.outcomes(last + timedelta(days=self.usecase.time.prediction_time.day_offset + 1))
        self.run.weeks = weekly_live(lake, self.usecase, first, last)
        return self.run


# ------------------------------------------------------------------------------------------------ measures


def weekly_live(lake: Lake, usecase: UseCase, first: date, last: date) -> list[dict[str, Any]]:
    """Per ISO week (Monday) of the event dates: rows scored, rows made ahead with a known outcome, and the live
    ROC AUC (a classification) and primary metric of those rows only; the model versions that made them."""
    import pandas as pd

    from pipelines.evaluation.metrics import model_metrics
    from pipelines.features.scoring_time import made_ahead

    table = predictions_with_outcomes_table(usecase.name)
    scored_table = predictions_table(usecase.name)
    if lake.version(scored_table) is None:
        return []
    scored = lake.read_frame(scored_table, None, [DATE, "model_version"])
    joined = lake.read_frame(table) if lake.version(table) is not None else pd.DataFrame(columns=[DATE])
    label = usecase.target.column
    primary = usecase.gate.primary_metric
    wanted = list(dict.fromkeys([primary, *(["roc_auc"] if usecase.task == "classification" else [])]))
    score_column = "prediction" if usecase.task == "regression" else "probability"

    def week_of(dates: pd.Series) -> pd.Series:
        days = pd.to_datetime(dates.astype(str))
        return (days - pd.to_timedelta(days.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d")

    scored["week"] = week_of(scored[DATE])
    if len(joined):
        joined = joined[made_ahead(joined) & joined[label].notna()].copy()
        joined["week"] = week_of(joined[DATE])
    rows = []
    for week, part in scored.groupby("week", sort=True):
        ahead = joined[joined["week"] == week] if len(joined) else joined
        values: dict[str, Any] = {}
        if len(ahead) and ahead[label].nunique() > 1:
            values = model_metrics(ahead[label].astype(float), ahead[score_column], wanted)
        rows.append(
            {
                "week": week,
                "rows_scored": len(part),
                "rows_ahead_with_outcome": len(ahead),
                "live_roc_auc": _round(values.get("roc_auc")),
                f"live_{primary}": _round(values.get(primary)),
                "model_versions": sorted(int(v) for v in part["model_version"].unique()),
            }
        )
    return rows


def _round(value: Any, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


# ------------------------------------------------------------------------------------------------ outputs


def report_prefix(usecase: str, first: date, last: date) -> str:
    return table_key("reports", usecase, "backtest", f"{first.isoformat()}_{last.isoformat()}")


def summary_table(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per policy: trainings, promotions, mean weekly live ROC AUC, compute and wall seconds."""
    rows = []
    for p in policies:
        values = [w["live_roc_auc"] for w in p["weeks"] if w.get("live_roc_auc") is not None]
        rows.append(
            {
                "policy": p["policy"],
                "trainings": p["trainings"],
                "promotions": p["promotions"],
                "weeks": len(p["weeks"]),
                "mean_weekly_live_roc_auc": _round(sum(values) / len(values)) if values else None,
                "min_weekly_live_roc_auc": _round(min(values)) if values else None,
                "compute_seconds": p["compute_seconds"],
                "wall_seconds": p["wall_seconds"],
            }
        )
    return rows


def weekly_frame(policies: list[dict[str, Any]]) -> Any:
    import pandas as pd

    records = [
        {"policy": p["policy"], **w, "model_versions": " ".join(map(str, w["model_versions"]))}
        for p in policies
        for w in p["weeks"]
    ]
    return pd.DataFrame(records)


def plot_png(policies: list[dict[str, Any]], title: str) -> bytes:
    """The weekly live ROC AUC per policy (matplotlib, Agg), retrainings marked on each line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    figure, axis = plt.subplots(figsize=(10, 4.5), dpi=100)
    for p in policies:
        weeks = [
            (pd.Timestamp(w["week"]), w["live_roc_auc"]) for w in p["weeks"] if w["live_roc_auc"] is not None
        ]
        if not weeks:
            continue
        x, y = zip(*weeks, strict=True)
        promoted = sum(1 for r in p["retrainings"] if r.get("promoted_version") is not None)
        axis.plot(
            x,
            y,
            marker="o",
            markersize=3,
            label=f"{p['policy']} ({p['trainings']} trainings, {promoted} promoted)",
        )
    axis.set_ylabel("live ROC AUC (weekly, made ahead)")
    axis.set_xlabel("week of the events")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    figure.autofmt_xdate()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    plt.close(figure)
    return out.getvalue()


def markdown(summary: dict[str, Any]) -> str:
    """The summary and weekly tables as Markdown."""
    lines = [
        f"Backtest of the retraining policy: {summary['usecase']}, {summary['from']} to {summary['to']}",
        "",
        f"How it ran: {summary['orchestration']}.",
        "",
        "| policy | trainings | promotions | weeks | mean weekly live ROC AUC | min | compute s | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["table"]:
        lines.append(
            f"| {r['policy']} | {r['trainings']} | {r['promotions']} | {r['weeks']} | "
            f"{_fmt(r['mean_weekly_live_roc_auc'])} | {_fmt(r['min_weekly_live_roc_auc'])} | "
            f"{r['compute_seconds']:.1f} | {r['wall_seconds']:.1f} |"
        )
    for p in summary["policies"]:
        if p.get("stopped_early"):
            stop = p["stopped_early"]
            lines += ["", f"{p['policy']} was stopped early, before {stop['before']}: {stop['reason']}."]
    names = [p["policy"] for p in summary["policies"]]
    lines += [
        "",
        "Weekly live ROC AUC (predictions made ahead of their outcomes; the week of the events):",
        "",
    ]
    lines.append("| week | " + " | ".join(names) + " |")
    lines.append("| --- |" + " ---: |" * len(names))
    weeks = sorted({w["week"] for p in summary["policies"] for w in p["weeks"]})
    by = {p["policy"]: {w["week"]: w for w in p["weeks"]} for p in summary["policies"]}
    for week in weeks:
        cells = []
        for name in names:
            w = by[name].get(week)
            cells.append(
                "-"
                if w is None
                else f"{_fmt(w['live_roc_auc'])} (v{','.join(map(str, w['model_versions']))})"
            )
        lines.append(f"| {week} | " + " | ".join(cells) + " |")
    lines += ["", "Retrainings (date, why, gate, promoted version):", ""]
    for p in summary["policies"]:
        done = [
            f"{r['date']} {r['reason']}: "
            + (
                f"failed at {r['failed_step']}"
                if r.get("failed_step")
                else ("passed, v" + str(r["promoted_version"]) if r.get("gate_passed") else "rejected")
            )
            for r in p["retrainings"]
        ]
        shown = "; ".join(done[:40]) + (f"; ... ({len(done) - 40} more)" if len(done) > 40 else "")
        lines.append(f"- {p['policy']}: {shown}")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def html_page(summary: dict[str, Any], png: bytes) -> str:
    """A self-contained page: the plot (inline PNG), the summary table, the weekly table and the retrainings."""
    import base64

    esc = html.escape
    head = [
        "policy",
        "trainings",
        "promotions",
        "weeks",
        "mean weekly live ROC AUC",
        "min",
        "compute s",
        "wall s",
    ]
    keys = [
        "policy",
        "trainings",
        "promotions",
        "weeks",
        "mean_weekly_live_roc_auc",
        "min_weekly_live_roc_auc",
        "compute_seconds",
        "wall_seconds",
    ]
    table = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(r[k]))}</td>" for k in keys) + "</tr>" for r in summary["table"]
    )
    weekly = "".join(
        "<tr>"
        + f"<td>{esc(p['policy'])}</td><td>{esc(w['week'])}</td><td>{w['rows_scored']}</td>"
        + f"<td>{w['rows_ahead_with_outcome']}</td><td>{esc(_cell(w['live_roc_auc']))}</td>"
        + f"<td>{esc(' '.join(map(str, w['model_versions'])))}</td></tr>"
        for p in summary["policies"]
        for w in p["weeks"]
    )
    trainings = "".join(
        "<tr>"
        + f"<td>{esc(p['policy'])}</td><td>{esc(r['date'])}</td><td>{esc(r['reason'])}</td><td>{esc(r['mode'])}</td>"
        + f"<td>{esc(_cell(r.get('gate_passed')))}</td><td>{esc(_cell(r.get('promoted_version')))}</td>"
        + f"<td>{esc(r.get('error') or '; '.join(r.get('gate_reasons') or []))}</td></tr>"
        for p in summary["policies"]
        for r in p["retrainings"]
    )
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Backtest {esc(summary["usecase"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Backtest of the retraining policy: {esc(summary["usecase"])}, {esc(summary["from"])} to {esc(summary["to"])}</h1>
<p>{esc(summary["orchestration"])}.</p>
<img alt="weekly live ROC AUC per policy" src="data:image/png;base64,{image}">
<h2>Policies</h2><table><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr>{table}</table>
<h2>Retrainings</h2><table><tr><th>policy</th><th>date</th><th>why</th><th>mode</th><th>gate passed</th>
<th>promoted</th><th>notes</th></tr>{trainings}</table>
<h2>Weekly live performance</h2><table><tr><th>policy</th><th>week</th><th>rows scored</th>
<th>made ahead, outcome known</th><th>live ROC AUC</th><th>model versions</th></tr>{weekly}</table>
</body></html>
"""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_outputs(lake: Lake, usecase: UseCase, first: date, last: date) -> dict[str, Any]:
    """The summary of every policy recorded for the period (``policies/<policy>.json``), written as Markdown,
    CSV, PNG, HTML and JSON under :func:`report_prefix`; returns the summary with the URIs."""
    prefix = report_prefix(usecase.name, first, last)
    policies = []
    for name in POLICIES:
        key = f"{prefix}/policies/{name}.json"
        if lake.storage.exists(key):
            policies.append(lake.read_json(key))
    summary: dict[str, Any] = {
        "usecase": usecase.name,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "orchestration": ORCHESTRATION,
        "table": summary_table(policies),
        "policies": policies,
    }
    png = plot_png(policies, f"{usecase.name}: weekly live ROC AUC per retraining policy")
    uris = {
        "markdown": lake.write_text(f"{prefix}/backtest.md", markdown(summary)),
        "csv": lake.write_text(f"{prefix}/backtest.csv", weekly_frame(policies).to_csv(index=False)),
        "html": lake.write_text(f"{prefix}/index.html", html_page(summary, png)),
    }
    lake.storage.write_bytes(f"{prefix}/backtest.png", png)
    uris["png"] = lake.storage.uri(f"{prefix}/backtest.png")
    summary["outputs"] = uris
    uris["json"] = lake.write_json(f"{prefix}/summary.json", summary)
    return summary


# ------------------------------------------------------------------------------------------------ entry point


def default_first(lake: Lake, usecase: UseCase) -> date:
    """The first of the month after the features table's first partition (the first training needs history)."""
    present = sorted(lake.partitions(features_table(usecase.name)))
    if not present:
        raise BacktestError(f"{lake.table_uri(features_table(usecase.name))}: no features; build them first")
    start = date.fromisoformat(present[0])
    return date(start.year + (start.month == 12), start.month % 12 + 1, 1)


def default_last(lake: Lake, usecase: UseCase) -> date:
    """The day whose evening predicts the features table's last partition."""
    present = sorted(lake.partitions(features_table(usecase.name)))
    if not present:
        raise BacktestError(f"{lake.table_uri(features_table(usecase.name))}: no features; build them first")
    return date.fromisoformat(present[-1]) - timedelta(days=usecase.time.prediction_time.day_offset)


def run_backtest(
    usecase_name: str,
    policies: list[str],
    first: date | None = None,
    last: date | None = None,
    say: Any = print,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    """Replay [first, last] under each of ``policies`` and write the outputs; returns the summary."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise BacktestError(f"unknown policy {unknown or policies}; known: {list(POLICIES)}")
    usecase = load_usecase(usecase_name)
    profile = load_profile()
    base = Lake(profile.lake_uri)
    first = first or default_first(base, usecase)
    last = last or default_last(base, usecase)
    if last < first:
        raise BacktestError(f"--to {last} is before --from {first}")
    home = mlops_home() / "backtest" / usecase.name / f"{first.isoformat()}_{last.isoformat()}"
    home.mkdir(parents=True, exist_ok=True)
    prefix = report_prefix(usecase.name, first, last)
    say(f"Backtest of {usecase.name} from {first} to {last}: policies {', '.join(policies)}")
    say(f"  features and labels reused from {base.uri}; workspaces in {home}; {ORCHESTRATION}")
    for policy in policies:
        started = time.perf_counter()
        say(f"  {policy}: replaying ...")
        workspace = prepare_workspace(base, usecase, home / policy)
        with (
            patched_environ(workspace["env"]),
            (home / f"{policy}.log").open("w", buffering=1) as log,
        ):
            replay = Replay(usecase, policy, first, last, log, say)
            replay.run.tables = workspace["tables"]
            run = replay.replay(workspace["lake"], budget_seconds)
        run.wall_seconds = time.perf_counter() - started
        record = run.as_dict()
        base.write_json(f"{prefix}/policies/{policy}.json", record)
        values = [w["live_roc_auc"] for w in run.weeks if w["live_roc_auc"] is not None]
        say(
            f"  {policy}: {record['trainings']} training(s), {record['promotions']} promotion(s), "
            f"{len(run.weeks)} week(s), mean weekly live ROC AUC "
            f"{_fmt(sum(values) / len(values) if values else None)}, compute {record['compute_seconds']:.0f} s, "
            f"wall {record['wall_seconds']:.0f} s"
            + (f"; stopped before {run.stopped['before']} (budget)" if run.stopped else "")
        )
    summary = write_outputs(base, usecase, first, last)
    say(f"  report: {summary['outputs']['html']}")
    return summary


def add_arguments(parser: Any) -> None:
    parser.add_argument("--usecase", required=True)
    parser.add_argument(
        "--policy",
        action="append",
        default=None,
        help=f"a policy, repeatable or comma-separated: {', '.join(POLICIES)} (default: all four)",
    )
    parser.add_argument(
        "--from",
        dest="first",
        type=date.fromisoformat,
        default=None,
        help="first day (the initial training's morning), YYYY-MM-DD; default: the first of the month after "
        "the first feature partition",
    )
    parser.add_argument(
        "--to",
        dest="last",
        type=date.fromisoformat,
        default=None,
        help="last evening scored, YYYY-MM-DD; default: the one predicting the last feature partition",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="per policy: stop replaying after this much wall time (recorded; to measure what an expensive "
        "policy such as nightly costs without waiting for it)",
    )


def main(args: Any) -> int:
    policies = [
        p.strip() for item in (args.policy or [",".join(POLICIES)]) for p in item.split(",") if p.strip()
    ]
    try:
        summary = run_backtest(
            args.usecase, policies, args.first, args.last, budget_seconds=args.budget_seconds
        )
    except BacktestError as exc:
        print(f"mlops backtest: {exc}")
        return 2
    print(json.dumps({"outputs": summary["outputs"], "table": summary["table"]}, default=str))
    return 0
