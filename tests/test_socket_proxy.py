"""The Docker socket proxy (docker/socket-proxy/proxy.py), for real: it runs as a subprocess on a loopback port in
front of this machine's engine, and docker-py and Airflow's DockerOperator talk to it over TCP.

What a task needs goes through (a container of an allowed image runs, its logs come back, DockerOperator runs one
end to end: create, attach by HTTP upgrade, start, wait, remove); what would make a client of the proxy root on
the host (privileged, host paths, host namespaces, capabilities, other images) is refused with 403 before the
engine creates anything (the engine's own container list, read on the socket, is unchanged); and the endpoints a
task never needs (exec, build, volumes, networks) are refused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

REPO_ROOT = Path(__file__).resolve().parent.parent
PROXY = REPO_ROOT / "docker" / "socket-proxy" / "proxy.py"
# the engine's unix socket (DOCKER_HOST when it names one)
ENGINE = os.environ.get("DOCKER_HOST", "") if os.environ.get("DOCKER_HOST", "").startswith("unix://") else ""
ENGINE = ENGINE or "unix:///var/run/docker.sock"
IMAGE = "mlops-base:dev"


@pytest.fixture(scope="module")
def engine():
    """docker-py on the engine's socket itself (not through the proxy): the reference for what was created."""
    import docker

    try:
        client = docker.DockerClient(base_url=ENGINE, timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        pytest.fail(
            f"no Docker engine answers on {ENGINE} ({exc}): run `bash scripts/docker-engine.sh`",
            pytrace=False,
        )
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:  # any build of it will do: its Python runs `print`
        from conftest import build_images

        build = build_images("base")
        assert build.returncode == 0, (
            f"building {IMAGE} failed (`make images`):\n{build.stdout}{build.stderr}"
        )
    yield client
    client.close()


@pytest.fixture(scope="module")
def proxy_url(engine, tmp_path_factory) -> str:
    from conftest import _free_port

    log_path = tmp_path_factory.mktemp("socket-proxy") / "proxy.log"
    log = log_path.open("w")  # the proxy's log: what it forwarded and refused
    port = _free_port()
    env = {
        **os.environ,
        "PROXY_ALLOWED_IMAGES": "mlops-",
        "PROXY_ALLOWED_VOLUMES": "mlops-test-allowed",
        "PROXY_ALLOWED_NETWORKS": "mlops-test-tasks",
        "PROXY_CONTAINER_LABEL": "io.mlops.socket-proxy=test",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            str(PROXY),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--socket",
            ENGINE.removeprefix("unix://"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.1)
    yield f"tcp://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
    log.close()
    # a failed test may leave one of its containers behind
    for container in engine.containers.list(all=True, filters={"label": "io.mlops.socket-proxy=test"}):
        container.remove(force=True)


@pytest.fixture(scope="module")
def client(proxy_url):
    import docker

    client = docker.DockerClient(base_url=proxy_url, timeout=60)
    yield client
    client.close()


def _ids(engine) -> set[str]:
    """The engine's containers that a create through the proxy would have made: every one carries the proxy's
    label, and the tests name theirs proxy-test-*. (Only these: other tests may run containers on the same
    engine meanwhile.)"""
    labelled = engine.containers.list(all=True, filters={"label": "io.mlops.socket-proxy"})
    named = engine.containers.list(all=True, filters={"name": "proxy-test-"})
    return {c.id for c in labelled + named}


def _name() -> str:
    return f"proxy-test-{uuid.uuid4().hex[:8]}"


def test_a_plain_container_runs_and_its_logs_come_back(client, engine) -> None:
    name = _name()
    out = client.containers.run(IMAGE, entrypoint=["python", "-c", "print(1)"], name=name, remove=True)
    assert out == b"1\n"
    assert name not in {c.name for c in engine.containers.list(all=True)}

    container = client.containers.create(IMAGE, entrypoint=["python", "-c", "print('hello')"])
    try:
        assert container.labels["io.mlops.socket-proxy"] == "test"  # the proxy's label
        assert container.id in {c.id for c in client.containers.list(all=True)}  # listed through the proxy
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert container.logs() == b"hello\n"
    finally:
        container.remove(force=True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"privileged": True}, "Privileged"),
        ({"volumes": {"/": {"bind": "/host", "mode": "rw"}}}, "Binds"),
        ({"mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}, "Mounts"),
        ({"mounts": [{"Type": "volume", "Source": "someone-elses-data", "Target": "/data"}]}, "Mounts"),
        ({"network_mode": "host"}, "NetworkMode"),
        ({"network_mode": "container:abc"}, "NetworkMode"),
        ({"network_mode": "someone-elses-network"}, "NetworkMode"),
        ({"cap_add": ["SYS_ADMIN"]}, "CapAdd"),
        ({"pid_mode": "host"}, "PidMode"),
        ({"ipc_mode": "host"}, "IpcMode"),
        ({"userns_mode": "host"}, "UsernsMode"),
        ({"security_opt": ["seccomp=unconfined"]}, "SecurityOpt"),
        ({"sysctls": {"net.ipv4.ip_forward": "1"}}, "Sysctls"),
        ({"devices": ["/dev/sda:/dev/sda:rwm"]}, "Devices"),
        ({"image": "busybox:latest"}, "Image"),
        ({"image": "mlops-evil.example/x:1"}, "Image"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_what_reaches_the_host_is_refused_and_nothing_is_created(client, engine, kwargs, field) -> None:
    import docker

    kwargs = {"image": IMAGE, "command": ["true"], "name": _name(), **kwargs}
    before = _ids(engine)
    with pytest.raises(docker.errors.APIError) as caught:
        client.containers.create(**kwargs)
    assert caught.value.status_code == 403, caught.value
    assert field in caught.value.explanation, caught.value.explanation
    assert _ids(engine) == before


def test_the_gpu_request_goes_through_and_other_device_requests_do_not(client, engine) -> None:
    """DockerOperator's device_requests for a GPU step (StepOperator: count -1, capability gpu) is created (this
    engine has no NVIDIA runtime, so it would not start); another driver or capability is refused."""
    from docker.types import DeviceRequest

    import docker

    container = client.containers.create(
        IMAGE, command=["true"], device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])]
    )
    try:
        requests = engine.api.inspect_container(container.id)["HostConfig"]["DeviceRequests"]
        assert [(r["Count"], r["Capabilities"]) for r in requests] == [(-1, [["gpu"]])]
    finally:
        container.remove(force=True)
    before = _ids(engine)
    for request in (DeviceRequest(driver="other", count=-1, capabilities=[["gpu"]]), DeviceRequest(count=1)):
        with pytest.raises(docker.errors.APIError) as caught:
            client.containers.create(IMAGE, command=["true"], name=_name(), device_requests=[request])
        assert caught.value.status_code == 403 and "DeviceRequests" in caught.value.explanation
    assert _ids(engine) == before


def test_the_deprecated_top_level_and_case_tricks_are_refused(proxy_url, engine) -> None:
    """The engine also reads host settings at the top level of the body and matches names case-insensitively."""
    import docker

    api = docker.APIClient(base_url=proxy_url)
    before = _ids(engine)
    for body, field in (
        ({"Image": IMAGE, "Privileged": True}, "Privileged"),
        ({"Image": IMAGE, "Binds": ["/:/host"]}, "Binds"),
        ({"Image": IMAGE, "hostconfig": {"privileged": True}}, "Privileged"),
        ({"Image": IMAGE, "HostConfig": {"Privileged": False, "privileged": True}}, "twice"),
        ({"Image": IMAGE, "HostConfig": {"VolumesFrom": ["docker-socket-proxy"]}}, "VolumesFrom"),
        ({"Image": IMAGE, "NetworkingConfig": {"EndpointsConfig": {"backend": {}}}}, "EndpointsConfig"),
        (
            {
                "Image": IMAGE,
                "HostConfig": {
                    "Mounts": [
                        {
                            "Type": "volume",
                            "Source": "mlops-test-allowed",
                            "Target": "/x",
                            "VolumeOptions": {
                                "DriverConfig": {
                                    "Name": "local",
                                    "Options": {"type": "none", "o": "bind", "device": "/"},
                                }
                            },
                        }
                    ]
                },
            },
            "driver options",
        ),
    ):
        response = api._post_json(api._url("/containers/create"), data=body, params={"name": _name()})
        assert response.status_code == 403, (body, response.text)
        assert field in response.json()["message"], response.text
    assert _ids(engine) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/containers/{id}/exec"),
        ("POST", "/exec/abc/start"),
        ("POST", "/build"),
        ("GET", "/volumes"),
        ("POST", "/volumes/create"),
        ("GET", "/networks"),
        ("POST", "/networks/create"),
        ("GET", "/info"),
        ("POST", "/v1.41/containers/{id}/exec"),
        ("GET", "/containers/{id}/archive"),
        ("POST", "/containers/create/../../build"),
    ],
)
def test_other_endpoints_are_refused(proxy_url, engine, method, path) -> None:
    import docker

    api = docker.APIClient(base_url=proxy_url)
    url = api.base_url + path.format(id="x")
    response = api._post(url) if method == "POST" else api._get(url)
    assert response.status_code == 403, response.text
    message = response.json()["message"]
    assert "not allowed" in message and path.split("/")[-1] in message, message


