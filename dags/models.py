"""<usecase>_models (manual, no schedule): promote a registered version or roll the champion back, from the UI with
Params, through the same functions as `mlops models promote|rollback` (pipelines.modeling.model_ops): one recorded alias
move (registry/<usecase>/alias_moves, who and why), in the use case's `<usecase>_train` pool beside the gate's
promote."""

from airflow.sdk import DAG, Param

from mlops_airflow.operators import ModelOpsOperator
from mlops_airflow.pools import train_pool
from mlops_airflow.wiring import dag_kwargs, usecases

for usecase in usecases():
    with DAG(
        **dag_kwargs(
            usecase,
            "models",
            schedule=None,
            doc="Manual model operations on the `champion` alias of the use case's registered model; trigger with "
            "Params. `action: rollback` moves the champion back to the previous champion (the version the last "
            "recorded promotion replaced; `reason` is required). `action: promote` makes `version` the champion: "
            "only a version whose gate passed, unless `force` is on, and then `reason` is required. Each move is "
            "one row of `registry/<usecase>/alias_moves` (who: the user who triggered the run; why: `reason`) and "
            "tags on the version; batch scoring and the REST service follow the alias. The task fails, moving "
            "nothing, on an unknown version, a gate not passed, or nothing to roll back to; it is never retried. "
            "Same as `mlops models promote|rollback --usecase <usecase>`; `mlops models history` lists the moves.",
            inputs="the MLflow registry (versions, their gate decisions) and `registry/<usecase>/alias_moves`",
            outputs="the `champion` alias moved, one row appended to `registry/<usecase>/alias_moves`",
            trigger="by hand only (Trigger DAG with Params).",
            params={
                "action": Param(
                    "promote",
                    enum=["promote", "rollback"],
                    description="promote: make `version` the champion; rollback: back to the previous champion",
                ),
                "version": Param(
                    None,
                    type=["null", "integer"],
                    minimum=1,
                    description="registry version to promote (action promote only; see `mlops models list`)",
                ),
                "reason": Param(
                    "",
                    type="string",
                    description="why (recorded with the move); required for rollback and for a forced promote",
                ),
                "force": Param(
                    False,
                    type="boolean",
                    description="promote a version whose gate did not pass (needs a reason; recorded as forced)",
                ),
            },
        )
    ) as dag:
        ModelOpsOperator(
            task_id="models",
            usecase=usecase.name,
            pool=train_pool(usecase.name),
            doc_md="Runs the Params' action (pipelines.modeling.model_ops) and returns the recorded move.",
        )
    globals()[dag.dag_id] = dag
