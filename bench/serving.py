"""The scoring service against `mlflow models serve` of the same champion, side by side in one run.

    .venv/bin/python bench/serving.py --home var [--usecase flight_delay] [--workers 2] [--seconds 15]
        [--no-capture] [--output docs/benchmarks.md]

Needs a state directory where the lifecycle ran (``make run`` leaves one in ./var): a champion in its MLflow
registry and online feature snapshots in its lake. On loopback, the load generator in other processes:
1. one record per request, one connection: latency p50 and p99;
2. one record per request, eight connections: records per second, p50 and p99;
3. 1000-row batches, four connections: rows per second, as records and in MLflow's ``dataframe_split``.
``mlops serve`` gets raw records (it computes their features from the snapshot); ``mlflow models serve`` gets
the model's inputs, already computed (it cannot compute them), so its numbers leave out feature work ours does.
Both run ``--workers`` server processes. Results are appended to the output file with the command and machine.
With capture on (the default), the rows ours answered are counted and, once the servers have stopped (and so
flushed), the rows in the lake's capture table: with ``serving.capture.sample`` 1, a row answered but not captured
(dropped by the full queue, or lost) fails the run (exit 1, printed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Batch loads use 4 connections: with 2, the kernel's SO_REUSEPORT hash put both on one of the 2 workers about
# half the time (one core busy, the other idle: 54k to 91k rows/s from one command)
BATCH_CONNECTIONS = 4
BIN = Path(sys.executable).parent
MLOPS = [sys.executable, "-m", "mlops_cli"]  # the mlops command of this tree


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(port: int, path: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"nothing answered 200 on 127.0.0.1:{port}{path} within {seconds} s")


def _request_bytes(port: int, path: str, body: bytes, headers: dict) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one whole HTTP/1.1 response (headers and a Content-Length body) from ``sock``; return its status.
    What follows it stays in ``buffer``."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    fields = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])
    }
    if "content-length" not in fields:
        raise ValueError(f"a response without Content-Length (the generator reads no other framing): {head}")
    total = end + 4 + int(fields["content-length"])
    while len(buffer) < total:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    del buffer[:total]
    return int(head[0].split()[1])


def _client(args: tuple) -> tuple[list[float], int, int]:
    """One keep-alive connection sending ``body`` to ``path`` until ``until`` (monotonic): latencies, rows,
    failures. A raw socket with the request bytes made once and only the framing parsed: 0.07 ms of client CPU
    a request against 0.22 to 0.26 ms through http.client (measured on one record against ``mlops serve``). The
    generator shares the servers' cores, so its own cost would otherwise weigh most on the faster server."""
    port, path, body, headers, until, rows_per_request = args
    request = _request_bytes(port, path, body, headers)
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    latencies, rows, failures = [], 0, 0
    while time.monotonic() < until:
        start = time.perf_counter()
        sock.sendall(request)
        status = _read_response(sock, buffer)
        latencies.append(time.perf_counter() - start)
        if status == 200:
            rows += rows_per_request
        else:
            failures += 1
    sock.close()
    return latencies, rows, failures


def process_cpu(root: int | None) -> dict[int, float]:
    """CPU seconds (user and system) of process ``root`` and its descendants, by pid, from /proc (empty where
    there is no /proc or no root)."""
    seconds: dict[int, float] = {}
    pending = [] if root is None else [root]
    while pending:
        pid = pending.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return seconds


def load(
    port: int,
    path: str,
    body: bytes,
    connections: int,
    seconds: float,
    rows_per_request: int,
    headers: dict,
    server: int | None = None,
) -> dict:
    """``connections`` client processes for ``seconds`` (after a 2 s warm-up): p50, p99, requests and rows/s, and
    the cores the ``server`` process and its children used, busiest first (how evenly the kernel spread the
    connections over the workers)."""
    headers = {"content-type": "application/json", **headers}
    warm = time.monotonic() + 2
    warm_rows = _client((port, path, body, headers, warm, rows_per_request))[1]
    until = time.monotonic() + seconds
    with multiprocessing.get_context("spawn").Pool(connections) as pool:
        cpu_before = process_cpu(server)
        started = time.monotonic()
        parts = pool.map(_client, [(port, path, body, headers, until, rows_per_request)] * connections)
        elapsed = time.monotonic() - started
        cpu_after = process_cpu(server)
    used = [(cpu_after[pid] - cpu_before.get(pid, 0.0)) / elapsed for pid in cpu_after]
    latencies = sorted(x for part in parts for x in part[0])
    rows = sum(part[1] for part in parts)
    failures = sum(part[2] for part in parts)
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "requests": len(latencies),
        "rows_per_s": rows / elapsed,
        "failures": failures,
        "answered_rows": warm_rows + rows,
        "server_cores": sorted((round(c, 2) for c in used if c >= 0.01), reverse=True),
    }


