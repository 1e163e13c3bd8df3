"""A filtering proxy in front of the Docker engine's socket: the only way Airflow reaches the engine in the compose
stack (docker-compose.yaml, service `docker-socket-proxy`). Standard library only.

It listens on TCP (default 0.0.0.0:2375) and forwards to the engine's unix socket what DockerOperator and docker-py
need to run a task's container, and nothing else:

    GET|HEAD  /_ping  /version  /images/json  /images/{name}/json
    GET|HEAD  /containers/json                    (only the containers created through the proxy are listed)
    GET|HEAD  /containers/{id}/json  /containers/{id}/logs
    POST      /containers/create                  (the body is checked, see below)
    POST      /containers/{id}/start|stop|kill|wait|attach   (attach: the HTTP upgrade is spliced both ways)
    DELETE    /containers/{id}
    POST      /images/create                      (a pull of an allowed image only; no import)
    POST      /auth                               (registry login, when a docker_conn_id is set)

Each path may carry a version prefix (/v1.41/...). Anything else (exec, build, volumes, networks, swarm, system,
archive, commit, ...) is answered 403 with a JSON {"message": ...} naming the endpoint. A /info is refused too:
DockerOperator never calls it and it describes the host.

POST /containers/create is refused (403, the message names the field) when the container would reach the host:
HostConfig Privileged, Binds, Mounts of type bind (or of a volume not in PROXY_ALLOWED_VOLUMES, or with driver
options, which can bind any host path), VolumesFrom, CapAdd, Devices, DeviceCgroupRules, DeviceRequests other than
the GPU request (driver nvidia or the default, capability gpu), NetworkMode host or container:*, PidMode, IpcMode,
UTSMode, UsernsMode or CgroupnsMode host (pid/ipc container:* too), Cgroup, CgroupParent, a network outside
PROXY_ALLOWED_NETWORKS (NetworkMode or NetworkingConfig), SecurityOpt with unconfined or label disable,
Sysctls, MaskedPaths/ReadonlyPaths, a Runtime other than runc/nvidia, an image outside PROXY_ALLOWED_IMAGES. The
engine reads host settings both under HostConfig and at the top level of the body (the deprecated form older
API versions use), and matches field names case-insensitively: both are checked the same way, and a body naming a
field twice (in any case) is refused.

Every container it creates gets the label PROXY_CONTAINER_LABEL (default io.mlops.socket-proxy=1), and the
per-container endpoints act only on containers that carry it (the list shows only those): a client of the proxy
can neither read the environment (inspect) or logs of the stack's own containers (PostgreSQL, MinIO, ...) nor stop
or remove them.

Environment: PROXY_HOST, PROXY_PORT, DOCKER_SOCKET (default /var/run/docker.sock), PROXY_ALLOWED_IMAGES (comma
separated prefixes of repositories, default `mlops-`; a prefix never matches across a `/`, so `mlops-` allows
`mlops-base:dev` but not `mlops-evil.example/x`), PROXY_ALLOWED_VOLUMES (comma separated named volumes, default
none), PROXY_ALLOWED_NETWORKS (comma separated networks a container may join besides the default bridge and none;
default empty: any network but host and container:*), PROXY_CONTAINER_LABEL.

    python proxy.py [--host H] [--port P] [--socket PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

LOG = logging.getLogger("socket-proxy")
MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
READ_TIMEOUT_S = (
    60  # for a client's request head and body (the responses may stream for as long as a task runs)
)
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "proxy-authorization",
    "proxy-authenticate",
    "expect",  # the proxy has read the whole body before it forwards
}
VERSION = re.compile(r"/v[0-9]+(?:\.[0-9]+)?(?=/)")
SAFE_PATH = re.compile(r"/[A-Za-z0-9_.:/@-]*")
ID = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
IMAGE = r"[A-Za-z0-9][A-Za-z0-9_.:/@-]*"
# (methods, path, kind): kind says what else is checked before forwarding
RULES = [
    ({"GET", "HEAD"}, re.compile(r"/_ping"), "plain"),
    ({"GET", "HEAD"}, re.compile(r"/version"), "plain"),
    ({"GET", "HEAD"}, re.compile(r"/containers/json"), "list"),
    ({"GET", "HEAD"}, re.compile(r"/images/json"), "plain"),
    ({"GET", "HEAD"}, re.compile(rf"/images/{IMAGE}/json"), "plain"),
    ({"GET", "HEAD"}, re.compile(rf"/containers/(?P<id>{ID})/(?:json|logs)"), "container"),
    ({"POST"}, re.compile(r"/containers/create"), "create"),
    ({"POST"}, re.compile(rf"/containers/(?P<id>{ID})/(?:start|stop|kill|wait|attach)"), "container"),
    ({"DELETE"}, re.compile(rf"/containers/(?P<id>{ID})"), "container"),
    ({"POST"}, re.compile(r"/images/create"), "pull"),
    ({"POST"}, re.compile(r"/auth"), "auth"),
]
GPU_DRIVERS = {"", "nvidia"}
DEFAULT_NETWORKS = {"", "default", "bridge", "none"}
RUNTIMES = {"", "runc", "nvidia"}


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Policy:
    images: list[str] = field(default_factory=lambda: ["mlops-"])
    volumes: set[str] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)  # empty: any but host and container:*
    label: tuple[str, str] = ("io.mlops.socket-proxy", "1")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Policy:
        env = dict(os.environ if env is None else env)
        label = env.get("PROXY_CONTAINER_LABEL", "io.mlops.socket-proxy=1")
        key, _, value = label.partition("=")
        return cls(
            images=_split(env.get("PROXY_ALLOWED_IMAGES", "mlops-")),
            volumes=set(_split(env.get("PROXY_ALLOWED_VOLUMES", ""))),
            networks=set(_split(env.get("PROXY_ALLOWED_NETWORKS", ""))),
            label=(key.strip(), value.strip()),
        )

    def image_allowed(self, image: object) -> bool:
        if not isinstance(image, str) or not image:
            return False
        repo = image.split("@", 1)[0]
        if repo.rfind(":") > repo.rfind("/"):
            repo = repo[: repo.rfind(":")]
        return any(repo.startswith(p) and "/" not in repo[len(p) :] and repo != p for p in self.images)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# -- the create body ---------------------------------------------------------------------------------------------


def _fold(key: str) -> str:
    """A JSON key as Go's encoding/json matches it to a field (case-insensitive, with its two non-ASCII folds)."""
    return key.replace("\u017f", "s").replace("\u212a", "k").lower()


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen = set()
    for key, _ in pairs:
        if _fold(key) in seen:
            raise Refused(403, f"containers/create: the field {key!r} is given twice")
        seen.add(_fold(key))
    return dict(pairs)


