"""When rows arrived against when the use case declares them known: what ingest reports per run and
``mlops validate --against-lake`` reports over the lake.

Features never use this to decide: they use each row's recorded arrival (``_arrived_at``) and the declared time,
whichever is later. These summaries are how a declared delay that understates reality gets noticed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pipelines.config import UseCase

if TYPE_CHECKING:
    import pandas as pd


def declared_known_at(usecase: UseCase, source: str, rows: pd.DataFrame) -> tuple[str, pd.Series] | None:
    """When the use case declares the rows of ``source`` known, as (description, UTC times per row): an outcome
    at its event time plus ``time.outcome.label_delay``, an event of the primary source by its prediction time.
    None for other sources (an observation is known when taken; a reference has no time)."""
    import pandas as pd

    time = usecase.time
    column = usecase.sources[source].event_time
    if column is None or column not in rows:
        return None
    events = rows[column]
    if source == usecase.outcome_source:
        delay = pd.Timedelta(seconds=time.outcome.delay_seconds)
        return f"{column} + {time.outcome.label_delay}", events + delay
    if source == usecase.features.primary_source:
        prediction = time.prediction_time
        if prediction.column is not None:
            if prediction.column not in rows:
                return None
            return f"its prediction time ({prediction.column})", pd.to_datetime(
                rows[prediction.column], utc=True
            )
        if prediction.lead is not None:
            return f"its prediction time ({column} - {prediction.lead})", events - pd.Timedelta(
                seconds=prediction.lead_seconds
            )
        local_dates = events.dt.tz_convert(time.timezone).dt.date
        times = {d: pd.Timestamp(time.prediction_time_of(d)) for d in local_dates.dropna().unique()}
        return "its prediction time", pd.to_datetime(local_dates.map(times), utc=True)
    return None


def arrival_summary(usecase: UseCase, source: str, rows: pd.DataFrame, arrived: pd.Series) -> dict[str, Any]:
    """Rows with a recorded arrival (``arrived``, UTC, aligned with ``rows``): the lag of arrival after the
    event time (median and 95th percentile, hours) and, where the use case declares a time, how many rows
    arrived later than it and by how much at most."""
    import pandas as pd

    arrived = pd.to_datetime(arrived, utc=True)
    recorded = arrived.notna()
    rows, arrived = rows[recorded.to_numpy()], arrived[recorded]
    summary: dict[str, Any] = {"rows_with_arrival": int(recorded.sum())}
    if rows.empty:
        return summary
    column = usecase.sources[source].event_time
    if column is not None:
        lag_hours = (arrived - rows[column]).dt.total_seconds() / 3600
        summary["median_lag_hours"] = round(float(lag_hours.median()), 2)
        summary["p95_lag_hours"] = round(float(lag_hours.quantile(0.95)), 2)
    declared = declared_known_at(usecase, source, rows)
    if declared is not None:
        description, known = declared
        later = (arrived - known).dt.total_seconds() / 3600
        late = later > 0
        summary["declared"] = description
        summary["rows_later_than_declared"] = int(late.sum())
        summary["max_hours_later_than_declared"] = round(float(later[late].max()), 2) if late.any() else 0.0
    return summary


def understated_delays(usecase: UseCase, summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-words notes where the lake shows rows arriving later than declared (``summaries``: per source, as
    :func:`arrival_summary` gives them for the rows in the lake)."""
    notes = []
    for source, summary in summaries.items():
        late = summary.get("rows_later_than_declared", 0)
        if not late:
            continue
        share = late / summary["rows_with_arrival"]
        text = (
            f"{source}: {late} of {summary['rows_with_arrival']} row(s) ({share:.0%}) arrived later than declared "
            f"({summary['declared']}), up to {summary['max_hours_later_than_declared']} h later"
        )
        if source == usecase.outcome_source and "p95_lag_hours" in summary:
            hours = math.ceil(summary["p95_lag_hours"])
            text += (
                f"; time.outcome.label_delay {usecase.time.outcome.label_delay} understates it: {hours}h covers "
                "95% of the outcomes (features use each row's arrival either way)"
            )
        elif source == usecase.features.primary_source:
            text += ": those events could not be scored ahead of their prediction time"
        notes.append(text)
    return notes
