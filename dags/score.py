"""<usecase>_score: nightly batch scoring of new feature partitions with the champion."""

from airflow.sdk import DAG

from mlops_airflow.operators import step_task
from mlops_airflow.wiring import dag_kwargs, usecases

for usecase in usecases():
    with DAG(
        **dag_kwargs(
            usecase,
            "score",
            schedule=usecase.schedules.score,
            doc="Scores every feature partition not yet scored (within the catch-up window) with the model "
            "version that holds the `champion` alias, writing predictions with that version.",
        )
    ) as dag:
        step_task("score", usecase.name)
    globals()[dag.dag_id] = dag
