"""Airflow's REST API (the api-server's FastAPI app) served in this process on loopback, sharing the test session's
metadata database, so that a test answers a Human-in-the-loop task while ``dag.test`` waits for it (Airflow 3.3's
``dag.test`` keeps a run whose task is ``awaiting_input`` alive until an answer arrives through an api-server).
Users are the SimpleAuthManager's, with the passwords given here."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """The core API on 127.0.0.1 (``create_app("core")`` under uvicorn in a thread) with ``users``
    (name -> (role, password))."""

    def __init__(self, folder: Path, users: dict[str, tuple[str, str]], monkeypatch: Any) -> None:
        passwords = folder / "passwords.json"
        passwords.write_text(json.dumps({name: password for name, (_, password) in users.items()}))
        monkeypatch.setenv(
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{n}:{r}" for n, (r, _) in users.items())
        )
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
        self.users = users
        import uvicorn
        from airflow.api_fastapi.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app("core"), host="127.0.0.1", port=self.port, log_level="warning", log_config=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the in-process Airflow API did not answer on {self.url}")

    def request(self, method: str, path: str, body: Any = None, user: str | None = None) -> tuple[int, Any]:
        """(HTTP status, JSON body) of one call, as ``user`` (a bearer token from /auth/token)."""
        headers = {"Content-Type": "application/json"}
        if user is not None:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def token(self, user: str) -> str:
        status, body = self.request(
            "POST", "/auth/token", {"username": user, "password": self.users[user][1]}
        )
        assert status in (200, 201), (status, body)
        return body["access_token"]

    def answer(
        self, dag_id: str, run_id: str, task_id: str, user: str, option: str, comment: str = ""
    ) -> tuple[int, Any]:
        """PATCH the task's hitlDetails as ``user``: choose ``option`` (Approve, Reject) with a comment."""
        from urllib.parse import quote

        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/-1/hitlDetails"
        )
        return self.request(
            "PATCH", path, {"chosen_options": [option], "params_input": {"comment": comment}}, user=user
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def when_awaiting_input(
    dag_id: str, task_id: str, act: Callable[[str], None], timeout_s: float = 600
) -> threading.Thread:
    """A thread that waits until ``task_id`` of a run of ``dag_id`` is ``awaiting_input`` and then calls
    ``act(run_id)``; an exception is kept in ``thread.error`` (the main thread is inside ``dag.test``)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    def run() -> None:
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                with create_session() as session:
                    ti = (
                        session.query(TaskInstance)
                        .filter_by(dag_id=dag_id, task_id=task_id, state=TaskInstanceState.AWAITING_INPUT)
                        .first()
                    )
                    run_id = ti.run_id if ti is not None else None
                if run_id is not None:
                    act(run_id)
                    return
                time.sleep(0.5)
            raise TimeoutError(f"{dag_id}.{task_id} never waited for input")
        except BaseException as exc:  # reported by the test after dag.test returns
            thread.error = exc  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, daemon=True)
    thread.error = None  # type: ignore[attr-defined]
    thread.start()
    return thread


def apply_response_timeouts() -> None:
    """One pass of the scheduler's sweep of ``awaiting_input`` tasks past their response timeout (it applies the
    request's defaults). ``dag.test`` runs no scheduler; this is the scheduler's own code, called directly."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()
