"""The approval task of the train DAGs (``approval.mode: required``): after a passed gate, Airflow's
``ApprovalOperator`` waits for a person (Required Actions in the UI, or ``PATCH .../hitlDetails``).

- The request's subject and body come from the run's gate decision and register result (pipelines.modeling.approval); the
  approvers named in the use case are its assigned users; the approver is told through the ``approval_requested``
  alert (task log; the use case's webhook or smtp connection when configured).
- Approve: promote runs and moves ``champion`` as an ``approval`` move made by the approver.
- Reject, or no answer within ``approval.timeout`` (the scheduler then applies the default, Reject): promote is
  skipped, the champion stays and the run ends green.
- Either way the answer (who, when, the comment, timed out or not) is recorded before the task ends; a failure to
  record fails the task, so promote never runs on an unrecorded approval.

Cheap at parse time: the decision is read when the task runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.notifiers import ApprovalNotifier


class ModelApprovalOperator(ApprovalOperator):
    """Ask a person to approve the gate's candidate as champion; record the answer (see the module doc)."""

    template_fields = (*ApprovalOperator.template_fields, "day")
    ui_color = "#fcf3cf"

    def __init__(
        self,
        *,
        usecase: str,
        approvers: list[str],
        response_timeout: timedelta,
        gate_task_id: str = "gate",
        register_task_id: str = "register",
        day: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["retries"] = 0  # a second request would ask again after an answer was recorded
        # the DAG's Params (mode, candidates, ...) arrive here too; the approval form asks only for a comment
        kwargs.pop("params", None)
        super().__init__(
            subject=f"[{usecase}] approve the gate's candidate as champion?",  # the decision's, at run time
            defaults=ApprovalOperator.REJECT,  # no answer in time: the champion stays
            params={
                "comment": Param(
                    "", type="string", description="why you approve or reject (recorded with your answer)"
                )
            },
            notifiers=[ApprovalNotifier(usecase=usecase)],
            assigned_users=[{"id": name, "name": name} for name in approvers] or None,
            response_timeout=response_timeout,
            **kwargs,
        )
        self.usecase = usecase
        self.day = day  # the run's date when it is not the logical date's (the train DAG's end_date Param)
        self.gate_task_id = gate_task_id
        self.register_task_id = register_task_id

    def _decision(self, context: Any) -> tuple[dict[str, Any], int]:
        """The run's gate decision and the registry version of its candidate; fails the task when the gate did
        not pass or register does not name the version (never ask about, or promote, an unknown version)."""
        ti = context["ti"]
        gate = ti.xcom_pull(task_ids=self.gate_task_id) or {}
        registered = ti.xcom_pull(task_ids=self.register_task_id) or {}
        if gate.get("passed") is not True:
            raise AirflowFailException(f"the gate did not pass ({gate.get('reasons')}): nothing to approve")
        version = registered.get("gate_candidate_version")
        if version is None or registered.get("gate_passed") is not True:
            raise AirflowFailException(
                f"register does not name the gate candidate's version ({registered}): nothing to approve"
            )
        return gate, int(version)

    def _platform(self) -> tuple[Any, Any, Any]:
        from pipelines.config import ConfigError, load_profile, load_usecase
        from pipelines.lake import Lake

        try:
            profile = load_profile()
            spec = load_usecase(self.usecase)
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        return spec, profile, Lake(profile.lake_uri)

    def _environment(self, profile: Any) -> dict[str, str]:
        from mlops_airflow.operators import s3_environment

        return s3_environment(profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}

    def execute(self, context: Any) -> Any:
        from mlops_airflow.operators import logical_day, patched_environ
        from pipelines.modeling.approval import report_links, request_text

        gate, version = self._decision(context)
        spec, profile, lake = self._platform()
        day = self.day or logical_day(context, spec.time.timezone)
        with patched_environ(self._environment(profile)):
            links = report_links(spec, profile, lake, day, str(context["run_id"]), gate)
        self.subject, self.body = request_text(spec, {**gate, "date": day}, version, links)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from mlops_airflow.operators import logical_day, patched_environ
        from pipelines.modeling.approval import record_answer

        if "error" in event:  # no answer and no default: the provider's own error
            return super().execute_complete(context=context, event=event)
        # recorded before the provider's part: on Reject it skips promote by raising, so nothing runs after it
        self.validate_chosen_options(event["chosen_options"])
        self.validate_params_input(event.get("params_input") or {})
        gate, version = self._decision(context)
        spec, profile, lake = self._platform()
        user = event.get("responded_by_user") or {}
        with patched_environ(self._environment(profile)):
            record = record_answer(
                spec,
                profile,
                lake,
                day=self.day or logical_day(context, spec.time.timezone),
                run_id=str(context["run_id"]),
                gate=gate,
                version=version,
                approved=list(event["chosen_options"]) == [self.APPROVE],
                by=user.get("id") or user.get("name"),
                at=event.get("responded_at"),
                comment=str((event.get("params_input") or {}).get("comment") or ""),
                timed_out=bool(event.get("timedout")),
            )
        self.log.info(
            "Version %s %s by %s: %s",
            version,
            record["status"],
            record["by"] or "nobody (timeout)",
            record["comment"],
        )
        super().execute_complete(context=context, event=event)  # Reject: skips promote (raises)
        return record
