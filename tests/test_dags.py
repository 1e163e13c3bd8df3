"""DAG integrity: the DAGs import, have the expected tasks, edges, retries and owners, and parse cheaply."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.config import list_usecases, load_usecase

REPO_ROOT = Path(__file__).resolve().parent.parent

HEAVY_MODULES = [
    "pandas",
    "pyspark",
    "tensorflow",
    "keras",
    "mlflow",
    "great_expectations",
    "sklearn",
    "boto3",
    "deltalake",
    "pyarrow",
]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


@pytest.mark.parametrize("usecase", list_usecases())
def test_expected_dags_tasks_and_edges(dagbag, usecase: str) -> None:
    expected = {
        f"{usecase}_ingest": {
            "wait_for_files": ["ingest"],
            "ingest": ["quarantine_check"],
            "quarantine_check": [],
        },
        f"{usecase}_features": {"features": []},
        f"{usecase}_score": {"wait_for_features": ["score"], "score": ["outcomes"], "outcomes": []},
        f"{usecase}_maintenance": {"maintain": []},
        f"{usecase}_models": {"models": []},
        f"{usecase}_monitor": {"monitor": ["retrain_early"], "retrain_early": []},
        f"{usecase}_train": {
            "train": ["evaluate"],
            "evaluate": ["gate", "report"],
            "gate": ["register", "report"],
            "register": ["gate_passed"],
            "gate_passed": ["keep_champion", "promote"],
            "promote": [],
            "keep_champion": [],
            "report": [],
        },
    }
    if load_usecase(usecase).schedules.train_nightly:
        expected[f"{usecase}_train_nightly"] = expected[f"{usecase}_train"]
    else:
        assert f"{usecase}_train_nightly" not in dagbag.dags, (
            "schedules.train_nightly: null makes no nightly DAG"
        )
    for dag_id, edges in expected.items():
        dag = dagbag.dags.get(dag_id)
        assert dag is not None, f"missing DAG {dag_id}"
        assert set(dag.task_dict) == set(edges), dag_id
        for task_id, downstream in edges.items():
            assert sorted(dag.task_dict[task_id].downstream_task_ids) == sorted(downstream), (dag_id, task_id)
        assert dag.doc_md, f"{dag_id} has no docs"
        assert usecase in dag.tags
        assert dag.max_active_runs == 1
        for task in dag.tasks:
            assert task.owner == "ml-platform", (dag_id, task.task_id)
            if task.task_id in {
                "ingest",
                "features",
                "train",
                "evaluate",
                "gate",
                "register",
                "promote",
                "report",
                "score",
                "maintain",
                "monitor",
            }:
                assert task.retries >= 1, (dag_id, task.task_id)


@pytest.mark.parametrize("dag_id", ["flight_delay_train", "flight_delay_train_nightly"])
def test_promote_never_waits_for_the_report(dagbag, dag_id: str) -> None:
    """The report (explanations) hangs off the gate beside register: promote is not downstream of it, so a slow
    or failed report never holds or fails a promotion, and it runs whether the gate passed or not (all done, one
    success: evaluate's scores exist) and the direct runner keeps the same topology."""
    from mlops_cli.runners import DirectRunner

    dag = dagbag.dags[dag_id]
    report = dag.task_dict["report"]
    assert "promote" not in report.get_flat_relative_ids(upstream=False)
    assert "report" not in dag.task_dict["promote"].get_flat_relative_ids(upstream=True)
    assert "report" not in dag.task_dict["keep_champion"].get_flat_relative_ids(upstream=True)
    assert report.upstream_task_ids == {"evaluate", "gate"}
    assert str(report.trigger_rule) in {"all_done_min_one_success", "TriggerRule.ALL_DONE_MIN_ONE_SUCCESS"}
    graph = DirectRunner.GRAPHS["train"]
    assert graph.index("report") > graph.index("gate") and "report" in DirectRunner.SIDE_STEPS


def test_the_direct_runner_runs_the_step_graphs_the_dags_check_themselves_against(
    dagbag, monkeypatch
) -> None:
    """One definition of each DAG's steps (mlops_airflow.wiring.STEP_GRAPHS): the direct runner runs it, and a DAG
    whose step tasks or their order differ from it fails to import, naming the difference."""
    from mlops_airflow import wiring
    from mlops_cli.runners import DirectRunner

    assert DirectRunner.GRAPHS is wiring.STEP_GRAPHS and DirectRunner.SIDE_STEPS is wiring.SIDE_STEPS
    kinds = {"ingest", "features", "score", "monitor", "train", "train_nightly"}
    checked = [d for d in dagbag.dags.values() if "mlops" in d.tags and set(d.tags) & kinds]
    assert len(checked) >= 6
    for dag in checked:
        kind = (
            "train" if "train_nightly" in dag.tags else next(k for k in dag.tags if k in wiring.STEP_GRAPHS)
        )
        wiring.check_step_graph(dag, kind)  # what the DAG file did when it was parsed
    score = dagbag.dags["flight_delay_score"]
    monkeypatch.setitem(wiring.STEP_GRAPHS, "score", ("outcomes", "score"))
    with pytest.raises(ValueError, match=r"step outcomes runs after \['score'\]"):
        wiring.check_step_graph(score, "score")
    monkeypatch.setitem(wiring.STEP_GRAPHS, "score", ("score",))
    with pytest.raises(ValueError, match="flight_delay_score: the DAG and mlops_airflow.wiring.STEP_GRAPHS"):
        wiring.check_step_graph(score, "score")
    monkeypatch.setitem(wiring.STEP_GRAPHS, "score", ("score", "outcomes"))
    monkeypatch.setattr(wiring, "SIDE_STEPS", frozenset({"score"}))
    with pytest.raises(ValueError, match="side step score has steps downstream"):
        wiring.check_step_graph(score, "score")


def test_every_dag_says_what_it_does_its_inputs_outputs_trigger_and_params(dagbag) -> None:
    """Each lifecycle DAG's documentation (shown by the UI) has its inputs, outputs, how to trigger it and every
    Param with its default and meaning."""
    documented = 0
    for dag_id, dag in dagbag.dags.items():
        if "mlops" not in dag.tags:
            continue
        documented += 1
        doc = dag.doc_md or ""
        for section in ("**Inputs:**", "**Outputs:**", "**How to trigger:**"):
            assert section in doc, (dag_id, section)
        for name in dag.params:
            described = dag.params.get_param(name).description
            assert described and f"- `{name}` (default" in doc and described in doc, (dag_id, name)
        if not dag.params:
            assert "**Params:** none." in doc, dag_id
    assert documented >= 7


def test_features_dag_runs_on_the_raw_asset(dagbag) -> None:
    from airflow.sdk import Asset

    dag = dagbag.dags.get("flight_delay_features")
    ingest = dagbag.dags.get("flight_delay_ingest")
    assert Asset("flight_delay_raw") in ingest.task_dict["ingest"].outlets
    assert "flight_delay_raw" in str(dag.timetable.asset_condition)


def test_monitor_dag_runs_when_predictions_or_outcomes_are_written(dagbag) -> None:
    from airflow.sdk import Asset

    score = dagbag.dags["flight_delay_score"]
    assert Asset("flight_delay_predictions") in score.task_dict["score"].outlets
    assert Asset("flight_delay_outcomes") in score.task_dict["outcomes"].outlets
    condition = str(dagbag.dags["flight_delay_monitor"].timetable.asset_condition)
    assert "flight_delay_predictions" in condition and "flight_delay_outcomes" in condition


def test_train_dag_params_and_schedules(dagbag) -> None:
    from pipelines.config import load_usecase

    usecase = load_usecase("flight_delay")
    train = dagbag.dags.get("flight_delay_train")
    assert train.params["mode"] == "full"
    assert train.params["candidates"] == [c.name for c in usecase.candidates]
    assert train.params["window_days"] == usecase.split.train_window_days
    assert "{{ params.window_days }}" in train.task_dict["train"].step_args
    assert train.timetable.expression == usecase.schedules.train_monthly
    nightly = dagbag.dags.get("flight_delay_train_nightly")
    assert nightly.timetable.expression == usecase.schedules.train_nightly
    assert "--mode" in nightly.task_dict["train"].step_args
    assert (
        nightly.task_dict["train"].step_args[nightly.task_dict["train"].step_args.index("--mode") + 1]
        == "refresh"
    )


def test_the_train_form_proposes_the_newest_date_the_lake_can_serve(tmp_path, monkeypatch) -> None:
    """The train DAG's Param end_date proposes the day after the features table's last partition (the extent the
    features writer records, read at parse time without Delta); empty before features ran and for an S3 lake
    (no network call while parsing). Every task of the run takes its date from the form's end_date, else from
    the logical date (scheduled runs, whose conf has no end_date)."""
    from datetime import date
    from types import SimpleNamespace

    from _model_fixtures import FAST_CANDIDATES, fast_usecase, use_tmp_platform, write_config_dir
    from _model_fixtures import write_feature_partitions as write_features
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.lake import Lake

    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase([FAST_CANDIDATES[0]])
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    dag_id = f"{usecase.name}_train"

    def parsed_train_dag():
        return DagBag(dag_folder=str(REPO_ROOT / "dags" / "train.py")).dags[dag_id]

    assert parsed_train_dag().params["end_date"] is None  # no features yet: nothing to propose
    write_features(Lake(str(tmp_path / "lake")), usecase, date(2013, 1, 1), 45, rows_per_day=20)
    train = parsed_train_dag()
    assert train.params["end_date"] == "2013-02-15"  # last partition 2013-02-14
    assert train.params.get_param("end_date").schema["format"] == "date"
    assert "2013-02-15" in train.doc_md and "`end_date`" in train.doc_md
    # each task of a run renders its date from the form's conf, or renders empty (the logical date's day)
    for task in train.tasks:
        if hasattr(task, "day"):
            for conf, expected in (({"end_date": "2013-02-10"}, "2013-02-10"), ({}, ""), (None, "")):
                rendered = task.render_template(task.day, {"dag_run": SimpleNamespace(conf=conf)})
                assert rendered == expected, (task.task_id, conf, rendered)
    assert {t.task_id for t in train.tasks if hasattr(t, "day")} >= {"train", "evaluate", "gate", "promote"}

    monkeypatch.setenv("MLOPS_LAKE_URI", "s3://bucket/lake")  # parsing never reaches for S3
    assert parsed_train_dag().params["end_date"] is None


def test_the_train_dags_of_a_use_case_promote_through_one_pool_slot(dagbag, airflow_db) -> None:
    """Both train DAGs put promote in the use case's pool; `python -m mlops_airflow.pools` creates every use case's
    pool with one slot (the scheduler never runs a task whose pool does not exist), and then the DagBag reports
    no task in a missing pool."""
    from airflow.models.pool import Pool

    for usecase in list_usecases():
        for kind in ("train", "train_nightly"):
            dag = dagbag.dags.get(f"{usecase}_{kind}")
            if dag is None:
                continue
            assert dag.task_dict["promote"].pool == f"{usecase}_train", (usecase, kind)
            assert {t.pool for t in dag.tasks if t.task_id != "promote"} == {Pool.DEFAULT_POOL_NAME}
    proc = subprocess.run(
        [sys.executable, "-m", "mlops_airflow.pools"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for usecase in list_usecases():
        assert f"pool {usecase}_train: 1 slot(s)" in proc.stdout
        assert Pool.get_pool(f"{usecase}_train").slots == 1
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"), known_pools={p.pool for p in Pool.get_pools()})
    assert not [w for w in bag.dag_warnings if "pool" in str(w.message)]


def test_models_dag_is_manual_with_params_in_the_train_pool(dagbag) -> None:
    """`<uc>_models`: no schedule, Params action/version/reason/force, one task in the use case's train pool (beside
    the gate's promote) that is never retried (a retried rollback would go back one champion further)."""
    for usecase in list_usecases():
        dag = dagbag.dags[f"{usecase}_models"]
        assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: manual runs only
        assert dict(dag.params) == {"action": "promote", "version": None, "reason": "", "force": False}
        assert dag.params.get_param("action").schema["enum"] == ["promote", "rollback"]
        task = dag.task_dict["models"]
        assert task.pool == f"{usecase}_train" and task.retries == 0
        assert "rollback" in dag.doc_md and "reason" in dag.doc_md


def test_models_dag_rolls_the_champion_back_on_a_real_registry(dagbag, airflow_db, serve_env) -> None:
    """`dag.test` of `<uc>_models` with action rollback: the champion goes back to the previous one, the move is
    recorded with the Airflow user and run; a promote of a version whose gate failed fails the task and moves
    nothing."""
    from datetime import date

    from _serve_fixtures import produce_day

    from pipelines.cli import run_step
    from pipelines.modeling import model_ops

    def trained(day: date, passed: bool, promote: bool) -> int:
        produce_day(serve_env, day, gate_passed=passed)
        argv = ["--usecase", "flight_delay", "--date", day.isoformat()]
        version = run_step(["register", *argv])["gate_candidate_version"]
        if promote:
            run_step(["promote", *argv])
        return version

    v1 = trained(date(2013, 3, 1), True, True)
    v2 = trained(date(2013, 4, 1), True, True)
    v3 = trained(date(2013, 5, 1), False, False)
    dag = dagbag.dags["flight_delay_models"]
    run = dag.test(run_conf={"action": "rollback", "reason": "v2 misbehaves"})
    assert str(getattr(run.state, "value", run.state)) == "success"
    moves = model_ops.history("flight_delay")["moves"]
    assert model_ops.history("flight_delay")["champion_version"] == v1
    last = moves[-1]
    assert (last["kind"], last["from_version"], last["to_version"]) == ("rollback", v2, v1)
    assert last["by"] == "dag_test" and last["run_id"] == run.run_id and last["reason"] == "v2 misbehaves"

    refused = dag.test(run_conf={"action": "promote", "version": v3, "reason": "try"})
    assert str(getattr(refused.state, "value", refused.state)) == "failed"
    assert model_ops.history("flight_delay")["champion_version"] == v1
    assert len(model_ops.history("flight_delay")["moves"]) == len(moves)


def test_score_runs_at_the_local_prediction_time_and_its_date_is_the_local_date(dagbag) -> None:
    """The score DAG's cron is read in the use case's time zone (18:00 New York, across a DST change), and a
    run's date is the local date of its logical date, not the next UTC day."""
    import pendulum
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    from mlops_airflow.operators import logical_day

    score = dagbag.dags.get("flight_delay_score")
    assert score.timetable.expression == "0 18 * * *" and str(score.timezone.name) == "America/New_York"
    scheduler_view = CronTriggerTimetable(score.timetable.expression, timezone=score.timezone)
    after = pendulum.datetime(2013, 3, 9, 23, 30, tz="UTC")  # 18:30 New York, the day before summer time
    info = scheduler_view.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(after, None, True)
    )
    local = info.logical_date.in_timezone("America/New_York")
    assert (local.date().isoformat(), local.hour, info.logical_date.hour) == ("2013-03-10", 18, 22)
    assert logical_day({"logical_date": info.logical_date}, "America/New_York") == "2013-03-10"
    assert logical_day({"logical_date": pendulum.datetime(2013, 3, 11, 1, tz="UTC")}, "America/New_York") == (
        "2013-03-10"
    )


def test_dag_files_parse_without_heavy_imports() -> None:
    """Parse cost is dominated by imports: DAG files must not pull pandas, Spark, TensorFlow, MLflow or GX."""
    script = textwrap.dedent(
        f"""
        import json, sys, time, runpy
        start = time.perf_counter()
        for name in ["ingest", "features", "train", "score", "maintenance", "models"]:
            runpy.run_path({str(REPO_ROOT / "dags")!r} + f"/{{name}}.py")
        heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
        print(json.dumps({{"heavy": heavy, "seconds": time.perf_counter() - start}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"DAG files import heavy modules at parse time: {report['heavy']}"


def test_an_invalid_use_case_file_fails_only_its_own_dags(tmp_path, monkeypatch) -> None:
    """A broken use case file beside a valid one: the valid one's DAGs load; the broken one's do not, and the
    import error (of dags/config_errors.py) names the file and the problem."""
    import shutil

    import yaml
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "config" / "platform.yaml", config / "platform.yaml")
    shutil.copy(
        REPO_ROOT / "config" / "usecases" / "flight_delay.yaml", config / "usecases" / "flight_delay.yaml"
    )
    broken = yaml.safe_load((REPO_ROOT / "config" / "usecases" / "flight_delay.yaml").read_text())
    broken["name"] = "broken_case"
    broken["time"]["timezone"] = "Mars/Olympus_Mons"
    (config / "usecases" / "broken_case.yaml").write_text(yaml.safe_dump(broken))
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(config))

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert {d for d in bag.dag_ids if d.startswith("flight_delay_")} >= {
        "flight_delay_ingest",
        "flight_delay_features",
        "flight_delay_train",
        "flight_delay_score",
    }
    assert not [d for d in bag.dag_ids if d.startswith("broken_case")]
    assert [Path(p).name for p in bag.import_errors] == ["config_errors.py"], bag.import_errors
    message = next(iter(bag.import_errors.values()))
    assert "broken_case.yaml" in message and "time.timezone" in message and "Mars/Olympus_Mons" in message
    assert "flight_delay.yaml" not in message
