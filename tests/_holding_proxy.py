"""An HTTP forwarder in front of the S3 server (moto) that holds one chosen request without ever answering it.

Fault injection at the network boundary (like toxiproxy): a test points a step process at the proxy, waits until
the process is inside the upload of a data file, and kills it there: a real mid-write crash, deterministically.
Every other request is forwarded unchanged."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def read_body(handler: BaseHTTPRequestHandler, limit: int | None = None) -> bytes:
    """The request's body (chunked or by Content-Length), or its first ``limit`` bytes or so: a proxy that drops
    a request midway reads only part of it."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
            if limit is not None and sum(map(len, chunks)) >= limit:
                return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    if limit is not None:
        length = min(length, limit)
    return handler.rfile.read(length) if length else b""


class HoldingProxy:
    """Forward to ``target``; the first request for which ``hold(method, path)`` is true is held (``held`` is
    set), never forwarded and never answered."""

    def __init__(self, target: str, hold: Callable[[str, str], bool]) -> None:
        self.target = urlsplit(target)
        self.hold = hold
        self.held = threading.Event()
        self.held_path: str | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = read_body(self)
                with proxy._lock:
                    hold = not proxy.held.is_set() and proxy.hold(self.command, self.path)
                    if hold:
                        proxy.held_path = self.path
                        proxy.held.set()
                if hold:
                    proxy._release.wait()
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                length = response.getheader("Content-Length")
                self.send_header(
                    "Content-Length", length if self.command == "HEAD" and length else str(len(data))
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HoldingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
