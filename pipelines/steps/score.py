"""Score ahead: the champion predicts the events whose prediction time is on the logical date, before they happen.

Runs at the use case's prediction time (``schedules.score``, e.g. 18:00 local). For logical date D it scores every
committed feature partition of an event date E with D - ``schedules.score_catch_up_days`` < E - ``days_before`` <= D
that has no predictions partition yet (a missed evening is caught up, a rerun scores nothing twice). Features are
point-in-time (built only from what was known at each event's prediction time), so the scorer never needs the
outcome. A model scores only events predicted on or after its training date (tag ``logical_date``): it never
predicts events whose prediction time came before it existed or days it was trained or evaluated on.
The champion is looked up once by alias and loaded by its pinned version, so a promotion during the run cannot mix
two models. Features are read from one version of the features table; every prediction row records the model
version, the features table version and its prediction time. All new partitions are one commit to the Delta
table ``predictions/<usecase>``; a concurrent commit to the same partitions makes the step plan again.
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import PREDICTION_TIME
from pipelines.context import StepContext, StepFailed, progress
from pipelines.lake import COMMIT_ATTEMPTS, DATE, CommitConflict, Snapshot, features_table, predictions_table

if TYPE_CHECKING:
    import pandas as pd

THRESHOLD = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The score step needs only --usecase and --date."""


def dates_to_score(
    ctx: StepContext, feature_dates: list[str], scored_dates: set[str], not_before: date | None = None
) -> list[str]:
    """Event dates predicted in the catch-up window ending on the logical date that are not scored yet (and,
    given ``not_before``, predicted on or after that date)."""
    days_before = timedelta(days=ctx.usecase.time.prediction_time.days_before)
    last = ctx.usecase.time.predicted_through(ctx.day)
    first = last - timedelta(days=ctx.usecase.schedules.score_catch_up_days)
    if not_before is not None:
        first = max(first, not_before + days_before - timedelta(days=1))
    chosen = []
    for day in sorted(feature_dates):
        try:
            when = date.fromisoformat(day)
        except ValueError:
            continue
        if first < when <= last and day not in scored_dates:
            chosen.append(day)
    return chosen


