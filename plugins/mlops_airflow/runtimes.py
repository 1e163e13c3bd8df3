"""Where a step task's command runs: the runtimes :class:`~mlops_airflow.operators.StepOperator` composes.

A runtime is made in the operator's ``execute`` for one try, from the profile; it runs
``python -m pipelines <argv>`` with ``env`` added to its environment and returns the step's JSON result, and
``on_kill`` stops what it started. Nothing here is imported or built when a DAG is parsed:

- :class:`InProcessRuntime` (``local``): the step in the task's own process;
- :class:`SubprocessRuntime` (``subprocess``): the command beside it, in its own process group;
- :class:`DockerRuntime` (``docker``): the command in a container of the image for the step's kind, driven
  through the Docker engine's API (Airflow's DockerHook).

Every runtime returns the step's result dict; a step that failed on its input (exit 1, StepFailed) returns it
with ``failed: true``. A configuration error raises AirflowFailException (retrying cannot fix it); anything else
(a crash, no result) raises, and the task is retried.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from pipelines.environ import patched_environ

if TYPE_CHECKING:
    from pipelines.config import Profile

STEP_FAILED_EXIT = 1
CONFIG_ERROR_EXIT = 2
# Worker variables handed to task containers when set: lake credentials when no Airflow connection holds them,
# and MLflow server credentials. Passed as private environment (never rendered or logged).
FORWARDED_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
)
CONTAINER_LABEL = "io.mlops"
# the engine's API calls (create, remove) can take minutes on a busy host; the provider's 60 s fails a step whose
# container succeeded, and the retry runs it again
DOCKER_API_TIMEOUT_S = 600
GROUP_STOP_GRACE_S = 10.0


class StepRuntime(abc.ABC):
    """Runs one step command for one task try. ``name`` is the profile's ``task_runtime`` value."""

    name: str

    def __init__(self, step: str, log: Any) -> None:
        self.step = step
        self.log = log

    @abc.abstractmethod
    def run(self, argv: list[str], env: dict[str, str], context: Any) -> dict[str, Any]:
        """Run ``python -m pipelines *argv`` with ``env`` and return the step's result."""

    def on_kill(self) -> None:  # noqa: B027 (nothing to stop by default)
        """Airflow stops the task: stop what :meth:`run` started."""


class InProcessRuntime(StepRuntime):
    """``local``: the step runs in the task's own process, with ``env`` patched into ``os.environ``."""

    name = "local"

    def run(self, argv: list[str], env: dict[str, str], context: Any) -> dict[str, Any]:
        from pipelines.cli import run_step
        from pipelines.config import ConfigError
        from pipelines.context import StepFailed

        with patched_environ(env):
            try:
                return run_step(argv)
            except StepFailed as exc:
                return {"step": self.step, "failed": True, "error": str(exc), **exc.result}
            except ConfigError as exc:
                raise AirflowFailException(str(exc)) from None


def step_command(argv: list[str]) -> list[str]:
    """The step's command line in this interpreter."""
    return [sys.executable, "-m", "pipelines", *argv]


class SubprocessRuntime(StepRuntime):
    """``subprocess``: the command beside the task, in its own process group, so that stopping the task (its
    ``execution_timeout``, or a person marking it failed) stops the step and what it started (Spark's JVM)."""

    name = "subprocess"

    def __init__(self, step: str, log: Any, command: Callable[[list[str]], list[str]] = step_command) -> None:
        super().__init__(step, log)
        self.command = command
        self.process: subprocess.Popen | None = None

    def run(self, argv: list[str], env: dict[str, str], context: Any) -> dict[str, Any]:
        proc = self.process = subprocess.Popen(
            self.command(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
            start_new_session=True,
        )
        lines: list[str] = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                self.log.info("%s", line)
            code = proc.wait()
        finally:  # the task timed out or was stopped while reading: the step does not run on, orphaned
            if proc.poll() is None:
                stop_process_group(proc, self.log)
        if code == CONFIG_ERROR_EXIT:
            raise AirflowFailException(f"step {self.step}: configuration error (see the log above)")
        result = parse_result(lines)
        if code not in (0, STEP_FAILED_EXIT) or result is None:
            raise RuntimeError(f"step {self.step} exited with code {code} and no JSON result")
        return result

    def on_kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process, self.log)


