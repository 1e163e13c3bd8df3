"""What a monitor run reads from the lake for its window, as the lake held it by the end of the run's date D.

The window is the events predicted in the ``monitoring.window_days`` days up to ``time.predicted_through(D)``
(:func:`window_days`); for it: the batch predictions made by the end of D with their events' features
(:func:`scored_rows`), the service's captured requests with their model inputs rebuilt (:func:`captured_rows`),
the predictions whose outcomes were known (:func:`labelled_rows`), and the labelled scores the estimate is
calibrated on (:func:`calibration_set`). Never the wall clock: a rerun of D reads the same rows.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from pipelines.config import OUTCOME_KNOWN_AT
from pipelines.context import StepContext
from pipelines.features.scoring_time import SCORED_AT, made_ahead
from pipelines.lake import (
    DATE,
    LakeError,
    captures_table,
    features_table,
    predictions_table,
    predictions_with_outcomes_table,
)

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.lake import Snapshot
    from pipelines.monitoring.performance import CalibrationSet
    from pipelines.monitoring.reference import Reference


def window_days(ctx: StepContext) -> list[str]:
    """The window's event dates (ISO), oldest first."""
    usecase = ctx.usecase
    last = usecase.time.predicted_through(ctx.day)
    return [(last - timedelta(days=k)).isoformat() for k in reversed(range(usecase.monitoring.window_days))]


def scored_rows(ctx: StepContext, days: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The window's batch predictions made by the end of D joined to their events' features (model inputs,
    slices, sensitive attributes), as the lake holds them."""
    import pandas as pd

    usecase = ctx.usecase
    keys = [k for k in usecase.features.keys if k != DATE]
    predictions = ctx.lake.snapshot(predictions_table(usecase.name), facts=False)
    present = [d for d in days if d in predictions.partitions]
    read = {predictions.table: predictions.version} if predictions.version is not None else {}
    if not present:
        return empty_frame(), read
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


def empty_frame() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({DATE: pd.Series([], dtype=object)})


def captured_rows(ctx: StepContext, days: list[str], version: int) -> tuple[pd.DataFrame | None, str | None]:
    """The service's captured rows of the window answered by ``version`` and received by the end of D, with
    their model inputs rebuilt; None (and why) when there are none or they cannot be rebuilt."""
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


def outcomes_snapshot(ctx: StepContext) -> Snapshot:
    """The predictions joined with their outcomes, one version for the whole run: the window's live figures and
    the estimate's calibration read the same rows, and the run records which."""
    return ctx.lake.snapshot(predictions_with_outcomes_table(ctx.usecase.name), facts=False)


def labelled_rows(
    ctx: StepContext,
    joined: Snapshot,
    days: list[str],
    version: int,
    known_before: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Predictions of ``version`` of the events of ``days`` made ahead whose outcome was known before
    ``known_before`` (default: the end of D), from ``joined`` (:func:`outcomes_snapshot`)."""
    import pandas as pd

    usecase = ctx.usecase
    present = [d for d in days if d in joined.partitions]
    if not present:
        return empty_frame()
    frame = ctx.lake.read_frame(joined.table, present, version=joined.version)
    end = pd.Timestamp(usecase.time.local_midnight(ctx.day + timedelta(days=1)))
    if known_before is not None:
        end = min(end, known_before)
    known = pd.to_datetime(frame[OUTCOME_KNOWN_AT], utc=True) < end
    frame = frame[known & made_ahead(frame) & (frame["model_version"] == version)]
    score = "prediction" if usecase.task == "regression" else "probability"
    return frame.rename(columns={score: "_score"}).reset_index(drop=True)


def calibration_set(
    ctx: StepContext, joined: Snapshot, days: list[str], version: int, reference: Reference
) -> CalibrationSet:
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
    recent = empty_frame()
    if spec.calibration_days:
        before = [(first - timedelta(days=k)).isoformat() for k in range(spec.calibration_days, 0, -1)]
        began = pd.Timestamp(usecase.time.local_midnight(first))
        recent = labelled_rows(ctx, joined, before, version, known_before=began)
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
