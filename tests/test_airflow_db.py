"""The Airflow metadata database of a fresh MLOPS_HOME is a copy of one migrated template per Airflow version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlops_airflow import env as airflow_env


def test_the_session_db_is_migrated_to_the_head_its_template_is_named_after(airflow_db: Path) -> None:
    template = airflow_env.airflow_db_template()
    assert template.exists()
    version, head = template.stem.removeprefix("airflow-").split("-", 1)
    with sqlite3.connect(airflow_db) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [(head,)]
        assert db.execute("select count(*) from dag_run").fetchone() is not None  # the schema is there
    assert version.count(".") >= 2  # e.g. 3.3.2: the installed Airflow's version


def test_a_template_is_migrated_once_then_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_CACHE_DIR", str(tmp_path / "cache"))
    migrations: list[str] = []

    def fake_migrate(env: dict[str, str]) -> None:  # what `airflow db migrate` would create, in milliseconds
        path = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
        assert Path(path).parent == Path(env["AIRFLOW_HOME"])  # migrated away from the caller's home
        migrations.append(path)
        with sqlite3.connect(path) as db:
            db.execute("create table alembic_version (version_num text)")

    monkeypatch.setattr(airflow_env, "migrate_airflow_db", fake_migrate)
    first, second = tmp_path / "a" / "airflow" / "airflow.db", tmp_path / "b" / "airflow" / "airflow.db"
    assert airflow_env.provide_airflow_db(first, {}) is True
    assert airflow_env.provide_airflow_db(second, {}) is True
    assert len(migrations) == 1
    template = airflow_env.airflow_db_template()
    assert first.read_bytes() == second.read_bytes() == template.read_bytes()
    # an existing database is left alone (it may hold runs)
    second.write_bytes(b"runs")
    assert airflow_env.provide_airflow_db(second, {}) is False
    assert second.read_bytes() == b"runs"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [template.name]  # no scratch left behind


def test_another_airflow_version_or_migration_gets_its_own_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_CACHE_DIR", str(tmp_path))
    installed = airflow_env.airflow_db_template()
    assert installed.parent == tmp_path
    monkeypatch.setattr(airflow_env.importlib.metadata, "version", lambda name: "9.9.9")
    assert airflow_env.airflow_db_template().name != installed.name
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "0001_a.py").write_text('revision = "aaa1"\ndown_revision = None\n')
    (versions / "0002_b.py").write_text('revision = "bbb2"\ndown_revision = "aaa1"\n')
    assert airflow_env._alembic_head(versions) == "bbb2"
    (versions / "0003_c.py").write_text('revision = "ccc3"\ndown_revision = ("bbb2",)\n')
    assert airflow_env._alembic_head(versions) == "ccc3"
