"""<usecase>_score: at the prediction time, once the features of the day it predicts are in (or past a grace, a
failure naming the day), the champion scores the events predicted tonight; then the outcomes that arrived are
joined to the predictions made before them (predictions_with_outcomes)."""

from airflow.sdk import DAG, Asset, Param

from mlops_airflow.operators import step_task
from mlops_airflow.sensors import FeaturesReadySensor
from mlops_airflow.wiring import (
    alert,
    check_step_graph,
    dag_kwargs,
    outcomes_asset_name,
    predictions_asset_name,
    usecases,
)

for usecase in usecases():
    with DAG(
        **dag_kwargs(
            usecase,
            "score",
            schedule=usecase.schedules.score,
            doc="At the prediction time, waits (deferrable) for the features and online snapshot of the day it "
            f"predicts, up to `schedules.score_grace` ({usecase.schedules.score_grace}) past the prediction time; "
            "past it the run fails naming the day and what is missing (alert `late_data`), and the next run scores that day, marked "
            "late. Scores the events predicted on the logical date (and any evening missed within the catch-up "
            "window) with the model version that holds the `champion` alias; every prediction records when it "
            "was made (`scored_at`) and whether that was after its prediction time (`scored_late`). Then joins the "
            "outcomes that arrived since to the predictions made before them (`predictions_with_outcomes`). "
            "Param `replay` (a batched replay of history): no waiting; each day is scored as the schedule's runs "
            "would have, from the recorded arrivals.",
            inputs="the online feature snapshot and features of the day, the `champion` model version, the "
            "outcomes that arrived",
            outputs="`predictions/<usecase>` (one partition per predicted date), the outcomes joined to earlier "
            "predictions, the predictions and outcomes assets that start the monitor DAG",
            trigger=f"its schedule (`schedules.score`: {usecase.schedules.score}, at the prediction time), or by "
            "hand with the logical date to predict.",
            params={
                "replay": Param(
                    False,
                    type="boolean",
                    description="replay history in one run: score each day as the scheduled runs would have",
                ),
            },
            render_template_as_native_obj=False,
        )
    ) as dag:
        ready = FeaturesReadySensor(
            task_id="wait_for_features", usecase=usecase.name, on_failure_callback=alert(usecase, "late_data")
        )
        score = step_task(
            "score",
            usecase.name,
            step_args=[
                "--scored-at={{ logical_date.isoformat() if logical_date else '' }}",
                "--replay={{ params.replay }}",
            ],
            outlets=[Asset(predictions_asset_name(usecase))],  # the monitor DAG runs on it
        )
        outcomes = step_task("outcomes", usecase.name, outlets=[Asset(outcomes_asset_name(usecase))])
        ready >> score >> outcomes
    check_step_graph(dag, "score")
    globals()[dag.dag_id] = dag
