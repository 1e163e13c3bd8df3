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

from mlops_cli.demo_data import DemoData, _local
from mlops_cli.runners import AirflowRunner
from pipelines.config import load_usecase
from pipelines.ingest.inbox import land_file
from pipelines.lake import Lake, features_table, labels_table, online_table, raw_table
from pipelines.modeling.tracking import feature_columns

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
    _register_champion(mlops_env, lake, usecase, FIRST)
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
        scored = runner.run("score", _local(evening, "18:00", timezone)).state
        if predicted in lake.partitions(features_table(USECASE)):  # the last evening predicts no landed day
            at_prediction[predicted] = lake.read_frame(features_table(USECASE), [predicted])
            snapshot_at_prediction[predicted] = _snapshot(lake, usecase, predicted)
            partition_at_prediction[predicted] = lake.partitions(features_table(USECASE))[predicted]
            labelled_at_prediction[predicted] = predicted in lake.partitions(labels_table(USECASE))
            assert scored == "success", evening
        else:
            assert scored == "failed", "no schedule of the last day: its score run fails, naming it"
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
    # and one score run replaying the evenings writes the predictions the evenings wrote, each on time
    assert runner.run("score", last_evening, {"replay": True}).state == "success"
    day_by_day = _predictions(lake)
    assert sorted(set(day_by_day["date"])) == sorted(at_prediction)
    assert not day_by_day["scored_late"].any()
    pd.testing.assert_frame_equal(_predictions(batched), day_by_day)
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


# --------------------------------------------------------------------------------------------------- scoring


def _register_champion(tmp: Path, lake: Lake, usecase, trained_on: date) -> int:
    """A small real model (fitted on synthetic rows with the use case's model inputs), logged and registered
    as MLflow does for a promoted candidate, with the `champion` alias: the scorer of these tests."""
    import mlflow
    from _serve_fixtures import ServeEnv, feature_frame, log_candidate
    from mlflow import MlflowClient

    from pipelines.config import load_profile
    from pipelines.modeling.tracking import configure_mlflow, model_name

    configure_mlflow(load_profile(), usecase)
    train = pd.concat([feature_frame(usecase, trained_on - timedelta(days=k), 200, k) for k in range(1, 4)])
    entry = log_candidate(
        ServeEnv(lake, usecase, tmp), "logreg", "logistic_regression", trained_on, train, 0.3
    )
    version = mlflow.register_model(entry["model_uri"], model_name(usecase)).version
    client = MlflowClient()
    client.set_model_version_tag(model_name(usecase), version, "logical_date", trained_on.isoformat())
    client.set_registered_model_alias(model_name(usecase), "champion", version)
    return int(version)


def _predictions(lake: Lake) -> pd.DataFrame:
    from pipelines.lake import predictions_table

    frame = lake.read_frame(predictions_table(USECASE))
    order = ["date", *load_usecase(USECASE).features.keys]
    # the snapshot table's version numbers are the lake's own history, not part of a prediction
    return frame.drop(columns=["snapshot_version"]).sort_values(order).reset_index(drop=True)


