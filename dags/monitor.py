"""<usecase>_monitor: after each score run (its predictions asset) and when outcomes are joined (the outcomes
asset), the monitor step measures drift and live and estimated performance of the recent predictions; a breach the
use case retrains on triggers `<usecase>_train` early, with the reason in its conf."""

from airflow.sdk import DAG, Asset, Param

from mlops_airflow.operators import RetrainTriggerOperator, step_task
from mlops_airflow.wiring import (
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
            "monitor",
            schedule=(Asset(predictions_asset_name(usecase)) | Asset(outcomes_asset_name(usecase))),
            doc="Runs when the score DAG writes predictions or joins outcomes (or by hand, with a logical date). "
            "`monitor` compares the events predicted in the last `monitoring.window_days` days with the reference "
            "of the model version that scored them: data drift of the model inputs (batch predictions and the REST "
            "service's captured requests apart; Evidently), drift of the scores and the decision rate, live "
            "performance of the predictions whose outcomes arrived, and performance estimated from the calibrated "
            "scores before they do, each with a day-bootstrap interval. Results: the Delta table "
            "`monitoring/<usecase>`, MLflow metrics, and `reports/<usecase>/monitoring/index.html` (every value "
            "over time). `retrain_early` alerts drift and decay and, for a breach in `monitoring.retrain_on` past "
            "`monitoring.cooldown_days`, triggers the train DAG with the reason in its conf, unless a training run "
            "is already queued or running. The gate still decides whether the new model replaces the champion. "
            "Param `retrain` off (a replay of history): measure and alert, trigger nothing.",
            inputs="the predictions table, the outcomes joined to it, the features and the service's captured "
            "requests of the window; the champion's training reference",
            outputs="`monitoring/<usecase>` (Delta), MLflow metrics, the monitoring page; a train DAG run on a breach",
            trigger="the predictions and outcomes assets of the score DAG; by hand with a logical date.",
            params={
                "retrain": Param(True, type="boolean", description="trigger the train DAG on a breach"),
            },
            render_template_as_native_obj=False,
        )
    ) as dag:
        monitor = step_task("monitor", usecase.name)
        monitor >> RetrainTriggerOperator(
            task_id="retrain_early", usecase=usecase.name, enabled="{{ params.retrain }}"
        )
    check_step_graph(dag, "monitor")
    globals()[dag.dag_id] = dag
