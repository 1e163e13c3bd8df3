"""The evaluation report as one self-contained HTML page (no scripts, no network): plots are inline SVG."""

from __future__ import annotations

import html
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def residual_plot_svg(points: list[list[float | None]], width: int = 640, height: int = 320) -> str:
    """An inline SVG scatter of (predicted, residual) points with the zero line: a regression's residual plot."""
    pairs = [(x, y) for x, y in points if x is not None and y is not None]
    if not pairs:
        return "<p>(no residuals to plot)</p>"
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    x0, x1 = min(xs), max(xs)
    bound = max(abs(min(ys)), abs(max(ys))) or 1.0
    x1 = x1 if x1 > x0 else x0 + 1.0
    pad = 40

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            pad + (x - x0) / (x1 - x0) * (width - 2 * pad),
            height / 2 - y / bound * (height / 2 - pad / 2),
        )

    dots = "".join(
        f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='2' fill='#1f77b4' fill-opacity='0.5'/>"
        for cx, cy in (at(x, y) for x, y in pairs)
    )
    zero = at(x0, 0.0)[1]
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='residuals against predicted values'>"
        f"<line x1='{pad}' y1='{zero:.1f}' x2='{width - pad}' y2='{zero:.1f}' stroke='#c00'/>{dots}"
        f"<text x='{width / 2}' y='{height - 4}' text-anchor='middle' font-size='12'>predicted "
        f"({_fmt(x0)} to {_fmt(x1)})</text>"
        f"<text x='12' y='{height / 2}' font-size='12' transform='rotate(-90 12 {height / 2})' "
        f"text-anchor='middle'>residual (predicted - true, +/-{_fmt(bound)})</text></svg>"
    )


def _residual_sections(residuals: dict[str, Any]) -> list[str]:
    quantiles = residuals.get("quantiles") or {}
    return [
        f"<h3>Residuals (predicted - true): mean {_fmt(residuals['mean'])}, std {_fmt(residuals['std'])}</h3>",
        _table(list(quantiles), [list(quantiles.values())]) if quantiles else "",
        residual_plot_svg(residuals.get("sample") or []),
        "<h3>Mean residual by decile of the predicted value</h3>",
        _table(
            ["predicted from", "to", "rows", "mean predicted", "mean true", "mean residual"],
            [
                [b["lower"], b["upper"], b["rows"], b["mean_predicted"], b["mean_actual"], b["mean_residual"]]
                for b in residuals.get("by_predicted") or []
            ],
        ),
    ]


def render_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page for the evaluation report."""
    explanation = report["explanation"]
    metric_names = list(next(iter(report["candidates"].values()))["metrics"])
    models = [
        [name + (" (best)" if name == report["best"] else ""), *c["metrics"].values()]
        for name, c in report["candidates"].items()
    ]
    champion = report.get("champion")
    if champion:
        models.append(
            [
                f"champion v{champion['version']} ({champion.get('candidate')})",
                *[champion["metrics"].get(m) for m in metric_names],
            ]
        )
    sections = [
        f"<h1>Evaluation: {html.escape(report['usecase'])} on {html.escape(report['logical_date'])}</h1>",
        f"<p>Holdout [{report['holdout']['start']}, {report['holdout']['end_exclusive']}): "
        f"{report['holdout']['rows']} rows, "
        + (
            f"positive rate {_fmt(report['holdout']['positive_rate'])}. "
            if "positive_rate" in report["holdout"]
            else f"mean label {_fmt(report['holdout'].get('label_mean'))}. "
        )
        + f"Best candidate by {html.escape(report['primary_metric'])}: <b>{html.escape(str(report['best']))}</b>.</p>",
        "<h2>Models</h2>",
        _table(["model", *metric_names], models),
    ]
    if champion and champion.get("error"):
        sections.append(f"<p><b>Champion could not be scored:</b> {html.escape(champion['error'])}</p>")
    importance = explanation["feature_importance"]
    sections += [
        f"<h2>Feature importance (permutation, drop in {html.escape(importance['metric'])})</h2>",
        _table(
            ["feature", "importance", "std"],
            [[f["feature"], f["importance"], f["std"]] for f in importance["features"]],
        ),
        "<h2>Errors</h2>",
    ]
    cm = explanation["errors"].get("confusion_matrix")
    if cm is not None:
        sections.append(
            _table(
                ["threshold", "tp", "fp", "tn", "fn", "precision", "recall", "accuracy"],
                [[cm[k] for k in ("threshold", "tp", "fp", "tn", "fn", "precision", "recall", "accuracy")]],
            )
        )
    if "residuals" in explanation:
        sections += _residual_sections(explanation["residuals"])
    worst = explanation["errors"]["worst_slices"]
    metric = report["primary_metric"]
    sections += [
        f"<h3>Worst slices (at least {explanation['errors']['min_slice_rows']} rows)</h3>",
        _table(
            ["column", "value", "rows", metric],
            [[w["column"], w["value"], w["rows"], w[metric]] for w in worst],
        ),
        "<h2>Slices</h2>",
    ]
    for column, values in explanation["slices"].items():
        sections.append(f"<h3>{html.escape(column)}</h3>")
        sections.append(
            _table(
                [
                    "value",
                    "rows",
                    "positives" if "positives" in next(iter(values.values()), {}) else "mean label",
                    *metric_names,
                ],
                [
                    [v, e["rows"], e.get("positives", e.get("label_mean")), *[e.get(m) for m in metric_names]]
                    for v, e in values.items()
                ],
            )
        )
    calibration = explanation.get("calibration")
    if calibration is not None:
        sections += [
            f"<h2>Calibration (expected calibration error {_fmt(calibration['ece'])})</h2>",
            _table(
                ["bin", "rows", "mean predicted", "observed rate"],
                [
                    [f"{b['lower']:.1f}-{b['upper']:.1f}", b["rows"], b["mean_predicted"], b["observed_rate"]]
                    for b in calibration["bins"]
                ],
            ),
        ]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation {html.escape(report['usecase'])} "
        f"{html.escape(report['logical_date'])}</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )
