"""The embedded Airflow environment under MLOPS_HOME (SQLite metadata DB, this repo's dags/ and plugins/)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# MLflow 3's `mlflow server` starts job-runner processes (huey workers, about 180 MB each) unless this is false;
# nothing of ours submits MLflow jobs, so every server we start sets it (docker-compose.yaml does the same).
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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


def _alembic_head(versions: Path) -> str:
    """The head revision of Airflow's migration scripts (the one revision no script names as its parent), read
    from the files: importing Airflow's migration code costs seconds, this a few milliseconds."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revisions.update(re.findall(r'^revision\s*=\s*["\']([0-9a-f]+)["\']', text, re.M))
        for line in re.findall(r"^down_revision\s*=(.*)$", text, re.M):
            parents.update(re.findall(r'["\']([0-9a-f]+)["\']', line))
    heads = sorted(revisions - parents)
    return "-".join(heads) or "unknown"


def airflow_db_template() -> Path:
    """Where the migrated SQLite template of the installed Airflow lives: keyed by Airflow's version and alembic
    head, so another Airflow (or a patched one with a new migration) never reuses it. ``MLOPS_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mlops``, else ``~/.cache/mlops``."""
    spec = importlib.util.find_spec("airflow")  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    versions = Path(locations[0]) / "migrations" / "versions" if locations else None
    head = _alembic_head(versions) if versions and versions.is_dir() else "unknown"
    cache = os.environ.get("MLOPS_CACHE_DIR") or (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops"
    )
    return Path(cache) / f"airflow-{importlib.metadata.version('apache-airflow')}-{head}.db"


def migrate_airflow_db(env: Mapping[str, str]) -> None:
    """``airflow db migrate`` of the database that ``env`` configures."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=dict(env),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def provide_airflow_db(db: Path, env: Mapping[str, str] | None = None) -> bool:
    """Give ``db`` (a SQLite file) a migrated Airflow metadata database unless it exists; True when it made one.

    ``airflow db migrate`` costs tens of seconds, every fresh MLOPS_HOME (each demo, each test session) needs a
    database, and a just-migrated database holds no path or home of its own: migrate once into a template per
    Airflow version (:func:`airflow_db_template`), then copy it. Both steps go through a temporary file and an
    atomic rename, so a concurrent process (a second test worker) sees either no file or a whole one.
    """
    if db.exists():
        return False
    env = dict(os.environ if env is None else env)
    template = airflow_db_template()
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=template.parent, prefix=".airflow-migrate-") as scratch:
            fresh = Path(scratch) / "airflow.db"
            # its own AIRFLOW_HOME: the airflow.cfg it may write stays out of the caller's home
            conn = f"sqlite:///{fresh}"
            migrate_airflow_db({**env, "AIRFLOW_HOME": scratch, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn})
            os.replace(fresh, template)
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f".{db.name}.{os.getpid()}.partial")
    shutil.copyfile(template, partial)
    os.replace(partial, db)
    return True


if __name__ == "__main__":  # `python -m mlops_airflow.env` prints export lines for a shell
    from pipelines.config import mlops_home

    for key, value in airflow_environment(mlops_home()).items():
        print(f"export {key}={value!r}")
