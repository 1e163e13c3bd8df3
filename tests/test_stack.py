"""docker-compose.yaml: the file validates and says what we rely on (secrets only from the environment, the
engine only through the socket proxy, GPU reservation, health checks, named volumes); and the stack runs, from
locally built images:

- PostgreSQL plus Airflow 3 (api-server, scheduler, dag-processor, triggerer), tasks in Airflow's own workers: the
  ingest DAG runs from the arrival of files to committed raw partitions (tests/stack/compose.offline.yaml);
- the stack as shipped, profile `stack`: every task in its own container started by StepOperator's DockerRuntime through the
  proxy's endpoint, the lake on an S3 server, MLflow as a server on PostgreSQL; ingest, features (on the raw
  asset) and score run (tests/stack/compose.containers.yaml).

Where no registry answers (our CI), images that cannot be pulled are replaced by stand-ins built here under the
same service names: PostgreSQL from tests/stack/postgres.Dockerfile, moto's S3 server for MinIO, boto3 for the
bucket job. The socket proxy is ours (docker/socket-proxy, built here), so every task container of the stack goes
through its filter; tests/test_socket_proxy.py tests the filter itself.
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
CONTAINERS_OVERRIDE = REPO_ROOT / "tests" / "stack" / "compose.containers.yaml"
SECRETS = (
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MINIO_TASKS_USER",
    "MINIO_TASKS_PASSWORD",
    "MINIO_MLFLOW_USER",
    "MINIO_MLFLOW_PASSWORD",
    "MINIO_SERVE_USER",
    "MINIO_SERVE_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_TASKS_PASSWORD",
    "MLFLOW_SERVE_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
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

    stack_env = _stack_env()
    proc = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True, env=stack_env
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    _assert_s3_keys_scoped(services, stack_env)
    assert {
        "postgres",
        "minio",
        "minio-init",
        "mlflow",
        "mlflow-init",
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

    # the engine only through our filtering proxy (docker/socket-proxy): the socket read-only, only task images,
    # no named volume, no capability, on the internal network only; Airflow waits for it to answer
    proxy = services["docker-socket-proxy"]
    assert proxy["image"].startswith("mlops-socket-proxy:")
    assert proxy["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock:ro"]
    assert proxy["environment"]["PROXY_ALLOWED_IMAGES"] == "mlops-"
    assert proxy["environment"]["PROXY_ALLOWED_VOLUMES"] == ""
    assert proxy["environment"]["PROXY_ALLOWED_NETWORKS"] == config["networks"]["tasks"]["name"]
    assert proxy["cap_drop"] == ["ALL"] and proxy["read_only"] is True
    assert "no-new-privileges:true" in proxy["security_opt"]
    assert "healthcheck" in proxy
    assert (
        services["airflow-scheduler"]["depends_on"]["docker-socket-proxy"]["condition"] == "service_healthy"
    )
    assert config["networks"]["docker-api"].get("internal") is True
    assert set(proxy["networks"]) == {"docker-api"}
    assert (REPO_ROOT / "docker" / "socket-proxy" / "proxy.py").is_file()

    devices = services["gpu-check"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow/artifacts"
    # MLflow with authentication (docs/security.md): the basic-auth app, its admin, the task user of the Airflow
    # services and the read-only user of the scoring service, each password the one from the environment
    command = services["mlflow"]["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert mlflow["MLFLOW_AUTH_CONFIG_PATH"] == "/opt/mlops/mlflow-auth.ini"
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == stack_env["MLFLOW_ADMIN_PASSWORD"]
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == stack_env["MLFLOW_FLASK_SECRET_KEY"]
    users = services["mlflow-init"]["environment"]
    assert users["MLFLOW_TASKS_PASSWORD"] == stack_env["MLFLOW_TASKS_PASSWORD"]
    assert users["MLFLOW_SERVE_PASSWORD"] == stack_env["MLFLOW_SERVE_PASSWORD"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == users["MLFLOW_TASKS_USERNAME"], name
        assert env["MLFLOW_TRACKING_PASSWORD"] == stack_env["MLFLOW_TASKS_PASSWORD"], name
    serve_env = services["serve"]["environment"]
    assert serve_env["MLFLOW_TRACKING_USERNAME"] == users["MLFLOW_SERVE_USERNAME"]
    assert serve_env["MLFLOW_TRACKING_PASSWORD"] == stack_env["MLFLOW_SERVE_PASSWORD"]
    # no secret literal: every generated secret reaches the services, and none is written in the file
    raw = COMPOSE_FILE.read_text()
    resolved = json.dumps(services)
    for name in SECRETS:
        assert f"${{{name}:?" in raw and stack_env[name] in resolved, name
    for service, settings in yaml.safe_load(raw)["services"].items():
        for key, value in (settings.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN", "_KEY", "API_KEYS")):
                assert str(value).startswith("${"), f"{service}: {key} is written in the file"
    for name in ("postgres", "minio", "mlflow"):
        assert "healthcheck" in services[name], name

    # the scoring service (profile serve): replicas behind the proxy, ready only with a verified champion,
    # API keys from the environment, never served without them
    serve = services["serve"]
    assert serve["profiles"] == ["serve"] and serve["image"].startswith("mlops-serve:")
    assert serve["deploy"]["replicas"] >= 2 and "/ready" in " ".join(serve["healthcheck"]["test"])
    assert "--no-auth" not in serve["command"] and "MLOPS_API_KEYS" in serve["environment"]
    proxy_conf = REPO_ROOT / "deploy" / "compose" / "serve-nginx.conf"
    assert any(str(proxy_conf) in str(v) for v in services["serve-proxy"]["volumes"])
    assert "server serve:8000" in proxy_conf.read_text()
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


def _assert_s3_keys_scoped(services: dict, env: dict[str, str]) -> None:
    """Least privilege on S3: the root keys stay with minio and minio-init; Airflow (its tasks get the keys from
    its connection), MLflow and the scoring replicas each get their own MinIO user's keys, and nobody else's;
    minio-init makes those users with the policies of docker/minio/ (tests/test_minio_policies.py tests them)."""
    holders = {
        "ROOT": {"minio", "minio-init"},
        "TASKS": {"minio-init", "airflow-init", *AIRFLOW_SERVICES},
        "MLFLOW": {"minio-init", "mlflow"},
        "SERVE": {"minio-init", "serve"},
    }
    for who, expected in holders.items():
        for part in ("USER", "PASSWORD"):
            value = env[f"MINIO_{who}_{part}"]
            holding = {name for name, service in services.items() if value in json.dumps(service)}
            assert holding == expected, (
                f"MINIO_{who}_{part} is given to {sorted(holding)}, not {sorted(expected)}"
            )
    for name, service in services.items():
        if name not in holders["ROOT"]:
            assert not any(k.startswith("MINIO_ROOT") for k in service.get("environment") or {}), name

    def keys(who: str) -> tuple[str, str]:
        return env[f"MINIO_{who}_USER"], env[f"MINIO_{who}_PASSWORD"]

    for name in AIRFLOW_SERVICES:
        connection = json.loads(services[name]["environment"]["AIRFLOW_CONN_MLOPS_LAKE_S3"])
        assert (connection["login"], connection["password"]) == keys("TASKS"), name
    for name, who in (("mlflow", "MLFLOW"), ("serve", "SERVE")):
        environment = services[name]["environment"]
        assert (environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]) == keys(who), name

    init = services["minio-init"]
    script = " ".join(init["command"]).replace("$$", "$")
    mounts = [  # short syntax or long (Compose v2 writes the long one)
        v
        if isinstance(v, dict)
        else dict(zip(("source", "target", "mode"), str(v).rsplit(":", 2), strict=False))
        for v in init["volumes"]
    ]
    policies = next(m for m in mounts if m.get("target") == "/policies")
    assert Path(policies["source"]).resolve() == REPO_ROOT / "docker" / "minio"
    assert policies.get("read_only") is True or policies.get("mode") == "ro"
    assert 'mc admin policy create lake "$1-policy" "/policies/$1.json"' in script
    assert 'mc admin user add lake "$2" "$3"' in script
    assert 'mc admin policy attach lake "$1-policy" --user "$2"' in script
    for who in ("tasks", "mlflow", "serve"):
        assert f'scoped {who} "$MINIO_{who.upper()}_USER" "$MINIO_{who.upper()}_PASSWORD"' in script, who
        assert (REPO_ROOT / "docker" / "minio" / f"{who}.json").is_file(), who


class Stack:
    """One compose project of docker-compose.yaml plus a test override, driven through the Compose CLI."""

    def __init__(self, compose: list[str], override: Path, env: dict[str, str]) -> None:
        self.env = env
        self.base = [
            *compose,
            "-p",
            f"mlopsstack{secrets.token_hex(3)}",
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(override),
        ]

    def run(self, *args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*self.base, *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("exec", "-T", "airflow-scheduler", "airflow", *args, check=check)

    def python(self, code: str) -> object:
        """Run code in the scheduler's container; return the JSON it prints last."""
        out = self.run("exec", "-T", "airflow-scheduler", "python", "-c", code).stdout
        return json.loads(out.strip().splitlines()[-1])

    def logs(self, *services: str) -> str:
        return self.run("logs", "--no-color", *services, check=False).stdout[-6000:]

    def wait_for_dags(self, dag_ids: list[str], seconds: int = 300) -> None:
        """Until the DAG processor has parsed them into the metadata database."""
        deadline = time.time() + seconds
        while not all(d in self.airflow("dags", "list", "-o", "plain", check=False).stdout for d in dag_ids):
            assert time.time() < deadline, self.logs("airflow-dag-processor")
            time.sleep(5)

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs as `airflow dags list-runs -o json` gives them (run_id, state, ...)."""
        out = self.airflow("dags", "list-runs", dag_id, "-o", "json").stdout
        return json.loads(next((x for x in out.splitlines() if x.startswith("[")), "[]"))

    def run_states(self, dag_id: str) -> list[str]:
        return [r["state"] for r in self.runs(dag_id)]

    def wait_for_runs(self, dag_id: str, seconds: int = 420) -> list[str]:
        """Until the DAG has at least one finished run and all its runs are finished, but one that waits for
        the next arrival (a @continuous ingest starts its next run as one ends); returns the finished runs'
        states."""
        deadline = time.time() + seconds
        finished: list[str] = []
        while time.time() < deadline:
            states = self.run_states(dag_id)
            finished = [state for state in states if state in ("success", "failed")]
            if finished and len(states) - len(finished) <= (1 if dag_id.endswith("_ingest") else 0):
                break
            time.sleep(5)
        return finished

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", check=False, timeout=300)


def _build_images(kinds: str) -> None:
    from conftest import build_images

    build = build_images(kinds)
    assert build.returncode == 0, build.stdout + build.stderr


def _raw_partitions_code(lake: str, connection: str | None = None) -> str:
    """Code for the scheduler's container: the raw partitions per source, as JSON (lake credentials from the
    Airflow connection when one is named)."""
    return f"""