def model_inputs(ctx: StepContext, frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The feature columns in model order: numeric as float64 (nulls as NaN), categorical as strings or None."""
    from pipelines.tracking import feature_columns

    columns = feature_columns(ctx.usecase)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StepFailed(
            f"{where}: feature columns {missing} are missing; rebuild the features partition with the current "
            f"use case config (features.numeric/categorical)"
        )
    inputs = frame[columns].copy()
    for column in ctx.usecase.features.numeric:
        try:
            inputs[column] = inputs[column].astype("float64")
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"{where}: numeric feature {column!r} is not numeric ({exc})") from None
    for column in ctx.usecase.features.categorical:
        inputs[column] = inputs[column].astype(object).where(inputs[column].notna(), None)
    return inputs


def check_feature_columns(ctx: StepContext, features: Snapshot, days: list[str]) -> None:
    """Each partition to score holds the model's feature columns (the columns its features build recorded)."""
    from pipelines.tracking import feature_columns

    wanted = [*feature_columns(ctx.usecase), PREDICTION_TIME]
    for day in days:
        listed = features.partitions[day].facts.get("columns")
        missing = [c for c in wanted if c not in (listed if listed is not None else features.columns)]
        if missing:
            raise StepFailed(
                f"{features.uri}/{DATE}={day} (version {features.version}): feature columns {missing} are missing; "
                f"rebuild the features of {day} with the current use case config (python -m pipelines features "
                f"--usecase {ctx.usecase.name} --date {day} --start {day} --rebuild)"
            )


def score_frame(
    ctx: StepContext,
    model: Any,
    frame: pd.DataFrame,
    version: int,
    run_id: str,
    features_version: int,
    where: str,
) -> pd.DataFrame:
    """Predictions for feature rows: keys, date, prediction time, probability, prediction, model version and
    run, and the features table version the rows came from."""
    import numpy as np
    import pandas as pd

    from pipelines.tracking import predict_proba

    keys = [k for k in ctx.usecase.features.keys if k != DATE]
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise StepFailed(f"{where}: key columns {missing} are missing (features.keys in the use case config)")
    out = frame[keys].reset_index(drop=True).copy()
    out[DATE] = frame[DATE].reset_index(drop=True)
    out[PREDICTION_TIME] = frame[PREDICTION_TIME].reset_index(drop=True)
    if len(frame):
        probability = predict_proba(model, model_inputs(ctx, frame, where).reset_index(drop=True))
    else:
        probability = np.zeros(0, dtype="float64")
    if len(probability) != len(frame):
        raise StepFailed(f"{where}: the model returned {len(probability)} scores for {len(frame)} rows")
    out["probability"] = probability.astype("float64")
    out["prediction"] = (out["probability"] >= THRESHOLD).astype("int8")
    out["model_version"] = pd.Series([version] * len(out), dtype="int64")
    out["model_run_id"] = pd.Series([run_id] * len(out), dtype=object)
    out["features_version"] = pd.Series([features_version] * len(out), dtype="int64")
    return out


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Score the unscored feature partitions of the catch-up window with the champion."""
    from pipelines.tracking import champion_version, configure_mlflow, load_model, model_name

    uc = ctx.usecase.name
    result_key = f"{ctx.run_key('score')}/result.json"
    result_uri = ctx.lake.storage.uri(result_key)
    configure_mlflow(ctx.profile, ctx.usecase)
    champion = champion_version(ctx.usecase)
    if champion is None:
        progress(f"score: model {model_name(ctx.usecase)!r} has no champion yet; nothing scored")
        result = {
            "scored": [],
            "rows": 0,
            "model_version": None,
            "partitions": [],
            "reason": "no champion yet",
            "result_uri": result_uri,
        }
        ctx.lake.write_json(result_key, result)
        return result

    features = ctx.lake.snapshot(features_table(uc))
    trained_on = (champion.tags or {}).get("logical_date")
    not_before = date.fromisoformat(trained_on) if trained_on else None
    version, run_id = int(champion.version), champion.run_id
    model_uri = f"models:/{model_name(ctx.usecase)}/{version}"
    model = None
    commit = None
    todo: list[str] = []
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        scored = ctx.lake.snapshot(predictions_table(uc), facts=False)
        todo = dates_to_score(ctx, list(features.partitions), set(scored.partitions), not_before)
        progress(f"score: champion version {version}; {len(todo)} partition(s) to score: {todo}")
        if not todo:
            break
        if model is None:
            model = load_model(model_uri)
        where = f"{features.uri} (version {features.version})"
        check_feature_columns(ctx, features, todo)
        frame = ctx.lake.read_frame(features.table, todo, version=features.version)
        predictions = score_frame(ctx, model, frame, version, run_id, int(features.version or 0), where)
        facts = {
            day: {
                "model_version": version,
                "model_run_id": run_id,
                "model_uri": model_uri,
                "features_version": features.version,
                "features_content": features.partitions[day].content_id,
                "scored_for": ctx.ds,
            }
            for day in todo
        }
        try:
            commit = ctx.lake.write_partitions(
                predictions_table(uc),
                predictions,
                read_version=scored.version,
                facts=facts,
                commit_info={"mlops.step": "score", "mlops.date": ctx.ds, "mlops.model_version": version},
            )
        except CommitConflict as conflict:
            if attempt == COMMIT_ATTEMPTS:
                raise StepFailed(str(conflict), {"scored": [], "rows": 0}) from None
            progress(f"score: {conflict}; planning again")
            continue
        progress(f"score: committed {commit.table} version {commit.version}: {commit.rows} rows")
        break
    result = {
        "scored": commit.dates if commit else [],
        "rows": commit.rows if commit else 0,
        "model_version": version,
        "model_run_id": run_id,
        "partitions": commit.partition_uris() if commit else [],
        "tables_read": {features.table: features.version} if features.version is not None else {},
        "tables_written": {commit.table: commit.version} if commit else {},
        "result_uri": result_uri,
    }
    ctx.lake.write_json(result_key, result)
    return result
