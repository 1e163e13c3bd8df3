"""<usecase>_features: Spark builds feature partitions incrementally whenever the raw zone changes."""

from airflow.sdk import DAG, Asset

from mlops_airflow.operators import step_task
from mlops_airflow.wiring import check_step_graph, dag_kwargs, raw_asset_name, usecases

for usecase in usecases():
    with DAG(
        **dag_kwargs(
            usecase,
            "features",
            schedule=[Asset(raw_asset_name(usecase))],
            doc="Scheduled on the raw-zone asset. Builds every feature partition that is missing or whose raw "
            "inputs changed, up to the triggering date, with time-aware aggregates that never look ahead.",
            inputs="the raw tables as of their recorded arrivals; the labels table for the past rates",
            outputs="the Delta tables `features/<usecase>` (one partition per date) and the online snapshot the "
            "score DAG and the REST service read",
            trigger="the raw-zone asset (each committed ingest); by hand: trigger with the logical date up to "
            "which features are built.",
        )
    ) as dag:
        step_task("features", usecase.name)
    check_step_graph(dag, "features")
    globals()[dag.dag_id] = dag
