"""A live Airflow (``airflow standalone``: api-server, scheduler, dag-processor, triggerer) and the MLflow UI over
one MLOPS_HOME, started as ``mlops ui`` starts them (mlops_cli.ui), for the browser test. Users are the
SimpleAuthManager's with known passwords (the approvers of the test use case)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from _airflow_api import free_port

START_TIMEOUT_S = 300


class Stack:
    def __init__(
        self, home: Path, users: dict[str, str], extra_env: dict[str, str], components: bool = False
    ) -> None:
        """``components``: Airflow's api-server, scheduler, dag-processor and triggerer as processes of their own
        (so that a test can kill one and start it again) and no MLflow UI, instead of ``airflow standalone``."""
        from mlops_cli.ui import prepare_airflow, ui_commands
        from pipelines.config import load_profile

        self.port, self.mlflow_port = free_port(), (None if components else free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}" if self.mlflow_port else None
        self.users = users
        (home / "airflow").mkdir(parents=True, exist_ok=True)
        passwords = home / "airflow" / "passwords.json"
        passwords.write_text(json.dumps(users))
        env, children = ui_commands(home, self.port, self.mlflow_port, load_profile())
        env.update(extra_env)
        env.update(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:admin" for name in users),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__CORE__PARALLELISM": "2",
            }
        )
        if self.mlflow_url:
            env["MLOPS_MLFLOW_UI_URL"] = self.mlflow_url
        if components:
            airflow = children[0][1][0]
            children = [
                ("api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.port)]),
                ("scheduler", [airflow, "scheduler"]),
                ("dag-processor", [airflow, "dag-processor"]),
                ("triggerer", [airflow, "triggerer"]),
            ]
            env.update(
                {
                    # what standalone sets for its children: a local executor, one JWT secret for the task
                    # tokens that every component checks, and the execution API the task processes call
                    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                }
            )
        for key in ("PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER"):
            env.pop(key, None)
        self.env = env
        self.logs = home / "stack-logs"
        self.logs.mkdir(exist_ok=True)
        prepare_airflow(env)
        self.processes: dict[str, subprocess.Popen] = {}
        self.argv = dict(children)
        for name in self.argv:
            self.start(name)
        self._wait(f"{self.url}/api/v2/monitor/health", "api-server" if components else "airflow")
        if self.mlflow_url:
            self._wait(f"{self.mlflow_url}/health", "mlflow")

    def start(self, name: str) -> None:
        """Start the child ``name`` (again), its output appended to ``<logs>/<name>.log``."""
        log = open(self.logs / f"{name}.log", "a")  # noqa: SIM115 (open while the child runs)
        self.processes[name] = subprocess.Popen(
            self.argv[name], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self, name: str) -> None:
        """SIGKILL the child ``name`` and every process of its group (for the scheduler: the executor's workers
        and the task processes they run), as a crashed host would lose them."""
        proc = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _wait(self, url: str, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}); see {self.logs / (name + '.log')}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status < 500:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{name} did not answer on {url} in {START_TIMEOUT_S} s")

    def token(self, user: str) -> str:
        status, body = self.request("POST", "/auth/token", {"username": user, "password": self.users[user]})
        assert status in (200, 201), (status, body)
        return body["access_token"]

    def request(self, method: str, path: str, body: Any = None, user: str | None = None) -> tuple[int, Any]:
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

    def wait_for(self, what: str, check: Any, timeout_s: float = 600, every_s: float = 2) -> Any:
        """Poll ``check()`` until it returns a truthy value; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every_s)
        raise TimeoutError(f"{what}: not reached in {timeout_s} s (logs in {self.logs})")

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            # standalone's components (scheduler, api-server, ...) share its process group and may outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    @classmethod
    def attach(cls, url: str, mlflow_url: str, users: dict[str, str], logs: Path) -> Stack:
        """A stack already running (to develop the browser test against one start)."""
        stack = cls.__new__(cls)
        stack.url, stack.mlflow_url, stack.users, stack.logs, stack.processes = (
            url,
            mlflow_url,
            users,
            logs,
            {},
        )
        return stack
