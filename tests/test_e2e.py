"""End to end: `mlops demo` replays months through Airflow (dag.test, every step an Airflow task): three with the
lake on the local disk, two on a real S3 protocol server (moto over HTTP). Then research and
production agree: training the same candidates on the same partitions and seed by calling the step directly gives
the same predictions as the models trained through Airflow."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from _demo import MONTHS, USECASE, run_demo_cli
from _features_fixtures import assert_online_reproduces_features

from pipelines.config import load_usecase
from pipelines.lake import (
    Lake,
    features_table,
    online_table,
    predictions_table,
    predictions_with_outcomes_table,
    raw_table,
)
from pipelines.steps.gate import read_decisions

pytestmark = pytest.mark.e2e

TRAIN_DATES = ["2013-02-01", "2013-03-01", "2013-04-01"]  # one training a month, the first of the next month


def _check_lifecycle(summary: dict, lake: Lake, tracking_uri: str, replayed: int = MONTHS) -> None:
    """What ``mlops demo --months {replayed}`` must leave behind: lake zones, predictions ahead of outcomes, gate
    decisions, the champion alias."""
    months = summary["months"]
    assert [m["month"] for m in months] == [f"2013-{m:02d}" for m in range(1, replayed + 1)]
    end = date(2013, replayed + 1, 1)  # the day after the replay: its schedule is in, its outcomes are not
    last_outcomes, first_missing = (
        (end - timedelta(days=2)).isoformat(),
        (end - timedelta(days=1)).isoformat(),
    )
    train_dates = TRAIN_DATES[:replayed]

    # exactly one quarantined file, with its reports, and the raw zone untouched by it
    quarantined = [f for m in months for f in m["files_quarantined"]]
    assert quarantined == ["flights_2013-01-15.csv"]
    keys = lake.storage.list(f"quarantine/{USECASE}/2013-01-15")
    names = {Path(k).name for k in keys}
    assert {
        "flights_2013-01-15.csv",
        "flights_2013-01-15.csv.report.json",
        "flights_2013-01-15.csv.report.html",
    } <= names
    raw = lake.partitions(raw_table(USECASE, "flights"))
    # the schedule of the day after was predicted on the replay's last evening, before its outcomes existed
    assert "2013-01-15" not in raw and "2013-01-14" in raw and end.isoformat() in raw
    outcomes = lake.partitions(raw_table(USECASE, "outcomes"))
    assert last_outcomes in outcomes and first_missing not in outcomes and end.isoformat() not in outcomes
    assert months[0]["rows_quarantined"] > 0
    assert sum(m["rows_ingested"] for m in months) == sum(
        p.rows
        for source in ("flights", "outcomes", "weather", "planes")
        for p in lake.partitions(raw_table(USECASE, source)).values()
    )

    # committed feature and prediction partitions, each with the facts its writer recorded
    features = lake.partitions(features_table(USECASE))
    assert len(features) == len(raw)
    assert all(p.facts.get("inputs_fingerprint") and p.data_hash for p in features.values())
    # every features date has its online snapshot, from which the online function gives the same features
    online = lake.partitions(online_table(USECASE))
    assert set(online) == set(features)
    assert (
        assert_online_reproduces_features(
            lake, load_usecase(USECASE), [f"2013-{replayed:02d}-15", end.isoformat()]
        )
        > 1000
    )
    predictions = lake.partitions(predictions_table(USECASE))
    assert predictions, "the champion scored nothing"
    assert set(predictions) <= set(features)
    assert min(predictions) == "2013-02-02", "a model trained on Feb 1 first predicts that evening, for Feb 2"
    assert end.isoformat() in predictions, "scored ahead of its outcome"
    assert sum(m["rows_scored"] for m in months) == sum(p.rows for p in predictions.values())

    # the outcomes that arrived were joined to the predictions made before them: live quality per month
    joined = lake.partitions(predictions_with_outcomes_table(USECASE))
    assert set(joined) <= set(predictions) and last_outcomes in joined and end.isoformat() not in joined
    assert months[0]["live_roc_auc"] is None and months[0]["rows_scored"] == 0
    for month in months[1:]:
        assert month["predictions_with_outcomes"] > 1000, month
        assert month["scored_before_outcome"] == month["predictions_with_outcomes"], month
        assert 0.55 < month["live_roc_auc"] < 0.95, month
        assert month["scoring_model_holdout_roc_auc"] is not None, month

    # one gate decision artifact per training run, each with its checks
    for day in train_dates:
        decision = lake.read_json(f"runs/{USECASE}/gate/date={day}/result.json")
        assert isinstance(decision["passed"], bool) and decision["checks"], day
        # ... kept as a record keyed by the Airflow run that took it
        records = read_decisions(lake, USECASE, day)
        assert [r["decision_id"] for r in records] == [decision["decision_id"]], day
        assert records[0]["run"].startswith(("manual__", "scheduled__")), records[0]["run"]
        assert records[0]["inputs"]["config_hash"] == load_usecase(USECASE).config_hash
    assert months[0]["gate_passed"] is True, "first run (absolute thresholds only) should promote"

    # the champion alias in the MLflow registry, loadable by alias
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    champion = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(
        USECASE, "champion"
    )
    assert str(champion.version) == str(summary["champion_version"])
    model = mlflow.pyfunc.load_model(f"models:/{USECASE}@champion")
    assert model.metadata.run_id == champion.run_id


def test_three_months_through_airflow_on_local_lake(local_demo) -> None:
    home, summary = local_demo
    _check_lifecycle(summary, Lake(str(home / "lake")), f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")


def test_two_months_through_airflow_on_s3(moto_server: str, new_bucket, tmp_path: Path, monkeypatch) -> None:
    bucket = new_bucket("e2e")
    s3_env = {
        "MLOPS_LAKE_URI": f"s3://{bucket}/lake",
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # two months (two trainings, the second gated against the first's champion) cover every S3 path; the
    # local reference run replays three
    summary = run_demo_cli(tmp_path, s3_env, months=2)
    assert summary["lake"] == f"s3://{bucket}/lake"
    assert not (tmp_path / "lake").exists(), "nothing may be written to a local lake when the lake is on S3"
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    _check_lifecycle(
        summary, Lake(s3_env["MLOPS_LAKE_URI"]), f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", replayed=2
    )


def test_direct_training_reproduces_airflow_predictions(local_demo, tmp_path: Path, monkeypatch) -> None:
    """Research and production agree: same partitions + seed -> same predictions, with or without Airflow."""
    import mlflow

    from pipelines.cli import run_step
    from pipelines.config import load_usecase
    from pipelines.tracking import feature_columns, load_model, predict_proba

    home, _summary = local_demo
    day = TRAIN_DATES[-1]
    airflow_lake = Lake(str(home / "lake"))
    airflow_train = airflow_lake.read_json(f"runs/{USECASE}/train/date={day}/result.json")

    # the direct call works on a copy of the lake and a fresh MLflow store: production state stays untouched
    shutil.copytree(home / "lake", tmp_path / "lake")
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    direct = run_step(["train", "--usecase", USECASE, "--date", day])
    direct_train = Lake(str(tmp_path / "lake")).read_json(f"runs/{USECASE}/train/date={day}/result.json")
    assert direct_train["feature_partitions"] == airflow_train["feature_partitions"]
    assert direct["result_uri"].startswith(str(tmp_path / "lake"))

    usecase = load_usecase(USECASE)
    window = airflow_train["window"]
    parts = airflow_lake.partitions(features_table(USECASE), airflow_train["features_version"])
    holdout = airflow_lake.read_frame(
        features_table(USECASE),
        [d for d in parts if window["holdout_start"] <= d < window["holdout_end"]],
        version=airflow_train["features_version"],
    )[feature_columns(usecase)]
    assert len(holdout) > 1000

    def predictions(tracking_uri: str, train: dict) -> dict[str, np.ndarray]:
        mlflow.set_tracking_uri(tracking_uri)
        return {c["name"]: predict_proba(load_model(c["model_uri"]), holdout) for c in train["candidates"]}

    via_airflow = predictions(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", airflow_train)
    via_direct = predictions(f"sqlite:///{tmp_path / 'mlflow.db'}", direct_train)
    assert set(via_airflow) == set(via_direct) == {c.name for c in usecase.candidates}
    for name in via_airflow:
        np.testing.assert_allclose(via_direct[name], via_airflow[name], rtol=0, atol=1e-6, err_msg=name)
