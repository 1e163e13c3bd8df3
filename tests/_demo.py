"""Run ``mlops demo`` in a fresh process against its own MLOPS_HOME, and check what it leaves behind (shared by the
end-to-end tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

from _features_fixtures import assert_online_reproduces_features
from _lake_faults import read_decisions

from pipelines.config import load_usecase
from pipelines.context import run_result_key
from pipelines.lake import (
    Lake,
    features_table,
    labels_table,
    online_table,
    predictions_table,
    predictions_with_outcomes_table,
    raw_table,
)

# the mlops command of this tree (its console script is installed from wherever the venv was synced)
MLOPS = [sys.executable, "-m", "mlops_cli"]
USECASE = "flight_delay"
MONTHS = 2  # the local reference run (session fixture `local_demo`): a first training and a gated second


def run_demo_cli(home: Path, extra_env: dict[str, str], months: int, timeout: int = 3600) -> dict:
    """``mlops demo --months N`` with MLOPS_HOME=home and only ``extra_env`` of the session's MLOPS/Airflow/MLflow
    settings; asserts success and returns the summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_"))}
    env.update({"MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra_env})
    proc = subprocess.run(
        [*MLOPS, "demo", "--months", str(months)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = home / "demo" / "airflow.log"
    tail = log.read_text()[-6000:] if log.exists() else ""
    assert proc.returncode == 0, (
        f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n--- airflow log ---\n{tail}"
    )
    assert "[announced] flights_2013-01-15.csv" in proc.stdout
    return json.loads((home / "demo" / "summary.json").read_text())


TRAIN_DATES = ["2013-02-01", "2013-03-01", "2013-04-01"]  # one training a month, the first of the next month


def train_run(lake: Lake, day: str) -> str:
    """The one train run of ``day`` in a replay (one ``<uc>_train`` run a month): the run its gate decision
    record names. Results are keyed by run, so a reader says which run it means."""
    runs = {record["run"] for record in read_decisions(lake, USECASE, day)}
    assert len(runs) == 1, (day, runs)
    return runs.pop()


def run_result(lake: Lake, step: str, day: str) -> dict:
    """The result of ``step`` in the train run of ``day`` (:func:`train_run`)."""
    return lake.read_json(run_result_key(USECASE, day, step, train_run(lake, day)))


def check_lifecycle(summary: dict, lake: Lake, tracking_uri: str, replayed: int = MONTHS) -> None:
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
    # labels in their own table: a partition for every day whose outcomes arrived, an empty day for the others
    labels = lake.snapshot(labels_table(USECASE))
    assert last_outcomes in labels.partitions and first_missing not in labels.partitions
    assert set(labels.partitions) <= set(features) and set(labels.partitions) | set(labels.empty) == set(
        features
    )
    assert all(p.facts.get("inputs_fingerprint") and p.data_hash for p in labels.partitions.values())
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
        # better than chance by far more than chance moves on ~25,000 predictions (about +/-0.01). Honest inputs
        # (only what had landed by 18:00 the evening before: the day's outcomes land the next morning) gave
        # February 0.547 for a model trained on January alone
        assert 0.52 < month["live_roc_auc"] < 0.95, month
        assert month["scoring_model_holdout_roc_auc"] is not None, month

    # one gate decision artifact per training run, each with its checks
    for day in train_dates:
        decision = run_result(lake, "gate", day)
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
    mlflow.set_registry_uri(tracking_uri)  # another test in this process may have pointed it elsewhere
    champion = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(
        USECASE, "champion"
    )
    assert str(champion.version) == str(summary["champion_version"])
    model = mlflow.pyfunc.load_model(f"models:/{USECASE}@champion")
    assert model.metadata.run_id == champion.run_id
