"""End to end: `mlops demo --months 2` replays two months through Airflow (dag.test, every step an Airflow task)
with the lake on the local disk (the S3 lake: test_e2e_s3.py). Then research and production agree: training the
same candidates on the same partitions and seed by calling the step directly gives the same predictions as the
models trained through Airflow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _demo import MONTHS, TRAIN_DATES, USECASE, check_lifecycle, run_result

from pipelines.config import load_usecase
from pipelines.context import MANUAL_RUN, run_result_key
from pipelines.lake import Lake, features_table

pytestmark = pytest.mark.e2e


def test_two_months_through_airflow_on_local_lake(local_demo) -> None:
    home, summary = local_demo
    check_lifecycle(summary, Lake(str(home / "lake")), f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")


def test_the_replay_alerts_its_quarantine_and_each_rejected_gate(local_demo, demo_webhook) -> None:
    """Alerts through Airflow notifiers reach the webhook (served by the test on loopback): the file landed
    truncated on purpose is quarantined, and every training whose gate did not pass says why; nothing else
    failed, so nothing else alerts."""
    home, summary = local_demo
    lake = Lake(str(home / "lake"))
    quarantined = demo_webhook.events("quarantine")
    assert any("flights_2013-01-15.csv" in alert["message"] for alert in quarantined), quarantined
    assert {alert["task_id"] for alert in quarantined} == {"quarantine_check"}

    rejected_days = [
        m["train_date"] for m in summary["months"] if m.get("train_date") and not m["gate_passed"]
    ]
    rejected = demo_webhook.events("gate_rejected")
    assert len(rejected) == len(rejected_days), (rejected_days, rejected)
    for day, alert in zip(rejected_days, rejected, strict=True):
        decision = run_result(lake, "gate", day)
        assert alert["dag_id"] == f"{USECASE}_train" and alert["task_id"] == "keep_champion"
        assert all(reason in alert["message"] for reason in decision["reasons"]), (alert, decision)
    # the monitor runs after each month's scoring: its drift and decay breaches are alerted, one per month
    for event, kinds in (
        ("drift", {"data_drift", "prediction_drift"}),
        ("decay", {"live_decay", "estimated_decay"}),
    ):
        months = [m["month"] for m in summary["months"] if kinds & set(m["monitor"].get("breaches") or [])]
        assert len(demo_webhook.events(event)) == len(months), (event, months, demo_webhook.events(event))
    others = [
        a
        for a in demo_webhook.received
        if a["event"] not in ("quarantine", "gate_rejected", "drift", "decay")
    ]
    assert others == [], others


def test_the_replay_monitors_each_month_after_scoring(local_demo) -> None:
    """Each month's monitor run (through Airflow) measured the predictions of the month's last week against the
    model that scored them, and its values are in the summary and the monitoring table; the first month has no
    model yet and says so."""
    from pipelines.lake import monitoring_table

    home, summary = local_demo
    first, *scored = summary["months"]
    assert first["dag_runs"]["monitor"] == "success" and first["monitor"]["model_version"] is None
    lake = Lake(str(home / "lake"))
    table = lake.read_frame(monitoring_table(USECASE))
    for month in scored:
        monitor = month["monitor"]
        assert month["dag_runs"]["monitor"] == "success"
        assert monitor["model_version"] == month["scored_with_version"], month
        assert monitor["live"]["rows"] > 1000 and monitor["estimated"]["rows"] > 1000
        for measured in (monitor["live"], monitor["estimated"]):
            assert measured["low"] <= measured["value"] <= measured["high"], monitor
        # estimated from the model's outcomes known before the window began, none of the window's own, its
        # prediction interval holds the live figure the window's outcomes gave afterwards
        estimated = monitor["estimated"]
        assert estimated["low"] <= monitor["live"]["value"] <= estimated["high"], monitor
        assert "days before the window, known when it began" in estimated["detail"], estimated
        rows = table[table["date"] == month["last_day"]]
        assert set(rows["category"]) >= {"data_drift", "prediction_drift", "live", "estimated", "retrain"}
    assert (home / "lake" / "reports" / USECASE / "monitoring" / "index.html").exists()


def test_direct_training_reproduces_airflow_predictions(local_demo, tmp_path: Path, monkeypatch) -> None:
    """Research and production agree: same partitions + seed -> same predictions, with or without Airflow."""
    import mlflow

    from pipelines.cli import run_step
    from pipelines.modeling.tracking import feature_columns, load_model, predict_proba

    home, _summary = local_demo
    day = TRAIN_DATES[MONTHS - 1]  # the last training of the reference run
    airflow_lake = Lake(str(home / "lake"))
    airflow_train = run_result(airflow_lake, "train", day)  # the Airflow run's train result

    # the direct call works on a copy of the lake and a fresh MLflow store: production state stays untouched
    shutil.copytree(home / "lake", tmp_path / "lake")
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    direct = run_step(["train", "--usecase", USECASE, "--date", day])
    # the direct call is run "manual", beside the Airflow run's result of the same date in the copied lake
    direct_train = Lake(str(tmp_path / "lake")).read_json(run_result_key(USECASE, day, "train", MANUAL_RUN))
    assert direct["result_uri"].endswith(run_result_key(USECASE, day, "train", MANUAL_RUN))
    assert run_result(Lake(str(tmp_path / "lake")), "train", day) == airflow_train  # not overwritten
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
