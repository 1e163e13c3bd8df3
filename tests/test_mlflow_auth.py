"""The MLflow server with authentication, as the compose stack runs it (docs/security.md): a real `mlflow server
--app-name basic-auth` on loopback with the stack's auth config (docker/mlflow/basic_auth.ini, its user store under
tmp) and the users docker/mlflow/mlflow_users.py makes. No credentials: 401; the serving user (READ) reads and
loads the champion but cannot move it (403); the task user moves it through the project's own registry code
(pipelines.modeling.model_ops.move_alias) with its credentials from the environment. And, without Docker, the compose file
runs MLflow so, with every credential from the environment."""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
AUTH_DIR = REPO_ROOT / "docker" / "mlflow"
USECASE = "flight_delay"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _users_module():
    spec = importlib.util.spec_from_file_location("mlflow_users", AUTH_DIR / "mlflow_users.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server --app-name basic-auth` (SQLite store, proxied artifacts, all under tmp), its admin from the
    environment, the task and serving users made by mlflow_users.setup. Yields url and each user's credentials."""
    try:
        import flask_wtf
    except ImportError:
        pytest.fail("MLflow's basic-auth app needs Flask-WTF, from the mlflow-auth extra: run make setup")
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    config = configparser.ConfigParser()
    config.read(AUTH_DIR / "basic_auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{tmp / 'basic_auth.db'}"
    with (tmp / "basic_auth.ini").open("w") as handle:
        config.write(handle)
    admin = ("admin", secrets.token_urlsafe(16))
    users = {
        "tasks": ("mlops-tasks", secrets.token_urlsafe(16)),
        "serve": ("mlops-serve", secrets.token_urlsafe(16)),
    }
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(tmp / "basic_auth.ini"),
        MLFLOW_AUTH_ADMIN_USERNAME=admin[0],
        MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(16),
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        # where this test found Flask-WTF (the venv's site-packages, as a rule)
        PYTHONPATH=os.pathsep.join(
            p for p in (str(Path(flask_wtf.__file__).parent.parent), os.environ.get("PYTHONPATH")) if p
        ),
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(tmp / "artifacts"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server and its uvicorn worker stop together
    )
    try:
        deadline = time.monotonic() + 240  # two imports of MLflow and the migrations, on a busy machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        _users_module().setup(url, admin, users["tasks"], users["serve"])
        yield {"url": url, "admin": admin, **users}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _as(monkeypatch: pytest.MonkeyPatch, credentials: tuple[str, str] | None) -> None:
    """The MLflow client's credentials, as a task or service gets them: from the environment."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials[1])


def _set_alias(url: str, credentials: tuple[str, str] | None, version: str) -> int:
    """HTTP status of a raw 'set the champion alias' request."""
    import requests

    response = requests.post(
        f"{url}/api/2.0/mlflow/registered-models/alias",
        json={"name": USECASE, "alias": "champion", "version": version},
        auth=credentials,
        timeout=30,
    )
    return response.status_code


def _log_model(seed: int) -> str:
    """A small scikit-learn model logged and recorded as the train step does (skops, its digest); its URI."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from pipelines.modeling.tracking import SKOPS_TRUSTED_TYPES, record_logged_digest

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] + rng.normal(scale=0.1, size=40) > 0).astype(int)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(x, y),
            name="model",
            pyfunc_predict_fn="predict_proba",
            pip_requirements=["scikit-learn"],
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
        record_logged_digest(info)
    return info.model_uri


def test_only_the_task_user_moves_the_champion(
    auth_server: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from pipelines.config import load_profile, load_usecase
    from pipelines.lake import Lake
    from pipelines.modeling.model_ops import ModelOpsError, move_alias, read_moves
    from pipelines.modeling.tracking import champion_version, configure_mlflow, load_model

    url = auth_server["url"]
    monkeypatch.setenv("MLOPS_PROFILE", "stack")  # the stack's registry: artifacts through the server's proxy
    monkeypatch.delenv("MLOPS_MLFLOW_ARTIFACT_ROOT", raising=False)  # at the server's mlflow-artifacts:/<id>
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    spec = load_usecase(USECASE)
    lake = Lake(str(tmp_path / "lake"))

    # the task user (its credentials from the environment, as the task containers get them) trains, registers
    # and promotes through the project's own code
    _as(monkeypatch, auth_server["tasks"])
    configure_mlflow(load_profile(), spec)
    # before any model is registered, the champion is none, not an error (the auth app answers 403 for a name that
    # does not exist): what score and the scoring service ask in a new stack
    assert champion_version(spec) is None
    _as(monkeypatch, auth_server["serve"])
    assert champion_version(spec) is None
    _as(monkeypatch, auth_server["tasks"])
    model_uri = _log_model(seed=1)
    for _ in (1, 2):  # two versions (of one logged model: logging is the slow part)
        mlflow.register_model(model_uri, USECASE)
    move_alias(spec, lake, 1, kind="promote", by="test", reason="first champion", expected_from=None)
    assert int(champion_version(spec).version) == 1

    # no credentials: 401, from the REST API and from the project's code alike
    _as(monkeypatch, None)
    assert _set_alias(url, None, "2") == 401
    with pytest.raises(Exception, match="(?s)401|not authenticated"):  # noqa: B017  (MLflow's RestException)
        champion_version(spec)

    # the serving user: reads the alias and the version and loads the champion (verified against its digest,
    # the artifacts through the proxy), but moving the alias is refused (403) and fails closed in move_alias
    _as(monkeypatch, auth_server["serve"])
    assert _set_alias(url, auth_server["serve"], "2") == 403
    champion = champion_version(spec)
    assert int(champion.version) == 1
    assert MlflowClient().get_model_version(USECASE, "2").version == "2"
    model = load_model(f"models:/{USECASE}@champion")
    assert model.predict(np.zeros((2, 3))).shape[0] == 2
    with pytest.raises(
        ModelOpsError, match="(?s)could not be set.*(403|PERMISSION_DENIED|Permission denied)"
    ):
        move_alias(spec, lake, 2, kind="promote", by="serve", reason="not allowed", expected_from=1)
    assert [move["to_version"] for move in read_moves(lake, USECASE)] == [
        1
    ]  # the refused move left no record

    # the task user moves it on
    _as(monkeypatch, auth_server["tasks"])
    move_alias(spec, lake, 2, kind="promote", by="test", reason="better", expected_from=1)
    assert int(champion_version(spec).version) == 2
    assert [move["to_version"] for move in read_moves(lake, USECASE)] == [1, 2]
    # a wrong password is no better than none
    assert _set_alias(url, (auth_server["tasks"][0], "wrong-password"), "1") == 401

    # mlflow-init again with a new task password (rotated in .env): the old one no longer opens anything
    tasks_user, old_password = auth_server["tasks"]
    rotated = (tasks_user, secrets.token_urlsafe(16))
    _users_module().setup(url, auth_server["admin"], rotated, auth_server["serve"])
    assert _set_alias(url, (tasks_user, old_password), "1") == 401
    _as(monkeypatch, rotated)
    assert int(champion_version(spec).version) == 2


# ----------------------------------------------------------------------------------------- the compose file

SECRET_VARIABLES = (
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_TASKS_PASSWORD",
    "MLFLOW_SERVE_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
)
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):\?[^}]*make stack-env[^}]*\}$")