def captured_rows(home: Path, usecase_name: str) -> int:
    """Rows in the lake's capture table of ``usecase_name`` (0 before its first commit), from the table's log."""
    os.environ["MLOPS_HOME"] = str(home)
    from pipelines.config import load_profile
    from pipelines.lake import captures_table, open_lake

    handle = open_lake(load_profile().lake_uri).open_table(captures_table(usecase_name))
    if handle is None:
        return 0
    return int(sum(handle.get_add_actions(flatten=True).column("num_records").to_pylist()))


def capture_settings(home: Path, usecase_name: str) -> tuple[bool, float]:
    """(serving.capture.model_inputs, serving.capture.sample) of the use case the servers load."""
    os.environ["MLOPS_HOME"] = str(home)
    from pipelines.config import load_usecase

    capture = load_usecase(usecase_name).serving.capture
    return capture.model_inputs, capture.sample


def capture_check(answered: int, captured: int, sample: float) -> str | None:
    """Why the capture lost rows (None: it kept up): with every request captured (``sample`` 1), each answered
    row must be in the table; with a share, no more rows than were answered."""
    if sample >= 1.0 and captured != answered:
        return (
            f"CAPTURE CHECK FAILED: {answered - captured:,} of the {answered:,} rows ours answered are not in the "
            f"capture table ({captured:,} are): dropped by the full capture queue or lost in failed commits"
        )
    if captured > answered:
        return f"CAPTURE CHECK FAILED: {captured:,} rows captured, more than the {answered:,} answered"
    return None


