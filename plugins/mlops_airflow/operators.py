"""Turn a pipelines step into an Airflow task for the configured runtime.

Operators here are cheap at parse time: they store the step name, the use case and templated arguments. The
runtime and the lake credentials are resolved in ``execute``, from the platform profile (or
``MLOPS_TASK_RUNTIME``), so switching runtime changes no DAG file. StepOperator composes one of the runtimes of
:mod:`mlops_airflow.runtimes` for each try:

- ``local``: the step runs in the task's own process;
- ``subprocess``: ``python -m pipelines <step> ...`` beside it;
- ``docker``: the same command in a container of the image for the step's kind (``pipelines.steps.STEP_KINDS``),
  through the Docker engine's API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.branch import BaseBranchOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from mlops_airflow.runtimes import (  # noqa: F401 (importable from here, as before the runtimes module)
    CONFIG_ERROR_EXIT,
    CONTAINER_LABEL,
    DOCKER_API_TIMEOUT_S,
    FORWARDED_SECRETS,
    RUNTIMES,
    STEP_FAILED_EXIT,
    DockerRuntime,
    InProcessRuntime,
    StepRuntime,
    SubprocessRuntime,
    container_environment,
    local_mounts,
    local_paths,
    parse_result,
    stop_process_group,
    wants_gpu,
)
from mlops_airflow.runtimes import step_command as _step_command
from pipelines.environ import patched_environ


def logical_day(context: Any, timezone: str = "UTC") -> str:
    """The date of this run: the logical date's local date in ``timezone`` (the use case's, so an 18:00 New
    York run is that day, not the next UTC one; a @continuous run's: the end of its data interval), or for an asset-triggered run (which has none in Airflow 3)
    the newest ``date`` carried by the triggering asset events. Never the wall clock."""
    logical = context.get("logical_date")
    dag = context.get("dag")
    if type(getattr(dag, "timetable", None)).__name__ == "ContinuousTimetable":
        # a @continuous run's logical date is the start of its interval: for the first run, the DAG's start date
        # (years ago for a replayed use case); the run is about now, the end of its interval
        logical = context.get("data_interval_end") or logical
    if logical is not None:
        from zoneinfo import ZoneInfo

        return logical.astimezone(ZoneInfo(timezone)).date().isoformat()
    dates = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("date"):
                dates.append(str(extra["date"]))
    if dates:
        return max(dates)
    raise AirflowFailException(
        "This run has no logical date and no triggering asset event with a 'date' extra; trigger it with a "
        "logical date (e.g. `airflow dags trigger --logical-date ...`)."
    )


def s3_environment(conn_id: str | None) -> dict[str, str]:
    """AWS_* variables for the lake from an Airflow connection (login/password/extra endpoint_url, region_name).

    Returns {} only when no connection is configured (None or empty): the process environment applies. A
    configured connection that cannot be read fails closed, with how to define it: falling back to the worker's
    own AWS_* variables could reach another lake, or the right one with the wrong credentials."""
    if not conn_id:
        return {}
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise AirflowException(
            f"The lake's Airflow connection {conn_id!r} (the profile's s3_connection_id) cannot be read: "
            f"{type(exc).__name__}: {exc}. Define it, e.g. as the environment variable "
            f'AIRFLOW_CONN_{conn_id.upper()}=\'{{"conn_type": "aws", "login": "KEY", "password": '
            f'"SECRET", "extra": {{"endpoint_url": "http://minio:9000"}}}}\' or with `airflow connections add '
            f"{conn_id} --conn-type aws --conn-login KEY --conn-password SECRET --conn-extra "
            f'\'{{"endpoint_url": "http://minio:9000"}}\'`; or unset s3_connection_id to use the AWS_* '
            "variables of the environment"
        ) from exc
    extra = conn.extra_dejson or {}
    env = {}
    if conn.login:
        env["AWS_ACCESS_KEY_ID"] = conn.login
    if conn.password:
        env["AWS_SECRET_ACCESS_KEY"] = conn.password
    endpoint = extra.get("endpoint_url") or (conn.host or None)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    if extra.get("region_name"):
        env["AWS_DEFAULT_REGION"] = extra["region_name"]
    return env


class StepOperator(BaseOperator):
    """Run ``python -m pipelines <step> --usecase U --date D [args]`` as an Airflow task.

    The runtime (``runtime``, else the profile's ``task_runtime``) is made in ``execute``, one per try: an
    :class:`~mlops_airflow.runtimes.InProcessRuntime`, :class:`~mlops_airflow.runtimes.SubprocessRuntime` or
    :class:`~mlops_airflow.runtimes.DockerRuntime`; ``on_kill`` stops what it started. Constructing the operator
    (DAG parsing) reads the profile's timeout for the step's kind only: no Docker client, no step code.

    The step's JSON result (the last JSON line of its output) is returned, i.e. pushed to XCom. A step that fails
    on its input (exit 1, StepFailed) fails the task without retries, since retrying cannot fix bad input; with
    ``soft_fail_on_step_failure`` the result (``failed: true`` and the message) is pushed instead, so that
    committed work still emits its asset event and an explicit check task downstream fails the run. Other errors
    are retried. S3 credentials come from the Airflow connection ``s3_connection_id`` when the profile names one
    (a connection that cannot be read fails the task), else from the worker's environment.
    """

    template_fields: Sequence[str] = ("day", "step_args")
    template_fields_renderers: dict[str, str] = {}
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        step: str,
        usecase: str,
        step_args: Sequence[str] = (),
        day: str | None = None,
        runtime: str | None = None,
        soft_fail_on_step_failure: bool = False,
        **kwargs: Any,
    ) -> None:
        if "execution_timeout" not in kwargs:
            kwargs["execution_timeout"] = step_execution_timeout(step)
        super().__init__(**kwargs)
        self.step = step
        self.usecase = usecase
        self.step_args = list(step_args)
        self.day = day
        self.runtime = runtime
        self.soft_fail_on_step_failure = soft_fail_on_step_failure
        self._runtime: StepRuntime | None = None

    def argv(self, day: str) -> list[str]:
        args = [a for a in self.step_args if a not in ("", "None")]
        return [self.step, "--usecase", self.usecase, "--date", day, *args]

    def step_command(self, argv: list[str]) -> list[str]:
        """The command of the subprocess runtime: the step's command line in this interpreter."""
        return _step_command(argv)

    def make_runtime(self, name: str, profile: Any, day: str) -> StepRuntime:
        """The runtime called ``name`` for this try."""
        if name == InProcessRuntime.name:
            return InProcessRuntime(self.step, self.log)
        if name == SubprocessRuntime.name:
            return SubprocessRuntime(self.step, self.log, command=self.step_command)
        if name == DockerRuntime.name:
            return DockerRuntime(self.step, self.log, usecase=self.usecase, day=day, profile=profile)
        raise AirflowFailException(
            f"task_runtime {name!r} is unknown; use {', '.join(repr(n) for n in RUNTIMES)} "
            "(config/platform.yaml or MLOPS_TASK_RUNTIME)"
        )

    @property
    def container(self) -> dict[str, Any] | None:
        """The container of this try (docker runtime), once created."""
        return getattr(self._runtime, "container", None)

    def execute(self, context: Any) -> dict[str, Any]:
        from pipelines.config import ConfigError, load_profile, load_usecase

        try:
            profile = load_profile()
            timezone = load_usecase(self.usecase).time.timezone
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        name = self.runtime or profile.task_runtime
        day = self.day or logical_day(context, timezone)
        argv = self.argv(day)
        runtime = self._runtime = self.make_runtime(name, profile, day)
        env = s3_environment(profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
        run_id = getattr(context.get("ti"), "run_id", None) or context.get("run_id")
        if run_id:
            env["MLOPS_RUN_ID"] = str(run_id)  # steps key their records by run (gate decisions)
        self.log.info("Running step %s (runtime %s): python -m pipelines %s", self.step, name, " ".join(argv))
        try:
            result = runtime.run(argv, env, context)
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        if result.get("failed"):
            message = f"step {self.step} failed for {self.usecase} on {day}: {result.get('error')}"
            if not self.soft_fail_on_step_failure:
                raise AirflowFailException(message)
            self.log.error("%s (a check task downstream fails the run)", message)
        self._emit_asset_events(context, day, result)
        return result

    def on_kill(self) -> None:
        """Airflow stops the task (its ``execution_timeout``, or a person marking it failed): the runtime stops
        what it started (the step's process group, or its container)."""
        if self._runtime is not None:
            self._runtime.on_kill()

    def _emit_asset_events(self, context: Any, day: str, result: dict[str, Any]) -> None:
        if not self.outlets:
            return
        events = context.get("outlet_events")
        if events is None:
            return
        for outlet in self.outlets:
            events[outlet].extra = {"date": day, "usecase": self.usecase, "step": self.step}


def step_execution_timeout(step: str) -> timedelta | None:
    """The profile's ``step_timeouts`` for the kind of ``step`` (read when the DAG is parsed), as the task's
    ``execution_timeout``; None for a step of no known kind or a kind without a limit."""
    from pipelines.config import load_profile
    from pipelines.steps import STEP_KINDS

    kind = STEP_KINDS.get(step)
    seconds = None if kind is None else load_profile().step_timeout(kind)
    return None if seconds is None else timedelta(seconds=seconds)


class StepResultCheckOperator(BaseOperator):
    """Fail the run, without retries, when an upstream step reported ``failed`` (a blocking check)."""

    ui_color = "#fadbd8"

    def __init__(self, *, step_task_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.step_task_id = step_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        result = context["ti"].xcom_pull(task_ids=self.step_task_id) or {}
        if result.get("failed"):
            raise AirflowFailException(result.get("error") or f"{self.step_task_id} reported a failure")
        return {"checked": self.step_task_id, "ok": True}


class GateBranchOperator(BaseBranchOperator):
    """Follow ``passed_task_id`` when the gate passed, else ``rejected_task_id`` (a normal outcome)."""

    def __init__(
        self, *, gate_task_id: str, passed_task_id: str, rejected_task_id: str, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.gate_task_id = gate_task_id
        self.passed_task_id = passed_task_id
        self.rejected_task_id = rejected_task_id

    def choose_branch(self, context: Any) -> str:
        decision = context["ti"].xcom_pull(task_ids=self.gate_task_id) or {}
        if decision.get("passed") is True:
            self.log.info("Gate passed for %s: promoting", decision.get("candidate"))
            return self.passed_task_id
        self.log.warning("Gate not passed; the champion stays. Reasons: %s", decision.get("reasons"))
        return self.rejected_task_id


class KeepChampionOperator(BaseOperator):
    """The gate did not pass the candidate: the champion stays (a normal outcome, the run ends green), and the
    rejection is alerted (``gate_rejected``) with the checks that failed."""

    ui_color = "#fdebd0"

    def __init__(self, *, usecase: str, gate_task_id: str = "gate", **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.usecase = usecase
        self.gate_task_id = gate_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        from mlops_airflow.notifiers import alert_payload, send_alert

        decision = context["ti"].xcom_pull(task_ids=self.gate_task_id) or {}
        metric = decision.get("primary_metric")
        lines = [
            f"candidate {decision.get('candidate')} ({metric} {decision.get('candidate_value')}) against the "
            f"champion v{decision.get('champion_version')} ({metric} {decision.get('champion_value')}): "
            "the champion stays",
            *[f"failed: {reason}" for reason in decision.get("reasons") or []],
        ]
        send_alert(alert_payload(self.usecase, "gate_rejected", context, message="\n".join(lines)), self.log)
        return {"kept": decision.get("champion_version"), "reasons": decision.get("reasons") or []}


class RetrainTriggerOperator(BaseOperator):
    """After a monitor run: alert its drift and decay breaches (``drift``, ``decay``), then, when the monitor step
    asked for an early retraining (a breach in ``monitoring.retrain_on``, past the cool-down), trigger
    ``<usecase>_train`` for the monitored date with the reason in its conf. Skipped when nothing was asked or a
    training run of the use case is queued or running (never two in flight); the gate still decides."""

    ui_color = "#e8daef"
    template_fields = ("enabled",)

    def __init__(
        self, *, usecase: str, monitor_task_id: str = "monitor", enabled: str | bool = True, **kwargs: Any
    ) -> None:
        kwargs.setdefault("retries", 0)  # a second trigger would be a second retraining
        super().__init__(**kwargs)
        self.usecase = usecase
        self.monitor_task_id = monitor_task_id
        self.enabled = enabled

    def _train_dags(self) -> list[str]:
        from pipelines.config import load_usecase

        spec = load_usecase(self.usecase)
        return [
            f"{self.usecase}_train",
            *([f"{self.usecase}_train_nightly"] if spec.schedules.train_nightly else []),
        ]

    def execute(self, context: Any) -> dict[str, Any]:
        from datetime import datetime
        from zoneinfo import ZoneInfo

        from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
        from airflow.sdk.exceptions import AirflowSkipException

        from mlops_airflow.notifiers import alert_payload, send_alert
        from pipelines.config import load_usecase

        result = context["ti"].xcom_pull(task_ids=self.monitor_task_id) or {}
        retrain = result.get("retrain") or {}
        breaches = retrain.get("breaches") or []
        summary = (
            f"monitor {result.get('date')} (model v{result.get('model_version')}): "
            f"live {result.get('live')}, estimated {result.get('estimated')}, data drift {result.get('data_drift')}"
        )
        for event, kinds in (
            ("drift", ("data_drift", "prediction_drift")),
            ("decay", ("live_decay", "estimated_decay")),
        ):
            found = [b for b in breaches if b in kinds]
            if found:
                send_alert(
                    alert_payload(self.usecase, event, context, message=f"{', '.join(found)}; {summary}"),
                    self.log,
                )
        if not retrain.get("requested"):
            raise AirflowSkipException(f"no early retraining: {retrain.get('reason') or 'no breach'}")
        if str(self.enabled).strip().lower() not in ("true", "1", "yes"):
            raise AirflowSkipException(
                f"retraining asked ({retrain['reason']}), not triggered: Param retrain is off"
            )
        ti = context["ti"]
        in_flight = {
            dag_id: ti.get_dr_count(dag_id=dag_id, states=["queued", "running"])
            for dag_id in self._train_dags()
        }
        if any(in_flight.values()):
            raise AirflowSkipException(
                f"a training run is in flight ({in_flight}): not starting a second one"
            )
        spec = load_usecase(self.usecase)
        day = datetime.fromisoformat(str(result["date"])).date()
        # the monitored date, at the start of the day in the use case's time zone: train's logical day is D
        logical = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(spec.time.timezone))
        conf = {
            "reason": f"monitor {result['date']}: {retrain['reason']}",
            "triggered_by": f"{context['dag'].dag_id}/{context['run_id']}",
        }
        self.log.info("Triggering %s_train for %s: %s", self.usecase, day, conf["reason"])
        trigger = TriggerDagRunOperator(
            task_id=f"{self.task_id}_trigger",
            trigger_dag_id=f"{self.usecase}_train",
            conf=conf,
            logical_date=logical,
            openlineage_inject_parent_info=False,
        )
        trigger.execute(context)
        return {"triggered": f"{self.usecase}_train", "logical_date": logical.isoformat(), "conf": conf}


def step_task(step: str, usecase: str, *, task_id: str | None = None, **kwargs: Any) -> StepOperator:
    """The one factory the DAGs use: a task that runs ``step`` for ``usecase`` on the configured runtime."""
    return StepOperator(task_id=task_id or step, step=step, usecase=usecase, **kwargs)


class ModelOpsOperator(BaseOperator):
    """``mlops models promote|rollback`` as a task of the manual ``<usecase>_models`` DAG: the same functions
    (pipelines.modeling.model_ops), run in the task's process whatever the step runtime (a registry call and one lake
    append). Reads the run's Params ``action`` (promote, rollback), ``version``, ``reason`` and ``force``; the
    move is recorded as made by the user who triggered the run, with the Airflow run id. A refused move (gate not
    passed, nothing to roll back to, unknown version) fails the task with that message. No retries: a rollback
    retried after it moved would go back one champion further."""

    ui_color = "#fdebd0"

    def __init__(self, *, usecase: str, **kwargs: Any) -> None:
        kwargs["retries"] = 0
        super().__init__(**kwargs)
        self.usecase = usecase

    def execute(self, context: Any) -> dict[str, Any]:
        from pipelines.config import ConfigError, load_profile
        from pipelines.context import StepFailed

        params = context.get("params") or {}
        action = params.get("action")
        version = params.get("version")
        reason = str(params.get("reason") or "").strip()
        force = bool(params.get("force"))
        dag_run = context.get("dag_run")
        by = getattr(dag_run, "triggering_user_name", None) or "airflow"
        run_id = str(getattr(context.get("ti"), "run_id", None) or context.get("run_id") or "")
        try:
            profile = load_profile()
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        env = s3_environment(profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
        env["MLOPS_RUN_ID"] = run_id
        self.log.info(
            "models %s for %s: version=%s force=%s by=%s reason=%r",
            action,
            self.usecase,
            version,
            force,
            by,
            reason,
        )
        from pipelines.modeling import model_ops

        with patched_environ(env):
            try:
                if action == "rollback":
                    result = model_ops.rollback(self.usecase, reason=reason, by=by, run_id=run_id)
                elif action == "promote":
                    if version in (None, ""):
                        raise AirflowFailException(
                            "action 'promote' needs the Param 'version' (the registry version to promote; see "
                            f"`mlops models list --usecase {self.usecase}`)"
                        )
                    result = model_ops.promote(
                        self.usecase, int(version), force=force, reason=reason, by=by, run_id=run_id
                    )
                else:
                    raise AirflowFailException(
                        f"Param 'action' must be 'promote' or 'rollback', not {action!r}"
                    )
            except (StepFailed, ConfigError) as exc:
                raise AirflowFailException(str(exc)) from None
        self.log.info("%s", json.dumps(result, default=str))
        return json.loads(json.dumps(result, default=str))
