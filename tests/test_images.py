"""The task images' recipes: locked requirements are current, Dockerfiles run as a non-root user, keep secrets
out of layers, and every step has an image; the GPU request reaches a real Docker engine."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.steps import GPU_STEPS, STEP_KINDS, STEPS

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER = REPO_ROOT / "docker"
KIND_FILES = ["core", "base", "spark", "train", "airflow", "mlflow", "socket-proxy"]


def test_requirements_match_the_lock(tmp_path: Path) -> None:
    """docker/requirements/*.txt are exactly what `make requirements` writes from uv.lock today."""
    proc = subprocess.run(
        ["bash", "scripts/export-requirements.sh", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    for fresh in sorted(tmp_path.glob("*.txt")):
        committed = DOCKER / "requirements" / fresh.name
        assert committed.exists(), f"{committed} is missing: run `make requirements`"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make requirements`"
    assert {p.name for p in tmp_path.glob("*.txt")} == {
        p.name for p in (DOCKER / "requirements").glob("*.txt")
    }


def test_every_step_has_an_image_kind_with_a_dockerfile() -> None:
    from pipelines.config import load_profile

    assert set(STEP_KINDS) == set(STEPS)
    assert set(STEP_KINDS) >= GPU_STEPS
    settings = load_profile().docker
    for kind in set(STEP_KINDS.values()):
        assert (DOCKER / f"{kind}.Dockerfile").exists(), kind
        assert settings.image_for(kind).startswith(f"mlops-{kind}:")


@pytest.mark.parametrize("kind", KIND_FILES)
def test_dockerfiles_are_non_root_and_keep_secrets_out(kind: str) -> None:
    text = (DOCKER / f"{kind}.Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    if not users:  # inherits the user of mlops-core
        assert re.search(r"^FROM \$\{MLOPS_CORE\}", text, flags=re.M), (
            f"{kind}: no USER and not FROM mlops-core"
        )
        users = re.findall(r"^USER\s+(\S+)", (DOCKER / "core.Dockerfile").read_text(), flags=re.M)
    assert users and users[-1] not in ("root", "0"), f"{kind}: the last USER must not be root"
    assert not re.search(r"^(ARG|ENV)\s+\S*(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", text, flags=re.M | re.I), kind
    for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            if not source.startswith("--"):
                assert (REPO_ROOT / source.replace("${TRAIN_EXTRA}", "train")).exists(), (kind, source)
    # the host CA bundle only ever comes in as a BuildKit secret, never COPY'd into a layer
    assert "ca-certificates.crt" not in text


@pytest.mark.docker
def test_gpu_request_reaches_the_engine(docker_images, mlops_env: Path, monkeypatch) -> None:
    """With docker.gpus, a GPU step's container is created with an NVIDIA device request (count -1, capability
    gpu), and a CPU step's without, as the engine records them (each container is inspected before removal)."""
    from airflow.sdk.exceptions import AirflowFailException

    import docker
    from mlops_airflow.operators import StepOperator

    monkeypatch.setenv("MLOPS_TASK_RUNTIME", "docker")
    monkeypatch.setenv("MLOPS_DOCKER_GPUS", "true")
    monkeypatch.setenv("MLOPS_DOCKER_AUTO_REMOVE", "never")
    client = docker.from_env()
    context = {"logical_date": datetime(2013, 2, 1, tzinfo=UTC)}
    created = []
    try:
        train = StepOperator(task_id="gpu_check_train", step="train", usecase="flight_delay")
        # without an NVIDIA runtime (this machine) the engine refuses to start it; on a GPU host it starts and
        # fails on its missing input. Either way the container exists and is inspected below.
        with pytest.raises((docker.errors.APIError, AirflowFailException)) as refused:
            train.execute(context)
        if isinstance(refused.value, docker.errors.APIError):
            assert "device driver" in str(refused.value), refused.value
        else:
            assert "train failed" in str(refused.value), refused.value
        gate = StepOperator(task_id="gpu_check_gate", step="gate", usecase="flight_delay")
        with pytest.raises(AirflowFailException, match="gate failed"):
            gate.execute(context)  # starts, and fails on its missing input (no evaluation yet)
        for operator, kind, wants_gpu in ((train, "train", True), (gate, "base", False)):
            container = client.api.inspect_container(operator.container["Id"])
            created.append(container["Id"])
            requests = container["HostConfig"].get("DeviceRequests") or []
            if wants_gpu:
                assert [(r["Count"], r["Capabilities"]) for r in requests] == [(-1, [["gpu"]])], requests
            else:
                assert requests == [], requests
            assert container["Config"]["Image"] == docker_images[kind]
            assert container["Config"]["Labels"]["io.mlops.step"] == operator.step
            assert [m["Source"] for m in container["HostConfig"]["Mounts"]] == [str(mlops_env)]
    finally:
        for container_id in created:
            client.api.remove_container(container_id, force=True)
