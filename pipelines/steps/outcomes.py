"""Join the outcomes that arrived to the predictions made before them: ``predictions_with_outcomes/<usecase>``.

``python -m pipelines outcomes --usecase NAME --date D``

Predictions are made ahead (score step); an event's outcome lands later and the features step then records its
label and ``outcome_known_at`` in the labels table (``labels/<usecase>``). For every predictions partition with an
event date in
(D - ``schedules.score_catch_up_days``, D], this step joins each prediction to its event's label when that label
was known before the end of D (local), and commits the partitions whose joined rows changed (new predictions,
new outcomes) in one commit. Each row keeps the prediction time, when the prediction was made (``scored_at``,
``scored_late``) and the time the outcome became known, so live metrics count only the predictions made ahead
(pipelines.features.scoring_time.made_ahead). Rerunning a date gives the same table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import OUTCOME_KNOWN_AT, PREDICTION_TIME, UseCase
from pipelines.context import StepContext, StepFailed, progress
from pipelines.features.scoring_time import SCORED_AT, SCORED_LATE
from pipelines.lake import (
    COMMIT_ATTEMPTS,
    DATE,
    CommitConflict,
    labels_table,
    predictions_table,
    predictions_with_outcomes_table,
)
from pipelines.modeling import label_dtype

if TYPE_CHECKING:
    import pandas as pd

PREDICTION_COLUMNS = [PREDICTION_TIME, "probability", "prediction", "model_version", "snapshot_version"]


def prediction_columns(usecase: UseCase) -> list[str]:
    """The predictions' columns the outcomes are joined to: a regression's prediction is the value itself (no
    probability column)."""
    if usecase.task == "regression":
        return [c for c in PREDICTION_COLUMNS if c != "probability"]
    return PREDICTION_COLUMNS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The outcomes step needs only --usecase and --date."""


def join_outcomes(
    predictions: pd.DataFrame, labels: pd.DataFrame, keys: list[str], label: str, label_dtype: str = "int64"
) -> pd.DataFrame:
    """The predictions whose event has a known label (rows of the labels table), with that label and when it
    became known; a prediction made at or after its outcome was known is refused (it would not be a
    prediction)."""
    labelled = labels.loc[labels[label].notna(), [*keys, DATE, label, OUTCOME_KNOWN_AT]]
    joined = predictions.merge(labelled, on=[*keys, DATE], how="inner", validate="one_to_one")
    late = joined[joined[PREDICTION_TIME] >= joined[OUTCOME_KNOWN_AT]]
    if len(late):
        raise StepFailed(
            f"{len(late)} prediction(s) were made at or after their outcome was known (e.g. {late.iloc[0].to_dict()}); "
            "the features' prediction time must come before the outcome (time.prediction_time, label_delay)"
        )
    joined[label] = joined[label].astype(label_dtype)
    return joined.sort_values([DATE, *keys], kind="stable").reset_index(drop=True)


def _fingerprint(prediction_id: str, labels_id: str, labelled: int) -> str:
    body = json.dumps([prediction_id, labels_id, labelled]).encode()
    return hashlib.sha256(body).hexdigest()[:32]


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Join the outcomes known by the end of ``ctx.day`` to the predictions of the catch-up window."""
    import pandas as pd

    usecase = ctx.usecase
    keys = [k for k in usecase.features.keys if k != DATE]
    label = usecase.target.column
    known_before = usecase.time.local_midnight(ctx.day + timedelta(days=1))
    first = (ctx.day - timedelta(days=usecase.schedules.score_catch_up_days)).isoformat()
    table = predictions_with_outcomes_table(usecase.name)
    # the dates of the window only (partitions and facts): the step's reads do not grow with the history
    window = [
        (ctx.day - timedelta(days=k)).isoformat()
        for k in range(usecase.schedules.score_catch_up_days - 1, -1, -1)
    ]
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        predictions = ctx.lake.snapshot(predictions_table(usecase.name), dates=window)
        labels = ctx.lake.snapshot(labels_table(usecase.name), dates=window)
        joined = ctx.lake.snapshot(table, dates=window)
        days = [d for d in sorted(predictions.partitions) if first < d <= ctx.ds and d in labels.partitions]
        tables_read = {s.table: s.version for s in (predictions, labels) if s.version is not None}
        if not days:
            progress(f"outcomes: no predictions with labels in ({first}, {ctx.ds}]")
            return {"joined": [], "rows": 0, "tables_read": tables_read, "tables_written": {}}
        # when each prediction was made and whether late (predictions from before these were recorded lack them)
        made = [c for c in (SCORED_AT, SCORED_LATE) if c in predictions.columns]
        scored = ctx.lake.read_frame(
            predictions.table, days, [*keys, DATE, *prediction_columns(usecase), *made], predictions.version
        )
        label_rows = ctx.lake.read_frame(
            labels.table, days, [*keys, DATE, label, OUTCOME_KNOWN_AT], labels.version
        )
        known = pd.to_datetime(label_rows[OUTCOME_KNOWN_AT], utc=True) < pd.Timestamp(known_before)
        label_rows.loc[~known, label] = None  # not known yet on this date
        rows = join_outcomes(scored, label_rows, keys, label, label_dtype(usecase))
        facts, changed = {}, []
        for day in days:
            labelled = int((rows[DATE] == day).sum())
            fingerprint = _fingerprint(
                predictions.partitions[day].content_id, labels.partitions[day].content_id, labelled
            )
            existing = joined.partitions.get(day)
            if labelled and (existing is None or existing.facts.get("inputs_fingerprint") != fingerprint):
                changed.append(day)
                facts[day] = {
                    "inputs_fingerprint": fingerprint,
                    "predictions_version": predictions.version,
                    "labels_version": labels.version,
                    "known_before": known_before.isoformat(),
                }
        if not changed:
            progress(f"outcomes: {len(days)} predicted day(s) up to date")
            return {"joined": [], "rows": 0, "tables_read": tables_read, "tables_written": {}}
        try:
            commit = ctx.lake.write_partitions(
                table,
                rows[rows[DATE].isin(changed)],
                read_version=joined.version,
                facts=facts,
                commit_info={"mlops.step": "outcomes", "mlops.date": ctx.ds},
            )
        except CommitConflict as conflict:
            if attempt == COMMIT_ATTEMPTS:
                raise StepFailed(str(conflict), {"joined": [], "rows": 0}) from None
            progress(f"outcomes: {conflict}; joining again from the new snapshots")
            continue
        progress(
            f"outcomes: committed {commit.table} version {commit.version}: {commit.rows} rows, {changed}"
        )
        return {
            "joined": commit.dates,
            "rows": commit.rows,
            "partitions": commit.partition_uris(),
            "tables_read": tables_read,
            "tables_written": {commit.table: commit.version},
        }
    raise AssertionError("unreachable")  # pragma: no cover
