"""The Airflow side for real: the arrival trigger polls the lake, the sensor defers, the step operator runs a step
in-process and as a subprocess inside `dag.test`, and a quarantined file fails the ingest run at its check task
after the good files were committed."""

from __future__ import annotations

import asyncio
import threading
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from _ingest_fixtures import DAY1, flights_rows, weather_rows

from pipelines.context import run_result_key, safe_run_id
from pipelines.ingest.inbox import land_file, pending_files
from pipelines.lake import Lake, raw_table

NEW_YORK = ZoneInfo("America/New_York")  # the use case's time zone: DAG dates are local
USECASE = "flight_delay"


def _csv(frame) -> bytes:
    return frame.to_csv(index=False).encode()


def _xcom(dag_run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _states(dag_run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            ti.task_id: str(getattr(ti.state, "value", ti.state))
            for ti in dag_run.get_task_instances(session=session)
        }


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def test_trigger_fires_once_files_land(mlops_env: Path) -> None:
    from mlops_airflow.sensors import LandingFilesTrigger

    lake = Lake(str(mlops_env / "lake"))
    trigger = LandingFilesTrigger(USECASE, up_to="2013-01-01", poll_seconds=0.2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "mlops_airflow.sensors.LandingFilesTrigger" and "password" not in str(kwargs)

    # a file dated after the events predicted on up_to (January 2's) does not count; the one landed later does
    land_file(lake, USECASE, date(2013, 1, 3), "weather_2013-01-03.csv", _csv(weather_rows(date(2013, 1, 3))))
    timer = threading.Timer(
        1.0, land_file, args=(lake, USECASE, DAY1, "weather_2013-01-01.csv", _csv(weather_rows(DAY1)))
    )
    timer.start()

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=30))
    timer.join()
    assert event.payload == {"files": ["landing/flight_delay/2013-01-01/weather_2013-01-01.csv"]}


def test_sensor_defers_while_the_inbox_is_empty(mlops_env: Path) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from mlops_airflow.sensors import LandingArrivalSensor, LandingFilesTrigger

    sensor = LandingArrivalSensor(task_id="wait", usecase=USECASE, up_to="2013-01-31", poll_seconds=5)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(context={})
    assert isinstance(info.value.trigger, LandingFilesTrigger)
    assert info.value.method_name == "execute_complete"
    assert sensor.execute_complete({}, {"files": ["a"]}) == ["a"]


def test_ingest_dag_commits_good_files_and_fails_at_the_quarantine_check(
    airflow_db, dags, mlops_env, webhook
) -> None:
    """...and the quarantine reaches the alerts webhook (served here on loopback), once, naming the file."""
    lake = Lake(str(mlops_env / "lake"))
    land_file(lake, USECASE, DAY1, "flights_2013-01-01.csv", _csv(flights_rows(DAY1, n=30)))
    bad = flights_rows(DAY1, n=10, skip=40)
    bad.loc[3, "month"] = "13"
    land_file(lake, USECASE, DAY1, "flights_2013-01-01-late.csv", _csv(bad))
    dag_run = dags[f"{USECASE}_ingest"].test(logical_date=datetime(2013, 1, 1, 18, tzinfo=NEW_YORK))

    states = _states(dag_run)
    assert states == {"wait_for_files": "success", "ingest": "success", "quarantine_check": "failed"}
    assert str(getattr(dag_run.state, "value", dag_run.state)) == "failed"
    result = _xcom(dag_run, "ingest")
    assert result["failed"] is True and "flights_2013-01-01-late.csv" in result["error"]
    assert result["rows_committed"] == 30 and result["rows_quarantined"] == 10
    assert _xcom(dag_run, "wait_for_files") == [
        "landing/flight_delay/2013-01-01/flights_2013-01-01-late.csv",
        "landing/flight_delay/2013-01-01/flights_2013-01-01.csv",
    ]
    assert lake.partitions(raw_table(USECASE, "flights"))["2013-01-01"].rows == 30
    assert pending_files(lake, USECASE) == []

    # the check's failure is the quarantine alert (its own event, not a second, generic task_failure one)
    assert [alert["event"] for alert in webhook.received] == ["quarantine"], webhook.received
    alert = webhook.received[0]
    assert alert["usecase"] == USECASE and alert["dag_id"] == f"{USECASE}_ingest"
    assert alert["task_id"] == "quarantine_check" and alert["run_id"] == dag_run.run_id
    assert "flights_2013-01-01-late.csv" in alert["message"], alert
    assert alert["_authorization"] == "Bearer s3cret"  # the connection's password, never the config file's


