"""Move the ``champion`` alias to the version the gate passed (fail closed when the gate did not pass).

Reads the gate decision and the register result of the same logical date and run (``MLOPS_RUN_ID``).
Idempotent: when the alias already points at that version nothing moves and the same result comes back. A promote
for an older logical date never moves the champion back to a model trained for an earlier date than the current
champion's (a backfill or a cleared old run would otherwise roll production back).

Compare and set: the alias moves only while the champion is still the version the gate compared the candidate
against (the decision's ``champion_version``; no champion counts as a version). When another run moved it since
(a manual ``<uc>_train`` and the ``<uc>_train_nightly`` run of one date, both gated against the old champion),
the decision is stale: the step fails naming both versions and moves nothing; rerun evaluate and gate.

The move is recorded like every alias move (pipelines.modeling.model_ops.move_alias, kind ``gate``): the row in
``registry/<usecase>/alias_moves`` is committed before the alias moves, and without it nothing moves. A version
a person rolled back (a recorded ``rollback`` away from it) is not promoted again by a rerun of its train run's
promote (``not_moved`` says so): ``mlops models promote`` brings it back.

With ``approval.mode: required`` (pipelines.modeling.approval) the alias moves only with an approved answer recorded for this
run and this version (the run's ``approval`` result); the move is then of kind ``approval``, made by the approver,
with their comment. No approval on record, a rejection or a timeout: the step fails and nothing moves (the DAG
skips promote after a rejection, so this guards a cleared or hand-run promote).
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.results import read_step_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The promote step needs only --usecase and --date."""


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _version_text(version: Any) -> str:
    return "no champion" if version is None else f"version {version}"


def compared_champion(ctx: StepContext, gate: dict[str, Any]) -> int | None:
    """The champion version the gate compared the candidate against (None: there was no champion); StepFailed
    when the decision does not record it (written by an older release)."""
    if "champion_version" not in gate:
        raise StepFailed(
            f"the gate decision for {ctx.ds} in run {ctx.run_id!r} does not record the champion it compared "
            f"against; rerun evaluate and gate for {ctx.ds}"
        )
    return _int_or_none(gate["champion_version"])


def check_champion_unchanged(
    ctx: StepContext, base: dict[str, Any], compared: int | None, current: int | None, target: Any
) -> None:
    """StepFailed, moving nothing, when the champion is no longer the version the gate compared against."""
    if current != compared:
        raise StepFailed(
            f"the champion of {base['model_name']!r} moved since the gate: the gate for {ctx.ds} (run "
            f"{ctx.run_id!r}) compared candidate version {target.version} against {_version_text(compared)}, but "
            f"the champion is now {_version_text(current)}; nothing moved. Rerun evaluate and gate for {ctx.ds} "
            "to compare against the current champion",
            {
                **base,
                "champion_version": current,
                "previous_champion_version": current,
                "gate_champion_version": compared,
            },
        )


