"""Point-in-time features on a use case that is not about flights, declared in a temporary config folder.

Parcels are due at a time (the event), predicted at 06:00 Berlin time on their due date, and their delivery
outcome (another source, joined on the parcel id) is known two hours after the due time. A depot's queue length
is a time series joined as of the prediction time. Real Spark, real Delta tables; the expected values come from
the slow pandas definitions in ``_pit_reference``.
"""

from __future__ import annotations

import argparse
import os
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import _pit_reference as ref
import numpy as np
import pandas as pd
import pytest
import yaml
from _features_fixtures import assert_online_reproduces_features, features_with_labels, typed

from pipelines.config import UseCase, load_profile, load_usecase
from pipelines.context import StepContext, StepFailed
from pipelines.features.spark import get_spark
from pipelines.lake import ARRIVED_AT, LATEST, Lake, raw_table
from pipelines.steps import features

pytestmark = pytest.mark.spark

BERLIN = ZoneInfo("Europe/Berlin")
USECASE = {
    "name": "parcel_late",
    "description": "Will a parcel be delivered after its due time?",
    "sources": {
        "parcels": {
            "file_pattern": "parcels_*.csv",
            "event_time": "due_at",
            "columns": {
                "parcel_id": {"type": "int", "required": True},
                "depot": {"type": "string", "required": True},
                "due_at": {"type": "timestamp", "required": True},
                "weight": {"type": "float"},
            },
        },
        "deliveries": {
            "file_pattern": "deliveries_*.csv",
            "event_time": "due_at",
            "columns": {
                "parcel_id": {"type": "int", "required": True},
                "due_at": {"type": "timestamp", "required": True},
                "hours_late": {"type": "float"},
            },
        },
        "depot_load": {
            "file_pattern": "depot_load_*.csv",
            "event_time": "observed_at",
            "columns": {
                "depot": {"type": "string", "required": True},
                "observed_at": {"type": "timestamp", "required": True},
                "queue": {"type": "float"},
            },
        },
    },
    "time": {
        "timezone": "Europe/Berlin",
        "event_time": "due_at",
        "prediction_time": {"days_before": 0, "at": "06:00"},
        "outcome": {"source": "deliveries", "keys": ["parcel_id"], "label_delay": "2h"},
    },
    "features": {
        "primary_source": "parcels",
        "keys": ["parcel_id"],
        "lookback_days": 4,
        "transforms": [
            {
                "name": "asof_join",
                "params": {
                    "source": "depot_load",
                    "keys": ["depot"],
                    "max_age": "90m",
                    "columns": {"queue": "depot_queue"},
                },
            },
            {"name": "past_rate", "params": {"keys": ["depot"], "days": 2, "output": "depot_late_rate_2d"}},
        ],
        "numeric": ["weight", "depot_queue", "depot_late_rate_2d"],
        "categorical": ["depot"],
    },
    "target": {
        "column": "is_late",
        "source_column": "hours_late",
        "threshold": 0,
        "missing_outcome": "negative",
    },
    "split": {"train_window_days": 4, "holdout_days": 1},
    "decision": {"rule": "fixed", "threshold": 0.5},  # no room for a validation window in 4 days
    "candidates": [{"name": "logreg", "family": "logistic_regression"}],
}


@pytest.fixture(scope="module")
def spark():
    return get_spark(load_profile())


@pytest.fixture
def parcels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlops_env: Path, spark) -> tuple[UseCase, Lake]:
    """The parcel use case in a temporary config folder (loaded as any use case is) and an empty lake."""
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    (config / "platform.yaml").write_text(
        (Path(__file__).parent.parent / "config" / "platform.yaml").read_text()
    )
    (config / "usecases" / "parcel_late.yaml").write_text(yaml.safe_dump(USECASE, sort_keys=False))
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(config))
    return load_usecase("parcel_late"), Lake(str(mlops_env / "lake"))