class DockerRuntime(StepRuntime):
    """``docker``: the command in its own container, through the Docker engine's API (DockerHook's client).

    The image for the step's kind; the profile's lake and MLflow settings as environment (plus ``MLOPS_IMAGE``);
    ``secrets`` and the worker's :data:`FORWARDED_SECRETS` as environment that is never logged; a bind mount of
    the local paths the profile uses (none for an S3 lake with an MLflow server); the profile's network, user,
    memory limit and ``auto_remove`` (``success``: removed once it ended, ``force``: also when stopped,
    ``never``: kept); labels naming the step, use case, date and task try; and a GPU request for GPU steps when
    ``docker.gpus`` is set and a candidate of the use case is marked ``gpu: true``. Its output goes to the task
    log line by line; the result is the last JSON line."""

    name = "docker"

    def __init__(self, step: str, log: Any, *, usecase: str, day: str, profile: Profile) -> None:
        super().__init__(step, log)
        self.usecase = usecase
        self.day = day
        self.profile = profile
        self.settings = profile.docker
        self.container: dict[str, Any] | None = None
        self._client: Any = None
        # the container's settings, filled by run (read by tests and the log line)
        self.image: str | None = None
        self.environment: dict[str, str] = {}
        self.mounts: list[Any] = []
        self.user: str | None = None
        self.device_requests: list[Any] | None = None
        self.labels: dict[str, str] = {}

    @property
    def docker_url(self) -> str:
        return self.settings.docker_url or os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock"

    def configure(self, context: Any) -> None:
        """Choose the image, environment, mounts, user, GPU request and labels from the profile."""
        from pipelines.steps import GPU_STEPS, STEP_KINDS

        self.image = self.settings.image_for(STEP_KINDS[self.step])
        self.environment = {**container_environment(self.profile), "MLOPS_IMAGE": self.image}
        self.mounts = local_mounts(self.profile)
        self.user = self.settings.user or (f"{os.getuid()}:{os.getgid()}" if self.mounts else None)
        self.device_requests = None
        if self.settings.gpus and self.step in GPU_STEPS and wants_gpu(self.usecase):
            from docker.types import DeviceRequest

            self.device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        ti = context.get("ti")
        self.labels = {
            f"{CONTAINER_LABEL}.step": self.step,
            f"{CONTAINER_LABEL}.usecase": self.usecase,
            f"{CONTAINER_LABEL}.date": self.day,
            f"{CONTAINER_LABEL}.dag_id": str(getattr(ti, "dag_id", "")),
            f"{CONTAINER_LABEL}.run_id": str(getattr(ti, "run_id", "")),
            f"{CONTAINER_LABEL}.try_number": str(getattr(ti, "try_number", "")),
        }

    def client(self) -> Any:
        """The engine's API client (DockerHook: ``docker_url``, a registry login from ``docker_conn_id``)."""
        if self._client is None:
            from airflow.providers.docker.hooks.docker import DockerHook

            hook = DockerHook(
                docker_conn_id=self.settings.docker_conn_id,
                base_url=self.docker_url,
                timeout=DOCKER_API_TIMEOUT_S,
            )
            self._client = hook.api_client
        return self._client

    def run(self, argv: list[str], env: dict[str, str], context: Any) -> dict[str, Any]:
        self.configure(context)
        secrets = {**{key: os.environ[key] for key in FORWARDED_SECRETS if os.environ.get(key)}, **env}
        self.log.info(
            "Container: image %s, engine %s, network %s, mounts %s, user %s, GPU %s",
            self.image,
            self.docker_url,
            self.settings.network_mode or "default",
            [m["Source"] for m in self.mounts] or "none",
            self.user or "image default",
            "requested" if self.device_requests else "no",
        )
        code, lines = self._run_container(argv, secrets)
        result = parse_result(lines)
        if code == 0:
            if result is None:
                raise RuntimeError(
                    f"step {self.step}: the container printed no JSON result (see the log above)"
                )
            return result
        if result is not None and result.get("failed"):
            return result
        if any("CONFIG ERROR: " in line for line in lines):
            raise AirflowFailException(f"step {self.step}: configuration error (see the log above)")
        raise RuntimeError(
            f"step {self.step}: the container exited with code {code} and no step failure (see the log above)"
        )

    def _pull_if_missing(self, client: Any) -> None:
        if not self.settings.force_pull and client.images(name=self.image):
            return
        self.log.info("Pulling image %s", self.image)
        seen: dict[str, str] = {}
        for output in client.pull(self.image, stream=True, decode=True):
            if isinstance(output, dict) and "status" in output:
                key = output.get("id", "")
                if seen.get(key) != output["status"]:
                    seen[key] = output["status"]
                    self.log.info("%s %s", key, output["status"])

    def _run_container(self, argv: list[str], secrets: dict[str, str]) -> tuple[int, list[str]]:
        """Create, start and follow the container: its exit code and output lines."""
        client = self.client()
        self._pull_if_missing(client)
        self.container = client.create_container(
            image=self.image,
            command=argv,
            environment={**self.environment, **secrets},
            user=self.user,
            labels=self.labels,
            host_config=client.create_host_config(
                auto_remove=False,  # removed below, once its exit code and output are in
                mounts=self.mounts,
                network_mode=self.settings.network_mode,
                mem_limit=self.settings.mem_limit,
                cpu_shares=1024,
                device_requests=self.device_requests,
            ),
        )
        container_id = self.container["Id"]
        ended = False
        try:
            stream = client.attach(container=container_id, stdout=True, stderr=True, stream=True, demux=True)
            client.start(container_id)
            lines = log_lines(stream, self.log)
            code = int(client.wait(container_id)["StatusCode"])
            ended = True
            return code, lines
        finally:
            self._finish(client, container_id, ended)

    def _finish(self, client: Any, container_id: str, ended: bool) -> None:
        """Remove the container as ``auto_remove`` says; one left while it still runs (the task timed out or
        was stopped while following it) is stopped first, so the step does not run on, orphaned."""
        from docker.errors import APIError, NotFound

        mode = self.settings.auto_remove
        if ended:
            if mode in ("success", "force"):
                client.remove_container(container_id, force=mode == "force")
            return
        with contextlib.suppress(APIError):  # the error that brought us here is the one to report
            client.stop(container_id)
            if mode in ("success", "force"):
                with contextlib.suppress(NotFound):
                    client.remove_container(container_id, force=True)

    def on_kill(self) -> None:
        if self.container is None or self._client is None:
            return
        from docker.errors import APIError

        container_id = self.container["Id"]
        self.log.warning("Stopping the step's container %s", container_id[:12])
        try:
            self._client.stop(container_id)
            if self.settings.auto_remove == "force":
                self._client.remove_container(container_id, force=True)
        except APIError as exc:  # stopped and removed already, when run left on the timeout
            self.log.info("The container %s is gone already: %s", container_id[:12], exc)


