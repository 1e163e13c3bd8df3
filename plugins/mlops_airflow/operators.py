"""Turn a pipelines step into an Airflow task for the configured runtime.

Operators here are cheap at parse time: they store the step name, the use case and templated arguments. The
runtime and the lake credentials are resolved in ``execute``, from the platform profile (or
``MLOPS_TASK_RUNTIME``), so switching runtime changes no DAG file:

- ``local``: the step runs in the task's own process;
- ``subprocess``: ``python -m pipelines <step> ...`` beside it;
- ``docker``: the same command in a container of the image for the step's kind (``pipelines.steps.STEP_KINDS``),
  started by Airflow's DockerOperator, which StepOperator extends.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import BaseOperator
from airflow.sdk.bases.branch import BaseBranchOperator
from airflow.sdk.exceptions import AirflowFailException

from pipelines.environ import patched_environ

if TYPE_CHECKING:
    from pipelines.config import Profile

STEP_FAILED_EXIT = 1
CONFIG_ERROR_EXIT = 2
# Worker variables handed to task containers when set: lake credentials when no Airflow connection holds them,
# and MLflow server credentials. Passed as private environment (never rendered or logged).
FORWARDED_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
)
CONTAINER_LABEL = "io.mlops"


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

    Returns {} when no connection is configured or defined, so the process environment applies."""
    if not conn_id:
        return {}
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # not defined: credentials come from the environment (documented)
        return {}
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


DOCKER_API_TIMEOUT_S = 600