import json
from mlops_airflow.operators import patched_environ, s3_environment
from pipelines.lake import Lake
with patched_environ(s3_environment({connection!r})):
    lake = Lake({lake!r})
    tables = {{s: f"raw/flight_delay/{{s}}" for s in ("flights", "outcomes", "weather", "planes")}}
    print(json.dumps({{s: sorted(lake.partitions(t)) for s, t in tables.items()}}))
"""


def _assert_two_days_ingested(partitions: object) -> None:
    assert partitions == {
        "flights": ["2013-01-01", "2013-01-02"],
        "outcomes": ["2013-01-01", "2013-01-02"],
        "weather": ["2013-01-01", "2013-01-02"],
        "planes": ["2013-01-01"],
    }, partitions


def _demo_files(days: int) -> int:
    """How many files ``mlops land --date 2013-01-01 --days N`` lands: each day's schedule, weather files and
    outcomes, and the planes table once."""
    from datetime import date, timedelta

    from mlops_cli.demo_data import DemoData
    from pipelines.config import load_usecase

    usecase = load_usecase("flight_delay")
    data = DemoData.load(usecase)
    first = date(2013, 1, 1)
    return sum(
        len(data.day_deliveries(first + timedelta(days=k), usecase.time.timezone)) for k in range(days)
    )


def test_stack_runs_the_ingest_dag(docker_images, compose: list[str]) -> None:
    """PostgreSQL plus Airflow from locally built images; tasks in Airflow's workers, a local lake in a volume."""
    from conftest import _free_port

    docker_bin = shutil.which("/usr/bin/docker") or shutil.which("docker")
    _build_images("airflow")
    env = _stack_env(POSTGRES_IMAGE=_postgres_image(docker_bin), AIRFLOW_PORT=str(_free_port()))
    stack = Stack(compose, OFFLINE_OVERRIDE, env)
    try:
        stack.run("up", "-d", "postgres")
        deadline = time.time() + 120
        while stack.run("exec", "-T", "postgres", "pg_isready", "-U", "airflow", check=False).returncode != 0:
            assert time.time() < deadline, stack.logs("postgres")
            time.sleep(2)
        stack.run("run", "--rm", "--no-deps", "airflow-init", timeout=600)
        stack.run("up", "-d", "--no-deps", *AIRFLOW_SERVICES)
        stack.wait_for_dags(["flight_delay_ingest"])

        # files land; on unpausing, the scheduler starts the DAG's latest scheduled run: its deferrable sensor
        # (in the triggerer) sees the files, ingest validates and commits them, the quarantine check passes
        landed = stack.run(
            "exec", "-T", "airflow-scheduler", "mlops", "land", "--date", "2013-01-01", "--days", "2"
        )
        # the schedule, the weather files and the outcomes of 2 days, and the planes table once
        assert landed.stdout.count("/landing/flight_delay/") == _demo_files(days=2), landed.stdout
        stack.airflow("dags", "unpause", "flight_delay_ingest")
        states = stack.wait_for_runs("flight_delay_ingest")
        assert states == ["success"], (
            f"ingest runs: {states}\n{stack.logs('airflow-scheduler', 'airflow-triggerer')}"
        )
        _assert_two_days_ingested(stack.python(_raw_partitions_code("/var/lib/mlops/lake")))
    finally:
        stack.down()


