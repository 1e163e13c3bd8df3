"""Shared test set-up: an isolated MLOPS_HOME and Airflow environment for the whole session.

Airflow reads its configuration when first imported, so the environment is set here, before any test module
imports it. Nothing touches ./var.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# A pytest-xdist worker runs under execnet, whose __main__ has neither __file__ nor __spec__: pyspark.sql.connect
# (imported by Great Expectations) takes that for a doctest run and exits the process. Name the entry point.
if os.environ.get("PYTEST_XDIST_WORKER") and not hasattr(sys.modules["__main__"], "__file__"):
    sys.modules["__main__"].__file__ = str(VENV_BIN / "pytest")

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-test-home-"))
sys.path.insert(0, str(REPO_ROOT / "plugins"))
from mlops_airflow.env import apply_airflow_environment  # noqa: E402

os.environ["MLOPS_HOME"] = str(_SESSION_HOME)
apply_airflow_environment(_SESSION_HOME, override=True)
os.environ.setdefault("MLOPS_LOG_LEVEL", "WARNING")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "pyspark" in sys.modules:  # stop Spark while logging still has open streams (py4j logs on shutdown)
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


# `make test` runs two pytest-xdist workers. The modules that share the session's reference demo run
# (`local_demo`) run in one worker, so that it is made once (test_images with them: its containers look like
# theirs); every other module runs whole in one worker, so that a module fixture (a trained model, a Spark
# session) is built once. The Docker images are built under a lock (`docker_images`): a second worker waits,
# then finds them built.
SHARED_SESSION_MODULES = frozenset(
    # test_images starts task containers of flight_delay for 2013 too: never beside the container tests
    {"tests/test_containers.py", "tests/test_e2e.py", "tests/test_images.py"}
)


# The longest work first, so that neither worker is left with a long module at the end. xdist hands each worker
# two modules at the start (the shared group and the compose stack to the first, so that the two that drive the
# Docker engine never run at once; the browser and the time-as-observed replays to the second); then whichever is
# free takes the next in this order (modules not listed follow, as collected). The order is that of the modules'
# seconds in a cold `make test` (test-artifacts/junit.xml), longest first; re-derive it when a module grows.
LONGEST_FIRST = (
    *sorted(SHARED_SESSION_MODULES),
    "tests/test_browser.py",
    "tests/test_stack.py",
    "tests/test_time_as_observed.py",
    "tests/test_examples.py",
    "tests/test_features.py",
    "tests/test_e2e_s3.py",
    "tests/test_train.py",
    "tests/test_lake.py",
    "tests/test_s3_faults.py",
    "tests/test_scheduler_kill.py",
    "tests/test_point_in_time.py",
    "tests/test_mlflow_auth.py",
    "tests/test_serve_abuse.py",
    "tests/test_spark_direct_read.py",
    "tests/test_airflow_tasks.py",
    "tests/test_ui.py",
    "tests/test_approval.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order modules as LONGEST_FIRST (a stable sort: tests keep their order within a module)."""
    rank = {module: index for index, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Schedule by module, the modules of SHARED_SESSION_MODULES as one (xdist's `loadgroup` marks do not reach
    pytest 9's node ids; this groups by the node id's module instead), in collection order (LONGEST_FIRST)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # xdist would order modules by their number of tests

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "shared-session-fixtures" if module in SHARED_SESSION_MODULES else module

    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The session's Airflow metadata DB (needed by dag.test): a copy of the migrated template of this Airflow
    version, which the first session migrates (mlops_airflow.env.provide_airflow_db, as the demo)."""
    from mlops_airflow.env import provide_airflow_db

    db = _SESSION_HOME / "airflow" / "airflow.db"
    provide_airflow_db(db)
    return db


@pytest.fixture
def mlops_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh local lake and MLflow store under tmp_path for one test."""
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return tmp_path


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 protocol server (moto_server over HTTP on 127.0.0.1), for the whole session."""
    import time
    import urllib.request

    exe = VENV_BIN / "moto_server"
    assert exe.exists(), (
        "moto_server missing: run `make test` (uv sync installs moto[server] from the dev group)"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"moto_server did not answer on {url}")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def new_bucket(moto_server: str):
    """Create a uniquely named bucket on the moto server: ``new_bucket(prefix) -> name``."""
    import uuid

    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def create(prefix: str = "lake") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=name)
        return name

    return create


@pytest.fixture
def s3_lake(moto_server: str, new_bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket on the moto server; the environment points the lake and boto3 at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    uri = f"s3://{new_bucket()}/lake"
    monkeypatch.setenv("MLOPS_LAKE_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return uri


@pytest.fixture
def serve_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """A tmp lake and MLflow store (from a migrated template DB) for the register/promote/score tests."""
    from _serve_fixtures import make_serve_env

    return make_serve_env(tmp_path, monkeypatch, tmp_path_factory.getbasetemp())


class Webhook:
    """A webhook on loopback that records the JSON bodies POSTed to it (the alerts' receiving end), and the
    Airflow connection that points at it."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body) | {"_authorization": self.headers.get("Authorization")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self, conn_id: str = "mlops_alerts") -> dict[str, str]:
        """What routes every use case's alerts here: the profile default and the connection."""
        return {
            "MLOPS_ALERTS_CONNECTION": conn_id,
            f"AIRFLOW_CONN_{conn_id.upper()}": f"http://:s3cret@127.0.0.1:{self.port}/hook",
        }

    def events(self, event: str) -> list[dict]:
        return [alert for alert in self.received if alert["event"] == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch):
    """A loopback webhook receiving this test's alerts (set as the profile's alerts connection)."""
    hook = Webhook()
    for key, value in hook.env().items():
        monkeypatch.setenv(key, value)
    yield hook
    hook.close()


@pytest.fixture(scope="session")
def demo_webhook():
    """The loopback webhook the reference demo run sends its alerts to."""
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="session")
def local_demo(tmp_path_factory: pytest.TempPathFactory, demo_webhook: Webhook) -> tuple[Path, dict]:
    """`mlops demo --months 2` through Airflow, in-process runtime, local lake: the reference run. Its alerts go
    to ``demo_webhook``."""
    from _demo import MONTHS, run_demo_cli

    home = tmp_path_factory.mktemp("demo-local")
    return home, run_demo_cli(home, demo_webhook.env(), months=MONTHS)


class ContainerDeaths:
    """The `die` events of our task containers (label io.mlops.usecase), received live from the engine from
    construction to :meth:`stop`. A query of past events afterwards reads the engine's short event buffer, which
    a busy engine (a compose stack's health checks in the other pytest-xdist worker) overruns."""

    def __init__(self) -> None:
        import threading

        import docker

        self._stream = docker.from_env().events(
            decode=True, filters={"type": "container", "event": "die", "label": "io.mlops.usecase"}
        )
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for event in self._stream:
            self.events.append(event["Actor"]["Attributes"])

    def stop(self) -> list[dict]:
        """Stop listening (after the engine's last events arrived); the containers' labels and exit codes."""
        import time

        if self._reader.is_alive():
            time.sleep(1)
            self._stream.close()
            self._reader.join(timeout=30)
        return list(self.events)


@pytest.fixture
def container_deaths():
    """A :class:`ContainerDeaths` listening from the start of the test."""
    recorder = ContainerDeaths()
    yield recorder
    recorder.stop()


def build_images(kinds: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """scripts/build-images.sh (KINDS=kinds), one build at a time across pytest-xdist workers: a second worker
    waits, then finds the layers built."""
    import fcntl

    env = {**os.environ, **({"KINDS": kinds} if kinds else {})}
    with open(Path(tempfile.gettempdir()) / "mlops-test-build-images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "build-images.sh")],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def docker_images() -> dict[str, str]:
    """A Docker engine that answers and the task images built from this tree (scripts/build-images.sh starts or
    installs the engine when it can, and builds offline when no registry answers). Fails, never skips."""
    try:
        proc = build_images(timeout=2400)
    except subprocess.TimeoutExpired:
        pytest.fail(
            "scripts/build-images.sh took over 40 minutes; see $MLOPS_HOME/docker/build-*.log", pytrace=False
        )
    if proc.returncode != 0:
        pytest.fail(
            "The container tests need a Docker engine and the task images, and scripts/build-images.sh failed:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n"
            "Install Docker and start it (on Debian as root the script installs docker.io itself), or set "
            "DOCKER_HOST; then `make images`.",
            pytrace=False,
        )
    from pipelines.config import load_profile

    settings = load_profile().docker
    return {kind: settings.image_for(kind) for kind in settings.images}
