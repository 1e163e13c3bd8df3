"""<usecase>_score: at the prediction time, the champion scores the events predicted tonight; then the outcomes
that arrived are joined to the predictions made before them (predictions_with_outcomes)."""

from airflow.sdk import DAG

from mlops_airflow.operators import step_task
from mlops_airflow.wiring import dag_kwargs, usecases

for usecase in usecases():
    with DAG(
        **dag_kwargs(
            usecase,
            "score",
            schedule=usecase.schedules.score,
            doc="At the prediction time, scores the events predicted on the logical date (and any evening "
            "missed within the catch-up window) with the model version that holds the `champion` alias, "
            "writing predictions with that version; then joins the outcomes that arrived since to the "
            "predictions made before them (`predictions_with_outcomes`).",
        )
    ) as dag:
        step_task("score", usecase.name) >> step_task("outcomes", usecase.name)
    globals()[dag.dag_id] = dag
