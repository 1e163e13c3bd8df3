"""The MLflow server's users and what each may do (the compose stack's `mlflow-init`; docs/security.md).

MLflow's basic-auth app (`mlflow server --app-name basic-auth`, auth config docker/mlflow/basic_auth.ini) creates
its admin from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD on its first start. As that admin this
script then makes, idempotently (a password from the environment that changed is set again):

- the task user (MLFLOW_TASKS_USERNAME / MLFLOW_TASKS_PASSWORD): EDIT on every experiment and registered model:
  the pipeline's tasks log runs, register versions and move the ``champion`` alias (what they create they also
  MANAGE, as its creator);
- the serving user (MLFLOW_SERVE_USERNAME / MLFLOW_SERVE_PASSWORD): READ on every registered model and
  experiment: it loads the champion (the alias, the version, its artifacts) and can move nothing.

Every other authenticated user gets the config's default_permission (NO_PERMISSIONS); a request without
credentials gets 401. Standard library only: it runs in the mlops-mlflow image (`python /opt/mlops/mlflow_users.py`)
and in the tests.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

TASK_GRANTS = (("experiment", "*", "EDIT"), ("registered_model", "*", "EDIT"))
SERVE_GRANTS = (("experiment", "*", "READ"), ("registered_model", "*", "READ"))


class AuthSetupError(RuntimeError):
    pass


def _call(
    url: str, admin: tuple[str, str], method: str, path: str, body: dict | None = None
) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=data, method=method)
    token = base64.b64encode(f"{admin[0]}:{admin[1]}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _ok(status: int, text: str, what: str) -> None:
    if status != 200:
        raise AuthSetupError(f"{what}: HTTP {status}: {text[:300]}")


def _exists(status: int, text: str) -> bool:
    return status == 400 and "RESOURCE_ALREADY_EXISTS" in text


def ensure_user(url: str, admin: tuple[str, str], username: str, password: str) -> None:
    """``username`` exists with ``password`` (created, or its password set again)."""
    status, text = _call(
        url, admin, "POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password}
    )
    if _exists(status, text):
        status, text = _call(
            url,
            admin,
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            {"username": username, "password": password},
        )
    _ok(status, text, f"user {username!r}")


def grant(
    url: str, admin: tuple[str, str], username: str, resource_type: str, resource_id: str, level: str
) -> None:
    """``username`` holds exactly ``level`` on ``resource_type`` ``resource_id`` ("*": all of that type)."""
    body = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    status, text = _call(
        url, admin, "POST", "/api/3.0/mlflow/users/permissions/grant", {**body, "permission": level}
    )
    if _exists(status, text):  # granted before, perhaps at another level: grant it again at this one
        _ok(*_call(url, admin, "POST", "/api/3.0/mlflow/users/permissions/revoke", body), f"revoke {body}")
        status, text = _call(
            url, admin, "POST", "/api/3.0/mlflow/users/permissions/grant", {**body, "permission": level}
        )
    _ok(status, text, f"grant {level} on {resource_type} {resource_id!r} to {username!r}")


def wait_for(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AuthSetupError(f"the MLflow server at {url} did not answer /health in {timeout_s:.0f}s")
        time.sleep(2)


def setup(url: str, admin: tuple[str, str], tasks: tuple[str, str], serve: tuple[str, str]) -> None:
    """The task and serving users with their grants (module doc)."""
    for (username, password), grants in ((tasks, TASK_GRANTS), (serve, SERVE_GRANTS)):
        if not password:
            raise AuthSetupError(f"no password for the MLflow user {username!r}")
        ensure_user(url, admin, username, password)
        for resource_type, resource_id, level in grants:
            grant(url, admin, username, resource_type, resource_id, level)


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise AuthSetupError(f"{name} is not set (make stack-env writes it into .env)")
    return value


def main() -> int:
    try:
        url = _env("MLFLOW_TRACKING_URI", "http://mlflow:5000")
        admin = (_env("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), _env("MLFLOW_AUTH_ADMIN_PASSWORD"))
        tasks = (_env("MLFLOW_TASKS_USERNAME", "mlops-tasks"), _env("MLFLOW_TASKS_PASSWORD"))
        serve = (_env("MLFLOW_SERVE_USERNAME", "mlops-serve"), _env("MLFLOW_SERVE_PASSWORD"))
        wait_for(url)
        setup(url, admin, tasks, serve)
    except AuthSetupError as exc:
        print(f"mlflow-init: {exc}", file=sys.stderr)
        return 1
    print(f"mlflow-init: users {tasks[0]!r} (EDIT) and {serve[0]!r} (READ) are set up at {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
