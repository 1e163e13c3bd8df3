"""What the evaluate and report steps read: the holdout rows train recorded (time
travel), a sample of the train window, and the holdout scores evaluate wrote.

Shared here so that no step imports another step's module: evaluate (the decision path) and report (the
explanations) both read the same rows the same way.
"""

from __future__ import annotations

from typing import Any

from pipelines.context import StepContext, StepFailed
from pipelines.lake import LakeError

HOLDOUT_SCORES = "holdout_scores.parquet"  # beside the evaluate result


def evaluated_metrics(ctx: StepContext) -> list[str]:
    """The config's metrics plus every metric the gate reads."""
    gate = ctx.usecase.gate
    wanted = [*ctx.usecase.metrics, gate.primary_metric, *gate.absolute, *gate.change]
    if gate.fairness is not None:
        wanted.append(gate.fairness.metric)
    return list(dict.fromkeys(wanted))


def _window_rows(
    ctx: StepContext, train_result: dict[str, Any], part: str, columns: list[str], needed_by: str
) -> Any:
    """The labeled rows of the train result's window ``part`` (``train`` or ``holdout``), read from the features
    and labels versions train read (time travel), so a rebuild or an outcome arriving since training cannot
    change them."""
    from pipelines.modeling.training_window import (  # one way to read a training window, train's own
        features_snapshot,
        labels_known_before,
        read_labeled,
        recorded_labels,
        window_partitions,
    )

    window = train_result["window"]
    version = train_result.get("features_version")
    if version is None:
        raise StepFailed(
            f"the train result for {ctx.ds} records no features table version (written by an older release); "
            f"rerun train (python -m pipelines train --usecase {ctx.usecase.name} --date {ctx.ds}) then "
            f"{needed_by}"
        )
    try:
        snapshot = features_snapshot(ctx, int(version))
    except LakeError as exc:
        raise StepFailed(f"{exc}; rerun train for {ctx.ds}, then {needed_by}") from None
    labels = recorded_labels(ctx, train_result)
    parts = window_partitions(snapshot, window[f"{part}_start"], window[f"{part}_end"])
    return read_labeled(ctx, snapshot, parts, columns, labels_known_before(ctx, window), labels=labels)


def load_holdout(ctx: StepContext, train_result: dict[str, Any]) -> Any:
    """The labeled holdout rows the candidates were trained for (see :func:`_window_rows`). The rows come back in
    the same order on every call (evaluate's scores line up with report's)."""
    from pipelines import modeling

    columns = list(
        dict.fromkeys(
            [
                *modeling.feature_columns(ctx.usecase),
                ctx.usecase.target.column,
                *ctx.usecase.evaluated_columns,
                *ctx.usecase.gate.significance.cluster_by,  # the bootstrap's clusters (date by default)
            ]
        )
    )
    return _window_rows(ctx, train_result, "holdout", columns, "evaluate")


def load_train_sample(ctx: StepContext, train_result: dict[str, Any], max_rows: int) -> Any:
    """A seeded sample of the train window's labeled rows (the data explorer's training side)."""
    from pipelines import modeling

    columns = [*modeling.feature_columns(ctx.usecase), ctx.usecase.target.column]
    frame = _window_rows(ctx, train_result, "train", columns, "report")
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=ctx.usecase.split.seed).sort_index()
    return frame


def write_holdout_scores(
    ctx: StepContext,
    holdout: Any,
    y: Any,
    candidate: Any,
    champion: Any | None,
    cluster: Any,
    cluster_by: list[str],
) -> str:
    """Keep the holdout's labels, the chosen candidate's and the champion's scores and each row's clusters
    (``holdout_scores.parquet`` beside the evaluate result, about 20 bytes a row), so an interval can be
    recomputed later (another bootstrap, another rule) without reloading the models, and the report step explains
    the scores the gate judged: ``bench/gate.py`` reads them to put the row and the cluster bootstrap of the same
    decisions side by side."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        "label": np.asarray(y, dtype="float64"),
        "candidate": np.asarray(candidate, dtype="float64"),
        "champion": None if champion is None else np.asarray(champion, dtype="float64"),
        "cluster": np.asarray(cluster, dtype="int64"),
    }
    for name in dict.fromkeys(["date", *cluster_by]):
        if name in holdout.columns:
            columns[name] = holdout[name].astype("string").to_numpy()
    table = pa.table({k: v for k, v in columns.items() if v is not None})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    key = f"{ctx.run_key('evaluate')}/{HOLDOUT_SCORES}"
    ctx.lake.storage.write_bytes(key, buffer.getvalue())
    return ctx.lake.storage.uri(key)


def read_holdout_scores(ctx: StepContext) -> Any:
    """The frame ``write_holdout_scores`` wrote for this run (label, candidate, champion when there was one)."""
    import io

    import pyarrow.parquet as pq

    key = f"{ctx.run_key('evaluate')}/{HOLDOUT_SCORES}"
    if not ctx.lake.storage.exists(key):
        raise StepFailed(f"{ctx.lake.storage.uri(key)}: no holdout scores; rerun evaluate in the same run")
    return pq.read_table(io.BytesIO(ctx.lake.storage.read_bytes(key))).to_pandas()


def holdout_errors(task: str, y: Any, scores: Any, threshold: float | None) -> Any:
    """Per row: 1 where a classification is wrong at ``threshold``, else a regression's absolute error."""
    import numpy as np

    if task == "classification":
        return ((np.asarray(scores) >= (threshold or 0.5)).astype("int64") != y).astype("int64")
    return np.abs(np.asarray(scores, dtype="float64") - y)
