"""<usecase>_ingest: an arrival sensor on the landing zone starts ingestion of every file not yet ingested."""

from airflow.sdk import DAG, Asset

from mlops_airflow.operators import StepResultCheckOperator, step_task
from mlops_airflow.sensors import LandingArrivalSensor
from mlops_airflow.wiring import alert, check_step_graph, dag_kwargs, raw_asset_name, usecases

for usecase in usecases():
    with DAG(
        **dag_kwargs(
            usecase,
            "ingest",
            schedule=usecase.schedules.ingest,
            doc="Waits (deferrable) for files in the landing zone, validates each with Great Expectations, "
            "quarantines bad files with a report and commits good ones atomically to the raw zone. "
            "`quarantine_check` fails the run when any file was quarantined, and alerts (`quarantine`); the good "
            "files are committed anyway.",
            inputs="files in the landing zone (`landing/<usecase>/<source>/`, local folder or S3), the "
            "sources' expectations in the use case file",
            outputs="the raw Delta tables `raw/<usecase>/<source>` (one partition per date, with each file's "
            "recorded arrival), `quarantine/<usecase>/` (bad files with their validation report), the raw-zone "
            "asset that starts the features DAG",
            trigger=f"its schedule (`schedules.ingest`: {usecase.schedules.ingest}); the arrival sensor then waits "
            "for files. By hand: trigger it after dropping files in the landing zone.",
        )
    ) as dag:
        wait = LandingArrivalSensor(task_id="wait_for_files", usecase=usecase.name, soft_fail=True, retries=0)
        ingest = step_task(
            "ingest", usecase.name, outlets=[Asset(raw_asset_name(usecase))], soft_fail_on_step_failure=True
        )
        check = StepResultCheckOperator(
            task_id="quarantine_check",
            step_task_id="ingest",
            on_failure_callback=alert(usecase, "quarantine"),
        )
        wait >> ingest >> check
    check_step_graph(dag, "ingest")
    globals()[dag.dag_id] = dag
