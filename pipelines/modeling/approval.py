"""A person's approval between a passed gate and the move of ``champion`` (``approval.mode: required``).

The Airflow side (mlops_airflow.approval) asks and waits; this module says what is asked and records the answer,
with no Airflow import:

- :func:`request_text`: the subject and body the approver reads: the candidate, its version, the primary metric
  against the champion's, the paired interval of the change, every check passed and failed, and links to the
  evaluation report (the MLflow UI's view of the candidate run's ``evaluation/report.html``, and its lake copy).
- :func:`record_answer`: the answer (approved or not, who, when, the comment, whether the wait timed out) is
  written as the run's ``approval`` result (``runs/<usecase>/approval/date=<D>/run=<run>/result.json``, which
  promote reads), added to the gate's decision record (``decisions/...``, field ``approval``) and set as tags on
  the model version (``approval.status``, ``.by``, ``.at``, ``.comment``, ``.run_id``). Fail closed: any of them
  failing raises, and promote moves nothing without an approved result of its own run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipelines.config import Profile, UseCase
from pipelines.context import run_result_key, safe_run_id
from pipelines.lake import Lake

APPROVAL_STEP = "approval"


def report_links(
    usecase: UseCase, profile: Profile, lake: Lake, day: str, run_id: str, gate: dict[str, Any]
) -> dict[str, str]:
    """Where the evaluation report of this run opens: ``mlflow`` (the MLflow UI's artifact view of the candidate
    run, when a UI address is known) and ``lake`` (the report page the report step writes)."""
    links = {"lake": lake.storage.uri(f"{_report_prefix(usecase.name, day, run_id)}/report.html")}
    ui = profile.mlflow_ui_url or (
        profile.mlflow_tracking_uri
        if profile.mlflow_tracking_uri.startswith(("http://", "https://"))
        else None
    )
    candidate_run = gate.get("run_id")
    if ui and candidate_run:
        experiment = gate.get("experiment_id") or _experiment_of(profile, usecase, candidate_run)
        if experiment:
            links["mlflow"] = (
                f"{ui.rstrip('/')}/#/experiments/{experiment}/runs/{candidate_run}/artifacts/evaluation/report.html"
            )
    return links


def _report_prefix(usecase: str, day: str, run_id: str) -> str:
    """The report step's ``ctx.report_prefix("evaluation")`` for this run."""
    return f"{Lake.dated_key('reports', usecase, day, 'evaluation')}/run={safe_run_id(run_id)}"


def _experiment_of(profile: Profile, usecase: UseCase, run_id: str) -> str | None:
    from mlflow import MlflowClient

    from pipelines.modeling.tracking import configure_mlflow

    configure_mlflow(profile, usecase)
    try:
        return str(MlflowClient().get_run(run_id).info.experiment_id)
    except Exception:  # a link is a convenience: the request still names the run and the lake copy
        return None


def _value(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def request_text(
    usecase: UseCase, gate: dict[str, Any], version: Any, links: dict[str, str]
) -> tuple[str, str]:
    """The subject and the Markdown body of the approval request, from the gate decision."""
    metric = gate.get("primary_metric")
    champion = gate.get("champion_version")
    subject = (
        f"[{usecase.name}] approve version {version} ({gate.get('candidate')}) as champion? "
        f"{metric} {_value(gate.get('candidate_value'))} vs "
        + (f"champion v{champion} {_value(gate.get('champion_value'))}" if champion else "no champion yet")
    )
    checks = gate.get("checks") or []
    lines = [
        f"The gate passed candidate **{gate.get('candidate')}** (registered as version {version}) for "
        f"{gate.get('date') or ''}. Approve moves `champion` to it; Reject (or no answer in time) keeps "
        + (f"version {champion}." if champion else "the model without a champion."),
        "",
        f"- **{metric}**: {_value(gate.get('candidate_value'))} (champion: {_value(gate.get('champion_value'))})",
    ]
    for check in checks:
        interval = check.get("interval")
        if not isinstance(interval, dict) or interval.get("low") is None:
            continue
        if check.get("kind") == "change":
            what = f"change of {check.get('metric')} against the champion: {_value(check.get('difference'))}"
        else:
            what = f"{check.get('name')}: {_value(check.get('value'))}"
        confidence = interval.get("confidence")
        level = f"{confidence:.0%} " if isinstance(confidence, float) else ""
        line = f"- {what}, {level}interval [{_value(interval.get('low'))}, {_value(interval.get('high'))}]"
        if line not in lines:
            lines.append(line)
    passed = [c for c in checks if c.get("passed") and not c.get("skipped")]
    failed = [c for c in checks if not c.get("passed") and not c.get("skipped")]
    skipped = [c for c in checks if c.get("skipped")]
    lines += [
        "",
        f"**Checks passed ({len(passed)})**",
        *[f"- {c['name']}: {c.get('reason')}" for c in passed],
    ]
    lines += [
        "",
        f"**Checks failed ({len(failed)})**",
        *([f"- {c['name']}: {c.get('reason')}" for c in failed] or ["- none"]),
    ]
    if skipped:
        lines += ["", f"Skipped: {', '.join(str(c['name']) for c in skipped)}"]
    lines += ["", "**Evaluation report**"]
    if "mlflow" in links:
        lines.append(f"- [open the report]({links['mlflow']})")
    lines.append(f"- lake: `{links['lake']}`")
    lines += [
        "",
        f"Decision `{gate.get('decision_id')}`: `{gate.get('decision_uri') or gate.get('result_uri')}`",
    ]
    return subject, "\n".join(lines)


def _lake_key(lake: Lake, uri: str) -> str:
    prefix = lake.uri.rstrip("/") + "/"
    return uri[len(prefix) :] if uri.startswith(prefix) else uri


def record_answer(
    usecase: UseCase,
    profile: Profile,
    lake: Lake,
    *,
    day: str,
    run_id: str,
    gate: dict[str, Any],
    version: int,
    approved: bool,
    by: str | None,
    at: datetime | None,
    comment: str,
    timed_out: bool,
) -> dict[str, Any]:
    """Record the approver's answer (see the module doc) and return the record."""
    from mlflow import MlflowClient

    from pipelines.modeling.tracking import configure_mlflow, model_name

    answered_at = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
    status = "approved" if approved else ("timed_out" if timed_out else "rejected")
    record = {
        "step": APPROVAL_STEP,
        "usecase": usecase.name,
        "date": day,
        "run": run_id,
        "model_name": model_name(usecase),
        "version": int(version),
        "candidate": gate.get("candidate"),
        "decision_id": gate.get("decision_id"),
        "decision_uri": gate.get("decision_uri"),
        "approved": bool(approved),
        "status": status,
        "by": by,
        "at": answered_at,
        "comment": comment,
        "timed_out": bool(timed_out),
    }
    key = run_result_key(usecase.name, day, APPROVAL_STEP, run_id)
    record["result_uri"] = lake.storage.uri(key)
    lake.write_json(key, record)
    if gate.get("decision_uri"):
        decision_key = _lake_key(lake, gate["decision_uri"])
        decision = lake.read_json(decision_key)
        # the decision keeps what the gate found; the person's answer is added beside it (one per run and decision)
        lake.write_json(decision_key, {**decision, "approval": record})
    configure_mlflow(profile, usecase)
    client = MlflowClient()
    tags = {
        "approval.status": status,
        "approval.by": by or "",
        "approval.at": answered_at,
        "approval.comment": comment[:4000],
        "approval.run_id": run_id,
    }
    for name, value in tags.items():
        client.set_model_version_tag(record["model_name"], str(version), name, value)
    return record
