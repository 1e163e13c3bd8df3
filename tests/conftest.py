"""Shared test set-up: an isolated MLOPS_HOME and Airflow environment for the whole session.

Airflow reads its configuration when first imported, so the environment is set here, before any test module
imports it. Nothing touches ./var.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-test-home-"))
sys.path.insert(0, str(REPO_ROOT / "plugins"))
from mlops_airflow.env import apply_airflow_environment  # noqa: E402

os.environ["MLOPS_HOME"] = str(_SESSION_HOME)
apply_airflow_environment(_SESSION_HOME, override=True)
os.environ.setdefault("MLOPS_LOG_LEVEL", "WARNING")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The session's Airflow metadata DB, migrated once (needed by dag.test)."""
    db = _SESSION_HOME / "airflow" / "airflow.db"
    if not db.exists():
        proc = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return db


@pytest.fixture
def mlops_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh local lake and MLflow store under tmp_path for one test."""
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return tmp_path
