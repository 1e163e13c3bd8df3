"""Alerts through Airflow notifiers: a quarantined file, a rejected or failed gate, a task failure, data that did not
arrive by its deadline (and, from monitoring, drift and decay).

Every alert is written to the task log. When the use case's ``alerts.connection_id`` (or the profile's
``alerts_connection_id``, ``MLOPS_ALERTS_CONNECTION``) names an Airflow connection, the alert is also sent: a
connection of type ``http``/``https`` receives it as a JSON POST (a webhook: Slack, Teams, PagerDuty or an
in-house endpoint behind a small relay), one of type ``smtp`` as an e-mail to ``alerts.to``. A configured
connection that cannot be read or answered raises, so a lost alert shows as an error in the log (and fails the
task that sends it explicitly) instead of passing in silence.

Cheap to import: the DAG files build notifiers at parse time; the connection and the use case are read when an
alert is sent.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

TITLES = {
    "quarantine": "files quarantined",
    "gate_rejected": "candidate rejected by the gate",
    "gate_failed": "gate failed",
    "task_failure": "task failed",
    "late_data": "data late past its deadline",
    "drift": "drift",
    "decay": "performance decay",
    "approval_requested": "approval requested",
}
WEBHOOK_TIMEOUT_S = 10


def _context_value(context: Any, key: str) -> Any:
    try:
        return context.get(key)
    except AttributeError:
        return None


def alert_payload(
    usecase: str, event: str, context: Any, subject: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """The alert as sent: what happened, where (DAG, run, task, try) and the message (the task's error when a
    failure callback sends it)."""
    ti = _context_value(context, "ti") or _context_value(context, "task_instance")
    dag = _context_value(context, "dag")
    dag_run = _context_value(context, "dag_run")
    exception = _context_value(context, "exception")
    dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None)
    task_id = getattr(ti, "task_id", None)
    run_id = getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None)
    logical = _context_value(context, "logical_date")
    where = ".".join(part for part in (dag_id, task_id) if part)
    return {
        "usecase": usecase,
        "event": event,
        "subject": subject or f"[{usecase}] {TITLES.get(event, event)}" + (f": {where}" if where else ""),
        "message": message or (str(exception) if exception else ""),
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "try_number": getattr(ti, "try_number", None),
        "logical_date": logical.isoformat() if hasattr(logical, "isoformat") else logical,
    }


def _connection_id(usecase: str) -> tuple[str | None, list[str], list[str]]:
    """(connection id, e-mail recipients, events sent) of ``usecase``, from its file and the profile."""
    from pipelines.config import load_profile, load_usecase

    alerts = load_usecase(usecase).alerts
    return alerts.connection_id or load_profile().alerts_connection_id, list(alerts.to), list(alerts.on)


def _webhook_url(conn: Any) -> str:
    """The URL of an http/https connection: ``extra.url`` if given, else scheme://host[:port][/path] (Airflow
    parses the path of a connection URI into ``schema``; ``extra.endpoint`` may give it instead)."""
    extra = conn.extra_dejson or {}
    if extra.get("url"):
        return str(extra["url"])
    host = conn.host or ""
    if "://" in host:
        base = host.rstrip("/")
    else:
        base = f"{conn.conn_type}://{host}" + (f":{conn.port}" if conn.port else "")
    path = str(extra.get("endpoint") or conn.schema or "").lstrip("/")
    return f"{base}/{path}" if path else base


def post_webhook(conn: Any, alert: dict[str, Any]) -> None:
    """POST the alert as JSON; a password is sent as a bearer token (with a login: basic auth)."""
    import base64

    request = urllib.request.Request(
        _webhook_url(conn),
        data=json.dumps(alert, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if conn.password and conn.login:
        token = base64.b64encode(f"{conn.login}:{conn.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif conn.password:
        request.add_header("Authorization", f"Bearer {conn.password}")
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
        if response.status >= 300:
            raise RuntimeError(f"the alert webhook answered HTTP {response.status}")


def send_email(conn_id: str, to: list[str], alert: dict[str, Any]) -> None:
    """Send the alert as an e-mail through the smtp connection ``conn_id``."""
    if not to:
        raise ValueError(
            f"alerts of {alert['usecase']!r} go to the smtp connection {conn_id!r} but `alerts.to` lists no "
            "recipient: add the addresses to the use case file"
        )
    import html

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    body = "\n".join(f"{key}: {value}" for key, value in alert.items() if key != "subject")
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(
            to=to, subject=alert["subject"], html_content=f"<pre>{html.escape(body, quote=False)}</pre>"
        )


def send_alert(alert: dict[str, Any], log: Any) -> bool:
    """Log the alert and send it through the use case's connection, if any; True when it was sent."""
    log.warning("ALERT %s: %s\n%s", alert["event"], alert["subject"], alert["message"])
    conn_id, to, events = _connection_id(alert["usecase"])
    if conn_id is None:
        return False
    if alert["event"] not in events:
        log.info("alert %s not sent: not in alerts.on of %s", alert["event"], alert["usecase"])
        return False
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:
        raise RuntimeError(
            f"the alerts connection {conn_id!r} of {alert['usecase']!r} cannot be read ({exc}): define it "
            f"(e.g. AIRFLOW_CONN_{conn_id.upper()}=https://hooks.example.com/path) or unset alerts.connection_id"
        ) from exc
    if conn.conn_type in ("http", "https"):
        post_webhook(conn, alert)
    elif conn.conn_type in ("smtp", "email"):
        send_email(conn_id, to, alert)
    else:
        raise ValueError(
            f"the alerts connection {conn_id!r} has type {conn.conn_type!r}: use http, https (a webhook) or smtp"
        )
    log.info("alert %s sent through %s", alert["event"], conn_id)
    return True


class MlopsNotifier(BaseNotifier):
    """Send one kind of alert of a use case (a task or DAG callback, or called by an operator)."""

    template_fields = ("subject", "message")

    def __init__(
        self, *, usecase: str, event: str, subject: str | None = None, message: str | None = None
    ) -> None:
        super().__init__()
        if event not in TITLES:
            raise ValueError(f"unknown alert event {event!r}; one of {sorted(TITLES)}")
        self.usecase = usecase
        self.event = event
        self.subject = subject
        self.message = message

    def notify(self, context: Any) -> None:
        send_alert(alert_payload(self.usecase, self.event, context, self.subject, self.message), self.log)


class ApprovalNotifier(MlopsNotifier):
    """Tell the approvers that a candidate waits for them (event ``approval_requested``): the approval task's
    subject and body (the gate decision) and the link to its Required Actions page."""

    def __init__(self, *, usecase: str) -> None:
        super().__init__(usecase=usecase, event="approval_requested")

    def notify(self, context: Any) -> None:
        task = _context_value(context, "task")
        subject = getattr(task, "subject", None)
        body = getattr(task, "body", None) or ""
        try:
            link = task.generate_link_to_ui_from_context(context=context)
        except Exception:  # no [api] base_url configured: the body still says what to decide
            link = None
        message = body + (f"\n\nAnswer in Airflow (Required Actions): {link}" if link else "")
        send_alert(alert_payload(self.usecase, self.event, context, subject, message), self.log)