class StepOperator(DockerOperator):
    """Run ``python -m pipelines <step> --usecase U --date D [args]`` as an Airflow task.

    The step's JSON result (the last JSON line of its output) is returned, i.e. pushed to XCom. A step that fails
    on its input (exit 1, StepFailed) fails the task without retries, since retrying cannot fix bad input; with
    ``soft_fail_on_step_failure`` the result (``failed: true`` and the message) is pushed instead, so that
    committed work still emits its asset event and an explicit check task downstream fails the run. Other errors
    are retried.

    With runtime ``docker`` the DockerOperator part runs the container: the image for the step's kind, the
    profile's lake and MLflow settings as environment, S3 credentials (from the Airflow connection
    ``s3_connection_id``, else the worker's environment) as private environment, a bind mount of the local
    paths the profile uses (none for an S3 lake with an MLflow server), ``mount_tmp_dir=False``, the profile's
    ``auto_remove``, labels naming the step, and a GPU request for GPU steps when ``docker.gpus`` is set and a
    candidate of the use case is marked ``gpu: true``.
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
        kwargs.setdefault("mount_tmp_dir", False)
        kwargs.setdefault("auto_remove", "success")
        # the engine's API calls (create, remove) can take minutes on a busy host; the provider's 60 s fails a
        # step whose container succeeded, and the retry runs it again
        kwargs.setdefault("timeout", DOCKER_API_TIMEOUT_S)
        if "execution_timeout" not in kwargs:
            kwargs["execution_timeout"] = step_execution_timeout(step)
        # the image, command, mounts and environment are chosen in execute, from the profile
        super().__init__(image="", **kwargs)
        self.step = step
        self.usecase = usecase
        self.step_args = list(step_args)
        self.day = day
        self.runtime = runtime
        self.soft_fail_on_step_failure = soft_fail_on_step_failure
        self._process: subprocess.Popen | None = None

    def argv(self, day: str) -> list[str]:
        args = [a for a in self.step_args if a not in ("", "None")]
        return [self.step, "--usecase", self.usecase, "--date", day, *args]

    def execute(self, context: Any) -> dict[str, Any]:
        from pipelines.config import ConfigError, load_profile, load_usecase

        try:
            profile = load_profile()
            timezone = load_usecase(self.usecase).time.timezone
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        runtime = self.runtime or profile.task_runtime
        day = self.day or logical_day(context, timezone)
        argv = self.argv(day)
        env = s3_environment(profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
        run_id = getattr(context.get("ti"), "run_id", None) or context.get("run_id")
        if run_id:
            env["MLOPS_RUN_ID"] = str(run_id)  # steps key their records by run (gate decisions)
        self.log.info(
            "Running step %s (runtime %s): python -m pipelines %s", self.step, runtime, " ".join(argv)
        )
        if runtime == "local":
            result = self._run_in_process(argv, env)
        elif runtime == "subprocess":
            result = self._run_subprocess(argv, env)
        elif runtime == "docker":
            try:
                result = self._run_container(context, profile, argv, day, env)
            except ConfigError as exc:
                raise AirflowFailException(str(exc)) from None
        else:
            raise AirflowFailException(
                f"task_runtime {runtime!r} is unknown; use 'local', 'subprocess' or 'docker' "
                "(config/platform.yaml or MLOPS_TASK_RUNTIME)"
            )
        if result.get("failed"):
            message = f"step {self.step} failed for {self.usecase} on {day}: {result.get('error')}"
            if not self.soft_fail_on_step_failure:
                raise AirflowFailException(message)
            self.log.error("%s (a check task downstream fails the run)", message)
        self._emit_asset_events(context, day, result)
        return result

    def _run_in_process(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        from pipelines.cli import run_step
        from pipelines.config import ConfigError
        from pipelines.context import StepFailed

        with patched_environ(env):
            try:
                return run_step(argv)
            except StepFailed as exc:
                return {"step": self.step, "failed": True, "error": str(exc), **exc.result}
            except ConfigError as exc:
                raise AirflowFailException(str(exc)) from None

    def step_command(self, argv: list[str]) -> list[str]:
        """The command of the subprocess runtime: the step's command line in this interpreter."""
        return [sys.executable, "-m", "pipelines", *argv]

    def _run_subprocess(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        # its own process group: stopping the task stops the step and what it started (Spark's JVM)
        proc = self._process = subprocess.Popen(
            self.step_command(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
            start_new_session=True,
        )
        lines: list[str] = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                self.log.info("%s", line)
            code = proc.wait()
        finally:  # the task timed out or was stopped while reading: the step does not run on, orphaned
            if proc.poll() is None:
                stop_process_group(proc, self.log)
        if code == CONFIG_ERROR_EXIT:
            raise AirflowFailException(f"step {self.step}: configuration error (see the log above)")
        result = parse_result(lines)
        if code not in (0, STEP_FAILED_EXIT) or result is None:
            raise RuntimeError(f"step {self.step} exited with code {code} and no JSON result")
        return result

    def on_kill(self) -> None:
        """Airflow stops the task (its ``execution_timeout``, or a person marking it failed): the step's process
        group (subprocess runtime) or its container (docker runtime) is stopped with it."""
        if self._process is not None and self._process.poll() is None:
            stop_process_group(self._process, self.log)
        if getattr(self, "container", None) is not None:
            super().on_kill()

    def _run_container(
        self, context: Any, profile: Profile, argv: list[str], day: str, secrets: dict[str, str]
    ) -> dict[str, Any]:
        """Run the step in its container through DockerOperator.execute and parse its result."""
        from airflow.providers.docker.exceptions import DockerContainerFailedException

        from pipelines.steps import GPU_STEPS, STEP_KINDS

        settings = profile.docker
        self.image = settings.image_for(STEP_KINDS[self.step])
        self.command = argv
        self.docker_url = settings.docker_url or os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock"
        self.docker_conn_id = settings.docker_conn_id
        self.network_mode = settings.network_mode
        self.auto_remove = settings.auto_remove
        self.force_pull = settings.force_pull
        self.mem_limit = settings.mem_limit
        self.mount_tmp_dir = False
        # every line comes back; the result is the last JSON line, whatever stderr printed after it
        self.xcom_all = True
        self.environment = {**container_environment(profile), "MLOPS_IMAGE": self.image}
        self._private_environment = {
            **{key: os.environ[key] for key in FORWARDED_SECRETS if os.environ.get(key)},
            **secrets,
        }
        self.mounts = local_mounts(profile)
        self.user = settings.user or (f"{os.getuid()}:{os.getgid()}" if self.mounts else None)
        self.device_requests = None
        if settings.gpus and self.step in GPU_STEPS and wants_gpu(self.usecase):
            from docker.types import DeviceRequest

            self.device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        ti = context.get("ti")
        self.labels = {
            f"{CONTAINER_LABEL}.step": self.step,
            f"{CONTAINER_LABEL}.usecase": self.usecase,
            f"{CONTAINER_LABEL}.date": day,
            f"{CONTAINER_LABEL}.dag_id": str(getattr(ti, "dag_id", "")),
            f"{CONTAINER_LABEL}.run_id": str(getattr(ti, "run_id", "")),
            f"{CONTAINER_LABEL}.try_number": str(getattr(ti, "try_number", "")),
        }
        self.log.info(
            "Container: image %s, engine %s, network %s, mounts %s, user %s, GPU %s",
            self.image,
            self.docker_url,
            self.network_mode or "default",
            [m["Source"] for m in self.mounts] or "none",
            self.user or "image default",
            "requested" if self.device_requests else "no",
        )
        try:
            lines = super().execute(context) or []
        except DockerContainerFailedException as exc:
            lines = [_text(line) for line in (exc.logs or [])]
            result = parse_result(lines)
            if result is not None and result.get("failed"):
                return result
            if any("CONFIG ERROR: " in line for line in lines):
                raise AirflowFailException(
                    f"step {self.step}: configuration error (see the log above)"
                ) from None
            raise
        if isinstance(lines, str):
            lines = [lines]
        result = parse_result([_text(line) for line in lines])
        if result is None:
            raise RuntimeError(f"step {self.step}: the container printed no JSON result (see the log above)")
        return result

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


def stop_process_group(process: subprocess.Popen, log: Any, grace_s: float = 10.0) -> None:
    """SIGTERM to the step's process group, SIGKILL to what is left after ``grace_s``."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        log.warning("Stopping the step's processes (process group %s, %s)", process.pid, sig.name)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader exited: make sure its children went with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        return


def _text(line: str | bytes) -> str:
    return line.decode(errors="replace") if isinstance(line, bytes) else str(line)


def wants_gpu(usecase_name: str) -> bool:
    """Whether any candidate of the use case is marked ``gpu: true``."""
    from pipelines.config import load_usecase

    return any(candidate.gpu for candidate in load_usecase(usecase_name).candidates)


def container_environment(profile: Profile) -> dict[str, str]:
    """The profile's settings as environment for a task container (no secrets): the container's own copy of
    config/platform.yaml then resolves to the same lake, MLflow and Spark as the worker's."""
    from pipelines.config import mlops_home

    env = {
        "MLOPS_HOME": str(mlops_home()),
        "MLOPS_LAKE_URI": profile.lake_uri,
        "MLFLOW_TRACKING_URI": profile.mlflow_tracking_uri,
        "MLOPS_SPARK_MASTER": profile.spark_master,
        "MLOPS_TASK_RUNTIME": "local",
    }
    if profile.mlflow_artifact_root:
        env["MLOPS_MLFLOW_ARTIFACT_ROOT"] = profile.mlflow_artifact_root
    if os.environ.get("MLOPS_PROFILE"):
        env["MLOPS_PROFILE"] = os.environ["MLOPS_PROFILE"]
    if os.environ.get("MLOPS_LOG_LEVEL"):
        env["MLOPS_LOG_LEVEL"] = os.environ["MLOPS_LOG_LEVEL"]
    env.update(profile.docker.environment)
    return env


def local_paths(profile: Profile) -> list[Path]:
    """Local folders the profile's lake and MLflow stores live in (none for S3 and an MLflow server)."""
    paths = []
    if "://" not in profile.lake_uri:
        paths.append(Path(profile.lake_uri))
    if profile.mlflow_tracking_uri.startswith("sqlite:///"):
        paths.append(Path(profile.mlflow_tracking_uri.removeprefix("sqlite:///")).parent)
    root = profile.mlflow_artifact_root
    if root and (root.startswith("file://") or ":/" not in root):
        paths.append(Path(root.removeprefix("file://")))
    return [p.resolve() for p in paths]


def local_mounts(profile: Profile) -> list[dict[str, Any]]:
    """Bind mounts (same path inside as outside) for the profile's local paths: MLOPS_HOME once when they all
    live under it, else each folder. ``docker.host_home`` translates MLOPS_HOME to the Docker host's path."""
    from docker.types import Mount

    from pipelines.config import mlops_home

    paths = local_paths(profile)
    if not paths:
        return []
    home = mlops_home()
    if all(p.is_relative_to(home) for p in paths):
        paths = [home]
    # one mount per outermost folder
    paths = [p for p in sorted(set(paths)) if not any(p != q and p.is_relative_to(q) for q in paths)]
    host_home = profile.docker.host_home
    mounts = []
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        source = Path(host_home) / path.relative_to(home) if host_home and path.is_relative_to(home) else path
        mounts.append(Mount(target=str(path), source=str(source), type="bind"))
    return mounts


def parse_result(lines: list[str]) -> dict[str, Any] | None:
    """The step result: the last JSON object with a ``step`` key that ends a line of output.

    Text before the object on its line is allowed: a container's stdout and stderr reach Airflow as one stream,
    so a line another stream left unfinished can run into the result's line."""
    for line in reversed(lines):
        text = line.strip()
        if not text.endswith("}"):
            continue
        start = text.find("{")
        while start >= 0:
            try:
                value = json.loads(text[start:])
            except json.JSONDecodeError:
                start = text.find("{", start + 1)
                continue
            if isinstance(value, dict) and "step" in value:
                return value
            break
    return None


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
    (pipelines.model_ops), run in the task's process whatever the step runtime (a registry call and one lake
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
        from pipelines import model_ops

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
