"""``mlops ui``: the Airflow UI (``airflow standalone``) and the MLflow UI over the embedded state in MLOPS_HOME.

Both run as child processes with this virtual environment's ``bin`` first on PATH (``airflow standalone`` starts
its components as ``airflow ...`` from PATH), the embedded Airflow settings (``mlops_airflow.env``) and the
profile's MLflow store. Ctrl-C (SIGINT) or SIGTERM stops both, each process group, and waits for them; a child that
exits on its own stops the other and its exit code is returned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from mlops_airflow.env import MLFLOW_SERVER_ENV, airflow_environment, provide_airflow_db

STOP_GRACE_S = 30


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def ui_commands(
    home: Path, port: int, mlflow_port: int | None, profile: Any
) -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """The environment and the (name, argv) of each child: Airflow standalone, then the MLflow UI when the
    profile's tracking store is local (an MLflow server elsewhere has its own UI)."""
    env = {
        **os.environ,
        **airflow_environment(home),
        **MLFLOW_SERVER_ENV,  # read by the MLflow child only: no job runners beside the UI
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__PARALLELISM": "2",
    }
    children = [("airflow", [_bin("airflow"), "standalone"])]
    uri = profile.mlflow_tracking_uri
    if mlflow_port is not None and not uri.startswith(("http://", "https://")):
        argv = [_bin("mlflow"), "server", "--backend-store-uri", uri, "--host", "127.0.0.1"]
        argv += ["--port", str(mlflow_port)]
        if profile.mlflow_artifact_root:
            argv += ["--default-artifact-root", profile.mlflow_artifact_root]
        children.append(("mlflow", argv))
    return env, children


def prepare_airflow(env: dict[str, str]) -> None:
    """The metadata database migrated and the lifecycle DAGs' pools created (``mlops_airflow.pools``): the
    scheduler never runs a task whose pool does not exist. A missing database is copied from the migrated
    template of this Airflow version (``provide_airflow_db``); an existing one is migrated, as it may predate an
    upgrade of Airflow."""
    steps = [[sys.executable, "-m", "mlops_airflow.pools"]]
    if not provide_airflow_db(Path(env["AIRFLOW_HOME"]) / "airflow.db", env):
        steps.insert(0, [_bin("airflow"), "db", "migrate"])
    for argv in steps:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[-3:])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in processes.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


def run_ui(port: int = 8080, mlflow_port: int | None = 5000) -> int:
    """Start the UIs, say where they answer, and run until Ctrl-C; returns the exit code."""
    from pipelines.config import load_profile, mlops_home

    home = mlops_home()
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    profile = load_profile()
    env, children = ui_commands(home, port, mlflow_port, profile)
    if profile.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(profile.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    print(f"Preparing the Airflow metadata database and pools in {home / 'airflow'} ...", flush=True)
    prepare_airflow(env)
    stopping = False

    def _on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, argv in children:
            # own process group: Ctrl-C reaches this process only, which stops each group in order
            processes[name] = subprocess.Popen(argv, env=env, start_new_session=True)
        urls = {"airflow": f"http://127.0.0.1:{port}/api/v2/monitor/health"}
        if "mlflow" in processes:
            urls["mlflow"] = f"http://127.0.0.1:{mlflow_port}/health"
        print(
            f"Starting the Airflow UI on http://127.0.0.1:{port} (state in {home / 'airflow'}) ...",
            flush=True,
        )
        announced: set[str] = set()
        code = 0
        while not stopping:
            for name, proc in processes.items():
                if proc.poll() is not None:
                    print(f"mlops ui: {name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    code = proc.returncode or 1
                    stopping = True
            for name, url in urls.items():
                if name not in announced and _answers(url):
                    announced.add(name)
                    where = url.rsplit("/api/", 1)[0].rsplit("/health", 1)[0]
                    extra = (
                        f" (user admin, password in {home / 'airflow' / 'simple_auth_manager_passwords.json.generated'})"
                        if name == "airflow"
                        else ""
                    )
                    print(f"{name} UI ready: {where}{extra}", flush=True)
            time.sleep(0.5)
        print("mlops ui: stopping ...", flush=True)
        return code
    finally:
        _stop(processes)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
