"""The score step: champion lookup, catch-up window, skip of scored partitions, idempotent reruns."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from _serve_fixtures import ServeEnv, produce_day, write_features

from pipelines.cli import run_step
from pipelines.context import StepFailed
from pipelines.lake import LATEST, features_table, predictions_table

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
    from pipelines.tracking import feature_columns, load_model, predict_proba

    trained_on = date(2013, 3, 1)
    produce_day(serve_env, trained_on, gate_passed=True)
    version = run_step(["register", "--usecase", UC, "--date", "2013-03-01"])["gate_candidate_version"]
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])

    day = date(2013, 4, 10)
    catch_up = serve_env.usecase.schedules.score_catch_up_days
    oldest_in_window = day - timedelta(days=catch_up - 1)
    already = day - timedelta(days=3)
    outside = [day - timedelta(days=catch_up), day + timedelta(days=1)]
    inside = [oldest_in_window, day - timedelta(days=5), already, day]
    frames = write_features(serve_env, inside + outside, rows=30)
    marker = pd.DataFrame({"probability": [0.123], "date": [already.isoformat()]})
    serve_env.lake.write_partitions(PREDICTIONS, marker, read_version=LATEST)
    existing = serve_env.lake.partitions(PREDICTIONS)[already.isoformat()]

    result = _score(day)
    expected = sorted(d.isoformat() for d in inside if d != already)
    assert result["scored"] == expected
    assert result["model_version"] == version
    assert result["rows"] == 30 * len(expected)

    predictions = serve_env.lake.partitions(PREDICTIONS)
    assert sorted(predictions) == sorted([*expected, already.isoformat()])
    assert predictions[already.isoformat()].files == existing.files, "the scored partition was not touched"
    assert result["tables_written"] == {PREDICTIONS: 1}
    features_version = serve_env.lake.version(features_table(UC))
    assert result["tables_read"] == {features_table(UC): features_version}

    model = load_model(f"models:/{UC}/{version}")
    champion_run = predictions[expected[0]].facts["model_run_id"]
    for iso in expected:
        partition = predictions[iso]
        assert partition.facts["model_version"] == version
        assert partition.facts["features_version"] == features_version
        frame = serve_env.lake.read_frame(PREDICTIONS, [iso])
        keys = serve_env.usecase.features.keys
        assert set(frame.columns) == {
            *keys,
            "date",
            "probability",
            "prediction",
            "model_version",
            "model_run_id",
            "features_version",
        }
        source = frames[iso]
        pd.testing.assert_frame_equal(frame[keys], source[keys], check_dtype=False)
        assert (frame["date"].astype(str) == iso).all()
        inputs = source[feature_columns(serve_env.usecase)]
        np.testing.assert_allclose(frame["probability"], predict_proba(model, inputs), rtol=1e-9)
        assert ((frame["probability"] >= 0.5).astype(int) == frame["prediction"]).all()
        assert (frame["model_version"] == version).all() and (frame["model_run_id"] == champion_run).all()
        assert (frame["features_version"] == features_version).all()

    # a rerun scores nothing and leaves every partition as it was (no new commit)
    hashes = {d: p.data_hash for d, p in predictions.items()}
    assert _score(day)["scored"] == [] and serve_env.lake.version(PREDICTIONS) == 1
    assert {d: p.data_hash for d, p in serve_env.lake.partitions(PREDICTIONS).items()} == hashes

    # a partition deleted (to be rescored) and rescored by a later run comes back identical
    lost = expected[1]
    serve_env.lake.delete_partitions(PREDICTIONS, [lost])
    assert lost not in serve_env.lake.partitions(PREDICTIONS)
    assert _score(day + timedelta(days=1))["scored"] == [lost, (day + timedelta(days=1)).isoformat()]
    assert serve_env.lake.partitions(PREDICTIONS)[lost].data_hash == hashes[lost]


def test_score_names_the_partition_when_a_feature_column_is_missing(serve_env: ServeEnv) -> None:
    produce_day(serve_env, date(2013, 3, 1), gate_passed=True)
    run_step(["register", "--usecase", UC, "--date", "2013-03-01"])
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])
    day = date(2013, 5, 20)
    frame = write_features(serve_env, [day], rows=10)[day.isoformat()].drop(columns=["wx_temp"])
    # as the features step records it: this partition was built without the column
    columns = [c for c in frame.columns]
    serve_env.lake.write_partitions(
        features_table(UC), frame, read_version=LATEST, facts={day.isoformat(): {"columns": columns}}
    )
    with pytest.raises(StepFailed, match=r"features/flight_delay/date=2013-05-20.*wx_temp.*--rebuild"):
        _score(day)
    assert day.isoformat() not in serve_env.lake.partitions(PREDICTIONS)


def test_champion_never_scores_days_before_its_training_date(serve_env: ServeEnv) -> None:
    """Out-of-time only: the champion trained on 2013-03-01 does not score February, even if unscored."""
    produce_day(serve_env, date(2013, 3, 1), gate_passed=True)
    run_step(["register", "--usecase", UC, "--date", "2013-03-01"])
    run_step(["promote", "--usecase", UC, "--date", "2013-03-01"])
    days = [date(2013, 2, 20), date(2013, 2, 28), date(2013, 3, 1), date(2013, 3, 4)]
    write_features(serve_env, days, rows=10)
    result = _score(date(2013, 3, 4))
    assert result["scored"] == ["2013-03-01", "2013-03-04"]
    assert sorted(serve_env.lake.partitions(PREDICTIONS)) == ["2013-03-01", "2013-03-04"]
