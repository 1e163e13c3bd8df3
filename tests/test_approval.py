"""A person's approval between a passed gate and the champion (``approval.mode: required``), through Airflow:
`<uc>_train` runs under `dag.test` (steps in-process, synthetic features) and waits on the approval task; the
answer comes through the REST API of an api-server sharing the metadata database (`PATCH .../hitlDetails`), as the
Required Actions page sends it. Approve moves `champion` (an `approval` move by the approver, with the comment);
Reject leaves it where it was and the run ends green; no answer within the timeout (the scheduler's sweep, called
here since `dag.test` runs no scheduler) counts as Reject. The runs share one module world, in this order."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pipelines.context import run_result_key
from pipelines.lake import Lake

NEW_YORK = ZoneInfo("America/New_York")
USECASE = "flight_delay"
DAG_ID = f"{USECASE}_train"
USERS = {"alice": ("admin", "alice-pw"), "bob": ("admin", "bob-pw")}


def _states(dag_run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            ti.task_id: str(getattr(ti.state, "value", ti.state))
            for ti in dag_run.get_task_instances(session=session)
        }


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


@pytest.fixture(scope="module")
def world(airflow_db, tmp_path_factory):
    """A use case requiring alice's approval (3 s timeout), 45 days of synthetic features, the train DAGs parsed
    with it, a webhook receiving its alerts and the REST API in this process."""
    from _airflow_api import ApiServer
    from _model_fixtures import FAST_CANDIDATES, fast_usecase, use_tmp_platform, write_config_dir
    from _model_fixtures import write_feature_partitions as write_features
    from conftest import Webhook

    from pipelines.config import ApprovalSpec, Bound, GateSpec

    tmp = tmp_path_factory.mktemp("approval")
    monkeypatch = pytest.MonkeyPatch()
    use_tmp_platform(monkeypatch, tmp)
    # absolute bounds only: a later candidate of the same data passes against the champion, so a rejection
    # after the approval has a champion to keep
    gate = GateSpec(
        primary_metric="roc_auc",
        absolute={"roc_auc": Bound(min=0.5)},
        allow_absolute_only=True,
        infrastructure_check=False,
    )
    usecase = fast_usecase([FAST_CANDIDATES[0]]).model_copy(
        update={"gate": gate, "approval": ApprovalSpec(mode="required", approvers=["alice"], timeout="3s")}
    )
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp / "config", usecase)))
    monkeypatch.setenv("MLOPS_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    hook = Webhook()
    for key, value in hook.env().items():
        monkeypatch.setenv(key, value)
    lake = Lake(str(tmp / "lake"))
    write_features(lake, usecase, date(2013, 1, 1), 45, rows_per_day=60)

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags"))
    assert bag.import_errors == {}
    api = ApiServer(tmp, USERS, monkeypatch)
    yield {"dags": bag.dags, "lake": lake, "api": api, "webhook": hook, "usecase": usecase}
    api.stop()
    hook.close()
    monkeypatch.undo()


def _champion() -> int | None:
    from pipelines.config import load_profile, load_usecase
    from pipelines.modeling.model_ops import alias_version
    from pipelines.modeling.tracking import configure_mlflow

    spec = load_usecase(USECASE)
    # this world's registry: an earlier module of the process may have pointed MLflow's client elsewhere
    configure_mlflow(load_profile(), spec)
    return alias_version(spec, "champion")


def _run(world, hour: int, act):
    """One train run of 2013-02-10 (``hour``: its own run id) with ``act(run_id)`` once approval waits."""
    from _airflow_api import when_awaiting_input

    answering = when_awaiting_input(DAG_ID, "approval", act)
    dag_run = world["dags"][DAG_ID].test(logical_date=datetime(2013, 2, 10, hour, tzinfo=NEW_YORK))
    answering.join(timeout=30)
    assert answering.error is None, answering.error
    return dag_run


def test_the_dag_waits_on_the_approval_between_the_gate_and_promote(world) -> None:
    dag = world["dags"][DAG_ID]
    assert dag.task_dict["gate_passed"].passed_task_id == "approval"
    assert dag.task_dict["approval"].downstream_task_ids == {"promote"}
    assert dag.task_dict["approval"].assigned_users == [{"id": "alice", "name": "alice"}]
    assert world["dags"][f"{USECASE}_train_nightly"].task_dict["approval"].defaults == ["Reject"]


def test_approve_moves_the_champion_and_records_who_when_and_why(world) -> None:
    api, lake = world["api"], world["lake"]
    answers = {}

    def approve(run_id: str) -> None:
        # bob may use the DAG but is not an approver of this use case
        answers["bob"] = api.answer(DAG_ID, run_id, "approval", "bob", "Approve")
        answers["alice"] = api.answer(DAG_ID, run_id, "approval", "alice", "Approve", "metrics look right")

    assert _champion() is None
    dag_run = _run(world, 4, approve)
    assert answers["bob"][0] == 403, answers["bob"]
    assert answers["alice"][0] == 200, answers["alice"]
    states = _states(dag_run)
    assert states["approval"] == "success" and states["promote"] == "success", states
    assert states["keep_champion"] == "skipped" and str(dag_run.state) in ("success", "DagRunState.SUCCESS")
    version = _xcom(dag_run, "register")["gate_candidate_version"]
    assert _champion() == version

    # the request: subject and body from the gate decision, a link to the report, sent to the webhook
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session

    with create_session() as session:
        detail = next(d for d in session.query(HITLDetail).all() if d.task_instance.run_id == dag_run.run_id)
        subject, body = detail.subject, detail.body
    assert f"approve version {version} (logreg)" in subject and "roc_auc" in subject, subject
    assert "Checks passed" in body and "Checks failed" in body and "roc_auc_min" in body, body
    assert "http://127.0.0.1:5000/#/experiments/" in body and "/artifacts/evaluation/report.html" in body
    [alert] = world["webhook"].events("approval_requested")
    assert alert["subject"] == subject and alert["run_id"] == dag_run.run_id
    assert "Required Actions" in alert["message"] or "report.html" in alert["message"]

    # recorded: the run's approval result, the decision record, the version's tags and the alias move
    record = lake.read_json(run_result_key(USECASE, "2013-02-10", "approval", dag_run.run_id))
    assert (
        record["approved"] is True and record["by"] == "alice" and record["comment"] == "metrics look right"
    )
    assert record["version"] == version and record["at"]
    gate = _xcom(dag_run, "gate")
    decision = lake.read_json(gate["decision_uri"].removeprefix(lake.uri.rstrip("/") + "/"))
    assert decision["approval"]["by"] == "alice" and decision["decision_id"] == gate["decision_id"]
    from pipelines.modeling.model_ops import history, show

    info = show(USECASE, version)
    assert info["approval"]["tags"]["approval.status"] == "approved"
    assert info["approval"]["tags"]["approval.by"] == "alice"
    assert info["approval"]["tags"]["approval.comment"] == "metrics look right"
    [move] = [m for m in history(USECASE)["moves"] if m["alias"] == "champion"]
    assert move["kind"] == "approval" and move["by"] == "alice" and move["to_version"] == version
    assert "metrics look right" in move["reason"] and move["run_id"] == dag_run.run_id


def test_reject_keeps_the_champion_and_the_run_ends_green(world) -> None:
    api, lake = world["api"], world["lake"]
    before = _champion()
    assert before is not None  # the approved version of the test above

    def reject(run_id: str) -> None:
        status, body = api.answer(DAG_ID, run_id, "approval", "alice", "Reject", "not on a Friday")
        assert status == 200, body

    dag_run = _run(world, 5, reject)
    states = _states(dag_run)
    assert states["gate_passed"] == "success" and states["approval"] == "success", states
    assert states["promote"] == "skipped", states
    assert str(dag_run.state) in ("success", "DagRunState.SUCCESS")
    assert _champion() == before
    record = lake.read_json(run_result_key(USECASE, "2013-02-10", "approval", dag_run.run_id))
    assert (
        record["status"] == "rejected" and record["by"] == "alice" and record["comment"] == "not on a Friday"
    )
    version = _xcom(dag_run, "register")["gate_candidate_version"]
    from pipelines.modeling.model_ops import show

    assert show(USECASE, version)["approval"]["tags"]["approval.status"] == "rejected"


def test_no_answer_within_the_timeout_keeps_the_champion(world) -> None:
    import time

    from _airflow_api import apply_response_timeouts

    lake = world["lake"]
    before = _champion()

    def let_it_time_out(run_id: str) -> None:
        time.sleep(4)  # past the 3 s response timeout
        apply_response_timeouts()

    dag_run = _run(world, 6, let_it_time_out)
    states = _states(dag_run)
    assert states["approval"] == "success" and states["promote"] == "skipped", states
    assert str(dag_run.state) in ("success", "DagRunState.SUCCESS")
    assert _champion() == before
    record = lake.read_json(run_result_key(USECASE, "2013-02-10", "approval", dag_run.run_id))
    assert record["status"] == "timed_out" and record["approved"] is False and record["by"] is None


def test_promote_refuses_to_move_without_an_approval_of_its_run(world, monkeypatch) -> None:
    """A promote cleared or run by hand in a run with no approval moves nothing (fail closed)."""
    from _model_fixtures import make_context

    from pipelines.context import StepFailed
    from pipelines.steps import promote

    ctx = make_context(world["usecase"], date(2013, 2, 10))
    with pytest.raises(StepFailed, match="requires a person's approval"):
        promote.approval_of(ctx, 1)


def test_the_profile_default_applies_unless_the_use_case_says(monkeypatch) -> None:
    from _model_fixtures import fast_usecase

    from pipelines.config import ApprovalSpec, approval_required

    usecase = fast_usecase()
    assert approval_required(usecase) is False  # off by default: the DAGs keep their shape
    monkeypatch.setenv("MLOPS_APPROVAL", "required")
    assert approval_required(usecase) is True
    assert approval_required(usecase.model_copy(update={"approval": ApprovalSpec(mode="none")})) is False
    with pytest.raises(ValueError, match="approval.timeout"):
        ApprovalSpec(timeout="soon")
