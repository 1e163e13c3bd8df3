"""The runners of a replay: :class:`AirflowRunner` runs the use case's DAGs with ``dag.test`` (every step an Airflow
task, Airflow's logs in a file); :class:`DirectRunner` calls the same steps in this process in the order of the
DAGs' step graphs (:data:`mlops_airflow.wiring.STEP_GRAPHS`), without Airflow, for benchmarks."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops_airflow import wiring
from mlops_airflow.env import (
    REPO_ROOT,
    airflow_db_template,
    apply_airflow_environment,
    migrate_airflow_db,
    provide_airflow_db,
)


def say(message: str = "") -> None:
    print(message, flush=True)


def ensure_airflow_db(home: Path) -> None:
    """The embedded Airflow's SQLite metadata database under ``home``, copied from the migrated template of this
    Airflow version (migrated once per version, see :func:`mlops_airflow.env.provide_airflow_db`)."""
    db = home / "airflow" / "airflow.db"
    if db.exists():
        return
    if os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{db}") != f"sqlite:///{db}":
        migrate_airflow_db(os.environ)  # a database configured elsewhere: migrate it where it is, as before
        return
    if not airflow_db_template().exists():
        say("Setting up the Airflow metadata database (airflow db migrate, once per Airflow version) ...")
    provide_airflow_db(db)


@dataclass
class RunOutcome:
    """One DAG run (or its direct equivalent): final state and each task's result."""

    state: str
    results: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    task_seconds: dict[str, float] = field(default_factory=dict)  # each task's wall time as its runner saw it

    def result(self, task_id: str) -> dict[str, Any]:
        return self.results.get(task_id) or {}


class AirflowRunner:
    """Runs the use case's DAGs with ``dag.test`` (every step is an Airflow task); Airflow's logs go to a file."""

    name = "airflow"

    def __init__(self, usecase: str, log_path: Path) -> None:
        self.usecase = usecase
        self.log_path = log_path
        # One handle for the whole process: Airflow configures its logging on first import and keeps writing
        # to the stream it saw then, so import it while that stream is the log file.
        self._log = log_path.open("a", buffering=1)
        with self._quiet():
            from airflow.dag_processing.dagbag import DagBag

            self.bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        if self.bag.import_errors:
            raise RuntimeError(f"DAG import errors: {self.bag.import_errors}")

    def run(self, kind: str, logical: datetime, params: dict[str, Any] | None = None) -> RunOutcome:
        dag = self.bag.dags[f"{self.usecase}_{kind}"]
        start = time.perf_counter()
        with self._quiet():
            dag_run = dag.test(logical_date=logical, run_conf=params)
        seconds = time.perf_counter() - start
        outcome = RunOutcome(_state(dag_run.state), self._results(dag_run, list(dag.task_dict)), seconds)
        outcome.task_seconds = self._durations(dag_run)
        return outcome

    @staticmethod
    def _durations(dag_run: Any) -> dict[str, float]:
        """Each task instance's duration as Airflow recorded it (start to end of the task, its runner included)."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        try:
            with create_session() as session:
                rows = session.scalars(
                    select(TaskInstance).where(
                        TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
                    )
                ).all()
                return {ti.task_id: round(float(ti.duration), 3) for ti in rows if ti.duration is not None}
        except Exception:  # noqa: BLE001 - timings are for benchmarks; a schema change must not fail the demo
            return {}

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        with contextlib.redirect_stdout(self._log), contextlib.redirect_stderr(self._log):
            yield

    @staticmethod
    def _results(dag_run: Any, task_ids: list[str]) -> dict[str, Any]:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        results = {}
        with create_session() as session:
            rows = session.scalars(
                XComModel.get_many(
                    run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_ids, key="return_value"
                )
            ).all()
            for row in rows:
                results[row.task_id] = XComModel.deserialize_value(row)
        return results


class DirectRunner:
    """The same graphs as dags/ (their steps, :data:`mlops_airflow.wiring.STEP_GRAPHS`, which each DAG checks
    itself against), calling the steps in this process without Airflow (for benchmarks)."""

    name = "direct"
    GRAPHS = wiring.STEP_GRAPHS
    # steps beside the decision path: they run after the gate whatever it decided, and their failure is recorded
    # without failing the graph, as promote never waits on them
    SIDE_STEPS = wiring.SIDE_STEPS

    def __init__(self, usecase: str, log_path: Path) -> None:
        self.usecase = usecase
        self.log_path = log_path
        self._log = log_path.open("a", buffering=1)
        self.step_seconds: dict[str, float] = {}

    def run(self, kind: str, logical: datetime, params: dict[str, Any] | None = None) -> RunOutcome:
        # one run id per graph run, as Airflow gives each DAG run its own: steps key their results by it
        from mlops_airflow.operators import patched_environ

        with patched_environ({"MLOPS_RUN_ID": f"direct__{kind}__{logical.isoformat()}"}):
            return self._run(kind, logical, params or {})

    def _run(self, kind: str, logical: datetime, params: dict[str, Any]) -> RunOutcome:
        from pipelines.cli import run_step
        from pipelines.context import StepFailed

        outcome = RunOutcome("success")
        day = logical.date().isoformat()
        start = time.perf_counter()
        for step in self.GRAPHS[kind]:
            if step == "promote" and not outcome.result("gate").get("passed"):
                continue  # keep_champion
            if step in self.SIDE_STEPS:
                # as ALL_DONE_MIN_ONE_SUCCESS on [evaluate, gate]: only evaluate's scores are needed
                if "evaluate" not in outcome.results or outcome.result("evaluate").get("failed"):
                    continue
            elif outcome.state == "failed":
                continue  # the decision path stops at its first failure
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(self._log), contextlib.redirect_stderr(self._log):
                try:
                    extra = (
                        [f"--scored-at={logical.isoformat()}", f"--replay={bool(params.get('replay'))}"]
                        if step == "score"
                        else []
                    )
                    outcome.results[step] = run_step([step, "--usecase", self.usecase, "--date", day, *extra])
                except StepFailed as exc:
                    outcome.results[step] = {"failed": True, "error": str(exc), **exc.result}
                    if step not in self.SIDE_STEPS:
                        outcome.state = "failed"
            self.step_seconds[step] = self.step_seconds.get(step, 0.0) + time.perf_counter() - t0
            outcome.task_seconds[step] = round(time.perf_counter() - t0, 3)
        outcome.seconds = time.perf_counter() - start
        return outcome


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def make_runner(usecase: Any, runner_name: str, home: Path, log_path: Path) -> AirflowRunner | DirectRunner:
    """The runner of a replay: Airflow (its database migrated on first use) or the steps without Airflow."""
    apply_airflow_environment(home)
    # TensorFlow's C++ runtime writes harmless graph warnings straight to the terminal; Python errors still raise
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if runner_name == "airflow":
        ensure_airflow_db(home)
        say("Loading DAGs ...")
        return AirflowRunner(usecase.name, log_path)
    return DirectRunner(usecase.name, log_path)
