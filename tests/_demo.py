"""Run ``mlops demo`` in a fresh process against its own MLOPS_HOME (shared by the end-to-end tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MLOPS = Path(sys.executable).parent / "mlops"
USECASE = "flight_delay"
MONTHS = 3  # the local reference run (session fixture `local_demo`)


def run_demo_cli(home: Path, extra_env: dict[str, str], months: int, timeout: int = 1500) -> dict:
    """``mlops demo --months N`` with MLOPS_HOME=home and only ``extra_env`` of the session's MLOPS/Airflow/MLflow
    settings; asserts success and returns the summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_"))}
    env.update({"MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra_env})
    proc = subprocess.run(
        [str(MLOPS), "demo", "--months", str(months)],
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