def _get(obj: object, name: str) -> object:
    if not isinstance(obj, dict):
        return None
    for key, value in obj.items():
        if _fold(key) == _fold(name):
            return value
    return None


def _list(obj: object, name: str, where: str) -> list:
    value = _get(obj, name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Refused(400, f"containers/create: {where}{name} is not a list")
    return value


def _refuse(field_name: str, why: str) -> Refused:
    return Refused(403, f"containers/create: {field_name} is not allowed through this proxy ({why})")


def check_host_config(hc: object, where: str, policy: Policy) -> None:
    """Refuse whatever in a HostConfig (or the top level of a create body) reaches the host."""
    if hc is None:
        return
    if not isinstance(hc, dict):
        raise Refused(400, f"containers/create: {where} is not an object")
    p = f"{where}." if where else ""
    if _get(hc, "Privileged"):
        raise _refuse(f"{p}Privileged", "a privileged container is root on the host")
    if _get(hc, "Binds"):
        raise _refuse(f"{p}Binds", "host paths are not mounted")
    if _get(hc, "VolumesFrom"):
        raise _refuse(
            f"{p}VolumesFrom", "another container's mounts may be host paths or the engine's socket"
        )
    for mount in _list(hc, "Mounts", p):
        kind = _get(mount, "Type") or "volume"
        if kind == "tmpfs":
            continue
        if kind != "volume":
            raise _refuse(f"{p}Mounts", f"a mount of type {kind}: host paths are not mounted")
        source = _get(mount, "Source")
        if source not in policy.volumes:
            raise _refuse(f"{p}Mounts", f"the volume {source!r} is not in PROXY_ALLOWED_VOLUMES")
        if _get(_get(mount, "VolumeOptions"), "DriverConfig"):
            raise _refuse(f"{p}Mounts", "volume driver options can bind any host path")
    for name in ("CapAdd", "Devices", "DeviceCgroupRules", "Sysctls"):
        if _get(hc, name):
            raise _refuse(f"{p}{name}", "it gives the container the host's devices or kernel settings")
    for request in _list(hc, "DeviceRequests", p):
        driver = _get(request, "Driver") or ""
        caps = _get(request, "Capabilities") or []
        gpu_only = (
            isinstance(caps, list)
            and caps
            and all(isinstance(c, list) and "gpu" in c for c in caps)
            and not _get(request, "Options")
        )
        if driver not in GPU_DRIVERS or not gpu_only:
            raise _refuse(f"{p}DeviceRequests", "only the GPU request (driver nvidia, capability gpu)")
    network = _get(hc, "NetworkMode") or ""
    if not isinstance(network, str) or network == "host" or network.startswith("container:"):
        raise _refuse(f"{p}NetworkMode", f"{network!r} shares another network namespace")
    for name, refused_container in (
        ("PidMode", True),
        ("IpcMode", True),
        ("UTSMode", False),
        ("UsernsMode", False),
        ("CgroupnsMode", False),
    ):
        mode = _get(hc, name) or ""
        if (
            not isinstance(mode, str)
            or mode == "host"
            or (refused_container and mode.startswith("container:"))
        ):
            raise _refuse(f"{p}{name}", f"{mode!r} shares the host's or another container's namespace")
    if policy.networks and network not in policy.networks | DEFAULT_NETWORKS:
        raise _refuse(f"{p}NetworkMode", f"the network {network!r} is not in PROXY_ALLOWED_NETWORKS")
    if _get(hc, "Cgroup"):
        raise _refuse(f"{p}Cgroup", "it shares another container's cgroup")
    if _get(hc, "CgroupParent"):
        raise _refuse(f"{p}CgroupParent", "the container's cgroup stays the engine's choice")
    for opt in _list(hc, "SecurityOpt", p):
        if not isinstance(opt, str) or "unconfined" in opt or re.search(r"label[=:]disable", opt):
            raise _refuse(f"{p}SecurityOpt", f"{opt!r} lifts the container's confinement")
    for name in ("MaskedPaths", "ReadonlyPaths"):
        if _get(hc, name) is not None:
            raise _refuse(f"{p}{name}", "it unmasks the host's /proc and /sys paths")
    runtime = _get(hc, "Runtime") or ""
    if runtime not in RUNTIMES:
        raise _refuse(f"{p}Runtime", f"runtime {runtime!r}")


def check_create(body: bytes, policy: Policy) -> bytes:
    """The create body, checked; returned with the proxy's label added."""
    try:
        config = json.loads(body or b"{}", object_pairs_hook=_pairs)
    except Refused:
        raise
    except ValueError as exc:
        raise Refused(400, f"containers/create: the body is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise Refused(400, "containers/create: the body is not a JSON object")
    image = _get(config, "Image")
    if not policy.image_allowed(image):
        raise _refuse("Image", f"{image!r} is not in PROXY_ALLOWED_IMAGES ({','.join(policy.images)})")
    check_host_config(config, "", policy)  # the deprecated top-level host settings
    check_host_config(_get(config, "HostConfig"), "HostConfig", policy)
    endpoints = _get(_get(config, "NetworkingConfig"), "EndpointsConfig") or {}
    if not isinstance(endpoints, dict):
        raise Refused(400, "containers/create: NetworkingConfig.EndpointsConfig is not an object")
    if policy.networks:
        network = _get(_get(config, "HostConfig"), "NetworkMode") or ""
        for name in endpoints:
            if name not in policy.networks | {network}:
                raise _refuse("NetworkingConfig.EndpointsConfig", f"the network {name!r} is not allowed")
    labels_key = next((k for k in config if _fold(k) == "labels"), "Labels")
    labels = config.get(labels_key) or {}
    if not isinstance(labels, dict):
        raise Refused(400, "containers/create: Labels is not an object")
    config[labels_key] = {**labels, policy.label[0]: policy.label[1]}
    return json.dumps(config).encode()


# -- HTTP ----------------------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        if len(values) > 1:
            raise Refused(400, f"the header {name} is given twice")
        return values[0] if values else None

    @property
    def upgrade(self) -> str | None:
        connection = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        return self.header("upgrade") if "upgrade" in connection else None


def _parse_head(head: bytes) -> Request:
    # a bare CR or LF (or NUL) inside a line would split it into two headers for the engine but not for us
    if re.search(rb"[\x00\r\n]", head[:-4].replace(b"\r\n", b"")):
        raise Refused(400, "malformed request head")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise Refused(400, "malformed request line")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise Refused(400, "malformed header")
        headers.append((name, value.strip()))
    return Request(parts[0], parts[1], headers)


async def _read_body(reader: asyncio.StreamReader, request: Request) -> bytes:
    te = request.header("transfer-encoding")
    cl = request.header("content-length")
    if te is not None:
        if te.lower() != "chunked" or cl is not None:
            raise Refused(400, "unsupported Transfer-Encoding")
        chunks, size = [], 0
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";", 1)[0].strip(), 16)
            if n < 0:
                raise ValueError("negative chunk size")
            if n == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            size += n
            if size > MAX_BODY:
                raise Refused(413, "request body too large")
            chunks.append(await reader.readexactly(n))
            await reader.readexactly(2)
    if cl is not None:
        if not cl.isdigit():
            raise Refused(400, "malformed Content-Length")
        if int(cl) > MAX_BODY:
            raise Refused(413, "request body too large")
        return await reader.readexactly(int(cl))
    return b""


