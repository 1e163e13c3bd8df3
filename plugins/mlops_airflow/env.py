"""The embedded Airflow environment under MLOPS_HOME (SQLite metadata DB, this repo's dags/ and plugins/)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def airflow_environment(home: Path) -> dict[str, str]:
    """Environment variables for an embedded Airflow whose state lives in ``home/airflow``."""
    airflow_home = home / "airflow"
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "MLOPS_HOME": str(home),
        "MLFLOW_UV_AUTO_DETECT": "false",
    }


def apply_airflow_environment(home: Path, override: bool = False) -> dict[str, str]:
    """Set the embedded Airflow environment in this process (before Airflow is imported)."""
    env = airflow_environment(home)
    for key, value in env.items():
        if override or key not in os.environ:
            os.environ[key] = value
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    return env


if __name__ == "__main__":  # `python -m mlops_airflow.env` prints export lines for a shell
    from pipelines.config import mlops_home

    for key, value in airflow_environment(mlops_home()).items():
        print(f"export {key}={value!r}")