RUNTIMES: dict[str, type[StepRuntime]] = {
    runtime.name: runtime for runtime in (InProcessRuntime, SubprocessRuntime, DockerRuntime)
}


def log_lines(stream: Iterable[Any], log: Any) -> list[str]:
    """The lines of a container's output (chunks that need not end lines), each logged as it ends, in the order
    they end. A chunk is text, or a ``(stdout, stderr)`` pair as Docker's ``attach(demux=True)`` gives them: each
    stream's lines are assembled apart, because the daemon forwards the two pipes as it reads them, so a line of
    stderr can arrive between two reads of one long stdout line (a step's JSON result)."""
    lines: list[str] = []
    buffers: dict[int, str] = {}
    for chunk in stream:
        for index, part in enumerate(chunk if isinstance(chunk, tuple) else (chunk,)):
            if part is None:
                continue
            *complete, buffers[index] = (buffers.get(index, "") + _text(part)).split("\n")
            for line in complete:
                line = line.rstrip()
                log.info("%s", line)
                lines.append(line)
    for index in sorted(buffers):
        if buffers[index].rstrip():
            log.info("%s", buffers[index].rstrip())
            lines.append(buffers[index].rstrip())
    return lines


def stop_process_group(process: subprocess.Popen, log: Any, grace_s: float = GROUP_STOP_GRACE_S) -> None:
    """SIGTERM to the step's process group, SIGKILL to what is left after ``grace_s``."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        log.warning("Stopping the step's processes (process group %s, %s)", process.pid, sig.name)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader exited: make sure its children went with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        return


def _text(line: str | bytes) -> str:
    return line.decode(errors="replace") if isinstance(line, bytes) else str(line)


def wants_gpu(usecase_name: str) -> bool:
    """Whether any candidate of the use case is marked ``gpu: true``."""
    from pipelines.config import load_usecase

    return any(candidate.gpu for candidate in load_usecase(usecase_name).candidates)


def container_environment(profile: Profile) -> dict[str, str]:
    """The profile's settings as environment for a task container (no secrets): the container's own copy of
    config/platform.yaml then resolves to the same lake, MLflow and Spark as the worker's."""
    from pipelines.config import mlops_home

    env = {
        "MLOPS_HOME": str(mlops_home()),
        "MLOPS_LAKE_URI": profile.lake_uri,
        "MLFLOW_TRACKING_URI": profile.mlflow_tracking_uri,
        "MLOPS_SPARK_MASTER": profile.spark_master,
        "MLOPS_TASK_RUNTIME": "local",
    }
    if profile.mlflow_artifact_root:
        env["MLOPS_MLFLOW_ARTIFACT_ROOT"] = profile.mlflow_artifact_root
    if os.environ.get("MLOPS_PROFILE"):
        env["MLOPS_PROFILE"] = os.environ["MLOPS_PROFILE"]
    if os.environ.get("MLOPS_LOG_LEVEL"):
        env["MLOPS_LOG_LEVEL"] = os.environ["MLOPS_LOG_LEVEL"]
    env.update(profile.docker.environment)
    return env


