"""Monitoring through Airflow: the `<uc>_monitor` DAG (dag.test, steps in-process) on a real lake, a real MLflow
registry and a champion trained by the real train, evaluate, gate, register and promote steps.

The events after the champion's training date are scored by the score step's own function (`score_frame`) and
their outcomes joined by the real outcomes step. Then, day after day: a quiet window raises nothing; a window whose
inputs are shifted raises data drift and triggers `<uc>_train` with the reason in its conf; the cool-down keeps
the next breach from triggering again; a window too small is measured and not judged; outcomes that turn against
the model raise a live decay that triggers again once the cool-down has passed. The estimated performance of a
quiet window is within its interval of the live one."""

from __future__ import annotations

import socket
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from pipelines.lake import Lake, monitoring_table, predictions_table, predictions_with_outcomes_table

USECASE = "flight_delay"
NEW_YORK = ZoneInfo("America/New_York")
TRAINED_ON = date(2013, 2, 10)
ROWS = 400  # events a day


def _states(dag_run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            ti.task_id: str(getattr(ti.state, "value", ti.state))
            for ti in dag_run.get_task_instances(session=session)
        }


def _train_runs() -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == f"{USECASE}_train").all()
        return [(run.logical_date, dict(run.conf or {})) for run in runs]


def _forget_earlier_runs() -> None:
    """The Airflow database is shared by the whole session: the training and monitor runs other modules made of
    the same use case are not this world's (they would count as triggered or in flight here)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_ids = [f"{USECASE}_train", f"{USECASE}_monitor"]
        for run in session.query(DagRun).filter(DagRun.dag_id.in_(dag_ids)).all():
            session.delete(run)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, airflow_db):
    """A champion trained on 2013-01-01..02-09 (synthetic features with a learnable signal) and an empty
    stretch after it that each test fills with the days it monitors."""
    from _model_fixtures import FAST_CANDIDATES, fast_usecase, use_tmp_platform, write_config_dir
    from _model_fixtures import write_feature_partitions as write_features
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.cli import run_step
    from pipelines.config import DriftSpec, MonitoringSpec

    tmp = tmp_path_factory.mktemp("monitor")
    with pytest.MonkeyPatch.context() as patch:
        use_tmp_platform(patch, tmp)
        usecase = fast_usecase([FAST_CANDIDATES[0]])  # logreg
        usecase = usecase.model_copy(
            update={
                "gate": usecase.gate.model_copy(update={"infrastructure_check": False}),
                "slices": ["origin"],
                "drift": DriftSpec(
                    features=list(usecase.features.numeric[:3]), min_rows=300, drift_share=0.5
                ),
                "monitoring": MonitoringSpec(
                    window_days=3, min_labelled_rows=200, max_drop=0.05, cooldown_days=5, reference_rows=2000
                ),
            }
        )
        patch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp / "config", usecase)))
        lake = Lake(str(tmp / "lake"))
        write_features(lake, usecase, date(2013, 1, 1), 40, rows_per_day=ROWS)
        for step in ("train", "evaluate", "gate", "register", "promote"):
            run_step([step, "--usecase", USECASE, "--date", TRAINED_ON.isoformat()])
        bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags"))
        assert bag.import_errors == {}
        _forget_earlier_runs()
        yield {"lake": lake, "usecase": usecase, "dags": bag.dags, "tmp": tmp}


def _score_days(
    world: dict, days: list[date], rows: int = ROWS, *, shift: float = 0.0, flip: bool = False
) -> None:
    """Features, labels and batch predictions of ``days`` (predicted the evening before, by the champion), then
    the outcomes joined by the outcomes step. ``shift`` moves the watched inputs; ``flip`` turns the outcomes
    against the model (the same inputs, the opposite labels)."""
    from _labels import write_features_and_labels
    from _model_fixtures import make_context, synthetic_day
    from mlflow import MlflowClient

    from pipelines.cli import run_step
    from pipelines.modeling.batch_scoring import score_frame
    from pipelines.modeling.tracking import load_model, model_name

    usecase, lake = world["usecase"], world["lake"]
    champion = MlflowClient().get_model_version_by_alias(model_name(usecase), "champion")
    model = load_model(f"models:/{model_name(usecase)}/{champion.version}")
    label = usecase.target.column
    for day in days:
        frame = synthetic_day(usecase, day, rows, seed=1)
        for column in usecase.drift.features:
            frame[column] = frame[column] * (1 + shift) + 25 * shift
        if flip:
            frame[label] = 1.0 - frame[label]
        write_features_and_labels(lake, usecase, frame)
        ctx = make_context(usecase, day - timedelta(days=1))
        made = {day.isoformat(): usecase.time.prediction_time_of(day - timedelta(days=1))}
        scored = score_frame(ctx, model, frame, int(champion.version), champion.run_id, 0, "test", made)
        lake.write_partitions(
            predictions_table(usecase.name),
            scored,
            read_version=lake.version(predictions_table(usecase.name)),
        )
    run_step(["outcomes", "--usecase", USECASE, "--date", (days[-1] + timedelta(days=1)).isoformat()])


def _monitor(world: dict, day: date):
    """The monitor DAG of ``day`` through dag.test; returns (states, monitor result, its table rows)."""
    from pipelines.context import run_result_key

    dag_run = world["dags"][f"{USECASE}_monitor"].test(
        logical_date=datetime(day.year, day.month, day.day, 20, tzinfo=NEW_YORK)
    )
    states = _states(dag_run)
    assert states["monitor"] == "success", states
    result = world["lake"].read_json(run_result_key(USECASE, day.isoformat(), "monitor", dag_run.run_id))
    rows = world["lake"].read_frame(monitoring_table(USECASE), [day.isoformat()])
    return states, result, rows


def test_a_quiet_window_raises_nothing_and_the_estimate_is_within_its_interval_of_live(
    world, monkeypatch
) -> None:
    # nothing leaves the machine: Evidently's telemetry is off (any connection but loopback fails the run)
    real_connect = socket.socket.connect
    outside: list = []

    def guarded(self, address):  # a guard on the real socket, not a stand-in for anything
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(address, tuple) and host not in ("127.0.0.1", "::1", "localhost"):
            outside.append(address)
            raise OSError(f"test: no connection outside the machine ({address})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    _score_days(world, [date(2013, 2, 11), date(2013, 2, 12), date(2013, 2, 13)])
    states, result, rows = _monitor(world, date(2013, 2, 12))  # predicted through the 13th
    assert outside == []
    assert result["monitored"] and result["window"] == ["2013-02-11", "2013-02-13"]
    assert result["breaches"] == [] and states["retrain_early"] == "skipped", result
    assert result["rows"] == 3 * ROWS and result["labelled_rows"] > 2 * 200
    # the live figures and the estimate's calibration read one version of the outcomes, recorded with the run
    joined = predictions_with_outcomes_table(USECASE)
    assert result["tables_read"][joined] == world["lake"].version(joined), result["tables_read"]
    live, estimated = result["live"], result["estimated"]
    assert estimated["low"] <= live["value"] <= estimated["high"], (live, estimated)
    assert live["low"] <= estimated["value"] <= live["high"], (live, estimated)
    # no outcome of this model had arrived before the window: calibrated on its holdout, and saying so
    assert estimated["detail"].startswith("calibrated on the model's holdout"), estimated
    assert "0 outcomes before the window" in estimated["detail"], estimated
    drift = rows[rows["category"] == "data_drift"]
    assert set(drift["name"]) == {*world["usecase"].drift.features, "_share"}
    assert not drift["breach"].any() and drift["method"].dropna().str.len().gt(0).all()
    per_origin = rows[rows["name"].str.startswith("roc_auc@origin=")]
    names = {name.split("=", 1)[1] for name in per_origin["name"]}
    assert names == {"EWR", "JFK", "LGA", "<null>"} and (per_origin["rows"] > 0).all(), names
    page = Path(world["lake"].storage.local_path("reports/flight_delay/monitoring/index.html"))
    assert "<svg" in page.read_text() and "Estimated performance" in page.read_text()
    assert _train_runs() == []


def test_shifted_inputs_trigger_training_once_and_the_cool_down_holds(world) -> None:
    _score_days(world, [date(2013, 2, 14), date(2013, 2, 15), date(2013, 2, 16)], shift=1.0)
    states, result, rows = _monitor(world, date(2013, 2, 15))
    assert "data_drift" in result["breaches"] and result["retrain"]["requested"], result
    assert states["retrain_early"] == "success"
    [(logical, conf)] = _train_runs()
    assert logical.astimezone(NEW_YORK).date() == date(2013, 2, 15)
    assert conf["reason"].startswith("monitor 2013-02-15: data_drift"), conf
    share = rows[(rows["category"] == "data_drift") & (rows["name"] == "_share")].iloc[0]
    assert share["breach"] and share["value"] >= 0.5

    # the drift goes on: measured and alerted, but within the cool-down nothing is triggered again
    _score_days(world, [date(2013, 2, 17), date(2013, 2, 18), date(2013, 2, 19)], shift=1.0)
    states, result, _ = _monitor(world, date(2013, 2, 18))
    assert "data_drift" in result["breaches"] and not result["retrain"]["requested"]
    assert "cooling down since the retraining asked on 2013-02-15" in result["retrain"]["reason"]
    assert states["retrain_early"] == "skipped" and len(_train_runs()) == 1


def test_a_small_window_is_measured_not_judged(world) -> None:
    _score_days(world, [date(2013, 2, 20), date(2013, 2, 21), date(2013, 2, 22)], rows=60, shift=1.0)
    _, result, rows = _monitor(world, date(2013, 2, 21))
    assert result["rows"] == 180 and result["breaches"] == [], result
    # the outcomes of the windows before, known when this one began, calibrate the estimate; its interval is
    # wide (three days) but stays within ROC AUC's range
    estimated = result["estimated"]
    assert estimated["detail"] == (
        "calibrated on 3430 outcomes of the 9 days before the window, known when it began"
    ), estimated
    assert 0.0 <= estimated["low"] <= estimated["value"] <= estimated["high"] <= 1.0, estimated
    share = rows[(rows["category"] == "data_drift") & (rows["name"] == "_share")].iloc[0]
    assert not share["breach"] and "fewer than drift.min_rows 300" in share["detail"]


def _finish_train_runs() -> None:
    """The triggered training runs end (no scheduler runs them here): mark them successful."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    with create_session() as session:
        for run in session.query(DagRun).filter(DagRun.dag_id == f"{USECASE}_train").all():
            run.state = DagRunState.SUCCESS