def test_subprocess_runtime_pushes_the_last_json_line(airflow_db, dags, mlops_env, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_TASK_RUNTIME", "subprocess")
    dag_run = dags[f"{USECASE}_score"].test(logical_date=datetime(2013, 2, 1, 18, tzinfo=NEW_YORK))
    # no champion: the sensor has nothing to wait for, and the score step records that it scored nothing
    assert _states(dag_run) == {"wait_for_features": "success", "score": "success", "outcomes": "success"}
    result = _xcom(dag_run, "score")
    assert result["reason"] == "no champion yet" and result["date"] == "2013-02-01"
    # the subprocess wrote through the same lake, keyed by the Airflow run it was given (MLOPS_RUN_ID)
    key = run_result_key(USECASE, "2013-02-01", "score", dag_run.run_id)
    assert dag_run.run_id.startswith("manual__") and f"/run={safe_run_id(dag_run.run_id)}/" in key
    assert Lake(str(mlops_env / "lake")).read_json(key)["rows"] == 0


def test_a_manual_and_a_nightly_train_dag_run_of_one_date_keep_their_own_results(
    airflow_db, dags, tmp_path, monkeypatch
) -> None:
    """`<uc>_train` (manual, with Params) and `<uc>_train_nightly` on one date through `dag.test`, steps in-process:
    each run's steps read and write the results of their own Airflow run (the operator's MLOPS_RUN_ID), so the
    nightly run leaves the manual run's results as they were; promote runs in the use case's pool."""
    from _model_fixtures import FAST_CANDIDATES, fast_usecase, use_tmp_platform, write_config_dir
    from _model_fixtures import write_feature_partitions as write_features
    from airflow.utils.session import create_session

    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase([FAST_CANDIDATES[0]])  # logreg only, 35-day window
    usecase = usecase.model_copy(
        update={"gate": usecase.gate.model_copy(update={"infrastructure_check": False})}
    )
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    lake = Lake(str(tmp_path / "lake"))
    write_features(lake, usecase, date(2013, 1, 1), 45, rows_per_day=60)

    # the manual run as the trigger form makes it: the logical date is when it was triggered (a day the lake
    # cannot serve), the window's end is the Param end_date
    manual = dags[f"{USECASE}_train"].test(
        logical_date=datetime(2013, 3, 20, 4, tzinfo=NEW_YORK),
        run_conf={
            "end_date": "2013-02-10",
            "candidates": ["logreg"],
            "window_days": usecase.split.train_window_days,
        },
    )
    assert _states(manual)["promote"] == "success", _states(manual)
    manual_gate = lake.read_json(run_result_key(USECASE, "2013-02-10", "gate", manual.run_id))
    promoted = _xcom(manual, "promote")["champion_version"]

    nightly = dags[f"{USECASE}_train_nightly"].test(logical_date=datetime(2013, 2, 10, 5, tzinfo=NEW_YORK))
    states = _states(nightly)
    assert states["register"] == "success" and states["gate_passed"] == "success", states
    assert manual.run_id != nightly.run_id
    for dag_run in (manual, nightly):
        train = _xcom(dag_run, "train")
        evaluation = lake.read_json(run_result_key(USECASE, "2013-02-10", "evaluate", dag_run.run_id))
        gate = lake.read_json(run_result_key(USECASE, "2013-02-10", "gate", dag_run.run_id))
        assert train["result_uri"].endswith(run_result_key(USECASE, "2013-02-10", "train", dag_run.run_id))
        assert (
            evaluation["candidates"]["logreg"]["run_id"] == train["candidates"][0]["run_id"] == gate["run_id"]
        )
        assert gate["run"] == dag_run.run_id
    assert _xcom(manual, "train")["mode"] == "full" and _xcom(nightly, "train")["mode"] == "refresh"
    # the nightly run gated against the manual run's champion and left the manual run's decision as it was
    assert _xcom(nightly, "gate")["champion_version"] == str(promoted)
    assert lake.read_json(run_result_key(USECASE, "2013-02-10", "gate", manual.run_id)) == manual_gate
    with create_session() as session:
        pools = {ti.task_id: ti.pool for ti in manual.get_task_instances(session=session)}
    assert pools["promote"] == f"{USECASE}_train" and pools["train"] == "default_pool"


def test_s3_credentials_come_from_the_airflow_connection(
    airflow_db, dags, moto_server, new_bucket, monkeypatch
) -> None:
    """Lake on S3 with endpoint and keys only in an Airflow connection (no AWS_* variables): the sensor and the
    ingest task reach the bucket through it."""
    import json

    from mlops_airflow.operators import patched_environ, s3_environment

    bucket = new_bucket("conn")
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLOPS_PROFILE", "s3")
    monkeypatch.setenv("MLOPS_LAKE_URI", f"s3://{bucket}/lake")
    connection = {
        "conn_type": "aws",
        "login": "testing-key",
        "password": "testing-secret",
        "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_LAKE_S3", json.dumps(connection))
    env = s3_environment("mlops_lake_s3")
    assert env["AWS_ENDPOINT_URL"] == moto_server and env["AWS_ACCESS_KEY_ID"] == "testing-key"
    with patched_environ(env):
        lake = Lake(f"s3://{bucket}/lake")
        land_file(lake, USECASE, DAY1, "weather_2013-01-01.csv", _csv(weather_rows(DAY1)))

    dag_run = dags[f"{USECASE}_ingest"].test(logical_date=datetime(2013, 1, 1, 18, tzinfo=NEW_YORK))
    assert _states(dag_run) == {
        "wait_for_files": "success",
        "ingest": "success",
        "quarantine_check": "success",
    }
    assert _xcom(dag_run, "ingest")["rows_committed"] == 6
    with patched_environ(env):
        assert lake.partitions(raw_table(USECASE, "weather"))["2013-01-01"].rows == 6


# The CI log line that failed a container run's score task (its retry passed): the step's progress line to stderr
# had not ended when its JSON result to stdout arrived, and Docker's log stream holds both.
RUN_INTO_RESULT = (
    "score: model 'flight_delay' has no champion yet; nothing scored"
    '{"step": "score", "usecase": "flight_delay", "date": "2013-01-31", "scored": [], "rows": 0}'
)


def test_a_stderr_line_forwarded_between_two_reads_of_the_result_does_not_break_it() -> None:
    """Docker forwards a container's stdout and stderr as it reads each pipe: a progress line written to stderr
    before the result can reach the stream between two reads of the long JSON line on stdout (seen in a clean
    clone's container test: "the container printed no JSON result", and the retry then built nothing). Read
    apart (``attach(demux=True)``), each stream's lines are whole."""
    import logging

    from mlops_airflow.runtimes import log_lines, parse_result

    result = '{"step": "features", "built": ["2013-01-01"], "partitions": ["' + "p" * 5000 + '"]}'
    chunks = [
        (None, b"features: committed features version 0\n"),
        (result[:4096].encode(), None),
        (None, b"features: committed labels version 0: labels of 31 day(s)\n"),
        ((result[4096:] + "\n").encode(), None),
    ]
    lines = log_lines(iter(chunks), logging.getLogger("test"))
    assert lines == [
        "features: committed features version 0",
        "features: committed labels version 0: labels of 31 day(s)",
        result,
    ]
    assert parse_result(lines)["built"] == ["2013-01-01"]
    # the same chunks as one undivided stream (what attach gave before) lose the result
    merged = log_lines([part for pair in chunks for part in pair if part], logging.getLogger("test"))
    assert parse_result(merged) is None


def test_a_result_after_unfinished_text_on_its_line_is_still_the_result() -> None:
    from mlops_airflow.operators import parse_result

    result = parse_result(["INFO starting step", RUN_INTO_RESULT, "2026 WARNING a line after the result"])
    assert result == {
        "step": "score",
        "usecase": "flight_delay",
        "date": "2013-01-31",
        "scored": [],
        "rows": 0,
    }
    # braces in the text before it, and a later JSON object that is not a step result, do not confuse it
    assert (
        parse_result(["see {the docs} " + RUN_INTO_RESULT.split("scored", 1)[1], '{"level": "info"}'])["step"]
        == "score"
    )
    assert parse_result(["no result {here}", '{"step": "score"', "{}"]) is None


class _Writes:
    """A text stream that records each write, to check that lines are written whole."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_step_writes_its_progress_and_result_lines_whole(mlops_env, monkeypatch) -> None:
    """Each progress line and the JSON result reach the stream in one write with their newline, so the other
    stream cannot land inside them (``print`` writes the newline separately)."""
    import json
    import sys

    from pipelines.cli import main

    out, err = _Writes(), _Writes()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["score", "--usecase", USECASE, "--date", "2013-02-01"]) == 0
    assert any("nothing scored" in text for text in err.writes), err.writes
    for text in out.writes + err.writes:
        assert text.endswith("\n") and text.count("\n") == 1, text
    assert json.loads(out.writes[-1])["reason"] == "no champion yet"


def test_every_step_task_has_its_kinds_execution_timeout(dags) -> None:
    """Each step task carries the profile's `step_timeouts` of its kind as its `execution_timeout`."""
    from pipelines.config import load_profile
    from pipelines.steps import STEP_KINDS

    profile = load_profile()
    seen = set()
    for dag in dags.values():
        for task in dag.tasks:
            step = getattr(task, "step", None)
            if step is None:
                continue
            seen.add(step)
            assert task.execution_timeout.total_seconds() == profile.step_timeout(STEP_KINDS[step]), task
    assert {"ingest", "features", "train", "evaluate", "score"} <= seen


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for all purposes (its parent, this process for the child, has not reaped it yet)
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(")")[-1].split()[0] != "Z"


def _sleeping_step(pids: Path):
    """A StepOperator whose step process is a stand-in that starts a child and sleeps (the tests below are about
    the operator's processes; no real step can be made to hang on purpose)."""
    import sys

    from mlops_airflow.operators import StepOperator

    sleeper = (
        "import json, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '600'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pids)!r}, 'w').write(json.dumps([child.pid]))\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )

    class SleepingStep(StepOperator):
        def step_command(self, argv: list[str]) -> list[str]:
            return [sys.executable, "-c", sleeper]

    return SleepingStep(
        task_id="slow", step="ingest", usecase=USECASE, runtime="subprocess", day="2013-02-01"
    )


def _assert_stopped(pids: Path) -> None:
    import json
    import time

    [grandchild] = json.loads(pids.read_text())
    deadline = time.monotonic() + 15
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(grandchild), "the step's child process outlived the stopped task"


def test_a_step_past_its_execution_timeout_is_stopped_with_its_children(mlops_env, tmp_path) -> None:
    """Past its `execution_timeout` the task runner raises AirflowTaskTimeout in the task and calls `on_kill`
    (airflow.sdk.execution_time.task_runner, reproduced here with the same timeout helper: `dag.test` runs only
    DAGs of a bundle): the step's whole process group (the step and what it started, as Spark's JVM) stops."""
    import time

    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    pids = tmp_path / "pids.json"
    step = _sleeping_step(pids)
    started = time.monotonic()
    with pytest.raises(AirflowTaskTimeout):
        try:
            with timeout(5):
                step.execute(context={})
        except AirflowTaskTimeout:
            step.on_kill()
            raise
    assert time.monotonic() - started < 60
    _assert_stopped(pids)


def test_a_step_stopped_by_on_kill_takes_its_children_with_it(mlops_env, tmp_path) -> None:
    """A person marks the running task failed: Airflow calls `on_kill`, which stops the step's process group,
    and the task ends with the step's exit status, no result."""
    import time

    pids = tmp_path / "pids.json"
    step = _sleeping_step(pids)
    outcome: dict = {}

    def run() -> None:
        try:
            step.execute(context={})
        except Exception as exc:  # the step was stopped: no JSON result
            outcome["error"] = str(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids.exists(), "the stand-in step did not start"
    step.on_kill()
    worker.join(timeout=60)
    assert not worker.is_alive() and "no JSON result" in outcome.get("error", ""), outcome
    _assert_stopped(pids)


def test_a_configured_s3_connection_that_cannot_be_read_fails_closed(mlops_env, monkeypatch) -> None:
    """The profile names the lake's connection and it is not defined: the task fails and says how to define it,
    rather than running on the worker's own AWS_* variables (another lake, or other credentials). Only no
    connection configured means the environment applies."""
    from airflow.sdk.exceptions import AirflowException

    from mlops_airflow.operators import StepOperator, s3_environment

    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_NOWHERE", raising=False)
    assert s3_environment(None) == {} and s3_environment("") == {}
    with pytest.raises(
        AirflowException, match="'mlops_nowhere'.*AIRFLOW_CONN_MLOPS_NOWHERE=.*connections add"
    ):
        s3_environment("mlops_nowhere")

    # the s3 profile names mlops_lake_s3; the worker has credentials of its own, which must not be used instead
    monkeypatch.setenv("MLOPS_PROFILE", "s3")
    monkeypatch.setenv("MLOPS_LAKE_URI", "s3://some-bucket/lake")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-workers-own")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-workers-own")
    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_LAKE_S3", raising=False)
    step = StepOperator(task_id="ingest", step="ingest", usecase=USECASE, runtime="local", day="2013-01-01")
    with pytest.raises(AirflowException, match="'mlops_lake_s3'.*AIRFLOW_CONN_MLOPS_LAKE_S3="):
        step.execute(context={})


def test_building_step_tasks_starts_no_docker_client() -> None:
    """DAG parsing stays cheap: the operators module and a step task of the docker runtime import neither the
    Docker SDK nor the provider's operator, and make no runtime."""
    import os
    import subprocess
    import sys

    from pipelines.config import REPO_ROOT

    code = (
        "import sys\n"
        "from mlops_airflow.operators import StepOperator\n"
        "task = StepOperator(task_id='train', step='train', usecase='flight_delay', runtime='docker')\n"
        "assert task._runtime is None and task.container is None\n"
        "loaded = [m for m in ('docker', 'airflow.providers.docker.operators.docker') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('OK')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


class _FakeEngine:
    """The Docker API client calls DockerRuntime makes, recorded; the container prints ``output`` and exits
    with ``code``."""

    def __init__(self, output: list[str], code: int) -> None:
        self.output, self.code = output, code
        self.calls: list[tuple] = []
        self.created: dict = {}

    def images(self, name):
        return [{"Id": name}]

    def create_host_config(self, **kwargs):
        return kwargs

    def create_container(self, **kwargs):
        self.created = kwargs
        return {"Id": "c0ffee" * 10}

    def attach(self, **kwargs):
        text = "".join(f"{line}\n" for line in self.output).encode()
        return iter([text[:7], text[7:]])  # chunks that do not end lines

    def start(self, container_id):
        self.calls.append(("start", container_id))

    def wait(self, container_id):
        return {"StatusCode": self.code}

    def stop(self, container_id):
        self.calls.append(("stop", container_id))

    def remove_container(self, container_id, force=False):
        self.calls.append(("remove", container_id, force))


def _docker_step(monkeypatch, engine: _FakeEngine, *, step: str = "gate"):
    from mlops_airflow import runtimes
    from mlops_airflow.operators import StepOperator

    def client(runtime) -> _FakeEngine:
        runtime._client = engine
        return engine

    monkeypatch.setattr(runtimes.DockerRuntime, "client", client)
    return StepOperator(task_id=step, step=step, usecase=USECASE, runtime="docker", day="2013-02-01")


def test_the_docker_runtime_runs_the_step_in_a_labelled_container(mlops_env, monkeypatch, capsys) -> None:
    """The docker runtime's container, as the engine is asked for it: the image of the step's kind, the command,
    the profile as environment and secrets beside it (never logged), the local stores mounted, the labels; the
    last JSON line is the result, and the container is removed once it ended (auto_remove success)."""
    import json

    from pipelines.config import load_profile

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-logged")
    result = {"step": "gate", "usecase": USECASE, "date": "2013-02-01", "passed": True}
    engine = _FakeEngine(["progress", json.dumps(result), "a warning after it"], 0)
    step = _docker_step(monkeypatch, engine)
    ti = type("TI", (), {"dag_id": f"{USECASE}_train", "run_id": "manual__1", "try_number": 2})()
    assert step.execute(context={"ti": ti}) == result
    created = engine.created
    assert created["image"] == load_profile().docker.image_for("base")
    assert created["command"] == ["gate", "--usecase", USECASE, "--date", "2013-02-01"]
    assert created["environment"]["MLOPS_LAKE_URI"] == str(mlops_env / "lake")
    assert created["environment"]["MLOPS_TASK_RUNTIME"] == "local"
    assert created["environment"]["AWS_SECRET_ACCESS_KEY"] == "never-logged"
    assert created["environment"]["MLOPS_RUN_ID"] == "manual__1"
    assert created["labels"] == {
        "io.mlops.step": "gate",
        "io.mlops.usecase": USECASE,
        "io.mlops.date": "2013-02-01",
        "io.mlops.dag_id": f"{USECASE}_train",
        "io.mlops.run_id": "manual__1",
        "io.mlops.try_number": "2",
    }
    assert created["host_config"]["device_requests"] is None
    assert [m["Source"] for m in created["host_config"]["mounts"]]
    assert engine.calls == [("start", step.container["Id"]), ("remove", step.container["Id"], False)]
    log = capsys.readouterr().out  # the task log (structlog writes to stdout here)
    assert "never-logged" not in log and "a warning after it" in log and "Container: image mlops-base" in log


def test_the_docker_runtime_tells_a_step_failure_from_a_crash(mlops_env, monkeypatch) -> None:
    import json

    from airflow.sdk.exceptions import AirflowFailException

    failed = {"step": "gate", "failed": True, "error": "no evaluation for 2013-02-01"}
    with pytest.raises(AirflowFailException, match="gate failed .*no evaluation"):
        _docker_step(monkeypatch, _FakeEngine([json.dumps(failed)], 1)).execute(context={})
    with pytest.raises(AirflowFailException, match="configuration error"):
        _docker_step(monkeypatch, _FakeEngine(["CONFIG ERROR: bad"], 2)).execute(context={})
    with pytest.raises(RuntimeError, match="exited with code 137"):  # retried
        _docker_step(monkeypatch, _FakeEngine(["Killed"], 137)).execute(context={})
    with pytest.raises(RuntimeError, match="no JSON result"):
        _docker_step(monkeypatch, _FakeEngine(["done"], 0)).execute(context={})


def test_on_kill_stops_the_docker_runtimes_container(mlops_env, monkeypatch) -> None:
    import json

    engine = _FakeEngine([json.dumps({"step": "gate"})], 0)
    step = _docker_step(monkeypatch, engine)
    step.on_kill()  # before any container: nothing to stop
    assert engine.calls == []
    step.execute(context={})
    step.on_kill()
    assert engine.calls[-1] == ("stop", step.container["Id"])
