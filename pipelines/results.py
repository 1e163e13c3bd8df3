"""Step results keyed by run: the ``result.json`` a step of one orchestrator run wrote for a use case and date
(``runs/<usecase>/<step>/date=<D>/run=<run>/result.json``, :func:`pipelines.context.run_key`), read by the later
steps of the same run. Shared here so that no step imports another step's module to read its predecessor.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StepContext, StepFailed
from pipelines.lake import LakeError


def read_step_result(ctx: StepContext, step: str, required: bool = True) -> dict[str, Any] | None:
    """The result JSON another step of this run wrote for this use case and date; StepFailed (or None) when it is
    missing."""
    key = f"{ctx.run_key(step)}/result.json"
    try:
        return ctx.lake.read_json(key)
    except LakeError:
        if not required:
            return None
        raise StepFailed(
            f"{ctx.lake.storage.uri(key)}: no {step} result for use case {ctx.usecase.name!r} on {ctx.ds} in run "
            f"{ctx.run_id!r}; run `python -m pipelines {step} --usecase {ctx.usecase.name} --date {ctx.ds}` "
            "first, in the same run"
        ) from None


def needed_step_result(ctx: StepContext, step: str, needed_by: str) -> dict[str, Any]:
    """The result JSON of ``step`` for this use case, date and run, or StepFailed saying what to run."""
    key = f"{ctx.run_key(step)}/result.json"
    if not ctx.lake.storage.exists(key):
        raise StepFailed(
            f"{ctx.lake.storage.uri(key)}: no {step} result for {ctx.usecase.name} on {ctx.ds} in run "
            f"{ctx.run_id!r}; {needed_by} needs it: run python -m pipelines {step} --usecase {ctx.usecase.name} "
            f"--date {ctx.ds} first, in the same run"
        )
    return ctx.lake.read_json(key)
