"""<usecase>_maintenance: vacuum the use case's Delta tables and clean their logs, keeping every version that a
registered model names (so its training set can still be reloaded)."""

from airflow.sdk import DAG

from mlops_airflow.operators import step_task
from mlops_airflow.wiring import dag_kwargs, usecases

for usecase in usecases():
    if not usecase.schedules.maintenance:
        continue
    with DAG(
        **dag_kwargs(
            usecase,
            "maintenance",
            schedule=usecase.schedules.maintenance,
            doc="Vacuums the raw, features and predictions tables (and their partition facts) and cleans their "
            "logs. Keeps the latest version and every version a registered model was trained on; fails, and "
            "deletes nothing, when the model registry cannot be read.",
            inputs="the lake's tables and the model registry (the versions registered models were trained on)",
            outputs="the same tables, smaller: files no kept version needs are removed",
            trigger=f"its schedule (`schedules.maintenance`: {usecase.schedules.maintenance}), or by hand.",
        )
    ) as dag:
        step_task("maintain", usecase.name)
    globals()[dag.dag_id] = dag
