"""When a day is scored (pipelines.features.scoring_time): the score run's readiness against its deadline, and the one rule
that says which run scores which day, so a replay of the schedule from recorded arrivals makes exactly the
predictions (and `scored_at`) of the runs made day by day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from pipelines.config import load_usecase
from pipelines.features.scoring_time import SCORED_LATE, made_ahead, readiness, replayed_runs, scoring_plan
from pipelines.lake import PartitionInfo

USECASE = load_usecase("flight_delay")  # predicted at 18:00 New York the evening before; grace 30 minutes
TIME = USECASE.time


def _partition(arrived: datetime | None) -> PartitionInfo:
    facts = {"events_arrived_at": None if arrived is None else arrived.isoformat()}
    return PartitionInfo(table="features_online/flight_delay", date="-", rows=1, files=(), facts=facts)


def _evening(day: date, hour: int = 18, minute: int = 0) -> datetime:
    return TIME.prediction_time_of(day + timedelta(days=1)) + timedelta(hours=hour - 18, minutes=minute)


def test_a_run_is_ready_waits_or_fails_naming_the_day() -> None:
    run = date(2013, 1, 4)
    on_time = {"2013-01-05": _partition(_evening(run, 12))}
    late = {"2013-01-05": _partition(_evening(run, 19))}
    assert readiness(USECASE, on_time, run, _evening(run, 18, 1)).ready
    waiting = readiness(USECASE, on_time, run, _evening(run, 17))  # before its prediction time: not yet
    assert not waiting.ready and waiting.failure is None
    state = readiness(USECASE, {}, run, _evening(run, 18, 10))  # within the grace: wait
    assert not state.ready and state.failure is None and state.deadline == _evening(run, 18, 30)
    missed = readiness(USECASE, {}, run, _evening(run, 18, 31), "every 'flights' file of 2013-01-05")
    assert not missed.ready and "2013-01-05" in missed.failure and "'flights' file" in missed.failure
    arrived_late = readiness(USECASE, late, run, datetime(2026, 1, 1, tzinfo=UTC))  # a replay, years later
    assert not arrived_late.ready and "arrived at 2013-01-04 19:00 EST" in arrived_late.failure
    assert readiness(USECASE, {"2013-01-05": _partition(None)}, run, datetime(2026, 1, 1, tzinfo=UTC)).ready


def test_a_replay_of_the_schedule_scores_what_the_runs_day_by_day_scored() -> None:
    """Days 3-10 January; the events of the 6th arrive at 19:00 on the 5th (past the grace), the 8th's never.
    Day by day, each evening's run scores what it finds (its sensor fails on the 5th and the 7th); replayed in
    one go, the same dates get the same times."""
    arrivals = {date(2013, 1, d): _evening(date(2013, 1, d - 1), 12) for d in range(3, 11) if d != 8}
    arrivals[date(2013, 1, 6)] = _evening(date(2013, 1, 5), 19)
    trained = date(2013, 1, 2)

    def available_at(moment: datetime) -> dict[str, datetime | None]:
        return {d.isoformat(): t for d, t in arrivals.items() if t <= moment}

    scored: dict[str, datetime] = {}
    states = {}
    for run in [date(2013, 1, d) for d in range(2, 10)]:
        at = _evening(run)
        partitions = {d: _partition(t) for d, t in available_at(at + timedelta(minutes=30)).items()}
        state = readiness(USECASE, partitions, run, datetime(2026, 1, 1, tzinfo=UTC))
        states[run.day] = "success" if state.ready else "failed"
        if state.ready:
            scored |= scoring_plan(
                USECASE, available_at(at + timedelta(minutes=30)), [(run, at)], set(scored), trained, False
            )
    assert states == {
        2: "success",
        3: "success",
        4: "success",
        5: "failed",
        6: "success",
        7: "failed",
        8: "success",
        9: "success",
    }
    assert scored["2013-01-06"] == _evening(date(2013, 1, 6)), "scored late, by the next evening's run"
    assert "2013-01-08" not in scored

    replayed = scoring_plan(
        USECASE,
        {d.isoformat(): t for d, t in arrivals.items()},
        replayed_runs(USECASE, date(2013, 1, 9), trained),
        set(),
        trained,
        own_day_required=True,
    )
    assert replayed == scored
    # a rerun of the replay scores nothing twice
    assert (
        scoring_plan(
            USECASE,
            available_at(_evening(date(2013, 1, 9))),
            replayed_runs(USECASE, date(2013, 1, 9), trained),
            set(replayed),
            trained,
            True,
        )
        == {}
    )


def test_a_model_scores_no_day_predicted_before_its_training_date() -> None:
    available = {f"2013-01-{d:02d}": None for d in range(1, 11)}
    plan = scoring_plan(
        USECASE, available, [(date(2013, 1, 9), _evening(date(2013, 1, 9)))], set(), date(2013, 1, 6), False
    )
    assert sorted(plan) == [f"2013-01-{d:02d}" for d in range(7, 11)]
    assert replayed_runs(USECASE, date(2013, 1, 9), date(2013, 1, 6))[0][0] == date(2013, 1, 6)


def test_metrics_of_predictions_made_ahead_leave_late_ones_out() -> None:
    frame = pd.DataFrame(
        {
            "prediction_time": pd.to_datetime(["2013-01-01T23:00Z"] * 3, utc=True),
            "outcome_known_at": pd.to_datetime(
                ["2013-01-03T11:00Z", "2013-01-03T11:00Z", "2013-01-01T22:00Z"], utc=True
            ),
            SCORED_LATE: [False, True, False],
        }
    )
    assert made_ahead(frame).tolist() == [True, False, False]
    assert made_ahead(frame.drop(columns=[SCORED_LATE])).tolist() == [True, True, False]


@pytest.mark.parametrize("grace", ["30m", "2h"])
def test_the_grace_moves_the_deadline(grace: str) -> None:
    usecase = USECASE.model_copy(
        update={"schedules": USECASE.schedules.model_copy(update={"score_grace": grace})}
    )
    run = date(2013, 1, 4)
    state = readiness(usecase, {}, run, _evening(run, 18, 45))
    assert (state.failure is None) == (grace == "2h")
