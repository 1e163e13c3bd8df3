"""The scheduler killed mid-run and started again: Airflow's components as processes of their own (api-server,
scheduler, dag-processor, triggerer over one SQLite metadata database, LocalExecutor), a train run of a fast
synthetic use case, and SIGKILL to the scheduler's whole process group (the scheduler, its executor's workers and
the step running in one of them, as a crashed host loses them) at the worst moment of the run: `register` has
created the model version and not yet finished (held there by the `register.version_created` failpoint,
pipelines.failpoints, so the kill lands there every time, not where a timer happens to fall).

The restarted scheduler finds the killed task instance without a heartbeat, fails that try and retries it; the
run then succeeds, and what it leaves is what an uninterrupted run leaves: one registered version for the run's
candidate (the retried register finds the version its killed try created instead of creating a second: without
that lookup this test fails with two versions of one training run), `champion` on it after exactly one recorded
alias move, one gate decision, the feature partitions untouched, and the candidate's evaluation metrics equal to
those of the same steps run once without a kill (a reference run of the steps on the same lake, under a run id of
its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from urllib.parse import quote

import pytest

from pipelines.config import REPO_ROOT

pytestmark = pytest.mark.e2e

USECASE = "flight_delay"
DAG_ID = f"{USECASE}_train"
DAY = "2013-02-10"
USERS = {"admin": "admin-pw"}
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fast use case (one candidate, absolute bounds, no approval, no schedules), 45 days of synthetic
    features, and Airflow's components started one by one with short heartbeat and orphan timeouts."""
    from _browser_stack import Stack
    from _model_fixtures import manual_usecase, use_tmp_platform, write_config_dir
    from _model_fixtures import write_feature_partitions as write_features

    from pipelines.lake import Lake

    home = tmp_path_factory.mktemp("scheduler-kill")
    monkeypatch = pytest.MonkeyPatch()
    use_tmp_platform(monkeypatch, home)
    usecase = manual_usecase()
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(home / "config", usecase)))
    lake = Lake(str(home / "lake"))
    write_features(lake, usecase, date(2013, 1, 1), 45, rows_per_day=60)
    live = Stack(
        home / "home",
        USERS,
        {
            "MLOPS_CONFIG_DIR": os.environ["MLOPS_CONFIG_DIR"],
            # register pauses once its model version exists: the kill lands there (removed for the restart)
            "MLOPS_FAILPOINTS": "register.version_created",
            # a killed task is found within seconds, not Airflow's default five minutes
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
        },
        components=True,
    )
    yield live, lake, usecase
    live.stop()
    monkeypatch.undo()


def _get(stack, path: str) -> dict:
    status, body = stack.request("GET", path, user="admin")
    assert status == 200, (path, status, body)
    return body


def _task(stack, run_id: str, task_id: str) -> dict:
    return _get(stack, f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}")


def _trigger(stack) -> str:
    stack.wait_for(
        f"{DAG_ID} parsed", lambda: stack.request("GET", f"/api/v2/dags/{DAG_ID}", user="admin")[0] == 200
    )
    status, body = stack.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False}, user="admin")
    assert status == 200, body
    status, body = stack.request(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"logical_date": f"{DAY}T10:00:00Z", "conf": {}},
        user="admin",
    )
    assert status in (200, 201), body
    return body["dag_run_id"]


