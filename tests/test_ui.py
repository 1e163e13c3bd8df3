"""`mlops ui` from a fresh MLOPS_HOME: the Airflow UI (airflow standalone) and the MLflow UI answer on their
ports, our DAGs are there, and Ctrl-C (SIGINT) stops both cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

MLOPS = [sys.executable, "-m", "mlops_cli"]  # the mlops command of this tree
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_mlops_ui_answers_on_its_ports_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, mlflow_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "MLFLOW_"))}
    env["MLOPS_HOME"] = str(tmp_path / "home")
    # PATH without the virtual environment: `mlops ui` must find its own airflow
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    proc = subprocess.Popen(
        [*MLOPS, "ui", "--port", str(port), "--mlflow-port", str(mlflow_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if sum("UI ready" in line for line in lines) == 2:
                break
            time.sleep(1)
        assert sum("UI ready" in line for line in lines) == 2, "".join(lines)[-5000:]

        status, body = _get(f"http://127.0.0.1:{port}/api/v2/monitor/health")
        assert status == 200 and json.loads(body)["metadatabase"]["status"] == "healthy", body
        # the DAGs of this repository are served: log in with the generated admin password, list them
        passwords = tmp_path / "home" / "airflow" / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        token_request = urllib.request.Request(
            f"http://127.0.0.1:{port}/auth/token",
            data=json.dumps({"username": "admin", "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(token_request, timeout=10) as response:
            token = json.loads(response.read())["access_token"]
        dag_ids: set[str] = set()
        while time.monotonic() < deadline and "flight_delay_train" not in dag_ids:
            _, body = _get(
                f"http://127.0.0.1:{port}/api/v2/dags?limit=100", {"Authorization": f"Bearer {token}"}
            )
            dag_ids = {d["dag_id"] for d in json.loads(body)["dags"]}
            time.sleep(2)
        assert {"flight_delay_ingest", "flight_delay_train", "flight_delay_score"} <= dag_ids, dag_ids
        status, _ = _get(f"http://127.0.0.1:{mlflow_port}/health")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    reader.join(timeout=5)
    assert code == 0, "".join(lines)[-3000:]
    assert "stopping" in "".join(lines)
    time.sleep(1)
    assert not _listening(port) and not _listening(mlflow_port), "a UI still answers after Ctrl-C"
