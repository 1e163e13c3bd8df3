"""Time as observed: ten days of the demo's files land when they would have arrived (the schedule at noon the day
before, the weather every three hours, ten minutes after its last observation, the outcomes the next morning), once day by day
through the DAGs (each landing's ingest, the evening's features) and once batched as the demo lands a month. The
features a day had when it was predicted are the features training reads later (the very partition: files landing
after its prediction, outcomes included, write labels and never rebuild it), and the batched replay builds
exactly what the day-by-day run built, features and labels. Real Airflow (dag.test), real Spark, real Delta
tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_airflow.demo import AirflowRunner, DemoData, _local
from pipelines.config import load_usecase
from pipelines.lake import Lake, features_table, labels_table, online_table, raw_table
from pipelines.steps.ingest import land_file
from pipelines.tracking import feature_columns

pytestmark = pytest.mark.spark

USECASE = "flight_delay"
# the demo's first day: its schedule lands on 2012-12-31, before the DAGs' start date, so it is predicted late; the
# ten days after it are each predicted on the evening before
FIRST, DAYS = date(2013, 1, 1), 11
# when the day-by-day run ingests (New York clock): after the outcomes' and the schedule's arrival, and just
# before the evening's features at the prediction time (18:00)
INGEST_CLOCKS = ("06:15", "12:15", "17:55")


@pytest.fixture(scope="module")
def demo_files():
    usecase = load_usecase(USECASE)
    data = DemoData.load(usecase)
    days = [FIRST + timedelta(days=k) for k in range(DAYS)]
    deliveries = [item for day in days for item in data.day_deliveries(day, usecase.time.timezone)]
    return usecase, sorted(deliveries, key=lambda item: (item.arrived_at, item.name))


def _use_lake(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Lake:
    monkeypatch.setenv("MLOPS_LAKE_URI", str(folder))
    return Lake(str(folder))


def _land(lake: Lake, items) -> None:
    for item in items:
        land_file(lake, USECASE, item.day, item.name, item.content, item.arrived_at)


def _model_inputs(frame: pd.DataFrame, usecase) -> pd.DataFrame:
    keys = usecase.features.keys
    columns = list(dict.fromkeys([*keys, "prediction_time", *feature_columns(usecase)]))
    return frame[columns].sort_values(keys).reset_index(drop=True)


def _snapshot(lake: Lake, usecase, day: str) -> pd.DataFrame:
    rows = lake.read_frame(online_table(usecase.name), [day])
    return rows.sort_values(["lookup", "key"]).reset_index(drop=True)


def test_day_by_day_and_batched_replays_build_the_same_features(
    demo_files, airflow_db, mlops_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usecase, deliveries = demo_files
    timezone = usecase.time.timezone
    runner = AirflowRunner(USECASE, mlops_env / "airflow.log")

    # 1. day by day: every landing's ingest, then the evening's features; what each evening built for the day it
    #    predicts is kept as scoring saw it
    lake = _use_lake(monkeypatch, mlops_env / "day-by-day")
    pending = list(deliveries)
    at_prediction: dict[str, pd.DataFrame] = {}
    snapshot_at_prediction: dict[str, pd.DataFrame] = {}
    partition_at_prediction = {}
    labelled_at_prediction: dict[str, bool] = {}
    evenings = [FIRST + timedelta(days=k) for k in range(DAYS)]
    for evening in evenings:
        for clock in INGEST_CLOCKS:
            moment = _local(evening, clock, timezone)
            arrived = [item for item in pending if item.arrived_at <= moment]
            pending = [item for item in pending if item.arrived_at > moment]
            _land(lake, arrived)
            if arrived:
                assert runner.run("ingest", moment).state == "success", clock
        predicted = (evening + timedelta(days=1)).isoformat()
        assert runner.run("features", _local(evening, "18:00", timezone)).state == "success", evening
        if predicted in lake.partitions(features_table(USECASE)):  # the last evening predicts no landed day
            at_prediction[predicted] = lake.read_frame(features_table(USECASE), [predicted])
            snapshot_at_prediction[predicted] = _snapshot(lake, usecase, predicted)
            partition_at_prediction[predicted] = lake.partitions(features_table(USECASE))[predicted]
            labelled_at_prediction[predicted] = predicted in lake.partitions(labels_table(USECASE))
    morning = _local(evenings[-1] + timedelta(days=1), INGEST_CLOCKS[0], timezone)  # the last outcomes land
    assert f"outcomes_{evenings[-1]}.csv" in {item.name for item in pending}
    _land(lake, pending)
    assert all(item.arrived_at <= morning for item in pending)
    assert runner.run("ingest", morning).state == "success"
    assert runner.run("features", morning).state == "success"
    assert sorted(at_prediction) == [(FIRST + timedelta(days=k)).isoformat() for k in range(1, DAYS)]
    final = lake.read_frame(features_table(USECASE))

    # what scoring had is what training reads: every model input of every event, zero differences
    for day, scored in at_prediction.items():
        later = final[final["date"] == day]
        pd.testing.assert_frame_equal(_model_inputs(scored, usecase), _model_inputs(later, usecase))
        pd.testing.assert_frame_equal(snapshot_at_prediction[day], _snapshot(lake, usecase, day))
        # not even rebuilt: the files that landed after the prediction (later weather, the outcomes) did not touch it
        after = lake.partitions(features_table(USECASE))[day]
        assert after.files == partition_at_prediction[day].files, day
        assert after.facts["version"] == partition_at_prediction[day].facts["version"], day
    # and the outcomes came later, into the labels table: none was there when a day was predicted, labels exist now
    assert not any(labelled_at_prediction.values())
    labels = lake.read_frame(labels_table(USECASE))
    keys = usecase.features.keys
    fifth = final[final["date"] == "2013-01-05"].merge(
        labels, on=[*keys, "date"], how="left", validate="one_to_one"
    )
    assert fifth["is_delayed"].notna().mean() > 0.9
    assert "is_delayed" not in final.columns and "outcome_known_at" not in final.columns
    # the features saw the world as it arrived: at 18:00 the afternoon's weather (observed by 17:00, landed at
    # 17:10) is in, and the outcomes of the same day are not (they land the next morning)
    assert at_prediction["2013-01-05"]["wx_temp"].notna().mean() > 0.9
    raw_outcomes = lake.read_frame(raw_table(USECASE, "outcomes"))
    assert raw_outcomes["_arrived_at"].notna().all()

    # 2. batched, as the demo lands a month: every file at once (with its arrival), one ingest, one features run
    batched = _use_lake(monkeypatch, mlops_env / "batched")
    _land(batched, deliveries)
    last_evening = _local(FIRST + timedelta(days=DAYS - 1), "18:00", timezone)
    assert runner.run("ingest", last_evening).state == "success"
    assert runner.run("features", last_evening).state == "success"
    replayed = batched.read_frame(features_table(USECASE))
    order = [*usecase.features.keys, "date"]
    expected = final.sort_values(order).reset_index(drop=True)
    got = replayed.sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    for day in at_prediction:
        pd.testing.assert_frame_equal(_snapshot(batched, usecase, day), _snapshot(lake, usecase, day))
    label_order = [*usecase.features.keys, "date"]
    pd.testing.assert_frame_equal(
        batched.read_frame(labels_table(USECASE)).sort_values(label_order).reset_index(drop=True),
        labels.sort_values(label_order).reset_index(drop=True),
    )
    # the route rate of the evening before counts only outcomes that had landed by then
    rate = got.set_index(usecase.features.keys)["route_delay_rate_28d"]
    assert np.isfinite(rate.to_numpy(dtype=float)).any()


def test_an_observation_that_lands_after_the_prediction_time_is_not_used(
    demo_files, airflow_db, mlops_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weather file of 15:00-17:00 that lands at 18:30 instead of 17:10 (a late feed) gives nothing to the
    18:00 prediction, whether the features are built at 18:00 or a week later: the newest observation that had
    landed by then is 14:00's, older than the as-of join's three hours, so the weather inputs are NULL."""
    usecase, deliveries = demo_files
    lake = _use_lake(monkeypatch, mlops_env / "late")
    runner = AirflowRunner(USECASE, mlops_env / "airflow.log")
    evening = date(2013, 1, 3)
    prediction = _local(evening, "18:00", usecase.time.timezone)
    late = [item for item in deliveries if item.arrived_at == prediction - timedelta(minutes=50)]
    assert [item.day for item in late] == [evening], "one weather file of 15:00-17:00, landing at 17:10"
    moved = [
        replace(item, arrived_at=prediction + timedelta(minutes=30)) if item in late else item
        for item in deliveries
        if item.day <= date(2013, 1, 5)
    ]
    _land(lake, moved)
    week_later = _local(date(2013, 1, 9), "18:00", usecase.time.timezone)
    assert runner.run("ingest", week_later).state == "success"
    assert runner.run("features", week_later).state == "success"

    built = lake.read_frame(features_table(USECASE), ["2013-01-04", "2013-01-05"]).set_index("date")
    weather = lake.read_frame(raw_table(USECASE, "weather"))
    taken = pd.to_datetime(weather["time_hour"], utc=True)
    assert (taken == pd.Timestamp(prediction - timedelta(hours=1))).sum() == 3, "17:00 is in the lake, late"
    assert (taken == pd.Timestamp(prediction - timedelta(hours=4))).sum() == 3, "14:00 landed in time"
    assert built.loc["2013-01-04", "wx_temp"].isna().all(), "nothing that had landed was fresh enough"
    # the next evening's prediction sees the next day's weather, which landed in time
    assert built.loc["2013-01-05", "wx_temp"].notna().mean() > 0.9
