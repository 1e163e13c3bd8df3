"""<usecase>_features: Spark builds feature partitions incrementally whenever the raw zone changes."""

from airflow.sdk import DAG, Asset

from mlops_airflow.operators import step_task
from mlops_airflow.wiring import dag_kwargs, raw_asset_name, usecases

for usecase in usecases():
    with DAG(
        **dag_kwargs(
            usecase,
            "features",
            schedule=[Asset(raw_asset_name(usecase))],
            doc="Scheduled on the raw-zone asset. Builds every feature partition that is missing or whose raw "
            "inputs changed, up to the triggering date, with time-aware aggregates that never look ahead.",
        )
    ) as dag:
        step_task("features", usecase.name)
    globals()[dag.dag_id] = dag
