"""When a day is scored, from recorded facts: a score run is due at the prediction time, waits a grace for the
features of the day it predicts, and marks what it scores after a prediction time as late.

The score run of date D predicts the events of E = ``time.predicted_through(D)``; it is due at E's prediction
time P and waits for E's features and online snapshot until P + ``schedules.score_grace``. A features partition
records when its events arrived (:data:`EVENTS_ARRIVED_AT`, the latest arrival of the primary source's files of
E), so "were E's features there by the deadline?" is a fact of the lake, the same in a run at the time and in a
replay years later. Past the deadline the run fails naming the day; the next run that finds the day scores it,
and every prediction carries ``scored_at`` (the time of the run that made it) and ``scored_late``
(``scored_at`` after its prediction time). Metrics of predictions made ahead leave the late ones out.

:func:`scoring_plan` is the one rule for which run scores which day: a live run applies it to itself; a replay
of history (the demo's monthly batch) applies it to every run the schedule would have made, so its predictions
equal a day-by-day run's. The wall clock appears only in :func:`readiness`, given by the Airflow sensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import PREDICTION_TIME, UseCase

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.lake import PartitionInfo

EVENTS_ARRIVED_AT = (
    "events_arrived_at"  # features/online partition fact: when the day's events had all arrived
)
SCORED_AT = "scored_at"  # prediction column: the time of the run that made it
SCORED_LATE = "scored_late"  # prediction column: made after its prediction time


def events_arrived_at(facts: Mapping[str, Any]) -> datetime | None:
    """When the events of a features partition had all arrived (its facts); None: not recorded (history
    landed with declared times, or a partition built before arrivals were recorded), which counts as on time."""
    value = facts.get(EVENTS_ARRIVED_AT)
    return None if value is None else datetime.fromisoformat(value)


def grace(usecase: UseCase) -> timedelta:
    return timedelta(seconds=usecase.schedules.score_grace_seconds)


def due_at(usecase: UseCase, run_day: date) -> datetime:
    """When the score run of ``run_day`` is due: the prediction time of the events it predicts."""
    return usecase.time.prediction_time_of(usecase.time.predicted_through(run_day))


@dataclass(frozen=True)
class Readiness:
    """Whether the score run of a date may start: ``ready``; else ``failure`` says why it must fail now, or
    neither (keep waiting until ``deadline``)."""

    day: str
    due: datetime
    deadline: datetime
    ready: bool
    failure: str | None = None


def readiness(
    usecase: UseCase, partitions: Mapping[str, PartitionInfo], run_day: date, now: datetime, missing: str = ""
) -> Readiness:
    """Can the score run of ``run_day`` start at wall-clock ``now``, given the online snapshot's partitions?
    Ready when the predicted day's snapshot is there, its events arrived by the deadline and its prediction time
    has come (a replay of history is long past it). ``missing`` adds what the lake lacks to a failure."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(usecase.time.timezone)

    def local(moment: datetime) -> str:  # as the use case's people read a clock
        return f"{moment.astimezone(zone):%Y-%m-%d %H:%M %Z}"

    day = usecase.time.predicted_through(run_day)
    due = usecase.time.prediction_time_of(day)
    deadline = due + grace(usecase)
    where = f"the score run of {run_day} (events of {day}, prediction time {local(due)})"
    partition = partitions.get(day.isoformat())
    if partition is not None:
        arrived = events_arrived_at(partition.facts)
        if arrived is not None and arrived > deadline:
            return Readiness(
                day.isoformat(),
                due,
                deadline,
                False,
                f"{where}: the events of {day} arrived at {local(arrived)}, after the deadline "
                f"{local(deadline)} (prediction time + schedules.score_grace "
                f"{usecase.schedules.score_grace}); the next score run scores them, marked late",
            )
        return Readiness(day.isoformat(), due, deadline, now >= due)
    if now >= deadline:
        return Readiness(
            day.isoformat(),
            due,
            deadline,
            False,
            f"{where}: no features or online snapshot of {day} by the deadline {local(deadline)} "
            f"(prediction time + schedules.score_grace {usecase.schedules.score_grace}); {missing or 'nothing'} "
            f"is missing. Once its files land and the features are built, the next score run scores {day}, "
            "marked late",
        )
    return Readiness(day.isoformat(), due, deadline, False)


def scoring_plan(
    usecase: UseCase,
    available: Mapping[str, datetime | None],
    runs: list[tuple[date, datetime]],
    already: set[str],
    not_before: date | None,
    own_day_required: bool,
) -> dict[str, datetime]:
    """Which event dates each score run scores, and at what time: ``{event date: scored_at}``.

    ``available``: every event date with features, to when its events had arrived (None: on time).
    ``runs``: (run date D, the run's time) in order. A run scores the dates of its catch-up window
    (``schedules.score_catch_up_days`` up to the date it predicts) that are not scored yet, were available by its
    time + grace, and were predicted on or after the model's training date ``not_before``. With
    ``own_day_required`` (a replayed run, which has no sensor), a run whose own day was not available by its
    deadline fails and scores nothing, as its sensor would have made it."""
    allowance = grace(usecase)
    days_before = timedelta(days=usecase.time.prediction_time.day_offset)
    catch_up = timedelta(days=usecase.schedules.score_catch_up_days)
    planned: dict[str, datetime] = {}

    def on_time(day: str, by: datetime) -> bool:
        arrived = available[day]
        return arrived is None or arrived <= by

    for run_day, at in runs:
        last = usecase.time.predicted_through(run_day)
        cutoff = at + allowance
        if own_day_required and not (last.isoformat() in available and on_time(last.isoformat(), cutoff)):
            continue
        first = last - catch_up
        if not_before is not None:
            first = max(first, not_before + days_before - timedelta(days=1))
        for day in sorted(available):
            try:
                when = date.fromisoformat(day)
            except ValueError:
                continue
            if first < when <= last and day not in already and day not in planned and on_time(day, cutoff):
                planned[day] = at
    return planned


def replayed_runs(usecase: UseCase, run_day: date, not_before: date | None) -> list[tuple[date, datetime]]:
    """The score runs the schedule made up to ``run_day`` within its catch-up window, each at its due time;
    none before the model's training date (an earlier run scored with an earlier champion)."""
    first = run_day - timedelta(days=usecase.schedules.score_catch_up_days - 1)
    if not_before is not None:
        first = max(first, not_before)
    days = [first + timedelta(days=k) for k in range((run_day - first).days + 1)]
    return [(day, due_at(usecase, day)) for day in days]


def made_ahead(frame: pd.DataFrame) -> pd.Series:
    """The predictions made ahead: not late (predictions from before ``scored_at`` was recorded count as on
    time), and before their outcome was known where that is joined."""
    import pandas as pd

    from pipelines.config import OUTCOME_KNOWN_AT

    ahead = pd.Series(True, index=frame.index)
    if SCORED_LATE in frame.columns:
        ahead &= ~frame[SCORED_LATE].fillna(False).astype(bool)
    if OUTCOME_KNOWN_AT in frame.columns:
        ahead &= pd.to_datetime(frame[PREDICTION_TIME], utc=True) < pd.to_datetime(
            frame[OUTCOME_KNOWN_AT], utc=True
        )
    return ahead
