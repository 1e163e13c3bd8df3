"""docker-compose.yaml: the file validates and says what we rely on (secrets only from the environment, the
engine only through the socket proxy, GPU reservation, health checks, named volumes); and the stack runs:
PostgreSQL plus Airflow 3 (api-server, scheduler, dag-processor, triggerer) from locally built images, where the
ingest DAG runs from the arrival of files to committed raw partitions.

Where no registry answers (our CI), PostgreSQL comes from tests/stack/postgres.Dockerfile and MinIO, MLflow and
the socket proxy are left out (tests/stack/compose.offline.yaml: tasks run in Airflow's own workers on a local
lake); the containers-per-task path is covered against a real engine by test_containers.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
OFFLINE_OVERRIDE = REPO_ROOT / "tests" / "stack" / "compose.offline.yaml"
SECRETS = (
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
)
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]


@pytest.fixture(scope="session")
def compose() -> list[str]:
    """The Compose command: `docker compose` (v2) when present, else Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "Docker Compose is missing: install the compose plugin or Debian's docker-compose "
        "(scripts/docker-engine.sh installs it on Debian as root)",
        pytrace=False,
    )


def _stack_env(**extra: str) -> dict[str, str]:
    import base64

    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("AIRFLOW")}
    env.update({name: secrets.token_urlsafe(16) for name in SECRETS})
    env["AIRFLOW_FERNET_KEY"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    env.update(extra)
    return env


def test_compose_file_validates_and_keeps_its_promises(compose: list[str]) -> None:
    missing = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in SECRETS},
    )
    assert missing.returncode != 0 and "make stack-env" in missing.stderr, (
        "secrets must be required, not defaulted"
    )

    proc = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True, env=_stack_env()
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "docker-socket-proxy",
        "airflow-init",
        *AIRFLOW_SERVICES,
        "gpu-check",
    } <= set(services)

    for name in AIRFLOW_SERVICES:
        service = services[name]
        env = service["environment"]
        assert service["image"].startswith("mlops-airflow:")
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert env["MLOPS_PROFILE"] == "stack"
        assert env["DOCKER_HOST"] == "tcp://docker-socket-proxy:2375"
        assert json.loads(env["AIRFLOW_CONN_MLOPS_LAKE_S3"])["extra"]["endpoint_url"] == "http://minio:9000"
        assert "docker.sock" not in json.dumps(service.get("volumes", [])), (
            f"{name} must not mount the socket"
        )
        assert "healthcheck" in service, name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"

    proxy = services["docker-socket-proxy"]
    assert proxy["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock:ro"]
    assert {
        k: str(v) for k, v in proxy["environment"].items() if k in ("EXEC", "BUILD", "VOLUMES", "SWARM")
    } == {"EXEC": "0", "BUILD": "0", "VOLUMES": "0", "SWARM": "0"}
    assert str(proxy["environment"]["CONTAINERS"]) == "1"
    assert config["networks"]["docker-api"].get("internal") is True
    assert set(proxy["networks"]) == {"docker-api"}

    devices = services["gpu-check"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow/artifacts"
    for name in ("postgres", "minio", "mlflow"):
        assert "healthcheck" in services[name], name
    assert {"postgres-data", "minio-data", "airflow-logs"} <= set(config["volumes"])

    # the profile the stack runs with: tasks in containers on the network MinIO and MLflow share
    from pipelines.config import load_profile

    stack = load_profile("stack")
    assert stack.task_runtime == "docker" and stack.lake_uri.startswith("s3://")
    assert stack.docker.network_mode == config["networks"]["tasks"]["name"]
    assert stack.s3_connection_id == "mlops_lake_s3"


def _postgres_image(docker_bin: str) -> str:
    """postgres:16-bookworm when a registry (or the local cache) has it, else the offline stand-in."""
    official = "postgres:16-bookworm"
    if subprocess.run([docker_bin, "image", "inspect", official], capture_output=True).returncode == 0:
        return official
    if subprocess.run([docker_bin, "pull", "-q", official], capture_output=True, timeout=300).returncode == 0:
        return official
    image = "mlops-postgres-offline:15"
    build = subprocess.run(
        [docker_bin, "build", "-q", "-f", "tests/stack/postgres.Dockerfile", "-t", image, "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    return image


def test_stack_runs_the_ingest_dag(docker_images, compose: list[str], tmp_path: Path) -> None:
    from conftest import _free_port

    docker_bin = shutil.which("/usr/bin/docker") or shutil.which("docker")
    build = subprocess.run(
        ["bash", "scripts/build-images.sh"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "KINDS": "airflow"},
    )
    assert build.returncode == 0, build.stdout + build.stderr
    env = _stack_env(POSTGRES_IMAGE=_postgres_image(docker_bin), AIRFLOW_PORT=str(_free_port()))
    project = f"mlopsstack{secrets.token_hex(3)}"
    base = [*compose, "-p", project, "-f", str(COMPOSE_FILE), "-f", str(OFFLINE_OVERRIDE)]

    def run(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*base, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def airflow(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("exec", "-T", "airflow-scheduler", "airflow", *args, check=check)

    try:
        run("up", "-d", "postgres")
        deadline = time.time() + 120
        while run("exec", "-T", "postgres", "pg_isready", "-U", "airflow", check=False).returncode != 0:
            assert time.time() < deadline, run("logs", "postgres", check=False).stdout[-3000:]
            time.sleep(2)
        run("run", "--rm", "--no-deps", "airflow-init", timeout=600)
        run("up", "-d", "--no-deps", *AIRFLOW_SERVICES)

        # the DAG processor parses the DAGs into PostgreSQL
        deadline = time.time() + 300
        while "flight_delay_ingest" not in airflow("dags", "list", "-o", "plain", check=False).stdout:
            assert time.time() < deadline, run("logs", "airflow-dag-processor", check=False).stdout[-4000:]
            time.sleep(5)

        # files land; on unpausing, the scheduler starts the DAG's latest scheduled run: its deferrable sensor
        # (in the triggerer) sees the files, ingest validates and commits them, the quarantine check passes
        landed = run(
            "exec", "-T", "airflow-scheduler", "mlops", "land", "--date", "2013-01-01", "--days", "2"
        )
        assert landed.stdout.count("/landing/flight_delay/") == 5, landed.stdout
        airflow("dags", "unpause", "flight_delay_ingest")
        deadline = time.time() + 420
        states: list[str] = []
        while time.time() < deadline:
            out = airflow("dags", "list-runs", "flight_delay_ingest", "-o", "json").stdout
            runs = json.loads(next((line for line in out.splitlines() if line.startswith("[")), "[]"))
            states = [r["state"] for r in runs]
            if states and all(state in ("success", "failed") for state in states):
                break
            time.sleep(5)
        logs = run("logs", "airflow-scheduler", "airflow-triggerer", check=False).stdout[-6000:]
        assert states == ["success"], f"ingest runs: {states}\n{logs}"

        check = run(
            "exec",
            "-T",
            "airflow-scheduler",
            "python",
            "-c",
            "import json; from pipelines.lake import Lake; lake = Lake('/var/lib/mlops/lake'); print(json.dumps("
            "{s: sorted(lake.partitions('raw', 'flight_delay', s)) for s in ('flights', 'weather', 'planes')}))",
        )
        partitions = json.loads(check.stdout.strip().splitlines()[-1])
        assert partitions["flights"] == ["2013-01-01", "2013-01-02"], partitions
        assert partitions["weather"] == ["2013-01-01", "2013-01-02"], partitions
        assert partitions["planes"] == ["2013-01-01"], partitions
    finally:
        run("down", "-v", "--remove-orphans", check=False, timeout=300)
