"""Per-task containers, for real: one month of the lifecycle through Airflow with ``task_runtime: docker``.

Every step runs in its own container of the image for its kind, started by the docker runtime of
StepOperator (mlops_airflow.runtimes.DockerRuntime) against a real Docker engine (the `docker_images` fixture starts one and builds the images from
this tree). The engine's own event records prove which containers ran; the outputs must match the in-process
reference run (`local_demo`): same rows per partition, same metrics, same gate decision.

Then the same month with the lake on an S3 server (moto over HTTP) and MLflow as a tracking server that keeps
its artifacts in that S3 server: the containers get no bind mount at all and reach both over the network.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from _demo import USECASE, run_demo_cli, run_result

from pipelines.lake import Lake, table_key
from pipelines.steps import STEP_KINDS

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

MONTH_STEPS = {
    "ingest",
    "features",
    "score",
    "outcomes",
    "train",
    "evaluate",
    "gate",
    "register",
    "promote",
    "report",  # the train DAG's explanations, in the train image, beside register and promote
    "monitor",  # after the month's score run (nothing scored yet in the first month: it says so)
}
TRAIN_DATE = "2013-02-01"
SECRET = "lake-secret-never-logged"  # moto accepts any credentials


def _container_runs(records: list[dict], home: Path) -> dict[str, dict]:
    """The steps of this test's run, by step, from the recorded container ends: the 2013 replay's dates only (the
    compose stack test in the other pytest-xdist worker runs the same use case for today's date)."""
    runs = {}
    records = [
        a for a in records if a.get("io.mlops.usecase") == USECASE and a["io.mlops.date"].startswith("2013-")
    ]
    for attrs in records:
        step = attrs["io.mlops.step"]
        tries = [
            (a["io.mlops.dag_id"], a["io.mlops.date"], a.get("exitCode"))
            for a in records
            if a["io.mlops.step"] == step
        ]
        # the tries' exit codes first (137: killed, e.g. out of memory), then the log: CI shows a message's start
        assert step not in runs, (
            f"step {step} ran in more than one container, (DAG, date, exit code) of each: {tries}. A try failed "
            f"after its container; the Airflow log's errors:\n{_log_errors(home)}\n{records}"
        )
        runs[step] = attrs
    return runs


def _log_errors(home: Path, limit: int = 80) -> str:
    """The Airflow log's error and traceback lines (the last ``limit``), to say why a task was retried."""
    log = home / "demo" / "airflow.log"
    if not log.exists():
        return "(no Airflow log)"
    lines = log.read_text(errors="replace").splitlines()
    keep = [
        line
        for i, line in enumerate(lines)
        # dag.test's "No tasks to run" warning repeats every second while a task waits for its retry and names
        # it up_for_retry: it says nothing about why, and would push the real error out of the last lines
        if "No tasks to run" not in line
        and (
            re.search(r"ERROR|Traceback|Error:|Exception|retry", line)
            or any("Traceback" in prev for prev in lines[max(0, i - 30) : i])
        )
    ]
    return "\n".join(keep[-limit:])


def _partition_rows(lake: Lake, zone: str, *sub: str) -> dict[str, int]:
    table = table_key(zone, USECASE, *sub)
    return {day: p.rows for day, p in lake.partitions(table).items() if day < TRAIN_DATE}


def _candidate_metrics(lake: Lake) -> dict[str, dict[str, float]]:
    evaluate = run_result(lake, "evaluate", TRAIN_DATE)
    return {name: candidate["metrics"] for name, candidate in evaluate["candidates"].items()}


def _assert_same_outputs(lake: Lake, reference: Lake, summary: dict, reference_summary: dict) -> None:
    month, expected = summary["months"][0], reference_summary["months"][0]
    for key in (
        "rows_ingested",
        "rows_quarantined",
        "files_quarantined",
        "feature_partitions_built",
        "rows_scored",
        "best_candidate",
        "gate_passed",
        "registered_versions",
        "promoted_version",
    ):
        assert month[key] == expected[key], (key, month[key], expected[key])
    assert month["best_metric"] == pytest.approx(expected["best_metric"], abs=2e-3)

    for zone, sub in (("raw", ("flights",)), ("raw", ("weather",)), ("raw", ("planes",)), ("features", ())):
        rows = _partition_rows(lake, zone, *sub)
        assert rows, (zone, sub)
        assert rows == _partition_rows(reference, zone, *sub), (zone, sub)

    metrics, expected_metrics = _candidate_metrics(lake), _candidate_metrics(reference)
    assert set(metrics) == set(expected_metrics) == {"logreg", "hgb", "mlp"}
    for name, values in expected_metrics.items():
        for metric, value in values.items():
            if isinstance(value, float) and not math.isnan(value):
                assert metrics[name][metric] == pytest.approx(value, abs=2e-3), (name, metric)

    gate = run_result(lake, "gate", TRAIN_DATE)
    expected_gate = run_result(reference, "gate", TRAIN_DATE)
    assert gate["passed"] == expected_gate["passed"] is True
    assert [c["name"] for c in gate["checks"]] == [c["name"] for c in expected_gate["checks"]]
    assert [c["passed"] for c in gate["checks"]] == [c["passed"] for c in expected_gate["checks"]]


def _assert_every_step_in_its_container(runs: dict[str, dict], images: dict[str, str]) -> None:
    assert set(runs) == MONTH_STEPS, f"containers seen: {sorted(runs)}"
    for step, attrs in runs.items():
        assert attrs["image"] == images[STEP_KINDS[step]], (step, attrs["image"])
        assert attrs["io.mlops.date"] in ("2013-01-31", TRAIN_DATE), attrs
        # ingest exits 1: the announced corrupt file is quarantined, the rest committed (a soft step failure)
        assert attrs["exitCode"] == ("1" if step == "ingest" else "0"), (step, attrs["exitCode"])
    assert runs["train"]["io.mlops.dag_id"] == f"{USECASE}_train"


def _task_log(home: Path) -> str:
    return (home / "demo" / "airflow.log").read_text()


def test_one_month_in_containers_matches_in_process(
    docker_images, local_demo, container_deaths, tmp_path: Path
) -> None:
    reference_home, reference_summary = local_demo
    summary = run_demo_cli(tmp_path, {"MLOPS_TASK_RUNTIME": "docker"}, months=1)
    runs = _container_runs(container_deaths.stop(), tmp_path)

    _assert_every_step_in_its_container(runs, docker_images)
    log = _task_log(tmp_path)
    assert log.count("Container: image mlops-") == len(MONTH_STEPS)
    assert f"mounts ['{tmp_path}']" in log, "a local lake is bind-mounted at the same path"
    # the container's own output reached the Airflow task log, up to the step's JSON line
    assert '"step": "promote"' in log

    _assert_same_outputs(
        Lake(str(tmp_path / "lake")), Lake(str(reference_home / "lake")), summary, reference_summary
    )
    # the same candidate won January in both runtimes, so the same version holds the alias
    assert summary["champion_version"] == str(reference_summary["months"][0]["promoted_version"])


@pytest.fixture
def mlflow_server(moto_server: str, new_bucket, tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server (SQLite backend) that proxies artifacts into a bucket of the S3 server."""
    from conftest import VENV_BIN, _free_port

    bucket = new_bucket("mlflow")
    home = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": moto_server,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no MLflow jobs here: no job-runner processes
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{bucket}/artifacts",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(
                    f"mlflow server did not answer on {url}:\n{(home / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
    yield url, bucket
    proc.terminate()
    proc.wait(timeout=20)


def test_one_month_in_containers_with_the_lake_on_s3(
    docker_images,
    local_demo,
    mlflow_server,
    moto_server: str,
    new_bucket,
    container_deaths,
    tmp_path: Path,
    monkeypatch,
) -> None:
    tracking_uri, artifact_bucket = mlflow_server
    bucket = new_bucket("lake")
    env = {
        "MLOPS_TASK_RUNTIME": "docker",
        # host networking: the containers reach the S3 and MLflow servers on this machine's loopback
        "MLOPS_DOCKER_NETWORK": "host",
        "MLOPS_LAKE_URI": f"s3://{bucket}/lake",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLOPS_MLFLOW_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    summary = run_demo_cli(tmp_path, env, months=1)
    runs = _container_runs(container_deaths.stop(), tmp_path)

    _assert_every_step_in_its_container(runs, docker_images)
    log = _task_log(tmp_path)
    assert log.count("mounts none") == len(MONTH_STEPS), (
        "no bind mount with the lake on S3 and an MLflow server"
    )
    assert SECRET not in log, "credentials must not reach the task log"
    assert not (tmp_path / "lake").exists() and not (tmp_path / "mlflow").exists()

    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    reference_home, reference_summary = local_demo
    _assert_same_outputs(
        Lake(env["MLOPS_LAKE_URI"]), Lake(str(reference_home / "lake")), summary, reference_summary
    )

    # the model files went through the MLflow server into the S3 server, and load back by alias
    import boto3
    import mlflow

    s3 = boto3.client("s3", endpoint_url=moto_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=artifact_bucket).get("Contents", [])]
    assert any(k.endswith("MLmodel") for k in keys), keys[:20]
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{USECASE}@champion")
    assert model.metadata.run_id
    # the same candidate won January in both runtimes, so the same version holds the alias
    assert summary["champion_version"] == str(reference_summary["months"][0]["promoted_version"])
