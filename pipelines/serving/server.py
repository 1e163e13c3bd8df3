"""``mlops serve``: the scoring service of one use case under uvicorn.

With ``--workers N`` the command starts N processes, each with its own listening socket on the same address
(``SO_REUSEPORT``: the kernel spreads connections over them, where one shared listener let most connections land
on one worker), each loading the models itself and limited to its share of the CPU threads (the model's OpenMP
threads of N workers would otherwise oversubscribe the cores). Workers run uvloop, which sets TCP_NODELAY on every
connection (a keep-alive response otherwise waits for a delayed ACK, about 40 ms). The command's process
supervises its workers: one that dies is replaced (:func:`serve`).

Per API key, each worker limits the requests a second (``--rate-limit``, ``--rate-burst``) and the requests in flight
(``--max-in-flight``); past them a request gets 429 with ``Retry-After`` (pipelines.serving.limits).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any

from pipelines.serving.limits import DEFAULT_BURST, DEFAULT_IN_FLIGHT, DEFAULT_RATE

log = logging.getLogger("mlops.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--usecase", required=True, help="use case name (config/usecases/<name>.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without API keys (otherwise MLOPS_API_KEYS or MLOPS_API_KEYS_FILE must name at least one)",
    )
    parser.add_argument(
        "--challenger-share",
        type=float,
        default=0.0,
        help="share of requests answered by the `challenger` alias when it exists (canary; default 0)",
    )
    parser.add_argument(
        "--shadow", action="store_true", help="score every request with the `challenger` too, never returned"
    )
    parser.add_argument(
        "--no-capture", action="store_true", help="do not append requests to captures/<usecase>"
    )
    parser.add_argument(
        "--max-batch-records", type=int, default=10_000, help="records per request (413 above)"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=16 * 1024 * 1024, help="request body size (413 above)"
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=DEFAULT_RATE,
        metavar="PER_SECOND",
        help="requests a second per API key and worker process, a token bucket (429 with Retry-After above; "
        f"requests without a key share one; 0: no limit; default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--rate-burst",
        type=int,
        default=DEFAULT_BURST,
        help=f"requests a key may send at once above --rate-limit (the bucket's size; default {DEFAULT_BURST})",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_IN_FLIGHT,
        help="requests under way at once per API key and worker process, a slow body's included (429 above; "
        f"0: no cap; default {DEFAULT_IN_FLIGHT})",
    )
    parser.add_argument(
        "--refresh-seconds",
        type=float,
        default=10.0,
        help="how often the registry aliases and the snapshot table are checked (default 10)",
    )
    parser.add_argument(
        "--max-snapshot-age",
        default=None,
        metavar="DURATION",
        help="unready (503 on /ready) when the newest feature snapshot's prediction time is longer ago than this "
        "(e.g. 36h; 'off': no limit, for a replay of old data); default: the use case's serving.max_snapshot_age",
    )


def settings_from(args: argparse.Namespace) -> Any:
    from pipelines.config import parse_duration
    from pipelines.serving.app import ApiKeys
    from pipelines.serving.service import NO_AGE_LIMIT, ServeSettings

    if not 0.0 <= args.challenger_share <= 1.0:
        raise SystemExit(f"--challenger-share {args.challenger_share}: a share between 0 and 1 is expected")
    max_age = getattr(args, "max_snapshot_age", None)
    if max_age is not None and str(max_age).strip().lower() not in NO_AGE_LIMIT:
        try:
            parse_duration(max_age, "--max-snapshot-age")
        except ValueError as exc:
            raise SystemExit(f"mlops serve: {exc} (or 'off')") from None
    rate = getattr(args, "rate_limit", DEFAULT_RATE)
    burst = getattr(args, "rate_burst", DEFAULT_BURST)
    in_flight = getattr(args, "max_in_flight", DEFAULT_IN_FLIGHT)
    if rate < 0 or in_flight < 0 or (rate > 0 and burst < 1):
        raise SystemExit(
            f"mlops serve: --rate-limit {rate:g}, --rate-burst {burst}, --max-in-flight {in_flight}: limits are "
            "0 (none) or positive, and a rate needs a burst of at least 1"
        )
    keys = ApiKeys.from_environment()
    if not args.no_auth and not keys.configured():
        raise SystemExit(
            "mlops serve: no API keys: set MLOPS_API_KEYS (comma-separated) or MLOPS_API_KEYS_FILE (one key per "
            "line, re-read when it changes), or pass --no-auth to serve without them"
        )
    return ServeSettings(
        challenger_share=args.challenger_share,
        shadow=args.shadow,
        capture=not args.no_capture,
        max_batch_records=args.max_batch_records,
        max_body_bytes=args.max_body_bytes,
        refresh_s=args.refresh_seconds,
        api_keys=keys.fixed,
        api_keys_file=str(keys.path) if keys.path else None,
        auth=not args.no_auth,
        max_snapshot_age=max_age,
        rate_limit=rate,
        rate_burst=burst,
        max_in_flight=in_flight,
    )


def build_service(usecase_name: str, settings: Any) -> Any:
    """The use case's service on the configured lake and registry (models and snapshots loaded)."""
    from pipelines.config import load_profile, load_usecase
    from pipelines.lake import open_lake
    from pipelines.modeling.tracking import configure_mlflow
    from pipelines.serving.service import Service
    from pipelines.usecase_checks import require_valid

    usecase = load_usecase(usecase_name)
    require_valid(usecase)
    profile = load_profile()
    configure_mlflow(profile, usecase)
    service = Service(usecase, open_lake(profile.lake_uri), settings)
    service.start()
    return service


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, so several processes can each have one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _stop_by_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _serve_one(args: argparse.Namespace, threads: int) -> None:
    import uvicorn

    from pipelines.environ import cap_threads
    from pipelines.serving.app import create_app

    # uvicorn handles SIGTERM and SIGINT while it runs; after its graceful shutdown it restores the handlers it
    # found and raises the signal again. With the default handlers that ends the process at once, before the
    # `finally` below: the capture's queued rows were lost and the model's downloaded files left behind on every
    # stop (a rolling update sends SIGTERM). With these, the signal ends the process through that `finally`.
    signal.signal(signal.SIGTERM, _stop_by_exit)
    signal.signal(signal.SIGINT, _stop_by_exit)
    cap_threads(threads)
    # the background threads (capture, the model and snapshot watchers) hand the GIL back to the event loop
    # after 1 ms instead of 5, so they add less to a request's latency
    sys.setswitchinterval(0.001)
    settings = settings_from(args)
    service = build_service(args.usecase, settings)
    ready = service.readiness()
    champion = ready["models"]["champion"]
    log.warning(
        "serving %s on %s:%s (pid %s): champion %s, snapshot table version %s",
        args.usecase,
        args.host,
        args.port,
        os.getpid(),
        (champion["served"] or {}).get("version") or f"none ({champion['error']})",
        ready["snapshot"]["table_version"],
    )
    app = create_app(service)
    # what start-up made (libraries, the model, the snapshot) lives as long as the process: kept out of the
    # cyclic garbage collector's passes, which otherwise walk it all again and again under load (gc.freeze)
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        http="httptools",
        loop="uvloop",
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[listening_socket(args.host, args.port)])
    finally:
        service.stop()