def _stand_in_images(docker_bin: str, tmp_path: Path) -> None:
    """mlops-moto:test (moto's S3 server, from the dev group of the lock)."""
    uv = shutil.which("uv") or str(REPO_ROOT / ".tools" / "bin" / "uv")
    context = tmp_path / "stand-ins"
    context.mkdir()
    export = subprocess.run(
        [
            uv,
            "export",
            "--quiet",
            "--frozen",
            "--only-group",
            "dev",
            "--no-emit-project",
            "--no-header",
            "-o",
            str(context / "dev.txt"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert export.returncode == 0, export.stderr
    builds = {
        "mlops-moto:test": "FROM mlops-core:dev\nUSER root\nCOPY dev.txt /tmp/dev.txt\n"
        "RUN --mount=type=secret,id=ca if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi "
        "&& pip install --quiet --no-deps --require-hashes -r /tmp/dev.txt\nUSER 50000\n",
    }
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    secret = ["--secret", f"id=ca,src={ca}"] if ca.is_file() else []
    for image, dockerfile in builds.items():
        (context / "Dockerfile").write_text(dockerfile)
        proc = subprocess.run(
            [docker_bin, "build", "-q", *secret, "-t", image, str(context)],
            capture_output=True,
            text=True,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
        assert proc.returncode == 0, f"{image}: {proc.stderr[-3000:]}"


def test_stack_runs_tasks_in_containers(docker_images, compose: list[str], tmp_path: Path) -> None:
    """The stack as shipped (profile `stack`): StepOperator's DockerRuntime in Airflow's containers starts each task's
    container through the proxy's TCP endpoint on the `mlops-tasks` network; the lake on an S3 server, the S3
    credentials from the Airflow connection defined by environment, MLflow as a server on PostgreSQL."""
    from conftest import ContainerDeaths, _free_port

    docker_bin = shutil.which("/usr/bin/docker") or shutil.which("docker")
    _build_images("base spark train airflow mlflow socket-proxy")
    _stand_in_images(docker_bin, tmp_path)
    env = _stack_env(
        POSTGRES_IMAGE=_postgres_image(docker_bin),
        AIRFLOW_PORT=str(_free_port()),
        MLFLOW_PORT=str(_free_port()),
        MINIO_CONSOLE_PORT=str(_free_port()),
    )
    stack = Stack(compose, CONTAINERS_OVERRIDE, env)
    deaths = ContainerDeaths()  # the engine's records of the task containers, received live
    try:
        stack.run("up", "-d", timeout=900)
        dags = ["flight_delay_ingest", "flight_delay_features", "flight_delay_score"]
        stack.wait_for_dags(dags)
        landed = stack.run(
            "exec", "-T", "airflow-scheduler", "mlops", "land", "--date", "2013-01-01", "--days", "2"
        )
        assert landed.stdout.count("s3://mlops-lake/lake/landing/flight_delay/") == _demo_files(days=2), (
            landed.stdout
        )
        for dag_id in dags:
            stack.airflow("dags", "unpause", dag_id)
        for dag_id in dags:  # features runs on the raw asset that ingest emits
            states = stack.wait_for_runs(dag_id)
            assert states and set(states) == {"success"}, (
                f"{dag_id} runs: {states}\n{stack.logs('airflow-scheduler', 'mlflow')}"
            )

        # the engine's records: each step in its own container, of its kind's image, on the tasks network
        # only this stack's runs: the container tests in another pytest-xdist worker run the same use case
        run_ids = {r["run_id"] for dag_id in dags for r in stack.runs(dag_id)}
        ran = {a["io.mlops.step"]: a for a in deaths.stop() if a.get("io.mlops.run_id") in run_ids}
        assert set(ran) == {"ingest", "features", "score", "outcomes"}, ran
        assert {step: attrs["image"] for step, attrs in ran.items()} == {
            "ingest": "mlops-base:dev",
            "features": "mlops-spark:dev",
            "score": "mlops-train:dev",
            "outcomes": "mlops-base:dev",
        }
        assert {attrs["exitCode"] for attrs in ran.values()} == {"0"}

        # the lake is on the S3 server (credentials from the Airflow connection), MLflow on its server
        lake = _raw_partitions_code("s3://mlops-lake/lake", connection="mlops_lake_s3")
        _assert_two_days_ingested(stack.python(lake))
        experiment = stack.python(
            "import json, mlflow; mlflow.set_tracking_uri('http://mlflow:5000'); "
            "e = mlflow.get_experiment_by_name('flight_delay'); "
            "print(json.dumps(e and [e.experiment_id, e.artifact_location]))"
        )
        # the server's default location, which its basic auth maps to the experiment (docs/security.md)
        experiment_id, location = experiment
        assert location == f"mlflow-artifacts:/{experiment_id}"
        _assert_refusals(stack)
    finally:
        deaths.stop()
        stack.down()


REFUSALS_CODE = r"""
import json, urllib.error, urllib.request
import docker

out = {}
# MLflow: the alias moved by a request without credentials, as any container on the network could send it
request = urllib.request.Request(
    "http://mlflow:5000/api/2.0/mlflow/registered-models/alias",
    data=json.dumps({"name": "flight_delay", "alias": "champion", "version": "1"}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
try:
    urllib.request.urlopen(request, timeout=30)
    out["mlflow_without_credentials"] = 200
except urllib.error.HTTPError as exc:
    out["mlflow_without_credentials"] = exc.code
# the engine through the proxy, Airflow's only way to it (DOCKER_HOST)
client = docker.from_env()
creates = {
    "privileged": {"privileged": True},
    "host_root_mounted": {"volumes": {"/": {"bind": "/host", "mode": "rw"}}},
    "host_network": {"network_mode": "host"},
}
for name, kwargs in creates.items():
    try:
        client.containers.create("mlops-base:dev", "true", **kwargs).remove(force=True)
        out[name] = "created"
    except docker.errors.APIError as exc:
        out[name] = exc.status_code
print(json.dumps(out))
"""


def _assert_refusals(stack: Stack) -> None:
    """What least privilege refuses in the running stack: MLflow without credentials (401), a container create
    through the socket proxy that would reach the host (403), and lake keys in the triggerer's environment (none:
    its checks take the connection's keys for their own lake). The scoped MinIO users are not shown here: the
    moto stand-in authorizes everything (tests/test_minio_policies.py runs the policies on an enforcing server)."""
    refusals = stack.python(REFUSALS_CODE)
    assert refusals == {
        "mlflow_without_credentials": 401,
        "privileged": 403,
        "host_root_mounted": 403,
        "host_network": 403,
    }, refusals
    environment = stack.run("exec", "-T", "airflow-triggerer", "env").stdout
    aws = [line.split("=", 1)[0] for line in environment.splitlines() if line.startswith("AWS_")]
    assert not aws, f"the triggerer's environment holds {aws} (names only: the values are secrets)"
