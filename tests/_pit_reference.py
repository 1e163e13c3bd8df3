"""Slow, obviously correct pandas versions of the point-in-time features, row by row, to check Spark against.

Each function loops over the rows it answers for and applies the definition in docs/configuration.md literally;
nothing here is shared with pipelines/ except the configuration objects.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from pipelines.config import TargetSpec, TimeSpec


def prediction_time(
    event_time: pd.Timestamp, spec: TimeSpec, own: pd.Timestamp | None = None
) -> pd.Timestamp:
    """The event's own time (``own``, from ``column``), or the event time minus ``lead``, or ``days_before`` the
    event's local date at the local clock time ``at``, in UTC."""
    if spec.prediction_time.column is not None:
        return pd.Timestamp(own).tz_convert("UTC")
    if spec.prediction_time.lead is not None:
        return event_time - timedelta(seconds=spec.prediction_time.lead_seconds)
    zone = ZoneInfo(spec.timezone)
    local_date = event_time.to_pydatetime().astimezone(zone).date()
    hours, minutes = (int(x) for x in spec.prediction_time.at.split(":"))
    local = datetime.combine(
        local_date - timedelta(days=spec.prediction_time.days_before), time(hours, minutes), tzinfo=zone
    )
    return pd.Timestamp(local).tz_convert("UTC")


def label(has_outcome: bool, value: float | None, target: TargetSpec) -> float:
    """The label of one event: NaN without an outcome row; ``missing_outcome`` without a value."""
    if not has_outcome:
        return np.nan
    if value is None or pd.isna(value):
        return {"positive": 1.0, "negative": 0.0, "drop": np.nan}[target.missing_outcome]
    if target.kind == "positive_values":
        return 1.0 if value in (target.positive_values or []) else 0.0
    if target.kind == "boolean":
        return 1.0 if bool(value) else 0.0
    return 1.0 if value > target.threshold else 0.0


def _window_labels(
    history: pd.DataFrame, keys: list[str], key_values: tuple, at: pd.Timestamp, days: int
) -> list[float]:
    """Labels of the ``history`` rows (columns: keys, ``known_at``, ``label``) with these key values whose
    outcome became known in [at - days, at)."""
    return [
        row["label"]
        for _, row in history.iterrows()
        if tuple(row[k] for k in keys) == key_values
        and not pd.isna(row["label"])
        and not pd.isna(row["known_at"])
        and at - timedelta(days=days) <= row["known_at"] < at
    ]


def past_rate(
    history: pd.DataFrame, keys: list[str], key_values: tuple, at: pd.Timestamp, days: int
) -> float:
    """Mean 0/1 label of the outcomes with these key values known in [at - days, at)."""
    rows = _window_labels(history, keys, key_values, at, days)
    return float(np.mean(rows)) if rows else np.nan


def past_mean(
    history: pd.DataFrame, keys: list[str], key_values: tuple, at: pd.Timestamp, days: int
) -> tuple[float, int]:
    """Mean label and count of the outcomes with these key values known in [at - days, at)."""
    rows = _window_labels(history, keys, key_values, at, days)
    return (float(np.mean(rows)) if rows else np.nan), len(rows)


def asof(
    observations: pd.DataFrame,
    keys: list[str],
    key_values: tuple,
    time_column: str,
    at: pd.Timestamp,
    max_age: timedelta,
    column: str,
) -> float:
    """``column`` of the latest observation with these key values taken in [at - max_age, at] that had arrived
    by ``at`` (its ``_arrived_at``, when the frame has one; ties: the smallest value)."""
    best_time, best_values = None, []
    for _, row in observations.iterrows():
        if tuple(row[k] for k in keys) != key_values or pd.isna(row[time_column]):
            continue
        taken = row[time_column]
        if not at - max_age <= taken <= at:
            continue
        if "_arrived_at" in row and not pd.isna(row["_arrived_at"]) and row["_arrived_at"] > at:
            continue
        if best_time is None or taken > best_time:
            best_time, best_values = taken, [row[column]]
        elif taken == best_time:
            best_values.append(row[column])
    if best_time is None:
        return np.nan
    present = [v for v in best_values if not pd.isna(v)]
    return float(min(present)) if present else np.nan
