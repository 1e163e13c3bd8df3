"""<usecase>_train (monthly full retraining, manual with Params) and <usecase>_train_nightly (refresh of the
champion's model family): train -> evaluate -> gate -> register -> promote or keep the champion, and
gate -> report beside register: the explanations and the report page run in parallel with register and promote,
whether the gate passed or not, and nothing waits for them (a failed report never holds or fails a promotion).

Each step reads the results of its own run (the operator passes the Airflow run id as ``MLOPS_RUN_ID``), so a
manual run and the nightly run of one date never mix. The promote tasks of a use case's train DAGs share the pool
``<usecase>_train`` (one slot, ``mlops_airflow.pools``): promote compares the champion alias with the version its
gate compared against and then sets it, and the pool keeps a second promote out of that window."""

from datetime import timedelta

from airflow.sdk import DAG, Param
from airflow.task.trigger_rule import TriggerRule

from mlops_airflow.operators import GateBranchOperator, KeepChampionOperator, step_task
from mlops_airflow.pools import train_pool
from mlops_airflow.wiring import alert, check_step_graph, dag_kwargs, newest_trainable_date, usecases
from pipelines.config import UseCase, approval_required

# a run triggered from the form carries the Param end_date in its conf; scheduled runs, dag.test and the monitor's
# early retraining carry none and train on their logical date (a Param's default would reach scheduled runs too)
END_DATE_FROM_CONF = "{{ (dag_run.conf or {}).get('end_date') or '' }}"

APPROVAL_DOC = (
    " With `approval.mode: required` a passed gate waits on the task `approval` (Required Actions): Approve moves "
    "`champion` (recorded as an `approval` move by the approver), Reject or no answer in time keeps it."
)


def lifecycle(usecase: UseCase, train_args: list[str], day: str | None = None) -> None:
    """The tasks of one training run; ``day`` (a template) is the run's date when it is not the logical date's."""
    usecase_name = usecase.name
    approval = approval_required(usecase)
    train = step_task("train", usecase_name, step_args=train_args, day=day)
    evaluate = step_task("evaluate", usecase_name, day=day)
    gate = step_task("gate", usecase_name, day=day, on_failure_callback=alert(usecase_name, "gate_failed"))
    register = step_task("register", usecase_name, day=day)
    branch = GateBranchOperator(
        task_id="gate_passed",
        gate_task_id="gate",
        passed_task_id="approval" if approval else "promote",
        rejected_task_id="keep_champion",
    )
    promote = step_task("promote", usecase_name, day=day, pool=train_pool(usecase_name))
    keep = KeepChampionOperator(
        task_id="keep_champion",
        usecase=usecase_name,
        doc_md="The candidate did not pass the gate: nothing moves; the rejection is alerted (`gate_rejected`).",
    )
    # after the gate whatever it decided (a gate task that failed too: the page then says the decision is
    # pending), as long as evaluate succeeded: without evaluate's scores there is nothing to explain
    report = step_task("report", usecase_name, day=day, trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
    if approval:
        # approval.mode required: a person approves the passed candidate before promote moves `champion`;
        # Reject or no answer in time skips promote (the champion stays, the run ends green)
        from mlops_airflow.approval import ModelApprovalOperator

        ask = ModelApprovalOperator(
            task_id="approval",
            usecase=usecase_name,
            approvers=list(usecase.approval.approvers),
            day=day,
            response_timeout=timedelta(seconds=usecase.approval.timeout_seconds),
            doc_md="Waits for Approve or Reject (Required Actions) on the gate's candidate; no answer within "
            f"{usecase.approval.timeout} counts as Reject.",
        )
        train >> evaluate >> gate >> register >> branch >> [ask, keep]
        ask >> promote
    else:
        train >> evaluate >> gate >> register >> branch >> [promote, keep]
    [evaluate, gate] >> report


for usecase in usecases():
    candidates = [c.name for c in usecase.candidates]
    newest = newest_trainable_date(usecase)
    with DAG(
        **dag_kwargs(
            usecase,
            "train",
            schedule=usecase.schedules.train_monthly,
            doc="Monthly full retraining of every candidate on the configured window (manual runs take Params). "
            "The best candidate must beat the champion re-scored on the same holdout and pass the absolute, change "
            "and fairness thresholds; every candidate is registered, only a passed gate moves `champion`."
            + APPROVAL_DOC
            * approval_required(usecase),
            inputs="the features and labels tables (the versions are recorded), the champion from the registry",
            outputs="MLflow runs of the candidates, registered versions, the gate decision "
            "(`decisions/<usecase>/`), the `champion` alias when the gate passes, the evaluation report",
            trigger=f"monthly (`schedules.train_monthly`: {usecase.schedules.train_monthly}), early by the "
            "monitor DAG on drift or decay, or by hand: Trigger DAG with the Params below; `end_date` (the "
            "window's end) proposes the newest date the features table can serve, and a date it cannot serve "
            "fails at once, naming the dates it can.",
            params={
                "end_date": Param(
                    newest,
                    type=["null", "string"],
                    format="date",
                    description="the training window's end (exclusive), for a run by hand: proposed, the newest "
                    "date the lake can serve (the day after the features table's last partition"
                    + (f", {newest} when the DAG was parsed" if newest else ", unknown until features ran")
                    + "); empty: the run's logical date. Scheduled runs train on their logical date",
                ),
                "mode": Param(
                    "full",
                    enum=["full", "refresh"],
                    description="full: train every candidate named below; refresh: refit the champion's family only",
                ),
                "candidates": Param(
                    candidates,
                    type="array",
                    items={"enum": candidates},
                    minItems=1,
                    description="candidates to train",
                ),
                "window_days": Param(
                    usecase.split.train_window_days,
                    type="integer",
                    minimum=usecase.min_window_days,  # what train accepts: holdout + validation + a train day
                    description="training window in days before the logical date (the holdout is its end, the "
                    f"validation window before it): at least {usecase.min_window_days}",
                ),
            },
            render_template_as_native_obj=False,
        )
    ) as dag:
        lifecycle(
            usecase,
            [
                "--mode",
                "{{ params.mode }}",
                "--candidates",
                "{{ params.candidates | join(',') }}",
                "--window-days",
                "{{ params.window_days }}",
            ],
            day=END_DATE_FROM_CONF,
        )
    check_step_graph(dag, "train")
    globals()[dag.dag_id] = dag

    if usecase.schedules.train_nightly:
        with DAG(
            **dag_kwargs(
                usecase,
                "train_nightly",
                schedule=usecase.schedules.train_nightly,
                doc="Nightly refresh: refits the champion's model family on the latest window, through the same gate.",
                inputs="the features and labels tables, the champion's model family from the registry",
                outputs="a refitted candidate's MLflow run and registered version, the gate decision, the "
                "`champion` alias when the gate passes",
                trigger=f"its schedule (`schedules.train_nightly`: {usecase.schedules.train_nightly}), or by hand.",
            )
        ) as nightly:
            lifecycle(usecase, ["--mode", "refresh"])
        check_step_graph(nightly, "train")
        globals()[nightly.dag_id] = nightly
