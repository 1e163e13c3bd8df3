"""End to end with the lake on a real S3 protocol server (moto over HTTP): `mlops demo --months 2` through Airflow
(dag.test, every step an Airflow task) writes nothing locally and leaves the same lifecycle as on a local disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from _demo import check_lifecycle, run_demo_cli

from pipelines.lake import Lake

pytestmark = pytest.mark.e2e


def test_two_months_through_airflow_on_s3(moto_server: str, new_bucket, tmp_path: Path, monkeypatch) -> None:
    bucket = new_bucket("e2e")
    s3_env = {
        "MLOPS_LAKE_URI": f"s3://{bucket}/lake",
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # two months: two trainings, the second gated against the first's champion, as the local reference run
    summary = run_demo_cli(tmp_path, s3_env, months=2)
    assert summary["lake"] == f"s3://{bucket}/lake"
    assert not (tmp_path / "lake").exists(), "nothing may be written to a local lake when the lake is on S3"
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    check_lifecycle(
        summary, Lake(s3_env["MLOPS_LAKE_URI"]), f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", replayed=2
    )