def approval_of(ctx: StepContext, version: int) -> dict[str, Any] | None:
    """The approved answer of this run for ``version`` when the use case requires approval (None when it does
    not); StepFailed, moving nothing, when it is missing or not an approval of that version."""
    from pipelines.config import approval_required

    if not approval_required(ctx.usecase, ctx.profile):
        return None
    answer = read_step_result(ctx, "approval", required=False)
    if answer is None or answer.get("approved") is not True or answer.get("version") != version:
        state = (
            "no answer recorded"
            if answer is None
            else f"{answer.get('status')} for version {answer.get('version')}"
        )
        raise StepFailed(
            f"{ctx.usecase.name} requires a person's approval before the champion moves, and run {ctx.run_id!r} "
            f"has no approval of version {version} ({state}); nothing moved"
        )
    return answer


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Point the champion alias at the gate candidate's version; return the new and the previous champion."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.modeling.model_ops import move_alias, read_moves
    from pipelines.modeling.tracking import champion_version, configure_mlflow, model_name

    gate = read_step_result(ctx, "gate")
    registered = read_step_result(ctx, "register")
    configure_mlflow(ctx.profile, ctx.usecase)
    client = MlflowClient()
    name = model_name(ctx.usecase)
    current = champion_version(ctx.usecase)
    current_number = int(current.version) if current is not None else None
    result_key = f"{ctx.run_key('promote')}/result.json"
    base = {
        "model_name": name,
        "candidate": gate.get("candidate"),
        "result_uri": ctx.lake.storage.uri(result_key),
    }

    if gate.get("passed") is not True:
        reasons = "; ".join(map(str, gate.get("reasons") or [])) or "no reason recorded"
        raise StepFailed(
            f"gate did not pass for {gate.get('candidate')!r} on {ctx.ds} ({reasons}); the champion stays at "
            f"version {current_number}. See {gate.get('result_uri', 'the gate decision')}",
            {**base, "champion_version": current_number, "previous_champion_version": current_number},
        )
    version_number = registered.get("gate_candidate_version")
    if version_number is None or registered.get("gate_passed") is not True:
        raise StepFailed(
            f"register result for {ctx.ds} does not record a passed gate candidate version "
            f"(gate_candidate_version={version_number}, gate_passed={registered.get('gate_passed')}) while the "
            f"gate decision passed: rerun register for {ctx.ds}"
        )
    try:
        target = client.get_model_version(name, str(version_number))
    except MlflowException as exc:
        raise StepFailed(
            f"model {name!r} version {version_number} not found in the registry ({exc}); "
            f"rerun register for {ctx.ds}"
        ) from None
    if gate.get("run_id") and target.run_id != gate["run_id"]:
        raise StepFailed(
            f"model {name!r} version {version_number} comes from run {target.run_id}, but the gate passed run "
            f"{gate['run_id']}: rerun register for {ctx.ds}"
        )
    compared = compared_champion(ctx, gate)
    approval = approval_of(ctx, int(target.version))
    rolled_back = [
        move
        for move in read_moves(ctx.lake, ctx.usecase.name, "champion")
        if move["kind"] == "rollback" and move["from_version"] == int(target.version)
    ]

    def not_moved(reason: str) -> dict[str, Any]:
        """The champion stays where it is, and the result says why."""
        progress(f"promote: {reason}")
        result = {
            **base,
            "champion_version": current_number,
            "previous_champion_version": current_number,
            "not_moved": reason,
        }
        ctx.lake.write_json(result_key, result)
        return result

    if current_number == int(target.version):
        previous = _int_or_none(target.tags.get("promoted_from"))
        progress(f"promote: version {current_number} is already the champion of {name!r}")
    elif rolled_back:
        last = rolled_back[-1]
        reason = (
            f"version {target.version} was rolled back by {last['by']} at {last['moved_at']} ({last['reason']}): "
            "a rerun of the gate's promote does not undo a person's rollback; to make it the champion again use "
            f"`mlops models promote --usecase {ctx.usecase.name} {target.version} --reason '...'`"
        )
        return not_moved(reason)
    elif current is not None and current.tags.get("logical_date", "") > ctx.ds:
        reason = (
            f"champion version {current_number} was trained for {current.tags['logical_date']}, later than "
            f"{ctx.ds}: not moved back to version {target.version}"
        )
        return not_moved(reason)
    else:
        # MLflow has no compare-and-set for aliases: read the alias again right before setting it, and move it only
        # while it is still the version the gate compared against. The window between this read and the set is
        # closed by the Airflow pool `<usecase>_train` (one slot, mlops_airflow.pools), which the promote task
        # of every train DAG of the use case runs in: no other promote of the use case moves the alias meanwhile.
        latest = champion_version(ctx.usecase)
        previous = None if latest is None else int(latest.version)
        check_champion_unchanged(ctx, base, compared, previous, target)
        # the same recorded move as `mlops models promote` (pipelines.modeling.model_ops): the row in
        # registry/<usecase>/alias_moves first, then the alias; no record, no move
        reason = (
            f"gate passed for {ctx.ds} (decision {gate.get('decision_id') or 'unrecorded'}: "
            f"{gate.get('primary_metric')} {gate.get('candidate_value')})"
        )
        if approval is not None:
            reason = f"approved by {approval['by']} at {approval['at']}: {approval['comment'] or 'no comment'}; {reason}"
        move_alias(
            ctx.usecase,
            ctx.lake,
            int(target.version),
            kind="gate" if approval is None else "approval",
            by="gate" if approval is None else str(approval["by"]),
            reason=reason,
            expected_from=previous,
            run_id=ctx.run_id,
        )
        client.set_model_version_tag(name, str(target.version), "promoted_on", ctx.ds)
        client.set_model_version_tag(name, str(target.version), "promoted_from", str(previous or ""))
        if previous is not None:
            client.set_model_version_tag(name, str(previous), "superseded_on", ctx.ds)
            client.set_model_version_tag(name, str(previous), "superseded_by", str(target.version))
        progress(f"promote: champion of {name!r} moved from version {previous} to {target.version}")

    result = {**base, "champion_version": int(target.version), "previous_champion_version": previous}
    if approval is not None:
        result["approved_by"] = approval["by"]
    ctx.lake.write_json(result_key, result)
    return result