def test_a_schedule_landing_past_the_grace_fails_the_score_and_is_scored_late_the_next_evening(
    demo_files, airflow_db, mlops_env: Path, monkeypatch: pytest.MonkeyPatch, webhook
) -> None:
    """Weather lands through the day (each landing starts an ingest) and tomorrow's schedule at 12:00: the 18:00
    score writes tomorrow's predictions, on time. When the schedule of Jan 5 lands at 19:00 instead, the score run
    of Jan 4 fails past its grace (30 minutes) naming Jan 5, and alerts (`late_data`, to a webhook served here on
    loopback); Jan 5 evening's run scores it, marked late, and live
    metrics leave it out. A batched replay of the same files (one score run, Param replay) writes the same
    predictions."""
    from mlops_airflow.sensors import _features_readiness
    from mlops_cli.replay import live_quality
    from pipelines.cli import run_step
    from pipelines.evaluation.metrics import model_metrics
    from pipelines.lake import predictions_with_outcomes_table

    usecase, deliveries = demo_files
    timezone = usecase.time.timezone
    late_day = date(2013, 1, 5)
    delayed = _local(late_day - timedelta(days=1), "19:00", timezone)
    files = [
        replace(item, arrived_at=delayed)
        if item.day == late_day and item.name.startswith("flights")
        else item
        for item in deliveries
        if item.day <= date(2013, 1, 7)
    ]
    assert sum(item.arrived_at == delayed for item in files) == 1
    runner = AirflowRunner(USECASE, mlops_env / "airflow.log")
    lake = _use_lake(monkeypatch, mlops_env / "day-by-day")
    _register_champion(mlops_env, lake, usecase, date(2013, 1, 2))

    pending = sorted(files, key=lambda item: item.arrived_at)
    states: dict[str, str] = {}

    def until(moment) -> None:  # every landing before ``moment`` lands and is ingested when it lands
        nonlocal pending
        for arrival in sorted({item.arrived_at for item in pending if item.arrived_at <= moment}):
            _land(lake, [item for item in pending if item.arrived_at == arrival])
            assert runner.run("ingest", arrival).state == "success", arrival
        pending = [item for item in pending if item.arrived_at > moment]

    for evening in [date(2013, 1, 2) + timedelta(days=k) for k in range(5)]:
        prediction = _local(evening, "18:00", timezone)
        until(prediction - timedelta(minutes=5))
        assert runner.run("features", prediction - timedelta(minutes=5)).state == "success", evening
        states[evening.isoformat()] = runner.run("score", prediction).state
        if evening == date(2013, 1, 4):  # the schedule lands at 19:00, after the run failed
            failure = _features_readiness(USECASE, evening.isoformat(), None)["failure"]
            assert "2013-01-05" in failure and "score_grace" in failure, failure
            until(delayed)
            assert runner.run("features", delayed).state == "success"
    assert states == {
        "2013-01-02": "success",
        "2013-01-03": "success",
        "2013-01-04": "failed",
        "2013-01-05": "success",
        "2013-01-06": "success",
    }
    late = webhook.events("late_data")
    assert [alert["task_id"] for alert in webhook.received] == ["wait_for_features"], webhook.received
    assert late[0]["dag_id"] == f"{USECASE}_score" and "2013-01-05" in late[0]["message"], late

    got = _predictions(lake)
    by_day = got.groupby("date").agg(
        late=("scored_late", "all"), at=("scored_at", "first"), rows=("date", "size")
    )
    assert list(by_day.index) == [f"2013-01-0{d}" for d in range(3, 8)]
    assert by_day.loc["2013-01-05", "late"] and by_day.loc["2013-01-05", "at"] == pd.Timestamp(
        _local(late_day, "18:00", timezone)
    ), "scored by the next evening's run, at its time"
    assert not by_day.drop(index="2013-01-05")["late"].any()
    assert got.groupby("date")["scored_late"].nunique().eq(1).all()

    # the outcomes of Jan 4-6 land the next mornings; the outcomes task joins them; the late day is left out
    until(_local(date(2013, 1, 7), "18:00", timezone))
    run_step(["outcomes", "--usecase", USECASE, "--date", "2013-01-07"])
    joined = lake.read_frame(predictions_with_outcomes_table(USECASE))
    assert set(joined["date"]) >= {"2013-01-04", "2013-01-05"}
    live = live_quality(lake, usecase, [date(2013, 1, d) for d in range(1, 8)])
    assert live["scored_late"] == int(joined["scored_late"].sum()) > 0
    assert live["scored_ahead"] == int((~joined["scored_late"]).sum())
    kept = joined[~joined["scored_late"]]
    expected = model_metrics(kept[usecase.target.column], kept["probability"], ["roc_auc"])["roc_auc"]
    assert live["live_roc_auc"] == pytest.approx(expected, abs=1e-12)
    everything = model_metrics(joined[usecase.target.column], joined["probability"], ["roc_auc"])["roc_auc"]
    assert live["live_roc_auc"] != pytest.approx(everything, abs=1e-9), "the late day would change it"

    # batched as the demo replays a month: everything lands at once, one ingest, features and replayed score
    batched = _use_lake(monkeypatch, mlops_env / "batched")
    _land(batched, files)
    last_evening = _local(date(2013, 1, 6), "18:00", timezone)
    assert runner.run("ingest", last_evening).state == "success"
    assert runner.run("features", last_evening).state == "success"
    assert runner.run("score", last_evening, {"replay": True}).state == "success"
    replayed = _predictions(batched)
    pd.testing.assert_frame_equal(replayed, got[got["date"] <= "2013-01-07"].reset_index(drop=True))