def inputs(home: Path, usecase_name: str) -> tuple[list[dict], str, list[str], list[list]]:
    """The newest snapshot day's records (raw, JSON values), its prediction time, and the same rows as the
    model's inputs (columns, values) for MLflow."""
    os.environ["MLOPS_HOME"] = str(home)
    from pipelines.config import load_profile, load_usecase
    from pipelines.features.online import model_input_frame, read_records, read_snapshots
    from pipelines.lake import online_table, open_lake

    usecase = load_usecase(usecase_name)
    lake = open_lake(load_profile().lake_uri)
    day = max(lake.partitions(online_table(usecase.name)))
    records = read_records(lake, usecase, [day]).drop(columns=["date"])
    raw = json.loads(records.to_json(orient="records", date_format="iso"))
    at = usecase.time.prediction_time_of(datetime.fromisoformat(day).date()).isoformat()
    snapshot = read_snapshots(lake, usecase, [day])[day]
    features = model_input_frame(usecase, raw, snapshot, at)
    values = json.loads(features.to_json(orient="values"))
    return raw, at, list(features.columns), values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / "var")
    parser.add_argument("--usecase", default="flight_delay")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument(
        "--no-capture",
        action="store_true",
        help="serve without writing requests to the lake (mlops serve --no-capture)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    home = args.home.resolve()
    raw, at, columns, values = inputs(home, args.usecase)
    batch = 1000
    while len(raw) < batch:
        raw, values = raw + raw, values + values
    ours_port, theirs_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLOPS_HOME": str(home),
        "MLOPS_API_KEYS": "bench-key",
        "MLOPS_LOG_LEVEL": "WARNING",
    }
    tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    servers = [
        subprocess.Popen(
            [
                *MLOPS,
                "serve",
                "--usecase",
                args.usecase,
                "--port",
                str(ours_port),
                "--workers",
                str(args.workers),
                "--max-snapshot-age",  # the demo's snapshots are of 2013: years old by the wall clock
                "off",
                *(["--no-capture"] if args.no_capture else []),
            ],
            env=env,
        ),
        subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{args.usecase}@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(theirs_port),
                "--workers",
                str(args.workers),
            ],
            env={**env, "MLFLOW_TRACKING_URI": tracking},
        ),
    ]
    try:
        _wait(ours_port, "/ready")
        _wait(theirs_port, "/ping")
        ours = {
            "port": ours_port,
            "path": f"/v1/usecases/{args.usecase}/predict",
            "headers": {"X-API-Key": "bench-key"},
            "pid": servers[0].pid,
        }
        theirs = {"port": theirs_port, "path": "/invocations", "headers": {}, "pid": servers[1].pid}
        one_ours = json.dumps({"record": raw[0], "at": at}).encode()
        many_ours = json.dumps({"records": raw[:batch], "at": at}).encode()
        raw_columns = list(raw[0])
        split_ours = json.dumps(
            {
                "dataframe_split": {
                    "columns": raw_columns,
                    "data": [[r[c] for c in raw_columns] for r in raw[:batch]],
                },
                "params": {"at": at},
            }
        ).encode()
        one_theirs = json.dumps({"dataframe_split": {"columns": columns, "data": values[:1]}}).encode()
        many_theirs = json.dumps({"dataframe_split": {"columns": columns, "data": values[:batch]}}).encode()

        def singles(
            path: str, body: bytes
        ) -> list[tuple]:  # (label, path, body, connections, rows a request)
            return [("single, 1 connection", path, body, 1, 1), ("single, 8 connections", path, body, 8, 1)]

        def batches(form: str, path: str, body: bytes) -> tuple:
            label = f"{batch}-row batches ({form}), {BATCH_CONNECTIONS} connections"
            return (label, path, body, BATCH_CONNECTIONS, batch)

        runs = {
            "mlops serve": (
                ours,
                [
                    *singles(ours["path"], one_ours),
                    batches("records", ours["path"], many_ours),
                    batches("dataframe_split", "/invocations", split_ours),
                ],
            ),
            "mlflow models serve": (
                theirs,
                [
                    *singles(theirs["path"], one_theirs),
                    batches("dataframe_split", theirs["path"], many_theirs),
                ],
            ),
        }
        captured_before = captured_rows(home, args.usecase)
        results = {}
        for name, (target, loads) in runs.items():
            results[name] = {
                label: load(
                    target["port"],
                    path,
                    body,
                    connections,
                    args.seconds,
                    rows,
                    target["headers"],
                    target["pid"],
                )
                for label, path, body, connections, rows in loads
            }
            print(name, json.dumps(results[name], indent=1), flush=True)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=60)
    answered = sum(r["answered_rows"] for r in results["mlops serve"].values())
    captured = captured_rows(home, args.usecase) - captured_before
    stores_inputs, sample = capture_settings(home, args.usecase)
    failure = None if args.no_capture else capture_check(answered, captured, sample)

    ours, theirs = results["mlops serve"], results["mlflow models serve"]
    ratio = ours["single, 8 connections"]["rows_per_s"] / theirs["single, 8 connections"]["rows_per_s"]
    lines = [
        f"## Serving: `mlops serve` and `mlflow models serve` of the same champion ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"Command: `.venv/bin/python bench/serving.py --home {args.home} --workers {args.workers} --seconds "
        f"{args.seconds:g}{' --no-capture' if args.no_capture else ''}`; machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        "server and load generator on the same cores, over loopback. Ours gets raw records and computes their "
        "features; MLflow gets the model's inputs, computed beforehand. `(records)`: our predict endpoint, "
        "a list of records; `(dataframe_split)`: `/invocations` in MLflow's column-and-rows form, raw columns for "
        "ours.",
        "",
        "| server | load | p50 ms | p99 ms | records/s | failures | server cores by process |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, rows in results.items():
        for label, r in rows.items():
            cores = " + ".join(f"{c:.2f}" for c in r["server_cores"]) or "n/a"
            lines.append(
                f"| {name} | {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rows_per_s']:,.0f} | "
                f"{r['failures']} | {cores} |"
            )
    lines += [
        "",
        f"Single-record throughput at 8 connections, ours over MLflow's: {ratio:.2f}x. "
        + (
            "Capture was off (`--no-capture`)."
            if args.no_capture
            else f"Capture was on (model inputs {'stored' if stores_inputs else 'not stored'}, sample {sample:g}): "
            f"{captured:,} of the {answered:,} rows ours answered (warm-ups included) are in the lake's capture "
            f"table after the servers stopped{'' if failure else ', none dropped'}."
        ),
        "",
    ]
    if failure:
        lines += [f"**{failure}**", ""]
    text = "\n".join(lines)
    print(text)
    with args.output.open("a") as out:
        out.write("\n" + text)
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
