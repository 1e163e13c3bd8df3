"""Batch-score feature partitions with the champion model into ``predictions/<usecase>/date=<d>``.

Scores every committed feature partition dated in ``(D - schedules.score_catch_up_days, D]`` that has no committed
predictions partition yet (so a missed day is caught up and a rerun scores nothing twice), and that is dated on or
after the champion's training date (tag ``logical_date``): a model never scores the days it was trained or
evaluated on, so predictions are always out of time. The champion is looked
up once by alias and loaded by its pinned version, so a promotion during the run cannot mix two models.
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.context import StepContext, StepFailed, progress

if TYPE_CHECKING:
    import pandas as pd

THRESHOLD = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The score step needs only --usecase and --date."""


def dates_to_score(
    ctx: StepContext, feature_dates: list[str], scored_dates: set[str], not_before: date | None = None
) -> list[str]:
    """Feature partition dates in the catch-up window ending on the logical date that are not scored yet
    (and, given ``not_before``, dated on or after it)."""
    first = ctx.day - timedelta(days=ctx.usecase.schedules.score_catch_up_days)
    if not_before is not None:
        first = max(first, not_before - timedelta(days=1))
    chosen = []
    for day in sorted(feature_dates):
        try:
            when = date.fromisoformat(day)
        except ValueError:
            continue
        if first < when <= ctx.day and day not in scored_dates:
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


def score_frame(
    ctx: StepContext, model: Any, frame: pd.DataFrame, day: str, version: int, run_id: str, where: str
) -> pd.DataFrame:
    """Predictions for one feature partition: keys, date, probability, prediction, model version and run."""
    import numpy as np
    import pandas as pd

    from pipelines.tracking import predict_proba

    keys = [k for k in ctx.usecase.features.keys if k != "date"]
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise StepFailed(f"{where}: key columns {missing} are missing (features.keys in the use case config)")
    out = frame[keys].reset_index(drop=True).copy()
    out["date"] = frame["date"].reset_index(drop=True) if "date" in frame.columns else day
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

    features = ctx.lake.partitions("features", uc)
    scored = set(ctx.lake.partitions("predictions", uc))
    trained_on = (champion.tags or {}).get("logical_date")
    todo = dates_to_score(ctx, list(features), scored, date.fromisoformat(trained_on) if trained_on else None)
    version, run_id = int(champion.version), champion.run_id
    model_uri = f"models:/{model_name(ctx.usecase)}/{version}"
    progress(f"score: champion version {version}; {len(todo)} partition(s) to score: {todo}")
    partitions: list[str] = []
    rows = 0
    if todo:
        model = load_model(model_uri)
        for index, day in enumerate(todo, start=1):
            source = features[day]
            where = ctx.lake.storage.uri(source.prefix)
            frame = ctx.lake.read_frame(source)
            predictions = score_frame(ctx, model, frame, day, version, run_id, where)
            prefix = ctx.lake.partition_key("predictions", uc, day)
            ctx.lake.write_frame(
                prefix,
                predictions,
                {
                    "model_version": version,
                    "model_run_id": run_id,
                    "model_uri": model_uri,
                    "features_partition": where,
                    "features_data_hash": source.manifest.get("data_hash"),
                    "scored_for": ctx.ds,
                },
            )
            partitions.append(ctx.lake.storage.uri(prefix))
            rows += len(predictions)
            progress(f"score: [{index}/{len(todo)}] {day}: {len(predictions)} rows")
    result = {
        "scored": todo,
        "rows": rows,
        "model_version": version,
        "model_run_id": run_id,
        "partitions": partitions,
        "result_uri": result_uri,
    }
    ctx.lake.write_json(result_key, result)
    return result