# a worker that died within this many seconds of its start is replaced after a pause that doubles each time (up to
# RESTART_MAX_PAUSE_S), so one that cannot start (its champion cannot load, the port is taken) does not spin
RESTART_QUICK_S = 30.0
RESTART_MAX_PAUSE_S = 30.0
# on stop, a worker still running after STOP_NUDGE_S gets SIGTERM again, and SIGKILL after STOP_KILL_S
STOP_NUDGE_S = 15.0
STOP_KILL_S = 90.0


def serve(args: argparse.Namespace) -> int:
    """Run the service in ``args.workers`` processes until interrupted. With several, this process supervises
    them: a worker that dies (killed, out of memory) is replaced by a new one, while the others keep answering
    (each has its own listening socket, so the kernel sends new connections to the live ones). With one worker
    the service runs in this process, and the process supervisor restarts it (Kubernetes' restart policy, compose's
    ``restart: unless-stopped``)."""
    import multiprocessing
    import time
    from multiprocessing.connection import wait

    settings_from(args)  # refuse bad options before any worker starts
    workers = max(1, args.workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        _serve_one(args, threads)
        return 0
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start_worker() -> Any:
        process = context.Process(target=_serve_one, args=(args, threads), daemon=False)
        process.start()
        started[process.sentinel] = time.monotonic()
        return process

    started: dict[int, float] = {}
    processes = [start_worker() for _ in range(workers)]

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    quick_deaths = 0
    while not stopping:
        wait([p.sentinel for p in processes], timeout=1.0)
        for index, process in enumerate(processes):
            if stopping or process.is_alive():
                continue
            lived = time.monotonic() - started.pop(process.sentinel, time.monotonic())
            quick_deaths = quick_deaths + 1 if lived < RESTART_QUICK_S else 0
            pause = min(RESTART_MAX_PAUSE_S, 2.0 ** (quick_deaths - 1)) if quick_deaths else 0.0
            log.warning(
                "worker pid %s exited with %s after %.0f s; starting another%s",
                process.pid,
                process.exitcode,
                lived,
                f" in {pause:.0f} s" if pause else "",
            )
            deadline = time.monotonic() + pause
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            if not stopping:
                processes[index] = start_worker()
    for process in processes:
        waited = 0.0
        while process.is_alive():
            process.join(timeout=STOP_NUDGE_S)
            waited += STOP_NUDGE_S
            if process.is_alive() and waited >= STOP_KILL_S:
                log.warning("worker pid %s did not stop in %.0f s: killed", process.pid, waited)
                process.kill()
            elif process.is_alive():
                # a SIGTERM is lost when its SystemExit is raised inside a finalizer (_stop_by_exit): again
                os.kill(process.pid, signal.SIGTERM)
        process.join()
    # a worker replaced while serving does not count: the exit status is that of the workers stopped last
    return 0 if all(p.exitcode == 0 for p in processes) else 1


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="mlops serve")
    add_arguments(parser)
    sys.exit(serve(parser.parse_args()))
