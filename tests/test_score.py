"""The score step (champion lookup, scoring ahead, catch-up window, skip of scored partitions, idempotent
reruns) and the outcomes step (late outcomes joined to the predictions made before them)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from _labels import write_features_and_labels
from _lake_faults import delete_partitions
from _serve_fixtures import ServeEnv, produce_day, write_features

from pipelines.cli import run_step
from pipelines.context import StepFailed
from pipelines.lake import (
    LATEST,
    features_table,
    labels_table,
    online_table,
    predictions_table,
    predictions_with_outcomes_table,
)

UC = "flight_delay"
PREDICTIONS = predictions_table(UC)


def _score(day: date) -> dict:
    return run_step(["score", "--usecase", UC, "--date", day.isoformat()])


def test_score_without_champion_writes_no_predictions(serve_env: ServeEnv) -> None:
    day = date(2013, 3, 10)
    write_features(serve_env, [day - timedelta(days=1), day])
    result = _score(day)
    assert result["scored"] == [] and result["reason"] == "no champion yet" and result["rows"] == 0
    assert serve_env.lake.partitions(PREDICTIONS) == {}


def test_score_catches_up_skips_scored_partitions_and_is_idempotent(serve_env: ServeEnv) -> None:
    from pipelines.modeling.tracking import feature_columns, load_model, predict_proba

    trained_on = date(2013, 3, 1)
    threshold = 0.3  # the champion's recorded decision threshold (not 0.5)
    produce_day(serve_env, trained_on, gate_passed=True, threshold=threshold)
    version = run_step(["register", "--usecase", UC, "--date", "2013-03-01"])["gate_candidate_version"]
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])

    day = date(2013, 4, 10)
    last = day + timedelta(days=1)  # on April 10 the flights of April 11 are predicted (the evening before)
    catch_up = serve_env.usecase.schedules.score_catch_up_days
    oldest_in_window = last - timedelta(days=catch_up - 1)
    already = day - timedelta(days=3)
    outside = [last - timedelta(days=catch_up), last + timedelta(days=1)]
    inside = [oldest_in_window, day - timedelta(days=5), already, day, last]
    frames = write_features(serve_env, inside + outside, rows=30)
    marker = pd.DataFrame({"probability": [0.123], "date": [already.isoformat()]})
    serve_env.lake.write_partitions(PREDICTIONS, marker, read_version=LATEST)
    existing = serve_env.lake.partitions(PREDICTIONS)[already.isoformat()]

    result = _score(day)
    expected = sorted(d.isoformat() for d in inside if d != already)
    assert result["scored"] == expected
    assert result["model_version"] == version and result["decision_threshold"] == threshold
    assert result["rows"] == 30 * len(expected)

    predictions = serve_env.lake.partitions(PREDICTIONS)
    assert sorted(predictions) == sorted([*expected, already.isoformat()])
    assert predictions[already.isoformat()].files == existing.files, "the scored partition was not touched"
    assert result["tables_written"] == {PREDICTIONS: 1}
    snapshot_version = serve_env.lake.version(online_table(UC))
    assert result["tables_read"] == {online_table(UC): snapshot_version}

    model = load_model(f"models:/{UC}/{version}")
    champion_run = predictions[expected[0]].facts["model_run_id"]
    between = 0  # rows that the recorded threshold predicts positive and 0.5 would not
    for iso in expected:
        partition = predictions[iso]
        assert partition.facts["model_version"] == version
        assert partition.facts["snapshot_version"] == snapshot_version
        assert partition.facts["features_version"] == serve_env.lake.version(features_table(UC))
        frame = serve_env.lake.read_frame(PREDICTIONS, [iso])
        keys = serve_env.usecase.features.keys
        assert set(frame.columns) == {
            *keys,
            "date",
            "prediction_time",
            "probability",
            "prediction",
            "model_version",
            "model_run_id",
            "snapshot_version",
            "scored_at",
            "scored_late",
        }
        # made by this run, at its due time (tomorrow's prediction time); the days it caught up are late
        assert (frame["scored_at"] == pd.Timestamp(serve_env.usecase.time.prediction_time_of(last))).all()
        assert (frame["scored_late"] == (iso != last.isoformat())).all()
        assert partition.facts["scored_late"] == (iso != last.isoformat())
        source = frames[iso]
        pd.testing.assert_frame_equal(frame[keys], source[keys], check_dtype=False)
        assert (frame["date"].astype(str) == iso).all()
        assert (frame["prediction_time"] == source["prediction_time"]).all()
        assert (frame["prediction_time"] < source["time_hour"]).all(), "scored ahead of the event"
        # the features computed online from the schedule rows and the snapshot are the features of the day
        inputs = source[feature_columns(serve_env.usecase)]
        np.testing.assert_allclose(frame["probability"], predict_proba(model, inputs), rtol=1e-9)
        assert ((frame["probability"] >= threshold).astype(int) == frame["prediction"]).all()
        assert partition.facts["decision_threshold"] == threshold
        between += int(((frame["probability"] >= threshold) & (frame["probability"] < 0.5)).sum())
        assert (frame["model_version"] == version).all() and (frame["model_run_id"] == champion_run).all()
        assert (frame["snapshot_version"] == snapshot_version).all()

    assert between > 0, "no score between the recorded threshold and 0.5: the test cannot tell them apart"

    # a rerun scores nothing and leaves every partition as it was (no new commit)
    hashes = {d: p.data_hash for d, p in predictions.items()}
    assert _score(day)["scored"] == [] and serve_env.lake.version(PREDICTIONS) == 1
    assert {d: p.data_hash for d, p in serve_env.lake.partitions(PREDICTIONS).items()} == hashes

    # a partition deleted (to be rescored) and rescored by a later run comes back identical
    lost = expected[1]
    before = serve_env.lake.read_frame(PREDICTIONS, [lost])
    delete_partitions(serve_env.lake, PREDICTIONS, [lost])
    assert lost not in serve_env.lake.partitions(PREDICTIONS)
    rescored = _score(day + timedelta(days=1))
    assert rescored["scored"] == [lost, (last + timedelta(days=1)).isoformat()] and rescored["late"] == [lost]
    again = serve_env.lake.read_frame(PREDICTIONS, [lost])
    later = pd.Timestamp(serve_env.usecase.time.prediction_time_of(last + timedelta(days=1)))
    assert (again["scored_at"] == later).all() and again["scored_late"].all(), "made by the later run"
    pd.testing.assert_frame_equal(again.drop(columns="scored_at"), before.drop(columns="scored_at"))


def test_score_refuses_a_snapshot_built_with_another_features_config(serve_env: ServeEnv) -> None:
    produce_day(serve_env, date(2013, 3, 1), gate_passed=True)
    run_step(["register", "--usecase", UC, "--date", "2013-03-01"])
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])
    day = date(2013, 5, 20)
    write_features(serve_env, [day], rows=10)
    # as if the features of this day were built before a feature was added to the config
    snapshot = serve_env.lake.read(online_table(UC), [day.isoformat()])
    facts = dict(serve_env.lake.partitions(online_table(UC))[day.isoformat()].facts)
    serve_env.lake.write_partitions(
        online_table(UC),
        snapshot,
        read_version=LATEST,
        facts={day.isoformat(): {**facts, "config_hash": "0123456789abcdef"}},
    )
    with pytest.raises(
        StepFailed, match=r"features_online/flight_delay/date=2013-05-20.*0123456789abcdef.*--rebuild"
    ):
        _score(day)
    assert day.isoformat() not in serve_env.lake.partitions(PREDICTIONS)


def test_champion_never_scores_days_before_its_training_date(serve_env: ServeEnv) -> None:
    """Out-of-time only: the champion trained on 2013-03-01 does not score February, even if unscored, nor
    March 1, whose flights were predicted on the evening of February 28, before the model existed."""
    produce_day(serve_env, date(2013, 3, 1), gate_passed=True)
    run_step(["register", "--usecase", UC, "--date", "2013-03-01"])
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])
    days = [date(2013, 2, 20), date(2013, 2, 28), date(2013, 3, 1), date(2013, 3, 2), date(2013, 3, 5)]
    write_features(serve_env, days, rows=10)
    result = _score(date(2013, 3, 4))
    assert result["scored"] == ["2013-03-02", "2013-03-05"]
    assert sorted(serve_env.lake.partitions(PREDICTIONS)) == ["2013-03-02", "2013-03-05"]


def test_outcomes_that_arrive_later_are_joined_to_the_predictions_made_before_them(
    serve_env: ServeEnv,
) -> None:
    """The evening of March 10 the champion scores March 11 from features without labels; the outcomes land
    later (the labels table gains the day's labels) and are joined to those predictions: on March 11 the
    outcomes known by the end of that day, on March 12 all of them. Reruns change nothing."""
    produce_day(serve_env, date(2013, 3, 1), gate_passed=True)
    run_step(["register", "--usecase", UC, "--date", "2013-03-01"])
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])
    event_day = date(2013, 3, 11)
    labelled = write_features(serve_env, [event_day], rows=60)[event_day.isoformat()]
    schedule_only = labelled.assign(is_delayed=np.nan, outcome_known_at=pd.NaT)
    write_features_and_labels(serve_env.lake, serve_env.usecase, schedule_only)

    scored = _score(date(2013, 3, 10))
    assert scored["scored"] == [event_day.isoformat()]
    predictions = serve_env.lake.read_frame(PREDICTIONS, [event_day.isoformat()])
    assert run_step(["outcomes", "--usecase", UC, "--date", "2013-03-10"])["joined"] == [], (
        "nothing known yet"
    )

    # the outcomes arrive: the features step commits the day's labels (its features stay as they were)
    features_before = serve_env.lake.partitions(features_table(UC))[event_day.isoformat()]
    labels = labelled.loc[
        labelled["is_delayed"].notna(), [*serve_env.usecase.features.keys, "date", "is_delayed"]
    ]
    serve_env.lake.write_partitions(
        labels_table(UC),
        labels.assign(outcome_known_at=labelled["outcome_known_at"]),
        read_version=LATEST,
    )
    assert serve_env.lake.partitions(features_table(UC))[event_day.isoformat()].files == features_before.files
    table = predictions_with_outcomes_table(UC)
    first = run_step(["outcomes", "--usecase", UC, "--date", "2013-03-11"])
    joined = serve_env.lake.read_frame(table, [event_day.isoformat()])
    midnight = serve_env.usecase.time.local_midnight(date(2013, 3, 12))
    known_by_then = labelled[labelled["outcome_known_at"] < midnight]
    assert first["joined"] == [event_day.isoformat()] and 0 < len(joined) == len(known_by_then) < len(
        labelled
    )
    keys = ["carrier", "flight", "origin", "sched_dep_time"]
    merged = joined.merge(predictions, on=keys, suffixes=("", "_scored")).merge(
        labelled[[*keys, "is_delayed"]], on=keys, suffixes=("", "_true")
    )
    assert len(merged) == len(joined)
    assert (merged["probability"] == merged["probability_scored"]).all(), "the prediction made before"
    assert (merged["is_delayed"] == merged["is_delayed_true"]).all()
    assert (merged["prediction_time"] < merged["outcome_known_at"]).all()
    assert (merged["model_version"] == scored["model_version"]).all()

    version = serve_env.lake.version(table)
    assert run_step(["outcomes", "--usecase", UC, "--date", "2013-03-11"])["joined"] == []
    assert serve_env.lake.version(table) == version, "a rerun commits nothing"

    later = run_step(["outcomes", "--usecase", UC, "--date", "2013-03-12"])
    assert later["joined"] == [event_day.isoformat()]
    assert len(serve_env.lake.read_frame(table, [event_day.isoformat()])) == len(labelled)


def test_score_and_outcomes_read_the_partitions_of_their_window_only(
    serve_env: ServeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However long the history, the nightly's score and outcomes steps read the snapshots, predictions and
    labels (partitions and facts) of their catch-up window only, not of every day in the lake."""
    from pipelines.lake import Lake

    trained_on = date(2013, 3, 1)
    produce_day(serve_env, trained_on, gate_passed=True)
    run_step(["register", "--usecase", UC, "--date", "2013-03-01"])
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])
    day = date(2013, 6, 10)
    old = [date(2013, 3, 5), date(2013, 3, 20)]  # history far before the window
    write_features(serve_env, [*old, day - timedelta(days=1), day, day + timedelta(days=1)], rows=20)
    assert sorted(_score(old[1])["scored"]) == [old[0].isoformat(), old[1].isoformat()]

    reads: list[tuple[str, list[str] | None]] = []
    snapshot = Lake.snapshot

    def spy(self, table, *args, **kwargs):
        dates = kwargs.get("dates")
        reads.append((table, None if dates is None else sorted(dates)))
        return snapshot(self, table, *args, **kwargs)

    monkeypatch.setattr(Lake, "snapshot", spy)
    result = _score(day)
    assert result["scored"] == [(day + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]
    run_step(["outcomes", "--usecase", UC, "--date", day.isoformat()])
    assert reads, "the steps read snapshots"
    for table, dates in reads:
        assert dates is not None, f"{table}: every partition and its facts were read"
        assert not {d.isoformat() for d in old} & set(dates), f"{table}: read {dates}"