def _route(request: Request) -> tuple[str, str, re.Match]:
    """The rule's kind, the endpoint (path without version) and the match; Refused when no rule allows it. The
    path is split from the query the way the engine splits it (at the first `?`; a `#` is no fragment to it), and
    only plain paths pass: no escapes, dot segments or empty segments the engine's router could clean into another
    endpoint."""
    path = request.target.split("?", 1)[0]
    bare = VERSION.sub("", path, count=1) if VERSION.match(path) else path
    endpoint = f"{request.method} {bare}"
    if not SAFE_PATH.fullmatch(path) or "/../" in path + "/" or "/./" in path + "/" or "//" in path:
        raise Refused(403, f"{endpoint} is not allowed through this proxy (path)")
    for methods, pattern, kind in RULES:
        m = pattern.fullmatch(bare)
        if m and request.method in methods:
            return kind, endpoint, m
    raise Refused(403, f"{endpoint} is not allowed through this proxy")


class Proxy:
    def __init__(self, socket_path: str, policy: Policy) -> None:
        self.socket_path = socket_path
        self.policy = policy

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per client connection: the response says Connection: close (but after an upgrade)."""
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                return
            except asyncio.LimitOverrunError:
                raise Refused(431, "request head too large") from None
            request = _parse_head(head)
            if (request.header("expect") or "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.body = await asyncio.wait_for(_read_body(reader, request), READ_TIMEOUT_S)
            kind, endpoint, match = _route(request)
            await self.check(request, kind, endpoint, match)
            # the health check pings every few seconds: only at debug level
            LOG.log(
                logging.DEBUG if kind == "plain" and "_ping" in endpoint else logging.INFO,
                "%s: forwarded",
                endpoint,
            )
            await self.forward(request, reader, writer)
        except Refused as exc:
            LOG.warning("refused (%d): %s", exc.status, exc.message)
            await _reply(writer, exc.status, {"message": exc.message})
        except (asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            await _reply(writer, 400, {"message": f"malformed request: {exc}"})
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            LOG.exception("proxy error")
            await _reply(writer, 502, {"message": "socket proxy error"})
        finally:
            writer.close()

    async def check(self, request: Request, kind: str, endpoint: str, match: re.Match) -> None:
        if "#" in request.target:
            raise Refused(403, f"{endpoint}: a # in the request target is not allowed through this proxy")
        query = parse_qs(request.target.partition("?")[2], keep_blank_values=True)
        if request.body and kind not in ("create", "auth"):
            raise Refused(403, f"{endpoint}: a request body is not allowed through this proxy")
        if kind == "create":
            request.body = check_create(request.body, self.policy)
        elif kind == "pull":
            if set(query) - {"fromImage", "tag", "platform"} or any(len(v) > 1 for v in query.values()):
                raise Refused(403, f"{endpoint}: only a pull (fromImage, tag, platform) is allowed")
            image = query.get("fromImage", [""])[0]
            if not self.policy.image_allowed(image):
                raise Refused(403, f"{endpoint}: the image {image!r} is not in PROXY_ALLOWED_IMAGES")
        elif kind == "container":
            await self.check_label(match.group("id"), endpoint)
        elif kind == "list":
            request.target = self.list_target(request.target, query, endpoint)

    def list_target(self, target: str, query: dict[str, list[str]], endpoint: str) -> str:
        """The container list, filtered to the containers created through the proxy (the label filter added to the
        client's filters: the engine ANDs different labels)."""
        if any(len(v) > 1 for v in query.values()):
            raise Refused(403, f"{endpoint}: a query parameter is given twice")
        try:
            filters = json.loads(query.pop("filters", ["{}"])[0] or "{}")
        except ValueError:
            raise Refused(400, f"{endpoint}: filters is not JSON") from None
        if not isinstance(filters, dict):
            raise Refused(400, f"{endpoint}: filters is not a JSON object")
        labels = filters.get("label") or []
        if isinstance(labels, dict):  # the engine's older form: {"k=v": true}
            labels = [k for k, v in labels.items() if v]
        if not isinstance(labels, list):
            raise Refused(400, f"{endpoint}: the label filter is neither a list nor an object")
        filters["label"] = [*labels, "=".join(self.policy.label)]
        params = {k: v[0] for k, v in query.items()}
        params["filters"] = json.dumps(filters)
        return target.split("?", 1)[0] + "?" + urlencode(params)

    async def check_label(self, container: str, endpoint: str) -> None:
        status, body = await self.call("GET", f"/containers/{container}/json")
        if status != 200:
            message = json.loads(body or b"{}").get("message") if body.startswith(b"{") else body.decode()
            raise Refused(status, message or f"{endpoint}: engine answered {status}")
        labels = (json.loads(body).get("Config") or {}).get("Labels") or {}
        key, value = self.policy.label
        if labels.get(key) != value:
            raise Refused(403, f"{endpoint}: the container was not created through this proxy")

    async def call(self, method: str, path: str) -> tuple[int, bytes]:
        """A small request of the proxy's own to the engine."""
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_HEAD)
        try:
            # HTTP/1.0: never chunked, the body ends with the connection
            up_writer.write(f"{method} {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            headers = _response_headers(head)
            if "content-length" in headers:
                body = await up_reader.readexactly(int(headers["content-length"]))
            else:
                body = await up_reader.read()
            return status, body
        finally:
            up_writer.close()

    async def forward(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_HEAD)
        try:
            upgrade = request.upgrade
            named = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
            lines = [f"{request.method} {request.target} HTTP/1.1"]
            lines += [f"{k}: {v}" for k, v in request.headers if k.lower() not in HOP_BY_HOP | named]
            if request.body or request.method in ("POST", "PUT"):
                lines.append(f"Content-Length: {len(request.body)}")
            # close after the response in every case, so its end is the connection's end
            lines.append(
                f"Connection: Upgrade, close\r\nUpgrade: {upgrade}" if upgrade else "Connection: close"
            )
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body)
            await up_writer.drain()

            head = await up_reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            while status in (100, 102, 103):  # interim responses: the final one follows
                head = await up_reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
            if upgrade and status == 101:
                writer.write(head)
                await writer.drain()
                await _splice(reader, writer, up_reader, up_writer)
                return
            out = [head.split(b"\r\n", 1)[0].decode("latin-1")]
            out += [
                line
                for line in head.decode("latin-1").split("\r\n")[1:]
                if line and line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")
            ]
            out.append("Connection: close")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                await writer.drain()
                return
            length = _response_headers(head).get("content-length")
            remaining = int(length) if length is not None and length.isdigit() else None
            while remaining is None or remaining > 0:
                chunk = await up_reader.read(65536 if remaining is None else min(65536, remaining))
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
                if remaining is not None:
                    remaining -= len(chunk)
        finally:
            up_writer.close()