def _raw(proxy_url: str, request: bytes) -> bytes:
    host, port = proxy_url.removeprefix("tcp://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # the engine reads a # as part of the path, and its router would clean .. into /containers/x/exec
        (b"POST /containers/x/json#/../exec HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n", b"403"),
        (b"POST /containers/x%2Fexec HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n", b"403"),
        # a bare LF inside a header line would be a second header (Transfer-Encoding) to the engine only
        (
            b"POST /auth HTTP/1.1\r\nHost: d\r\nX: a\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
            b"400",
        ),
        # the old API's HostConfig in a start body
        (b"POST /v1.20/containers/x/start HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}", b"403"),
    ],
    ids=["fragment", "escape", "bare-lf", "start-body"],
)
def test_smuggling_tricks_are_refused(proxy_url, request_bytes, status) -> None:
    response = _raw(proxy_url, request_bytes)
    assert response.split(b" ")[1] == status, response


def test_containers_not_created_through_the_proxy_are_out_of_reach(client, engine) -> None:
    """The stack's own containers (the database, the object store) are neither inspected nor removed."""
    import docker

    other = engine.containers.create(IMAGE, command=["true"], environment={"SECRET": "s3cr3t"})
    try:
        for call in (lambda: client.containers.get(other.id), lambda: client.api.remove_container(other.id)):
            with pytest.raises(docker.errors.APIError) as caught:
                call()
            assert (
                caught.value.status_code == 403
                and "not created through this proxy" in caught.value.explanation
            )
        assert engine.containers.get(other.id).id == other.id  # still there
        listed = {c.id for c in client.containers.list(all=True)}
        assert other.id not in listed  # nor listed
        assert other.id not in {c.id for c in client.containers.list(all=True, filters={"label": ["x"]})}
    finally:
        other.remove(force=True)


