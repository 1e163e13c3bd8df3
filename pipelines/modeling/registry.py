"""``mlops models list <usecase>``: the registered versions of a use case's model with their gate results.

Reads the MLflow registry of the active profile; the version holding the ``champion`` alias is marked.
"""

from __future__ import annotations

import json
import math
from typing import Any

COLUMNS = [
    ("champion_mark", ""),
    ("version", "version"),
    ("candidate", "candidate"),
    ("family", "family"),
    ("logical_date", "logical date"),
    ("data_window", "data window"),
    ("primary_metric_text", "primary metric"),
    ("threshold_text", "threshold"),
    ("gate_status", "gate"),
    ("promoted_on", "promoted on"),
    ("champion_text", "champion"),
]


def _number(text: str | None) -> float | None:
    """A tag's number, or None when it is missing or not a finite number (so the JSON stays valid)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def list_models(usecase: str) -> list[dict[str, Any]]:
    """One dict per model version of ``usecase`` (oldest first): version, candidate, family, logical_date,
    data_window, primary_metric, primary_metric_value, decision_threshold and threshold_source (how train chose
    it; None for a regression), gate_status, gate_reasons, promoted_on, champion, run_id, status and source."""
    from mlflow import MlflowClient

    from pipelines.config import load_profile, load_usecase
    from pipelines.modeling.tracking import champion_version, configure_mlflow, model_name

    spec = load_usecase(usecase)
    configure_mlflow(load_profile(), spec)
    name = model_name(spec)
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    champion = champion_version(spec) if versions else None
    champion_number = int(champion.version) if champion is not None else None
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version)):
        tags = version.tags or {}
        value = tags.get("primary_metric_value")
        rows.append(
            {
                "version": int(version.version),
                "candidate": tags.get("candidate"),
                "family": tags.get("family"),
                "logical_date": tags.get("logical_date"),
                "data_window": tags.get("data_window"),
                "primary_metric": tags.get("primary_metric"),
                "primary_metric_value": _number(value),
                "decision_threshold": _number(tags.get("decision_threshold")),
                "threshold_source": tags.get("threshold_source") or None,
                "gate_status": tags.get("gate_status"),
                "gate_reasons": tags.get("gate_reasons") or None,
                "promoted_on": tags.get("promoted_on"),
                "champion": int(version.version) == champion_number,
                "run_id": version.run_id,
                "status": version.status,
                "source": version.source,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of ``list_models`` rows; the champion's row starts with ``*``."""
    cells = []
    for row in rows:
        metric = row["primary_metric"] or "metric"
        value = row["primary_metric_value"]
        shown = {
            **row,
            "champion_mark": "*" if row["champion"] else "",
            "champion_text": "champion" if row["champion"] else "",
            "primary_metric_text": f"{metric}={value:.4f}" if value is not None else "",
            "threshold_text": "" if row["decision_threshold"] is None else f"{row['decision_threshold']:.4f}",
        }
        cells.append(["" if shown[key] is None else str(shown[key]) for key, _ in COLUMNS])
    header = [title for _, title in COLUMNS]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *cells]
    ]
    return "\n".join(lines)


def print_models(usecase: str, as_json: bool = False) -> None:
    """Print the model versions of ``usecase`` as a table (champion marked with ``*``) or as JSON."""
    rows = list_models(usecase)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print(f"No model versions registered for {usecase!r} yet (train, gate and register create them).")
        return
    print(format_table(rows))
