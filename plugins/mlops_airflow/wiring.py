"""Shared DAG settings derived from a use case: ids, schedules, owners, retries, tags and docs; and the steps of
each lifecycle DAG (``STEP_GRAPHS``), which the DAGs check themselves against and the direct runner runs."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pendulum

from pipelines.config import ConfigError, UseCase, list_usecases, load_usecase

# The pipelines steps of each lifecycle DAG (its tasks that run a step), in an order their dependencies allow. The
# DAG files wire the tasks (branches, sensors, checks, approval) and check their step tasks against this when they
# are parsed (check_step_graph); the direct runner (mlops_cli.runners.DirectRunner) runs the same steps in this
# order without Airflow. One definition, so the two cannot drift apart.
STEP_GRAPHS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest",),
    "features": ("features",),
    "score": ("score", "outcomes"),
    "monitor": ("monitor",),
    "train": ("train", "evaluate", "gate", "register", "promote", "report"),
}
# Steps beside the decision path (dags/train.py: [evaluate, gate] >> report, nothing downstream): they run after the
# gate whatever it decided, and their failure fails no other step, as nothing waits on them
SIDE_STEPS = frozenset({"report"})


def check_step_graph(dag: Any, kind: str) -> None:
    """Raise ``ValueError`` (an import error of the DAG file) unless ``dag``'s step tasks run exactly the steps of
    ``STEP_GRAPHS[kind]``, each step's upstream steps come before it there, and no step is downstream of a side
    step: the graph the direct runner runs is then this DAG's."""
    from mlops_airflow.operators import StepOperator

    order = STEP_GRAPHS[kind]
    tasks = {task.task_id: task.step for task in dag.tasks if isinstance(task, StepOperator)}
    problems = []
    if sorted(tasks.values()) != sorted(order):
        problems.append(
            f"its step tasks run {sorted(tasks.values())}, STEP_GRAPHS[{kind!r}] is {list(order)}"
        )
    else:
        for task_id, step in tasks.items():
            task = dag.task_dict[task_id]
            upstream = {tasks[t] for t in task.get_flat_relative_ids(upstream=True) if t in tasks}
            late = sorted(u for u in upstream if order.index(u) > order.index(step))
            if late:
                problems.append(f"step {step} runs after {late}, which STEP_GRAPHS[{kind!r}] puts after it")
            downstream = {tasks[t] for t in task.get_flat_relative_ids(upstream=False) if t in tasks}
            if step in SIDE_STEPS and downstream:
                problems.append(f"side step {step} has steps downstream: {sorted(downstream)}")
    if problems:
        raise ValueError(
            f"{dag.dag_id}: the DAG and mlops_airflow.wiring.STEP_GRAPHS disagree (the direct runner runs the "
            f"latter): {'; '.join(problems)}"
        )


def _load_all() -> dict[str, UseCase | str]:
    """Every use case file of config/usecases/: the validated use case, or the error message of a bad file."""
    loaded: dict[str, UseCase | str] = {}
    for name in list_usecases():
        try:
            loaded[name] = load_usecase(name)
        except ConfigError as exc:
            loaded[name] = str(exc)
    return loaded


def usecases() -> list[UseCase]:
    """The valid use cases of config/usecases/. A bad file is left out here, so it fails only its own DAGs: it
    is reported as the import error of dags/config_errors.py, naming the file and the problem."""
    return [usecase for usecase in _load_all().values() if isinstance(usecase, UseCase)]


def config_errors() -> dict[str, str]:
    """Use case name -> why its file cannot be loaded (empty when every file is valid)."""
    return {name: value for name, value in _load_all().items() if isinstance(value, str)}


def newest_trainable_date(usecase: UseCase) -> str | None:
    """The newest date a training run of ``usecase`` can be given (the day after the features table's last
    partition), from the extent the features step records beside the table; what the train DAG's trigger form
    proposes. None for an S3 lake (parsing a DAG makes no network calls), before features ran, or when the record
    cannot be read: a proposal only, train itself checks the date against the features snapshot it reads."""
    from pipelines.config import load_profile
    from pipelines.lake import Lake, LakeError, features_table

    try:
        lake_uri = load_profile().lake_uri
        if lake_uri.startswith("s3://"):
            return None
        extent = Lake(lake_uri).extent(features_table(usecase.name))
        return None if not extent else (date.fromisoformat(extent["last"]) + timedelta(days=1)).isoformat()
    except (ConfigError, LakeError, OSError, KeyError, TypeError, ValueError):
        return None


def raw_asset_name(usecase: UseCase) -> str:
    return f"{usecase.name}_raw"


def predictions_asset_name(usecase: UseCase) -> str:
    return f"{usecase.name}_predictions"


def outcomes_asset_name(usecase: UseCase) -> str:
    return f"{usecase.name}_outcomes"


def alert(usecase: UseCase | str, event: str) -> Any:
    """A notifier of ``event`` for ``usecase`` (mlops_airflow.notifiers), for a task's or DAG's callbacks."""
    from mlops_airflow.notifiers import MlopsNotifier

    return MlopsNotifier(usecase=usecase if isinstance(usecase, str) else usecase.name, event=event)


def dag_doc(
    usecase: UseCase,
    kind: str,
    *,
    doc: str,
    inputs: str,
    outputs: str,
    trigger: str,
    params: dict[str, Any] | None = None,
) -> str:
    """The DAG's documentation as the UI shows it: what it does, its inputs and outputs, how it is triggered and
    what each Param means (from the Params' own descriptions and defaults)."""
    lines = [
        f"### {usecase.name}: {kind}",
        "",
        doc,
        "",
        f"**Inputs:** {inputs}",
        "",
        f"**Outputs:** {outputs}",
        "",
        f"**How to trigger:** {trigger}",
        "",
    ]
    if params:
        lines.append("**Params** (the trigger form):")
        lines.append("")
        for name, param in params.items():
            default = getattr(param, "value", param)
            described = getattr(param, "description", None) or ""
            lines.append(f"- `{name}` (default `{default}`): {described}")
    else:
        lines.append("**Params:** none.")
    lines += ["", f"*Use case:* {usecase.description}"]
    return "\n".join(lines)


def dag_kwargs(
    usecase: UseCase,
    kind: str,
    *,
    schedule: Any,
    doc: str,
    inputs: str,
    outputs: str,
    trigger: str,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``DAG(...)`` of one lifecycle DAG of ``usecase``; ``doc``, ``inputs``, ``outputs``
    and ``trigger`` make its documentation (:func:`dag_doc`)."""
    return {
        "dag_id": f"{usecase.name}_{kind}",
        "schedule": schedule,
        # cron schedules are read in the use case's time zone (score at 18:00 New York time, DST included)
        "start_date": pendulum.parse(usecase.schedules.start_date, tz=usecase.time.timezone),
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["mlops", usecase.name, kind, *usecase.tags],
        "doc_md": dag_doc(
            usecase,
            kind,
            doc=doc,
            inputs=inputs,
            outputs=outputs,
            trigger=trigger,
            params=extra.get("params"),
        ),
        "default_args": {
            "owner": usecase.owner,
            # every failed task alerts (task log; the use case's alerts connection when set); tasks whose failure
            # means more (quarantine, gate, late data) name their own event
            "on_failure_callback": alert(usecase, "task_failure"),
            "retries": 2,
            "retry_delay": timedelta(minutes=2),
            "retry_exponential_backoff": True,
        },
        **extra,
    }