def _kill_scheduler_in_register(stack, run_id: str, versions) -> None:
    """SIGKILL the scheduler's process group while `register` holds at its failpoint, its version created."""

    def held() -> bool:
        state = _get(stack, f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")["state"]
        assert state in ("queued", "running"), f"run {run_id} {state} before register held ({stack.logs})"
        return _task(stack, run_id, "register").get("state") == "running" and bool(versions())

    stack.wait_for("register's version created", held, timeout_s=RUN_TIMEOUT_S, every_s=0.5)
    scheduler = stack.processes["scheduler"]
    stack.kill("scheduler")
    deadline = time.monotonic() + 30  # SIGKILL is delivered at once; the exits of a busy group take a moment
    while (survivors := _group(scheduler.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not survivors, f"processes of the killed scheduler's group still run: {survivors}"


def _group(pgid: int) -> list[str]:
    """The live (not zombie) processes of a process group: pid, state and command."""
    ps = subprocess.run(["ps", "-e", "-o", "pgid=,pid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in ps.splitlines()]
    return [" ".join(row[1:]) for row in rows if row[0] == str(pgid) and not row[2].startswith("Z")]


def _reference_metrics(stack, lake, usecase) -> dict:
    """The candidate's evaluation metrics from the train and evaluate steps run once, without a kill, under a run
    id of their own (results are keyed by run, so it shares nothing with the killed run's records)."""
    from pipelines.context import run_result_key

    env = {**stack.env, "MLOPS_RUN_ID": "reference-without-kill"}
    for step in ("train", "evaluate"):
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines", step, "--usecase", usecase.name, "--date", DAY],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"reference {step} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    result = lake.read_json(run_result_key(usecase.name, DAY, "evaluate", "reference-without-kill"))
    return {name: candidate["metrics"] for name, candidate in result["candidates"].items()}


def test_the_scheduler_killed_mid_run_and_restarted_leaves_what_an_uninterrupted_run_leaves(world) -> None:
    from _model_fixtures import FAST_CANDIDATES
    from mlflow import MlflowClient

    from pipelines.config import load_profile
    from pipelines.context import run_result_key
    from pipelines.lake import features_table
    from pipelines.modeling.model_ops import read_moves
    from pipelines.modeling.tracking import configure_mlflow, model_name

    stack, lake, usecase = world
    configure_mlflow(load_profile(), usecase)
    client = MlflowClient()
    name = model_name(usecase)
    features_before = {day: p.rows for day, p in lake.partitions(features_table(usecase.name)).items()}
    run_id = _trigger(stack)
    _kill_scheduler_in_register(stack, run_id, lambda: client.search_model_versions(f"name = '{name}'"))
    killed_step = "register"
    stack.env.pop("MLOPS_FAILPOINTS")  # the restarted scheduler's retry runs through
    stack.start("scheduler")

    def finished() -> str | None:
        state = _get(stack, f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")["state"]
        return state if state in ("success", "failed") else None

    state = stack.wait_for(
        f"{run_id} finished after the restart", finished, timeout_s=RUN_TIMEOUT_S, every_s=3
    )
    assert state == "success", f"run {run_id} {state} after the scheduler's restart (logs in {stack.logs})"
    killed = _task(stack, run_id, killed_step)
    assert killed["state"] == "success" and killed["try_number"] >= 2, (
        f"the {killed_step} task killed with the scheduler should have been retried: {killed}"
    )

    # one version for the run's candidate, champion on it after one move, one decision, features untouched
    register = lake.read_json(run_result_key(usecase.name, DAY, "register", run_id))
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    assert [v["version"] for v in register["versions"]] == [int(versions[0].version)]
    assert client.get_model_version_by_alias(name, "champion").version == versions[0].version
    moves = read_moves(lake, usecase.name)
    assert [(m["alias"], int(m["to_version"])) for m in moves] == [("champion", int(versions[0].version))], (
        moves
    )
    gate = lake.read_json(run_result_key(usecase.name, DAY, "gate", run_id))
    assert gate["passed"] is True
    assert {
        day: p.rows for day, p in lake.partitions(features_table(usecase.name)).items()
    } == features_before

    # the model the retried steps trained is the one an uninterrupted run trains
    evaluate = lake.read_json(run_result_key(usecase.name, DAY, "evaluate", run_id))
    metrics = {name: candidate["metrics"] for name, candidate in evaluate["candidates"].items()}
    assert set(metrics) == {FAST_CANDIDATES[0].name}
    reference = _reference_metrics(stack, lake, usecase)
    assert json.dumps(metrics, sort_keys=True) == json.dumps(reference, sort_keys=True), (metrics, reference)
