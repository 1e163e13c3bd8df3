"""Drift of columns between a reference and a current window, measured by Evidently (0.7).

Evidently chooses each column's method by its type and the sample size when the use case names none: a
statistical test on small samples, a distance (Wasserstein for numbers, Jensen-Shannon for categories) on large
ones, which is what keeps a large day from flagging every column as p-values do. Its telemetry is turned off
before it is imported, here and in every process that monitors.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import DriftSpec

# Evidently's usage telemetry (and the iterative-telemetry library under it) stay off: nothing leaves the machine
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "ITERATIVE_DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}


def _evidently() -> Any:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    import evidently

    return evidently


def column_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    spec: DriftSpec,
) -> list[dict[str, Any]]:
    """Per column: ``{"name", "kind", "method", "value" (the drift score), "threshold", "drifted"}``. A column
    with no value in either window is reported with ``value`` None and not drifted."""
    evidently = _evidently()
    from evidently.metrics import ValueDrift

    columns = [c for c in [*numeric, *categorical] if c in current.columns and c in reference.columns]
    usable = [c for c in columns if current[c].notna().any() and reference[c].notna().any()]
    results: dict[str, dict[str, Any]] = {
        c: {
            "name": c,
            "kind": "numeric" if c in numeric else "categorical",
            "method": None,
            "value": None,
            "threshold": None,
            "drifted": False,
        }
        for c in columns
    }
    if usable:

        def frame(data: pd.DataFrame) -> pd.DataFrame:
            out = data[usable].copy()
            for column in usable:
                if column in categorical:
                    out[column] = out[column].astype("string").astype(object)
                else:
                    out[column] = out[column].astype("float64")
            return out

        definition = evidently.DataDefinition(
            numerical_columns=[c for c in usable if c in numeric],
            categorical_columns=[c for c in usable if c in categorical],
        )
        report = evidently.Report(
            [ValueDrift(column=c, method=spec.method, threshold=spec.threshold) for c in usable],
            include_tests=True,
        )
        snapshot = report.run(
            evidently.Dataset.from_pandas(frame(current), data_definition=definition),
            evidently.Dataset.from_pandas(frame(reference), data_definition=definition),
        ).dict()
        for metric in snapshot["metrics"]:
            config = metric["config"]
            results[config["column"]].update(
                method=config.get("method"), value=float(metric["value"]), threshold=config.get("threshold")
            )
        for test in snapshot["tests"]:
            column = test["metric_config"]["params"]["column"]
            results[column]["drifted"] = str(getattr(test["status"], "value", test["status"])) == "FAIL"
    return [results[c] for c in columns]