def local_paths(profile: Profile) -> list[Path]:
    """Local folders the profile's lake and MLflow stores live in (none for S3 and an MLflow server)."""
    paths = []
    if "://" not in profile.lake_uri:
        paths.append(Path(profile.lake_uri))
    if profile.mlflow_tracking_uri.startswith("sqlite:///"):
        paths.append(Path(profile.mlflow_tracking_uri.removeprefix("sqlite:///")).parent)
    root = profile.mlflow_artifact_root
    if root and (root.startswith("file://") or ":/" not in root):
        paths.append(Path(root.removeprefix("file://")))
    return [p.resolve() for p in paths]


def local_mounts(profile: Profile) -> list[dict[str, Any]]:
    """Bind mounts (same path inside as outside) for the profile's local paths: MLOPS_HOME once when they all
    live under it, else each folder. ``docker.host_home`` translates MLOPS_HOME to the Docker host's path."""
    from docker.types import Mount

    from pipelines.config import mlops_home

    paths = local_paths(profile)
    if not paths:
        return []
    home = mlops_home()
    if all(p.is_relative_to(home) for p in paths):
        paths = [home]
    # one mount per outermost folder
    paths = [p for p in sorted(set(paths)) if not any(p != q and p.is_relative_to(q) for q in paths)]
    host_home = profile.docker.host_home
    mounts = []
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        source = Path(host_home) / path.relative_to(home) if host_home and path.is_relative_to(home) else path
        mounts.append(Mount(target=str(path), source=str(source), type="bind"))
    return mounts


def parse_result(lines: list[str]) -> dict[str, Any] | None:
    """The step result: the last JSON object with a ``step`` key that ends a line of output.

    Text before the object on its line is allowed: a container's stdout and stderr reach Airflow as one stream,
    so a line another stream left unfinished can run into the result's line."""
    for line in reversed(lines):
        text = line.strip()
        if not text.endswith("}"):
            continue
        start = text.find("{")
        while start >= 0:
            try:
                value = json.loads(text[start:])
            except json.JSONDecodeError:
                start = text.find("{", start + 1)
                continue
            if isinstance(value, dict) and "step" in value:
                return value
            break
    return None
