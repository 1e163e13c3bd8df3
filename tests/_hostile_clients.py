"""Hostile clients against a live ``mlops serve`` (issue 26, item 3), shared by the abuse test
(``tests/test_serve_abuse.py``: every refusal has the status its abuse calls for, every ``/health`` probe is
answered within a liveness probe's 1 s) and the benchmark (``bench/serve_abuse.py``: ``/health``'s latency
percentiles over a longer run, in ``docs/benchmarks.md``).

The server runs in a process of its own (its own interpreter, as deployed); the clients are threads of the caller:
slow bodies (a few bytes a second, more connections than the key's in-flight cap), bodies over the limit (declared,
and chunked without a length), wrong keys, a key hammering past its rate, a client cycling ``at`` over times before,
between and after the snapshots, a well-behaved client scoring batches, and a probe of ``/health`` at a fixed
rate."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from _serve_fixtures import USECASE, free_port

from pipelines.config import REPO_ROOT

PREDICT = f"/v1/usecases/{USECASE}/predict"
INFER = f"/v2/models/{USECASE}/infer"
GOOD, HAMMER, SLOW, HUGE, CYCLER = "good-key", "hammer-key", "slow-key", "huge-key", "cycler-key"
KEYS = frozenset({GOOD, HAMMER, SLOW, HUGE, CYCLER})
# in-flight cap 4 (the slow client opens 6), 20 requests a second with bursts of 10 (the hammer sends hundreds),
# a 64 KiB body limit (the huge client sends 512 MiB declared, 1 MiB chunked)
LIMITS = ("--rate-limit", "20", "--rate-burst", "10", "--max-in-flight", "4", "--max-body-bytes", "65536")
CLIENTS = ("good", "slow", "huge", "bad", "hammer", "cycler")
WHAT_THEY_DO = {
    "good": "its own key, 20 records a request, at most 5 requests a second",
    "slow": "6 connections of one key declare 2000 bytes and send a byte every second or so: 4 held in "
    "flight (the cap) until the run ends, unanswered, 2 refused",
    "huge": "512 MiB declared, then 1 MiB chunked without a length; at most 5 pairs a second",
    "bad": "a new random key each request, at most 200 a second",
    "hammer": "one keep-alive connection, the same request hundreds of times a second (rate 20/s)",
    "cycler": "`at` cycled from 30 days before to 40 days after the snapshots, at most 25 requests a second",
}


def serve(log_path: Path, *options: str, keys: frozenset[str] = KEYS) -> tuple[subprocess.Popen, int]:
    """``mlops serve`` of the champion of the environment's MLOPS_HOME in a process of its own (its own interpreter:
    the clients' threads do not share its GIL), on a free loopback port, once /ready answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "pipelines", "serve", "--usecase", USECASE, "--port", str(port)]
    # the data are of 2013: by the wall clock every snapshot is older than serving.max_snapshot_age
    command += ["--no-capture", "--max-snapshot-age", "off", *options]
    environment = {**os.environ, "MLOPS_API_KEYS": ",".join(sorted(keys))}
    log = log_path.open("w")
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    log.close()
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, (
            "mlops serve was not ready in 180 s: " + log_path.read_text()[-3000:]
        )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            if request(conn, "GET", "/ready", None, None)[0] == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.3)


def stop(process: subprocess.Popen, log_path: Path) -> None:
    """SIGTERM, as a deployment stops it; it must exit 0."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    assert code == 0, log_path.read_text()[-3000:]


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, key: str | None):
    """(status, headers, body) of one request on ``conn``; headers are case-insensitive."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.headers, response.read()