def test_docker_operator_runs_a_container_through_the_proxy(proxy_url, engine) -> None:
    """Airflow's DockerOperator as StepOperator configures it (no mounts, auto_remove success): pull check,
    create, attach by HTTP upgrade (its log lines come back), start, wait, remove."""
    from airflow.providers.docker.operators.docker import DockerOperator

    before = _ids(engine)
    operator = DockerOperator(
        task_id="through_the_proxy",
        container_name=_name(),
        image=IMAGE,
        docker_url=proxy_url,
        entrypoint=["python", "-c"],
        command=["print('from the task'); print('last line')"],
        mount_tmp_dir=False,
        auto_remove="success",
        labels={"io.mlops.step": "proxy-test"},
        tty=False,
        timeout=60,
    )
    assert operator.execute(context={}) == "last line"  # the attach stream's last line, as XCom
    assert _ids(engine) == before  # removed


def test_the_policy_allows_what_the_stack_sends() -> None:
    """The stack's task containers (StepOperator on the `mlops-tasks` network, GPU request, no mounts) pass the
    compose service's policy as they are; the label is added, nothing else changes."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("socket_proxy", PROXY)
    proxy = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("socket_proxy", proxy)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["socket_proxy"])
    proxy = sys.modules["socket_proxy"]
    policy = proxy.Policy.from_env(
        {"PROXY_ALLOWED_IMAGES": "mlops-", "PROXY_ALLOWED_NETWORKS": "mlops-tasks"}
    )
    body = {
        "Image": "mlops-train:dev",
        "Cmd": ["train"],
        "Labels": {"io.mlops.step": "train"},
        "HostConfig": {
            "NetworkMode": "mlops-tasks",
            "Mounts": [],
            "DeviceRequests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]], "Options": {}}],
            "LogConfig": {"Type": "", "Config": {}},
        },
        "NetworkingConfig": {"EndpointsConfig": {"mlops-tasks": {}}},
    }
    checked = json.loads(proxy.check_create(json.dumps(body).encode(), policy))
    assert checked == {**body, "Labels": {"io.mlops.step": "train", "io.mlops.socket-proxy": "1"}}
    assert not policy.image_allowed("mlops-") and not policy.image_allowed("localhost:5000/mlops-base")
    assert policy.image_allowed("mlops-base@sha256:" + "0" * 64)