def test_outcomes_against_the_model_raise_live_decay_and_retrain_once_none_is_in_flight(world) -> None:
    """Outcomes that turn against the model (the same inputs, the opposite labels) raise a live decay with no
    drift. While the training asked earlier is still queued, nothing more is triggered (never two in flight); once
    it has finished and the cool-down has passed, the next decay triggers a training again."""
    _score_days(world, [date(2013, 2, 23), date(2013, 2, 24), date(2013, 2, 25)], flip=True)
    states, result, _ = _monitor(world, date(2013, 2, 24))
    assert result["breaches"] == ["live_decay"], result  # inputs and scores as usual: no drift
    assert result["live"]["high"] < result["live"]["reference"] - 0.05
    assert result["retrain"]["requested"] and states["retrain_early"] == "skipped", states
    assert len(_train_runs()) == 1, "the training asked on 2013-02-15 is still queued: not a second one"

    _finish_train_runs()
    _score_days(world, [date(2013, 3, 1), date(2013, 3, 2), date(2013, 3, 3)], flip=True)
    states, result, _ = _monitor(world, date(2013, 3, 2))
    assert result["breaches"] == ["live_decay"] and result["retrain"]["requested"], result
    assert states["retrain_early"] == "success", states
    runs = sorted(_train_runs(), key=lambda run: run[0])
    assert len(runs) == 2 and runs[-1][1]["reason"] == "monitor 2013-03-02: live_decay"
    history = world["lake"].read_frame(monitoring_table(USECASE))
    asked = history[(history["category"] == "retrain") & (history["value"] == 1.0)]
    assert sorted(asked["date"]) == ["2013-02-15", "2013-02-24", "2013-03-02"]
    assert pd.Series(history["run"]).notna().all()