@dataclass
class HostileRun:
    """What the clients saw: each /health probe's latency (s), each client's answers by status, what went wrong
    on the client side, and the server's /metrics text at the end."""

    health_s: list[float]
    answers: dict[str, Counter]
    problems: list[str]
    metrics: str

    def health_ms(self) -> list[float]:
        return sorted(1000 * s for s in self.health_s)

    def summary(self) -> dict[str, dict]:
        return {name: dict(counts) for name, counts in self.answers.items()}


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of the sorted ``ordered`` (nearest rank below, as bench/serving.py reports p99)."""
    return ordered[int(q * (len(ordered) - 1))]


def run_hostile_clients(
    port: int,
    records: list[dict],
    at: str,
    cycler_base: datetime,
    seconds: float,
    probe_every_s: float = 0.02,
) -> HostileRun:
    """The hostile clients, the polite one and the /health probe (one request each ``probe_every_s``) against the
    server on ``port`` for ``seconds``; ``cycler_base`` is the prediction time of the first snapshot day."""
    halt = threading.Event()
    answers: dict[str, Counter] = {name: Counter() for name in CLIENTS}
    health: list[float] = []
    problems: list[str] = []
    lock = threading.Lock()

    def note(name: str, status: object) -> None:
        with lock:
            answers[name][status] += 1

    def connect(timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def guarded(name: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # reported by the caller, with the client that failed
            problems.append(f"{name}: {type(exc).__name__}: {exc}")

    def probe() -> None:
        """A fixed rate (as a liveness probe polls), not one probe after another: a slow answer does not thin
        the samples taken while the server is slow."""
        conn = connect(5)
        due = time.perf_counter()
        while not halt.is_set():
            started = time.perf_counter()
            status, _, _ = request(conn, "GET", "/health", None, None)
            health.append(time.perf_counter() - started)
            if status != 200:
                problems.append(f"probe: /health answered {status}")
            due = max(due + probe_every_s, time.perf_counter())  # a late probe is not followed by a burst
            time.sleep(max(0.0, due - time.perf_counter()))

    def good() -> None:
        conn = connect(30)
        body = json.dumps({"records": records[:20], "at": at}).encode()
        while not halt.is_set():
            status, _, payload = request(conn, "POST", PREDICT, body, GOOD)
            note("good", status)
            if status != 200:
                problems.append(f"good: {status} {payload[:300]!r}")
            time.sleep(0.2)

    def slow_body() -> None:
        """Six connections of one key each declare a 2000-byte body and send it a few bytes a second: four are
        in flight (the cap), the other two get 429 at once; they give up when the run ends."""
        socks = []
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            head = (
                f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {SLOW}\r\n"
                "Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"records": [')
            socks.append(sock)
            time.sleep(0.1)
        for sock in socks:
            sock.settimeout(0.3)
        answered: set[int] = set()
        while not halt.is_set():
            for index, sock in enumerate(socks):
                if index in answered:
                    continue
                try:
                    reply = sock.recv(4096)
                except TimeoutError:
                    sock.sendall(b" ")  # a byte more: still sending, slowly
                    continue
                status = int(reply.split(b" ", 2)[1]) if reply else "closed"
                note("slow", status)
                answered.add(index)
        for sock in socks:
            sock.close()

    def huge() -> None:
        while not halt.is_set():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # declared too large
                sock.sendall(
                    f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {HUGE}\r\nContent-Type: application/json"
                    f"\r\nContent-Length: {512 * 1024 * 1024}\r\n\r\n".encode()
                    + b"[" * 4096
                )
                note("huge", int(sock.recv(4096).split(b" ", 2)[1]))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # chunked, no length
                sock.sendall(
                    f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nX-API-Key: {HUGE}\r\nContent-Type: application/json"
                    "\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                )
                chunk = b"[" * 16384
                reply = b""
                try:
                    for _ in range(64):  # 1 MiB at most; the server answers once past 64 KiB
                        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sock.settimeout(5)
                    reply = sock.recv(4096)
                except OSError:  # the server answered and closed while we were still sending
                    sock.settimeout(5)
                    try:
                        reply = sock.recv(4096)
                    except OSError:
                        reply = b""
                note("huge", int(reply.split(b" ", 2)[1]) if reply else "reset")
            time.sleep(0.2)  # at most 10 requests a second: under the key's rate, so each one gets 413

    def bad_keys() -> None:
        conn = connect()
        body = json.dumps({"record": records[0], "at": at}).encode()
        while not halt.is_set():
            key = f"guess-{random.getrandbits(64):016x}"
            note("bad", request(conn, "POST", "/invocations", body, key)[0])
            time.sleep(0.005)

    def hammer() -> None:
        """One keep-alive connection sending the same request again and again, hundreds a second (a raw socket:
        the least client work per request, whose CPU the probe's process shares)."""
        body = json.dumps({"dataframe_records": records[:1], "params": {"at": at}}).encode()
        sent = (
            f"POST /invocations HTTP/1.1\r\nHost: x\r\nX-API-Key: {HAMMER}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            pending = b""
            while not halt.is_set():
                sock.sendall(sent)
                while b"\r\n\r\n" not in pending:
                    pending += sock.recv(65536)
                head, _, pending = pending.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers["content-length"])
                while len(pending) < length:
                    pending += sock.recv(65536)
                payload, pending = pending[:length], pending[length:]
                note("hammer", status)
                time.sleep(0.002)  # ten times its rate and more, leaving the 2-core machine some CPU
                if status == 429:
                    shape = json.loads(payload)
                    if shape.get("error_code") != "REQUEST_LIMIT_EXCEEDED" or int(headers["retry-after"]) < 1:
                        problems.append(f"hammer: a 429 of another shape: {headers} {payload[:200]!r}")

    def cycler() -> None:
        conn = connect()
        offsets = [timedelta(days=d, hours=h) for d in (-30, -1, 0, 1, 2, 3, 40) for h in (0, 7)]
        while not halt.is_set():
            when = (cycler_base + random.choice(offsets)).isoformat()
            body = json.dumps({"records": records[:3], "at": when}).encode()
            note("cycler", request(conn, "POST", PREDICT, body, CYCLER)[0])
            time.sleep(0.04)

    clients = {"probe": probe, "good": good, "slow": slow_body, "huge": huge}
    clients |= {"bad": bad_keys, "hammer": hammer, "cycler": cycler}
    workers = [threading.Thread(target=guarded, args=item, daemon=True) for item in clients.items()]
    try:
        for worker in workers:
            worker.start()
        time.sleep(seconds)
    finally:
        halt.set()
        for worker in workers:
            worker.join(timeout=30)
    metrics = request(connect(), "GET", "/metrics", None, None)[2].decode()
    return HostileRun(health_s=health, answers=answers, problems=problems, metrics=metrics)