def berlin(day: date, clock: str) -> pd.Timestamp:
    hours, minutes = (int(x) for x in clock.split(":"))
    return pd.Timestamp(datetime(day.year, day.month, day.day, hours, minutes, tzinfo=BERLIN)).tz_convert(
        "UTC"
    )


def commit_by_local_date(lake: Lake, usecase: UseCase, source: str, frame: pd.DataFrame) -> None:
    """Raw partitions of ``source`` keyed by the Berlin date of each row's event time, as ingest commits them."""
    spec = usecase.sources[source]
    local_dates = frame[spec.event_time].dt.tz_convert(BERLIN).dt.date
    for day in sorted(set(local_dates)):
        rows = typed(frame[local_dates == day], spec, f"{source}_{day}.csv").assign(date=day.isoformat())
        lake.write_partitions(raw_table(usecase.name, source), rows, read_version=LATEST)


def build(lake: Lake, usecase: UseCase, day: date) -> pd.DataFrame:
    ctx = StepContext(usecase=usecase, day=day, profile=load_profile(), lake=lake)
    features.run(ctx, argparse.Namespace(start=None, rebuild=False))
    return features_with_labels(lake, usecase)


def expected_features(usecase: UseCase, parcels: pd.DataFrame, deliveries: pd.DataFrame, load: pd.DataFrame):
    """Every feature of every parcel, row by row, from the definitions."""
    target, time_spec = usecase.target, usecase.time
    delay = timedelta(seconds=time_spec.outcome.delay_seconds)
    outcome = {row.parcel_id: row.hours_late for row in deliveries.itertuples()}
    # an outcome is known once declared (due + label delay) and once its row and the parcel's row had arrived
    outcome_arrived = dict(zip(deliveries["parcel_id"], deliveries[ARRIVED_AT], strict=True))
    history = parcels.assign(
        label=[ref.label(p in outcome, outcome.get(p), target) for p in parcels["parcel_id"]],
    )
    history["known_at"] = [
        max(due + delay, outcome_arrived[pid], parcel_arrived) if not pd.isna(label) else pd.NaT
        for pid, due, label, parcel_arrived in zip(
            history["parcel_id"], history["due_at"], history["label"], history[ARRIVED_AT], strict=True
        )
    ]
    rows = []
    for row in history.itertuples():
        at = ref.prediction_time(row.due_at, time_spec, getattr(row, "ordered_at", None))
        rows.append(
            {
                "parcel_id": row.parcel_id,
                "prediction_time": at,
                "outcome_known_at": row.known_at,
                "is_late": row.label,
                "depot_queue": ref.asof(
                    load.rename(columns={ARRIVED_AT: "_arrived_at"}),
                    ["depot"],
                    (row.depot,),
                    "observed_at",
                    at,
                    timedelta(minutes=90),
                    "queue",
                ),
                "depot_late_rate_2d": ref.past_rate(history, ["depot"], (row.depot,), at, 2),
            }
        )
    return pd.DataFrame(rows).sort_values("parcel_id").reset_index(drop=True)


