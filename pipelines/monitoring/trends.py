"""The monitoring page of a use case: every monitored value over time, one self-contained HTML file (inline SVG,
no scripts, no external resources), rebuilt from the monitoring table by each monitor run."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from pipelines.evaluation.plots import ALERT, CANDIDATE, REFERENCE, esc, line_chart

if TYPE_CHECKING:
    import pandas as pd

CATEGORY_TITLES = {
    "data_drift": "Data drift of the model inputs (drift score; the window drifts at the share of drifted inputs)",
    "prediction_drift": "Drift of the scores",
    "decision_rate": "Decision rate",
    "live": "Live performance (predictions made ahead whose outcomes arrived)",
    "estimated": "Estimated performance (from the calibrated scores, before the outcomes)",
    "retrain": "Early retraining requested",
}


def _days(values: pd.Series) -> list[float]:
    return [float(date.fromisoformat(str(v)).toordinal()) for v in values]


def monitoring_page(usecase: str, rows: pd.DataFrame) -> str:
    """The page: per category, one chart per (source, name) with the value, its interval, the reference and the
    threshold over the monitored dates; dates with a breach are marked."""
    sections = []
    for category, title in CATEGORY_TITLES.items():
        part = rows[rows["category"] == category]
        if part.empty:
            continue
        charts = []
        for (source, name), series in part.groupby(["source", "name"], sort=True):
            series = series.sort_values("date")
            x = _days(series["date"])
            lines = [
                {"name": "value", "x": x, "y": series["value"].tolist(), "color": CANDIDATE, "markers": True}
            ]
            if series["low"].notna().any():
                lines += [
                    {
                        "name": "interval",
                        "x": x,
                        "y": series["low"].tolist(),
                        "color": CANDIDATE,
                        "dash": "4 3",
                    },
                    {"name": "", "x": x, "y": series["high"].tolist(), "color": CANDIDATE, "dash": "4 3"},
                ]
            if series["reference"].notna().any():
                lines.append(
                    {"name": "reference", "x": x, "y": series["reference"].tolist(), "color": REFERENCE}
                )
            if series["threshold"].notna().any():
                lines.append(
                    {
                        "name": "threshold",
                        "x": x,
                        "y": series["threshold"].tolist(),
                        "color": ALERT,
                        "dash": "2 2",
                    }
                )
            breached = series[series["breach"].fillna(False).astype(bool)]
            if len(breached):
                lines.append(
                    {
                        "name": "breach",
                        "x": _days(breached["date"]),
                        "y": breached["value"].tolist(),
                        "color": ALERT,
                        "markers": True,
                    }
                )
            label = f"{name} ({source})"
            charts.append(
                "<figure>"
                + line_chart(
                    f"{category}-{source}-{name}",
                    label,
                    lines,
                    x_label="date (day number)",
                    y_label=name,
                    width=420,
                    height=260,
                )
                + f"<figcaption>{esc(label)}: last {esc(series['date'].iloc[-1])}, "
                f"value {esc(series['value'].iloc[-1])}</figcaption></figure>"
            )
        sections.append(f"<section><h2>{esc(title)}</h2>{''.join(charts)}</section>")
    last = rows["date"].max() if len(rows) else "-"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{esc(usecase)}: monitoring</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:.5em;"
        "vertical-align:top}svg{max-width:100%}</style></head><body>"
        f"<h1>{esc(usecase)}: monitoring up to {esc(last)}</h1>" + "".join(sections) + "</body></html>"
    )