def _required_variable(value: str) -> str:
    """The name of the variable ``value`` requires (``${NAME:?... make stack-env ...}``), else a failure."""
    match = REQUIRED.match(str(value))
    assert match, f"{value!r} is not a required variable from .env or the environment"
    return match["name"]


def test_the_compose_file_runs_mlflow_with_authentication_and_no_secret_in_it() -> None:
    """Read as written (no Docker): the server's app is basic-auth with the committed config, and every
    password or key of it, of its users and of its clients is a required variable (`make stack-env`)."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/opt/mlops/mlflow-auth.ini"
    assert _required_variable(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == "MLFLOW_ADMIN_PASSWORD"
    assert _required_variable(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == "MLFLOW_FLASK_SECRET_KEY"
    assert any(str(volume).endswith(":/var/lib/mlops/mlflow-auth") for volume in mlflow["volumes"])

    init = services["mlflow-init"]
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert _required_variable(init["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"]) == "MLFLOW_ADMIN_PASSWORD"
    assert _required_variable(init["environment"]["MLFLOW_TASKS_PASSWORD"]) == "MLFLOW_TASKS_PASSWORD"
    assert _required_variable(init["environment"]["MLFLOW_SERVE_PASSWORD"]) == "MLFLOW_SERVE_PASSWORD"

    # each client its own user: the Airflow services (and the task containers they start, which get it as a
    # private variable) the task user, the scoring service the read-only one
    airflow = services["airflow-scheduler"]["environment"]
    serve = services["serve"]["environment"]
    assert airflow["MLFLOW_TRACKING_USERNAME"] == init["environment"]["MLFLOW_TASKS_USERNAME"]
    assert _required_variable(airflow["MLFLOW_TRACKING_PASSWORD"]) == "MLFLOW_TASKS_PASSWORD"
    assert serve["MLFLOW_TRACKING_USERNAME"] == init["environment"]["MLFLOW_SERVE_USERNAME"]
    assert _required_variable(serve["MLFLOW_TRACKING_PASSWORD"]) == "MLFLOW_SERVE_PASSWORD"
    for name in ("airflow-scheduler", "serve"):
        assert services[name]["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully"

    from mlops_airflow.operators import FORWARDED_SECRETS

    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(FORWARDED_SECRETS)

    # no password, key or token is written in the file: every such setting names a variable
    for service, settings in services.items():
        for key, value in (settings.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|API_KEYS", key):
                assert str(value).startswith("${"), f"{service}: {key} is written in the file"
    # and the stack's .env generator writes each of the new secrets (run on a copy: it writes beside its folder)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "scripts").mkdir()
        shutil.copy(REPO_ROOT / "scripts" / "stack-env.sh", Path(scratch) / "scripts")
        subprocess.run(
            ["bash", str(Path(scratch) / "scripts" / "stack-env.sh")], check=True, capture_output=True
        )
        written = dict(
            line.split("=", 1) for line in (Path(scratch) / ".env").read_text().splitlines() if "=" in line
        )
    for name in SECRET_VARIABLES:
        assert written.get(name), name

    # the auth config the image carries: no secret, nobody sees anything without a grant
    config = configparser.ConfigParser()
    config.read(AUTH_DIR / "basic_auth.ini")
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert not config["mlflow"].get("admin_password")
    dockerfile = (REPO_ROOT / "docker" / "mlflow.Dockerfile").read_text()
    assert "docker/mlflow/basic_auth.ini /opt/mlops/mlflow-auth.ini" in dockerfile
