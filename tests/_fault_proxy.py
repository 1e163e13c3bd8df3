"""A fault-injecting HTTP proxy on loopback in front of the S3 server (moto): S3 faults on a programmable schedule.

Each :class:`Fault` names the requests it matches (method and a regex on the percent-decoded path and query), which
of those it hits (the ``nth`` match, then ``times`` matches in a row, or every one from ``nth`` on when ``times``
is None) and what it does instead of an ordinary answer:

- ``"500"``: ``500 InternalError`` (an S3 XML error body), the request is not forwarded;
- ``"503"``: ``503 SlowDown`` (S3's throttling answer), not forwarded;
- ``"hang"``: never answer (the client's timeout fires); not forwarded. ``forward=True``: forwarded first (the
  server applies it), then no answer;
- ``"drop_request"``: read half of the request's body, then close the connection: the server never sees it;
- ``"drop_response"``: forward (the server applies it), then send the status line, the headers and half the body
  (nothing at all when the body is empty) and close: the client cannot tell whether the request took effect.

Every other request is forwarded verbatim. ``log`` records each request (method, decoded path, what was done), so
a test can check that its fault fired. Modelled on tests/_holding_proxy.py.

The proxy runs in a process of its own (``python tests/_fault_proxy.py <target>``), programmed over HTTP on its own
port (``/__faults__``): delta-rs holds the GIL through some of its calls (``DeltaTable.history``), which would
freeze a proxy thread in the test's process and turn every such call into a timeout."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from _holding_proxy import read_body

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ACTIONS = {"500", "503", "hang", "drop_request", "drop_response"}
HANG_LIMIT_S = 60.0  # a hung request is let go (its connection closed) after this, or when the proxy closes

_ERRORS = {
    "500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass
class Fault:
    """``action`` on the ``nth`` (1-based) request matching ``method`` (None: any) and ``path`` (a regex searched
    in the decoded path and query), and on the ``times - 1`` matches after it; ``times=None``: on every match from
    the ``nth`` on (a permanent fault)."""

    action: str
    path: str
    method: str | None = None
    nth: int = 1
    times: int | None = 1
    forward: bool = False  # "hang" only: forward the request before hanging
    seen: int = 0  # matching requests so far
    hits: int = 0  # faults injected so far
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; one of {sorted(ACTIONS)}")
        self.pattern = re.compile(self.path)

    def take(self, method: str, path: str) -> bool:
        """Count the request when it matches; True when this one is faulted."""
        if (self.method is not None and method != self.method) or not self.pattern.search(path):
            return False
        self.seen += 1
        hit = self.seen >= self.nth and (self.times is None or self.seen < self.nth + self.times)
        self.hits += hit
        return hit


CONTROL = "/__faults__"


class _Server:
    """The proxy itself (in the proxy's process): forwards to ``target``, injecting the scheduled faults."""

    def __init__(self, target: str) -> None:
        self.target = urlsplit(target)
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []  # (method, decoded path, "forwarded" or the fault's action)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _drop(self) -> None:
                """Close the connection at once (no answer; a reset when data is left unread)."""
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _control(self) -> None:
                body = read_body(self)
                with proxy._lock:
                    if self.command == "POST":
                        proxy.faults.append(Fault(**json.loads(body)))
                    elif self.command == "DELETE":
                        proxy.faults.clear()
                        if self.path.endswith("/log"):
                            proxy.log.clear()
                    answer = json.dumps({"log": proxy.log, "hits": [f.hits for f in proxy.faults]}).encode()
                self._send(200, "OK", [("Content-Type", "application/json")], answer)

            def _handle(self) -> None:
                if self.path.startswith(CONTROL):
                    self._control()
                    return
                path = unquote(self.path)
                with proxy._lock:
                    fault = next((f for f in proxy.faults if f.take(self.command, path)), None)
                    action = fault.action if fault is not None else "forwarded"
                    proxy.log.append((self.command, path, action))
                if action == "drop_request":
                    read_body(self, limit=int(self.headers.get("Content-Length") or 2) // 2)
                    self._drop()
                    return
                body = read_body(self)
                if action in _ERRORS:
                    self._error(*_ERRORS[action])
                    return
                if action == "hang":
                    if fault is not None and fault.forward:
                        self._forward(body)
                    proxy._closing.wait(HANG_LIMIT_S)
                    self._drop()
                    return
                status, reason, headers, data = self._forward(body)
                if action == "drop_response":
                    if len(data) > 1 and self.command != "HEAD":
                        self._send(status, reason, headers, data, cut=len(data) // 2)
                    self._drop()
                    return
                self._send(status, reason, headers, data)

            def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    return response.status, response.reason, response.getheaders(), response.read()
                finally:
                    conn.close()

            def _send(
                self,
                status: int,
                reason: str,
                headers: list[tuple[str, str]],
                data: bytes,
                cut: int | None = None,
            ) -> None:
                self.send_response(status, reason)
                length = None
                for key, value in headers:
                    if key.lower() == "content-length":
                        length = value
                    elif key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header(
                    "Content-Length", length if self.command == "HEAD" and length else str(len(data))
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data if cut is None else data[:cut])
                    self.wfile.flush()

            def _error(self, status: int, reason: str, code: str, message: str) -> None:
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{message}</Message>"
                    f"<RequestId>fault-proxy</RequestId></Error>"
                ).encode()
                self._send(status, reason, [("Content-Type", "application/xml")], xml)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self) -> None:
        print(self.url, flush=True)
        self.server.serve_forever()


class FaultProxy:
    """A :class:`_Server` in a process of its own in front of ``target`` (an http:// URL); ``url`` is its endpoint.
    :meth:`add` schedules a fault, :meth:`clear` drops them all, :meth:`requests` reads the log."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.url = ""
        self._proc: subprocess.Popen | None = None

    def _call(self, method: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}{CONTROL}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def add(
        self,
        action: str,
        path: str,
        method: str | None = None,
        *,
        nth: int = 1,
        times: int | None = 1,
        forward: bool = False,
    ) -> None:
        """Schedule a :class:`Fault` (after those already scheduled: the first that matches a request wins)."""
        Fault(action, path, method)  # check the arguments here, not in the proxy's process
        self._call(
            "POST",
            {
                "action": action,
                "path": path,
                "method": method,
                "nth": nth,
                "times": times,
                "forward": forward,
            },
        )

    def clear(self) -> None:
        """Drop every scheduled fault: from now on everything is forwarded."""
        self._call("DELETE")

    def reset(self) -> None:
        """Drop every scheduled fault and the log (a proxy shared by several tests)."""
        request = urllib.request.Request(f"{self.url}{CONTROL}/log", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()

    @property
    def log(self) -> list[tuple[str, str, str]]:
        """Every request so far: (method, decoded path and query, "forwarded" or the fault injected)."""
        return [tuple(entry) for entry in self._call("GET")["log"]]  # type: ignore[misc]

    def requests(self, method: str | None = None, path: str = "") -> list[tuple[str, str, str]]:
        """The logged requests of ``method`` (None: any) whose decoded path matches the regex ``path``."""
        pattern = re.compile(path)
        return [e for e in self.log if (method is None or e[0] == method) and pattern.search(e[1])]

    def faulted(self) -> list[tuple[str, str, str]]:
        """The requests a fault was injected into."""
        return [e for e in self.log if e[2] != "forwarded"]

    def __enter__(self) -> FaultProxy:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, self.target], stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self._proc.kill()
            raise RuntimeError(f"the fault proxy did not start (exit {self._proc.wait()})")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        self._proc.wait(timeout=10)


if __name__ == "__main__":
    _Server(sys.argv[1]).serve()