def _response_headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, half_close: bool) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _splice(client_r, client_w, up_r, up_w) -> None:
    """Both directions of an upgraded (hijacked) connection: the client's input reaches the engine (its end is
    passed on as a half close), and the engine's output the client until the engine ends it."""
    to_engine = asyncio.create_task(_pump(client_r, up_w, half_close=True))
    try:
        await _pump(up_r, client_w, half_close=False)
    finally:
        to_engine.cancel()


async def _reply(writer: asyncio.StreamWriter, status: int, payload: dict) -> None:
    reasons = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large"}
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        writer.write(head.encode() + body)
        await writer.drain()
    except (ConnectionError, OSError):
        pass


async def serve(host: str, port: int, socket_path: str, policy: Policy, ready=None) -> None:
    proxy = Proxy(socket_path, policy)
    server = await asyncio.start_server(proxy.handle, host, port, limit=MAX_HEAD)
    LOG.info(
        "listening on %s:%d for %s; images %s, volumes %s, networks %s, label %s",
        host,
        port,
        socket_path,
        policy.images,
        sorted(policy.volumes),
        sorted(policy.networks) or "any but host",
        "=".join(policy.label),
    )
    if ready is not None:
        ready(server)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("PROXY_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PROXY_PORT", "2375")))
    parser.add_argument("--socket", default=os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(args.host, args.port, args.socket, Policy.from_env()))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    main()
