"""Batch scoring of feature rows by a loaded model: the predictions table's columns, one function for the score
step and the backtest's replay (the serving service scores one request at a time, pipelines.serving).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.config import PREDICTION_TIME
from pipelines.context import StepContext, StepFailed
from pipelines.features.model_inputs import model_inputs
from pipelines.features.scoring_time import SCORED_AT, SCORED_LATE
from pipelines.lake import DATE

if TYPE_CHECKING:
    import pandas as pd


def score_frame(
    ctx: StepContext,
    model: Any,
    frame: pd.DataFrame,
    version: int,
    run_id: str,
    snapshot_version: int,
    where: str,
    scored_at: dict[str, datetime] | None = None,
) -> pd.DataFrame:
    """Predictions for feature rows: keys, date, prediction time, probability and prediction (at the model's
    recorded decision threshold; a regression: the predicted value, no probability), model version and run, and
    the version of the online snapshot table the features came from."""
    import numpy as np
    import pandas as pd

    from pipelines.modeling.tracking import decision_threshold, predict_proba

    keys = [k for k in ctx.usecase.features.keys if k != DATE]
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise StepFailed(f"{where}: key columns {missing} are missing (features.keys in the use case config)")
    out = frame[keys].reset_index(drop=True).copy()
    out[DATE] = frame[DATE].reset_index(drop=True)
    out[PREDICTION_TIME] = frame[PREDICTION_TIME].reset_index(drop=True)
    if len(frame):
        probability = predict_proba(model, model_inputs(ctx.usecase, frame, where))
    else:
        probability = np.zeros(0, dtype="float64")
    if len(probability) != len(frame):
        raise StepFailed(f"{where}: the model returned {len(probability)} scores for {len(frame)} rows")
    if ctx.usecase.task == "regression":
        out["prediction"] = probability.astype("float64")  # the predicted value
    else:
        out["probability"] = probability.astype("float64")
        out["prediction"] = (out["probability"] >= decision_threshold(model)).astype("int8")
    out["model_version"] = pd.Series([version] * len(out), dtype="int64")
    out["model_run_id"] = pd.Series([run_id] * len(out), dtype=object)
    out["snapshot_version"] = pd.Series([snapshot_version] * len(out), dtype="int64")
    if scored_at is not None:
        at = {day: pd.Timestamp(moment) for day, moment in scored_at.items()}
        out[SCORED_AT] = pd.to_datetime(out[DATE].map(at), utc=True).astype("datetime64[us, UTC]")
        out[SCORED_LATE] = out[SCORED_AT] > pd.to_datetime(out[PREDICTION_TIME], utc=True)
    return out
