"""Alerts through Airflow notifiers (mlops_airflow.notifiers), sent for real: a webhook and an SMTP server on
loopback receive them through Airflow connections defined in the environment; a connection that is configured
but missing, an smtp connection without recipients and an unknown type fail loudly instead of losing the alert.
The DAG-level paths (quarantine, late data, a rejected gate) run in test_airflow_tasks, test_time_as_observed and
test_e2e."""

from __future__ import annotations

import logging
import shutil
import socketserver
import threading
from email import message_from_bytes
from pathlib import Path

import pytest
import yaml

from pipelines.config import REPO_ROOT

USECASE = "flight_delay"
LOG = logging.getLogger("test_alerts")


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to receive one message per session: what a relay would be handed."""

    def handle(self) -> None:
        def reply(line: str) -> None:
            self.wfile.write(f"{line}\r\n".encode())

        reply("220 loopback ready")
        envelope: dict = {"rcpt": []}
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                reply("250 loopback")
            elif verb == "MAIL":
                envelope["from"] = command
                reply("250 OK")
            elif verb == "RCPT":
                envelope["rcpt"].append(command.split(":", 1)[1].strip(" <>"))
                reply("250 OK")
            elif verb == "DATA":
                reply("354 end with <CRLF>.<CRLF>")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                self.server.messages.append((envelope, message_from_bytes(data)))  # type: ignore[attr-defined]
                reply("250 queued")
            elif verb == "QUIT":
                reply("221 bye")
                return
            else:
                reply("250 OK")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    server.messages = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _config_with_alerts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alerts: dict) -> None:
    """A copy of config/ whose flight_delay file has this ``alerts`` section (MLOPS_CONFIG_DIR)."""
    shutil.copytree(REPO_ROOT / "config", tmp_path / "config")
    path = tmp_path / "config" / "usecases" / f"{USECASE}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["alerts"] = alerts
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(tmp_path / "config"))


def _context() -> dict:
    return {"exception": RuntimeError("the lake answered 503 while committing")}


def test_a_failure_reaches_the_webhook_with_its_error(webhook) -> None:
    from mlops_airflow.notifiers import MlopsNotifier

    MlopsNotifier(usecase=USECASE, event="task_failure")(_context())
    assert [alert["event"] for alert in webhook.received] == ["task_failure"]
    assert webhook.received[0]["message"] == "the lake answered 503 while committing"
    assert webhook.received[0]["subject"].startswith(f"[{USECASE}] task failed")


def test_an_event_left_out_of_alerts_on_is_only_logged(webhook, tmp_path, monkeypatch) -> None:
    from mlops_airflow.notifiers import alert_payload, send_alert

    _config_with_alerts(tmp_path, monkeypatch, {"on": ["quarantine"]})
    assert send_alert(alert_payload(USECASE, "gate_rejected", {}, message="kept v3"), LOG) is False
    assert send_alert(alert_payload(USECASE, "quarantine", {}, message="bad.csv"), LOG) is True
    assert [alert["event"] for alert in webhook.received] == ["quarantine"]


def test_an_alert_is_mailed_through_an_smtp_connection(smtp_server, tmp_path, monkeypatch) -> None:
    from mlops_airflow.notifiers import MlopsNotifier

    _config_with_alerts(tmp_path, monkeypatch, {"connection_id": "mlops_mail", "to": ["oncall@example.com"]})
    port = smtp_server.server_address[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_MAIL",
        f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true&from_email=mlops%40example.com",
    )
    MlopsNotifier(usecase=USECASE, event="late_data", message="every 'flights' file of 2013-01-05")(
        _context()
    )
    [(envelope, mail)] = smtp_server.messages
    assert envelope["rcpt"] == ["oncall@example.com"]
    assert mail["Subject"].startswith(f"[{USECASE}] data late past its deadline")
    body = "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
    assert "every 'flights' file of 2013-01-05" in body and "usecase: flight_delay" in body, body


def test_an_alert_that_cannot_be_sent_fails_loudly(tmp_path, monkeypatch) -> None:
    from mlops_airflow.notifiers import alert_payload, send_alert

    alert = alert_payload(USECASE, "quarantine", {}, message="bad.csv")
    monkeypatch.setenv("MLOPS_ALERTS_CONNECTION", "mlops_nowhere")
    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_NOWHERE", raising=False)
    with pytest.raises(RuntimeError, match="mlops_nowhere.*cannot be read.*AIRFLOW_CONN_MLOPS_NOWHERE"):
        send_alert(alert, LOG)

    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_NOWHERE", "smtp://127.0.0.1:1")
    with pytest.raises(ValueError, match="alerts.to"):
        send_alert(alert, LOG)

    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_NOWHERE", "postgres://127.0.0.1:1/db")
    with pytest.raises(ValueError, match="type 'postgres': use http, https"):
        send_alert(alert, LOG)


def test_an_unknown_event_or_alerts_field_is_refused(tmp_path, monkeypatch) -> None:
    from mlops_airflow.notifiers import MlopsNotifier
    from pipelines.config import ConfigError, load_usecase

    with pytest.raises(ValueError, match="unknown alert event 'drfit'"):
        MlopsNotifier(usecase=USECASE, event="drfit")
    _config_with_alerts(tmp_path, monkeypatch, {"on": ["quarantine", "drfit"]})
    with pytest.raises(ConfigError, match="alerts"):
        load_usecase(USECASE)