def random_parcels(seed: int, first: date, days: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parcels due at any minute of ``days`` Berlin days (a DST change inside), deliveries for most of them
    (some without a value), and depot queue observations at random minutes; each row with the time its file
    arrived: a parcel up to two days before it is due (some after their prediction time), a delivery up to 10
    hours after the due time (often later than the declared 2 hours), an observation up to an hour after it was
    taken."""
    rng = np.random.default_rng(seed)
    start = berlin(first, "00:00")
    minutes = days * 24 * 60
    n = 60 * days
    parcels = pd.DataFrame(
        {
            "parcel_id": np.arange(1, n + 1),
            "depot": rng.choice(["north", "south", "east"], n),
            "due_at": [start + timedelta(minutes=int(m)) for m in rng.integers(0, minutes, n)],
            "weight": rng.gamma(2.0, 2.0, n).round(2),
        }
    )
    parcels[ARRIVED_AT] = parcels["due_at"] - pd.to_timedelta(rng.integers(0, 48 * 60, n), unit="min")
    delivered = parcels.sample(frac=0.85, random_state=seed)
    hours_late = rng.normal(0, 3, len(delivered)).round(1)
    hours_late[rng.random(len(delivered)) < 0.1] = np.nan
    deliveries = pd.DataFrame(
        {
            "parcel_id": delivered["parcel_id"].to_numpy(),
            "due_at": delivered["due_at"].to_numpy(),
            "hours_late": hours_late,
        }
    )
    deliveries[ARRIVED_AT] = deliveries["due_at"] + pd.to_timedelta(
        rng.integers(0, 10 * 60, len(deliveries)), unit="min"
    )
    m = 25 * days
    load = pd.DataFrame(
        {
            "depot": rng.choice(["north", "south", "east"], m),
            "observed_at": [start + timedelta(minutes=int(x)) for x in rng.choice(minutes, m, replace=False)],
            "queue": rng.integers(0, 50, m).astype(float),
        }
    )
    load[ARRIVED_AT] = load["observed_at"] + pd.to_timedelta(rng.integers(0, 60, m), unit="min")
    return parcels, deliveries, load


def assert_matches(built: pd.DataFrame, expected: pd.DataFrame) -> None:
    built = built.sort_values("parcel_id").reset_index(drop=True)
    assert list(built["parcel_id"]) == list(expected["parcel_id"])
    for column in ("prediction_time", "outcome_known_at"):
        got = pd.to_datetime(built[column], utc=True)
        want = pd.to_datetime(expected[column], utc=True)
        assert ((got == want) | (got.isna() & want.isna())).all(), column
    for column in ("is_late", "depot_queue", "depot_late_rate_2d"):
        got, want = built[column].astype(float).to_numpy(), expected[column].astype(float).to_numpy()
        assert np.allclose(got, want, equal_nan=True), (
            column,
            built.loc[~np.isclose(got, want, equal_nan=True), ["parcel_id", column]].head(),
        )


@pytest.mark.parametrize("seed", [7, 2024])
def test_spark_features_equal_the_slow_pandas_definition_on_random_data(parcels, seed: int) -> None:
    """Property test: on random parcels over a daylight-saving change, with rows arriving at random times after
    (or, for parcels, before) their declared times, every feature Spark builds equals the pandas definition
    (prediction time, outcome time from the declared delay and the observed arrivals, label with missing
    outcomes, as-of join of what had arrived, past rate)."""
    usecase, lake = parcels
    first = date(2024, 3, 27)  # Berlin moves to summer time on 2024-03-31
    frames = random_parcels(seed, first, 7)
    for source, frame in zip(("parcels", "deliveries", "depot_load"), frames, strict=True):
        commit_by_local_date(lake, usecase, source, frame)

    built = build(lake, usecase, first + timedelta(days=7))  # the last minutes fall on the 8th day (DST)

    expected = expected_features(usecase, *frames)
    assert_matches(built, expected)
    # and the online function, from each day's parcels and its snapshot, gives the same model inputs
    assert assert_online_reproduces_features(lake, usecase, sorted(set(built["date"]))) == len(built)
    assert expected["depot_late_rate_2d"].notna().sum() > 100 and expected["depot_queue"].notna().sum() > 30
    assert expected["is_late"].isna().sum() > 0 and (expected["is_late"] == 0).sum() > 0


@pytest.mark.parametrize(
    "prediction_time",
    [{"lead": "3h"}, {"column": "ordered_at", "max_lead": "1d"}],
    ids=["at the event minus a lead", "from a column of the event"],
)
def test_a_prediction_time_per_event_from_a_lead_or_a_column(parcels, prediction_time: dict) -> None:
    """Every parcel predicted at its own time: three hours before it is due, or when it was ordered (a column,
    up to a day before). On random parcels over a daylight-saving change, every feature Spark builds equals the
    pandas definition at that parcel's own prediction time (outcomes known and observations arrived by then),
    not at a time shared by the day; an order time after the due time fails the step, naming the fix."""
    _, lake = parcels
    declared = {
        **USECASE,
        "sources": {
            **USECASE["sources"],
            "parcels": {
                **USECASE["sources"]["parcels"],
                "columns": {
                    **USECASE["sources"]["parcels"]["columns"],
                    "ordered_at": {"type": "timestamp", "required": True},
                },
            },
        },
        "time": {**USECASE["time"], "prediction_time": prediction_time},
    }
    path = Path(os.environ["MLOPS_CONFIG_DIR"]) / "usecases" / "parcel_late.yaml"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    usecase = load_usecase("parcel_late")
    assert usecase.time.prediction_time.per_event
    first = date(2024, 3, 27)  # Berlin moves to summer time on 2024-03-31
    parcels_frame, deliveries, load = random_parcels(5, first, 6)
    rng = np.random.default_rng(5)
    parcels_frame["ordered_at"] = parcels_frame["due_at"] - pd.to_timedelta(
        rng.integers(0, 24 * 60, len(parcels_frame)), unit="min"
    )
    for source, frame in (("parcels", parcels_frame), ("deliveries", deliveries), ("depot_load", load)):
        commit_by_local_date(lake, usecase, source, frame)

    built = build(lake, usecase, first + timedelta(days=8))

    expected = expected_features(usecase, parcels_frame, deliveries, load)
    assert_matches(built, expected)
    times = pd.to_datetime(built.sort_values("parcel_id")["prediction_time"], utc=True)
    assert times.nunique() > len(set(built["date"])) * 10, "a time per parcel, not one per day"
    if "column" in prediction_time:
        assert (
            times.to_numpy()
            == pd.to_datetime(parcels_frame.sort_values("parcel_id")["ordered_at"]).to_numpy()
        ).all()
    else:
        due = pd.to_datetime(built.sort_values("parcel_id")["due_at"], utc=True)
        assert (due - times == timedelta(hours=3)).all()
    assert expected["depot_late_rate_2d"].notna().sum() > 50 and expected["depot_queue"].notna().sum() > 10

    if "column" in prediction_time:  # an order time after the due time is refused, not used
        bad = parcels_frame.iloc[:1].assign(
            parcel_id=10_000, ordered_at=parcels_frame["due_at"].iloc[0] + timedelta(minutes=5)
        )
        commit_by_local_date(lake, usecase, "parcels", pd.concat([parcels_frame, bad], ignore_index=True))
        with pytest.raises(StepFailed, match=r"1 event\(s\).*ordered_at.*max_lead"):
            build(lake, usecase, first + timedelta(days=8))


def test_nothing_known_one_minute_after_the_prediction_time_is_used(parcels) -> None:
    """Outcomes count only when known strictly before the prediction time and at most 2 days before it;
    observations are used at or before it and at most 90 minutes before it. Each boundary has a row one
    minute on either side, so moving any cutoff by one minute changes a value this test checks."""
    usecase, lake = parcels
    day = date(2024, 3, 5)
    at = berlin(day, "06:00")  # prediction time of every parcel due on `day`
    two_hours = timedelta(hours=2)
    minute = timedelta(minutes=1)

    def parcel(pid: int, depot: str, known_at: pd.Timestamp) -> dict:
        return {"parcel_id": pid, "depot": depot, "due_at": known_at - two_hours, "weight": 1.0}

    history = [  # (parcel, depot, outcome known at, hours late)
        (10, "north", at - minute, 0.0),  # known one minute before: counted (on time)
        (11, "north", at, 5.0),  # known exactly at the prediction time: not counted
        (12, "north", at + minute, 5.0),  # known one minute after: not counted
        (13, "north", at - timedelta(days=2), 5.0),  # exactly 2 days before: counted (late)
        (14, "north", at - timedelta(days=2) - minute, 5.0),  # one minute older: not counted
    ]
    queries = [
        {"parcel_id": 1, "depot": "north", "due_at": berlin(day, "10:00"), "weight": 2.0},
        {"parcel_id": 2, "depot": "south", "due_at": berlin(day, "11:00"), "weight": 2.0},
        {"parcel_id": 3, "depot": "east", "due_at": berlin(day, "12:00"), "weight": 2.0},
    ]
    rows = pd.DataFrame([parcel(p, d, k) for p, d, k, _ in history] + queries)
    deliveries = pd.DataFrame(
        [{"parcel_id": p, "due_at": k - two_hours, "hours_late": late} for p, _, k, late in history]
        + [{"parcel_id": 2, "due_at": queries[1]["due_at"], "hours_late": None}]  # delivered, no value
    )
    load = pd.DataFrame(
        [
            {"depot": "north", "observed_at": at - timedelta(minutes=30), "queue": 3.0},
            {"depot": "north", "observed_at": at, "queue": 7.0},  # at the prediction time: used
            {"depot": "north", "observed_at": at + minute, "queue": 99.0},  # one minute after: never
            {"depot": "south", "observed_at": at - timedelta(minutes=90), "queue": 4.0},  # oldest allowed
            {"depot": "east", "observed_at": at - timedelta(minutes=91), "queue": 5.0},  # one minute too old
        ]
    )
    for source, frame in (("parcels", rows), ("deliveries", deliveries), ("depot_load", load)):
        commit_by_local_date(lake, usecase, source, frame)

    built = build(lake, usecase, day).set_index("parcel_id")

    assert built.loc[1, "depot_late_rate_2d"] == pytest.approx(0.5), "parcels 10 and 13 only"
    assert built.loc[1, "depot_queue"] == 7.0
    assert built.loc[2, "depot_queue"] == 4.0
    assert pd.isna(built.loc[3, "depot_queue"])
    assert pd.isna(built.loc[1, "is_late"]) and pd.isna(built.loc[1, "outcome_known_at"]), "no outcome yet"
    assert built.loc[2, "is_late"] == 0, "missing_outcome: negative"
    assert built.loc[10, "is_late"] == 0 and built.loc[12, "is_late"] == 1
    assert pd.Timestamp(built.loc[1, "prediction_time"]).tz_convert("UTC") == at
    assert pd.Timestamp(built.loc[12, "outcome_known_at"]).tz_convert("UTC") == at + minute


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (  # a label given as values of a string column ("late" or "lost" is positive)
            {"source_column": "status", "kind": "positive_values", "positive_values": ["late", "lost"]},
            {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0},
        ),
        ({"source_column": "was_late", "kind": "boolean"}, {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}),  # a bool column
    ],
)
def test_labels_from_positive_values_or_a_boolean(parcels, target: dict, expected: dict) -> None:
    """Binary labels without a threshold: from the values meaning positive, or from a bool column. An outcome
    row without a value gets ``missing_outcome`` (negative here); an event without an outcome row no label."""
    _, lake = parcels
    declared = {
        **USECASE,
        "sources": {
            **USECASE["sources"],
            "deliveries": {
                **USECASE["sources"]["deliveries"],
                "columns": {
                    **USECASE["sources"]["deliveries"]["columns"],
                    "status": {"type": "string"},
                    "was_late": {"type": "bool"},
                },
            },
        },
        "target": {"column": "is_late", "missing_outcome": "negative", **target},
    }
    path = Path(os.environ["MLOPS_CONFIG_DIR"]) / "usecases" / "parcel_late.yaml"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    usecase = load_usecase("parcel_late")
    assert usecase.target.kind == target["kind"], "the edited file is read again"
    day = date(2024, 3, 5)
    due = [berlin(day, f"{9 + p}:00") for p in range(1, 6)]
    parcels_frame = pd.DataFrame(
        {"parcel_id": range(1, 6), "depot": "north", "due_at": due, "weight": 1.0},
    )
    deliveries = pd.DataFrame(  # parcel 5 has no outcome yet
        {
            "parcel_id": [1, 2, 3, 4],
            "due_at": due[:4],
            "hours_late": [1.0, -1.0, 0.0, None],
            "status": ["late", "on_time", "lost", None],
            "was_late": [True, True, False, None],  # none of the three columns agree on parcels 2 and 3
        }
    )
    load = pd.DataFrame({"depot": ["north"], "observed_at": [berlin(day, "05:00")], "queue": [1.0]})
    for source, frame in (("parcels", parcels_frame), ("deliveries", deliveries), ("depot_load", load)):
        commit_by_local_date(lake, usecase, source, frame)

    built = build(lake, usecase, day + timedelta(days=1)).set_index("parcel_id")

    assert {p: built.loc[p, "is_late"] for p in expected} == expected
    assert pd.isna(built.loc[5, "is_late"]), "no outcome row yet: no label"
    assert [ref.label(True, v, usecase.target) for v in deliveries[target["source_column"]][:3]] == [
        expected[1],
        expected[2],
        expected[3],
    ]


def test_a_row_counts_only_once_it_has_arrived(parcels) -> None:
    """Declared times are a lower bound: an outcome known by its declared time whose file arrived one minute
    after the prediction time is not counted, one that arrived one minute before is; an observation taken in
    time whose file arrived one minute late is not used, one that arrived exactly at the prediction time is. The
    outcome's known time is its arrival when that is later than declared. Rows without a recorded arrival (an
    older raw table) keep the declared times."""
    usecase, lake = parcels
    day = date(2024, 3, 5)
    at = berlin(day, "06:00")
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    due = at - 5 * hour  # outcomes declared known 3 hours before the prediction time
    queries = [
        {"parcel_id": 1, "depot": "north", "due_at": berlin(day, "10:00"), "weight": 2.0},
        {"parcel_id": 2, "depot": "south", "due_at": berlin(day, "11:00"), "weight": 2.0},
    ]
    history = [{"parcel_id": p, "depot": "north", "due_at": due, "weight": 1.0} for p in (10, 11, 12, 13)]
    rows = pd.DataFrame(history + queries).assign(**{ARRIVED_AT: at - timedelta(days=1)})
    outcomes = [  # (parcel, hours late, arrived at)
        (10, 5.0, at - 4 * hour),  # arrived before its declared time: known when declared, counted
        (13, 0.0, at - minute),  # arrived later than declared, before the prediction time: counted
        (11, 5.0, at + minute),  # arrived one minute after the prediction time: not counted
        (12, 5.0, at + 3 * hour),
    ]
    deliveries = pd.DataFrame(
        [{"parcel_id": p, "due_at": due, "hours_late": late, ARRIVED_AT: came} for p, late, came in outcomes]
    )
    load = pd.DataFrame(
        [
            {"depot": "north", "observed_at": at - 60 * minute, "queue": 3.0, ARRIVED_AT: at},  # used
            {"depot": "north", "observed_at": at - 30 * minute, "queue": 9.0, ARRIVED_AT: at + minute},
            {
                "depot": "south",
                "observed_at": at - 20 * minute,
                "queue": 4.0,
                ARRIVED_AT: pd.NaT,
            },  # unrecorded
        ]
    )
    for source, frame in (("parcels", rows), ("deliveries", deliveries), ("depot_load", load)):
        commit_by_local_date(lake, usecase, source, frame)

    built = build(lake, usecase, day).set_index("parcel_id")

    assert built.loc[1, "depot_late_rate_2d"] == 0.5, "parcels 10 and 13: 11 and 12 arrived after 06:00"
    assert built.loc[1, "depot_queue"] == 3.0, "the 05:30 observation arrived at 06:01"
    assert built.loc[2, "depot_queue"] == 4.0, "no recorded arrival: the observation time decides"
    known = pd.to_datetime(built["outcome_known_at"], utc=True)
    assert known[10] == due + 2 * hour, "declared (due + 2 h) is later than its arrival"
    assert known[13] == at - minute, "arrived later than declared, before the prediction time"
    assert known[11] == at + minute and known[12] == at + 3 * hour, "arrived after the prediction time"


def test_a_regression_gets_the_past_mean_and_count_of_its_label(parcels) -> None:
    """A regression (hours late as the label) has no positives to count: ``past_mean`` gives the mean of the labels
    known (declared and arrived) in the window and, with ``count_output``, how many there were (0 without). Spark
    equals the pandas definition on random data, and the online function reproduces it from the snapshot."""
    _, lake = parcels
    declared = {
        **{k: v for k, v in USECASE.items() if k != "decision"},  # a regression makes no yes/no decision
        "target": {"column": "hours_late_label", "source_column": "hours_late", "kind": "regression"},
        "features": {
            **USECASE["features"],
            "transforms": [
                USECASE["features"]["transforms"][0],
                {
                    "name": "past_mean",
                    "params": {
                        "keys": ["depot"],
                        "days": 2,
                        "output": "depot_mean_late_2d",
                        "count_output": "depot_outcomes_2d",
                    },
                },
            ],
            "numeric": ["weight", "depot_queue", "depot_mean_late_2d", "depot_outcomes_2d"],
        },
        "candidates": [{"name": "ridge", "family": "ridge"}],
        "metrics": ["mae", "rmse"],
        "gate": {
            "primary_metric": "mae",
            "absolute": {"mae": {"max": 10}},
            "change": {"mae": {"min_delta": 0.1}},
        },
    }
    path = Path(os.environ["MLOPS_CONFIG_DIR"]) / "usecases" / "parcel_late.yaml"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    usecase = load_usecase("parcel_late")
    assert usecase.task == "regression"
    first = date(2024, 3, 27)
    parcels_frame, deliveries, load = random_parcels(11, first, 5)
    for source, frame in (("parcels", parcels_frame), ("deliveries", deliveries), ("depot_load", load)):
        commit_by_local_date(lake, usecase, source, frame)

    built = build(lake, usecase, first + timedelta(days=5)).sort_values("parcel_id").reset_index(drop=True)

    delay = timedelta(seconds=usecase.time.outcome.delay_seconds)
    late = dict(zip(deliveries["parcel_id"], deliveries["hours_late"], strict=True))
    arrived = dict(zip(deliveries["parcel_id"], deliveries[ARRIVED_AT], strict=True))
    history = parcels_frame.assign(label=[late.get(p, np.nan) for p in parcels_frame["parcel_id"]])
    history["known_at"] = [
        max(due + delay, arrived[pid], own) if not pd.isna(label) else pd.NaT
        for pid, due, label, own in zip(
            history["parcel_id"], history["due_at"], history["label"], history[ARRIVED_AT], strict=True
        )
    ]
    expected = {
        row.parcel_id: ref.past_mean(
            history, ["depot"], (row.depot,), ref.prediction_time(row.due_at, usecase.time), 2
        )
        for row in parcels_frame.itertuples()
    }
    got_mean = built["depot_mean_late_2d"].astype(float).to_numpy()
    want_mean = np.array([expected[p][0] for p in built["parcel_id"]])
    assert np.allclose(got_mean, want_mean, equal_nan=True)
    assert built["depot_outcomes_2d"].tolist() == [float(expected[p][1]) for p in built["parcel_id"]]
    assert np.isfinite(want_mean).sum() > 50 and (built["depot_outcomes_2d"] == 0).any()
    assert built["hours_late_label"].dropna().between(-20, 20).all(), "the label is the value itself"
    assert assert_online_reproduces_features(lake, usecase, sorted(set(built["date"]))) == len(built)
