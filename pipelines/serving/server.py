"""``mlops serve``: the scoring service of one use case under uvicorn.

With ``--workers N`` the command starts N processes, each with its own listening socket on the same address
(``SO_REUSEPORT``: the kernel spreads connections over them, where one shared listener let most connections land
on one worker), each loading the models itself and limited to its share of the CPU threads (the model's OpenMP
threads of N workers would otherwise oversubscribe the cores). Workers run uvloop, which sets TCP_NODELAY on every
connection (a keep-alive response otherwise waits for a delayed ACK, about 40 ms).
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
    )


def build_service(usecase_name: str, settings: Any) -> Any:
    """The use case's service on the configured lake and registry (models and snapshots loaded)."""
    from pipelines.config import load_profile, load_usecase
    from pipelines.lake import open_lake
    from pipelines.serving.service import Service
    from pipelines.tracking import configure_mlflow
    from pipelines.validate import require_valid

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

    from pipelines.cli import cap_threads
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


def serve(args: argparse.Namespace) -> int:
    """Run the service in ``args.workers`` processes until interrupted."""
    import multiprocessing

    settings_from(args)  # refuse bad options before any worker starts
    workers = max(1, args.workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        _serve_one(args, threads)
        return 0
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_serve_one, args=(args, threads), daemon=False) for _ in range(workers)
    ]
    for process in processes:
        process.start()

    def stop(signum: int, _frame: Any) -> None:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.join()
    return 0 if all(p.exitcode == 0 for p in processes) else 1


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="mlops serve")
    add_arguments(parser)
    sys.exit(serve(parser.parse_args()))
