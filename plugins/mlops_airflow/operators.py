"""Turn a pipelines step into an Airflow task for the configured runtime.

Operators here are cheap at parse time: they store the step name, the use case and templated arguments. The
runtime (``local`` = in the task's process, ``subprocess`` = ``python -m pipelines ...``; ``docker`` comes with the
container runtime) and the lake credentials are resolved in ``execute``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.branch import BaseBranchOperator
from airflow.sdk.exceptions import AirflowFailException

STEP_FAILED_EXIT = 1
CONFIG_ERROR_EXIT = 2


def logical_day(context: Any) -> str:
    """The partition date of this run: the logical date, or for an asset-triggered run (which has none in
    Airflow 3) the newest ``date`` carried by the triggering asset events. Never the wall clock."""
    logical = context.get("logical_date")
    if logical is not None:
        return logical.date().isoformat()
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


@contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class StepOperator(BaseOperator):
    """Run ``python -m pipelines <step> --usecase U --date D [args]`` as an Airflow task.

    The step's JSON result is returned (pushed to XCom). A step that fails on its input (exit 1, StepFailed)
    fails the task without retries, since retrying cannot fix bad input; with ``soft_fail_on_step_failure`` the
    result (``failed: true`` and the message) is pushed instead, so that committed work still emits its asset
    event and an explicit check task downstream fails the run. Other errors are retried.
    """

    template_fields: Sequence[str] = ("day", "step_args")
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
        super().__init__(**kwargs)
        self.step = step
        self.usecase = usecase
        self.step_args = list(step_args)
        self.day = day
        self.runtime = runtime
        self.soft_fail_on_step_failure = soft_fail_on_step_failure

    def argv(self, day: str) -> list[str]:
        args = [a for a in self.step_args if a not in ("", "None")]
        return [self.step, "--usecase", self.usecase, "--date", day, *args]

    def execute(self, context: Any) -> dict[str, Any]:
        from pipelines.config import ConfigError, load_profile

        try:
            profile = load_profile()
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        runtime = self.runtime or profile.task_runtime
        day = self.day or logical_day(context)
        argv = self.argv(day)
        env = s3_environment(profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
        self.log.info(
            "Running step %s (runtime %s): python -m pipelines %s", self.step, runtime, " ".join(argv)
        )
        if runtime == "local":
            result = self._run_in_process(argv, env)
        elif runtime == "subprocess":
            result = self._run_subprocess(argv, env)
        else:
            raise AirflowFailException(
                f"task_runtime {runtime!r} is not available in this build; use 'local' or 'subprocess' "
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

    def _run_subprocess(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            self.log.info("%s", line)
        code = proc.wait()
        if code == CONFIG_ERROR_EXIT:
            raise AirflowFailException(f"step {self.step}: configuration error (see the log above)")
        result = parse_result(lines)
        if code not in (0, STEP_FAILED_EXIT) or result is None:
            raise RuntimeError(f"step {self.step} exited with code {code} and no JSON result")
        return result

    def _emit_asset_events(self, context: Any, day: str, result: dict[str, Any]) -> None:
        if not self.outlets:
            return
        events = context.get("outlet_events")
        if events is None:
            return
        for outlet in self.outlets:
            events[outlet].extra = {"date": day, "usecase": self.usecase, "step": self.step}


def parse_result(lines: list[str]) -> dict[str, Any] | None:
    """The step result: the last line of output that is a JSON object."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("{") and text.endswith("}"):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                continue
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


def step_task(step: str, usecase: str, *, task_id: str | None = None, **kwargs: Any) -> StepOperator:
    """The one factory the DAGs use: a task that runs ``step`` for ``usecase`` on the configured runtime."""
    return StepOperator(task_id=task_id or step, step=step, usecase=usecase, **kwargs)
