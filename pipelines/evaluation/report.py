"""The evaluation report as one self-contained HTML page (no scripts, no network): plots are inline SVG.

``render_report_html`` reads the report dict written by the evaluate step (and extended by the gate step) and lays
it out for a data scientist: the gate decision first, then the models, the comparison with the champion, ROC and
precision-recall curves, calibration, feature importance, error analysis, fairness, slices and a data explorer.
Every optional part may be absent (older reports) or hold None values ("n/a"). The charts come from
``pipelines.evaluation.plots``; each ``<svg>`` carries ``data-plot="<id>"``.
"""

from __future__ import annotations

import html
from typing import Any

from pipelines.evaluation import plots
from pipelines.evaluation.plots import CANDIDATE, CHAMPION, PALETTE, number
from pipelines.evaluation.significance import CLEARS, WORSE, change_reading, direction_words

PSI_FLAG = 0.2  # a population stability index at or above this is a shift worth a look


class _Raw(str):
    """A table cell that is already HTML (escaped by whoever built it)."""


def _fmt(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if number(value) is None else f"{value:.4f}"
    return html.escape(str(value))


def _pct(value: Any) -> str:
    v = number(value)
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _cell(value: Any) -> str:
    numeric = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    return f"<td>{_fmt(value)}</td>" if numeric else f"<td class='t'>{_fmt(value)}</td>"


def _table(headers: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    classes = row_classes or [""] * len(rows)
    body = "".join(
        (f"<tr class='{cls}'>" if cls else "<tr>") + "".join(_cell(v) for v in row) + "</tr>"
        for row, cls in zip(rows, classes, strict=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _interval(low: Any, high: Any, confidence: Any = None, resamples: Any = None) -> str:
    lo, hi = number(low), number(high)
    if lo is None or hi is None:
        return "n/a"
    text = f"[{lo:.4f}, {hi:.4f}]"
    if number(confidence) is not None:
        text += f" {100 * float(confidence):.0f}%"
    if resamples is not None:
        text += f" ({resamples} resamples)"
    return text


def _ratio(value: Any, reference: float | None) -> str:
    v = number(value)
    return "n/a" if v is None or not reference else f"{v / reference:.2f}x"


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _model_color(label: str, index: int) -> str:
    if "champion" in label.lower():
        return CHAMPION
    return CANDIDATE if index == 0 else PALETTE[(index - 1) % len(PALETTE)]


def residual_plot_svg(
    points: list[list[float | None]], width: int = 640, height: int = 320, plot_id: str = "residuals"
) -> str:
    """An inline SVG scatter of (predicted, residual) points with the zero line: a regression's residual plot."""
    pairs = [(float(x), float(y)) for x, y in points if number(x) is not None and number(y) is not None]
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
        f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='2' fill='{CANDIDATE}' fill-opacity='0.5'/>"
        for cx, cy in (at(x, y) for x, y in pairs)
    )
    zero = at(x0, 0.0)[1]
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' style='max-width:100%;height:auto' role='img' "
        f"aria-label='residuals against predicted values' data-plot='{html.escape(plot_id, quote=True)}'>"
        f"<title>residuals against predicted values</title>"
        f"<line x1='{pad}' y1='{zero:.1f}' x2='{width - pad}' y2='{zero:.1f}' stroke='#c00'/>{dots}"
        f"<text x='{width / 2}' y='{height - 4}' text-anchor='middle' font-size='12'>predicted "
        f"({_fmt(x0)} to {_fmt(x1)})</text>"
        f"<text x='12' y='{height / 2}' font-size='12' transform='rotate(-90 12 {height / 2})' "
        f"text-anchor='middle'>residual (predicted - true, +/-{_fmt(bound)})</text></svg>"
    )


def _residual_sections(residuals: dict[str, Any]) -> list[str]:
    quantiles = residuals.get("quantiles") or {}
    return [
        f"<h3>Residuals (predicted - true): mean {_fmt(residuals.get('mean'))}, "
        f"std {_fmt(residuals.get('std'))}</h3>",
        _table(list(quantiles), [list(quantiles.values())]) if quantiles else "",
        residual_plot_svg(residuals.get("sample") or []),
        "<h3>Mean residual by decile of the predicted value</h3>",
        _table(
            ["predicted from", "to", "rows", "mean predicted", "mean true", "mean residual"],
            [
                [
                    b.get("lower"),
                    b.get("upper"),
                    b.get("rows"),
                    b.get("mean_predicted"),
                    b.get("mean_actual"),
                    b.get("mean_residual"),
                ]
                for b in residuals.get("by_predicted") or []
            ],
        ),
    ]


# --- sections: each returns the section's inner HTML, or None when it does not apply to this report ---------


def _decision_section(report: dict[str, Any]) -> str:
    decision = report.get("decision")
    if not decision:
        return "<div class='banner pending'><b>Decision pending</b>: the gate has not run.</div>"
    passed = bool(decision.get("passed"))
    candidate = html.escape(str(decision.get("candidate", report.get("best"))))
    if passed:
        banner = (
            f"<div class='banner pass'><b>PASSED</b>: candidate <b>{candidate}</b> passed every check "
            "of the gate and may replace the champion.</div>"
        )
    else:
        reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in decision.get("reasons") or [])
        banner = (
            f"<div class='banner fail'><b>NOT PASSED</b>: candidate <b>{candidate}</b> does not replace the "
            f"champion.{f'<ul>{reasons}</ul>' if reasons else ''}</div>"
        )
    rows, classes = [], []
    for check in decision.get("checks") or []:
        interval = check.get("interval") or {}
        if check.get("skipped"):
            verdict, cls = "skipped", "skipped"
        elif check.get("passed"):
            verdict, cls = "passed", ""
        else:
            verdict, cls = _Raw("<b>FAILED</b>"), "failed"
        rows.append(
            [
                check.get("name"),
                check.get("kind"),
                check.get("metric"),
                check.get("value"),
                check.get("threshold"),
                check.get("baseline"),
                _interval(
                    interval.get("low"),
                    interval.get("high"),
                    interval.get("confidence"),
                    interval.get("resamples"),
                ),
                verdict,
                check.get("reason"),
            ]
        )
        classes.append(cls)
    primary = str(decision.get("primary_metric"))
    summary = (
        f"<p>Primary metric {html.escape(primary)} ({direction_words(primary)[0]} is better): candidate "
        f"{_fmt(decision.get('candidate_value'))}, champion {_fmt(decision.get('champion_value'))}"
        + (
            f" (version {html.escape(str(decision['champion_version']))})"
            if decision.get("champion_version") is not None
            else ""
        )
        + ".</p>"
    )
    table = (
        _table(
            ["check", "kind", "metric", "value", "threshold", "baseline", "interval", "verdict", "reason"],
            rows,
            classes,
        )
        if rows
        else _note("The decision lists no checks.")
    )
    return banner + summary + table


def _metric_names(blocks: list[dict[str, Any] | None]) -> list[str]:
    names: list[str] = []
    for block in blocks:
        for name in block or {}:
            if name not in names:
                names.append(name)
    return names


def _models_section(report: dict[str, Any]) -> str:
    candidates = report.get("candidates") or {}
    champion = report.get("champion")
    best = report.get("best")
    metric_names = _metric_names([c.get("metrics") for c in candidates.values()])
    rows, classes = [], []
    for name, c in candidates.items():
        rows.append(
            [
                name + (" (best)" if name == best else ""),
                *[(c.get("metrics") or {}).get(m) for m in metric_names],
            ]
        )
        classes.append("best" if name == best else "")
    if champion:
        rows.append(
            [
                f"champion v{champion.get('version')} ({champion.get('candidate')})",
                *[(champion.get("metrics") or {}).get(m) for m in metric_names],
            ]
        )
        classes.append("champion")
    selected_on = report.get("selected_on")
    parts = [
        f"<p>Best candidate by {html.escape(str(report.get('primary_metric')))}: "
        f"<b>{html.escape(str(best))}</b>"
        + (f", selected on the {html.escape(str(selected_on))} set" if selected_on else "")
        + ".</p>",
        "<h3>Holdout metrics</h3>",
        _table(["model", *metric_names], rows, classes) if rows else _note("No candidates in this report."),
    ]
    validation = {
        n: c.get("validation_metrics") for n, c in candidates.items() if c.get("validation_metrics")
    }
    if validation:
        names = _metric_names(list(validation.values()))
        parts += [
            "<h3>Validation metrics</h3>",
            _table(
                ["model", *names],
                [
                    [n + (" (best)" if n == best else ""), *[v.get(m) for m in names]]
                    for n, v in validation.items()
                ],
            ),
        ]
    thresholds = {n: c for n, c in candidates.items() if c.get("decision_threshold") is not None}
    if thresholds:
        parts += [
            "<h3>Decision thresholds</h3>",
            _table(
                ["model", "threshold", "how it was chosen"],
                [
                    [
                        n + (" (best)" if n == best else ""),
                        c.get("decision_threshold"),
                        c.get("threshold_source"),
                    ]
                    for n, c in thresholds.items()
                ],
            ),
        ]
    if not champion:
        parts.append(_note("No champion yet: the candidate is compared with absolute thresholds only."))
    elif champion.get("error"):
        parts.append(
            f"<p class='warn'><b>Champion could not be scored:</b> {html.escape(str(champion['error']))}</p>"
        )
    return "".join(parts)


def _change_reading(metric: str, low: float | None, high: float | None, min_delta: float | None) -> str:
    """The paired interval read against zero and ``min_delta``, in the metric's direction."""
    reading = change_reading(low, high, min_delta or 0.0)
    _, worse = direction_words(metric)
    if reading is None:
        return "n/a"
    if reading == WORSE:
        return f"worse than the champion (a {worse} {metric}): the whole interval lies below zero"
    if reading == CLEARS:
        return "better than the champion by at least min_delta"
    if low is not None and low > 0:
        return "within the noise: better, but not shown to beat the champion by min_delta"
    return "within the noise: no clear difference, not shown to beat the champion by min_delta"


def _comparison_section(report: dict[str, Any]) -> str:
    comparison = report.get("comparison")
    if not comparison:
        return _note("No paired comparison with a champion in this report (no champion, or an older report).")
    rows, labels, diffs, lows, highs, deltas = [], [], [], [], [], []
    for metric, c in comparison.items():
        low, high, min_delta = number(c.get("low")), number(c.get("high")), number(c.get("min_delta"))
        reading = _change_reading(str(metric), low, high, min_delta)
        better, _ = direction_words(str(metric))
        rows.append(
            [
                f"{metric} ({better} is better)",
                c.get("candidate"),
                c.get("champion"),
                c.get("difference"),
                _interval(low, high, c.get("confidence")),
                c.get("min_delta"),
                reading,
                c.get("method"),
                c.get("resamples"),
                c.get("rows"),
            ]
        )
        labels.append(str(metric))
        diffs.append(c.get("difference"))
        lows.append(low)
        highs.append(high)
        if min_delta is not None and min_delta not in deltas:
            deltas.append(min_delta)
    references = [{"value": 0.0, "name": "no difference", "color": "#333"}]
    references += [{"value": d, "name": f"min_delta {plots.short(d)}", "color": "#d62728"} for d in deltas]
    return (
        "<p>Difference = candidate - champion in each metric's better direction: positive is an improvement. "
        "Intervals are paired bootstrap intervals on the same holdout rows, resampling whole clusters of rows "
        "(the events' dates unless gate.significance.cluster_by says otherwise).</p>"
        + _table(
            [
                "metric",
                "candidate",
                "champion",
                "difference",
                "interval",
                "min_delta",
                "reading",
                "method",
                "resamples",
                "rows",
            ],
            rows,
        )
        + plots.hbar_chart(
            "comparison",
            "difference candidate minus champion per metric, with intervals",
            labels,
            diffs,
            low=lows,
            high=highs,
            name="difference",
            value_label="difference (positive = candidate better)",
            references=references,
        )
    )


def _curves_section(report: dict[str, Any]) -> str | None:
    curves = report.get("curves")
    if report.get("task") == "regression" and not curves:
        return None
    if not curves:
        return _note("No curves in this report (an older report).")
    roc_series, pr_series, base_rate = [], [], None
    rows = []
    for index, (label, c) in enumerate(curves.items()):
        color = _model_color(label, index)
        roc, pr = c.get("roc") or {}, c.get("pr") or {}
        roc_series.append(
            {
                "name": f"{label} (AUC {_fmt(roc.get('auc'))})",
                "x": roc.get("fpr"),
                "y": roc.get("tpr"),
                "color": color,
            }
        )
        pr_series.append(
            {
                "name": f"{label} (AP {_fmt(pr.get('average_precision'))})",
                "x": pr.get("recall"),
                "y": pr.get("precision"),
                "color": color,
            }
        )
        base_rate = base_rate if base_rate is not None else number(pr.get("base_rate"))
        rows.append([label, roc.get("auc"), pr.get("average_precision"), pr.get("base_rate")])
    references = (
        []
        if base_rate is None
        else [{"name": f"base rate {base_rate:.3f}", "x": [0, 1], "y": [base_rate] * 2}]
    )
    return (
        _table(["model", "ROC AUC", "average precision", "base rate"], rows)
        + "<div class='plots'>"
        + plots.line_chart(
            "roc",
            "ROC curves: true positive rate against false positive rate",
            roc_series,
            x_label="false positive rate",
            y_label="true positive rate",
            x_range=(0.0, 1.0),
            y_range=(0.0, 1.0),
            references=[{"name": "chance", "x": [0, 1], "y": [0, 1]}],
        )
        + plots.line_chart(
            "pr",
            "precision-recall curves",
            pr_series,
            x_label="recall",
            y_label="precision",
            x_range=(0.0, 1.0),
            y_range=(0.0, 1.0),
            references=references,
        )
        + "</div>"
    )


def _bin_label(lower: Any, upper: Any) -> str:
    lo, hi = number(lower), number(upper)
    return f"{'n/a' if lo is None else f'{lo:.1f}'}-{'n/a' if hi is None else f'{hi:.1f}'}"


def _calibration_bins_table(calibration: dict[str, Any]) -> str:
    return _table(
        ["bin", "rows", "mean predicted", "observed rate"],
        [
            [
                _bin_label(b.get("lower"), b.get("upper")),
                b.get("rows"),
                b.get("mean_predicted"),
                b.get("observed_rate"),
            ]
            for b in calibration.get("bins") or []
        ],
    )


def _calibration_section(report: dict[str, Any]) -> str | None:
    explanation = report.get("explanation") or {}
    calibration = explanation.get("calibration")
    champion = explanation.get("calibration_champion")
    if calibration is None and champion is None:
        return None
    series = []
    for name, block, color in (
        (f"{report.get('best')} (candidate)", calibration, CANDIDATE),
        ("champion", champion, CHAMPION),
    ):
        if block is None:
            continue
        bins = [b for b in block.get("bins") or [] if b.get("rows")]
        series.append(
            {
                "name": f"{name}, ECE {_fmt(block.get('ece'))}",
                "x": [b.get("mean_predicted") for b in bins],
                "y": [b.get("observed_rate") for b in bins],
                "color": color,
                "markers": True,
            }
        )
    parts = [
        "<p>Each point is a bin of predicted probability: a calibrated model sits on the diagonal. "
        "ECE = expected calibration error (row-weighted mean distance from the diagonal).</p>",
        plots.line_chart(
            "calibration",
            "reliability diagram: observed positive rate against mean predicted probability",
            series,
            x_label="mean predicted probability",
            y_label="observed positive rate",
            x_range=(0.0, 1.0),
            y_range=(0.0, 1.0),
            references=[{"name": "perfectly calibrated", "x": [0, 1], "y": [0, 1]}],
        ),
    ]
    if calibration is not None:
        parts += [
            f"<h3>Candidate (ECE {_fmt(calibration.get('ece'))})</h3>",
            _calibration_bins_table(calibration),
        ]
    if champion is not None:
        parts += [f"<h3>Champion (ECE {_fmt(champion.get('ece'))})</h3>", _calibration_bins_table(champion)]
    return "".join(parts)


def _importance_section(report: dict[str, Any]) -> str:
    importance = (report.get("explanation") or {}).get("feature_importance")
    if not importance:
        return _note("No feature importance in this report.")
    features = importance.get("features") or []
    values = [number(f.get("importance")) for f in features]
    stds = [number(f.get("std")) for f in features]
    low = [None if v is None or s is None else v - s for v, s in zip(values, stds, strict=True)]
    high = [None if v is None or s is None else v + s for v, s in zip(values, stds, strict=True)]
    return (
        f"<p>{html.escape(str(importance.get('method', 'permutation')))} importance: the drop in "
        f"{html.escape(str(importance.get('metric')))} when a feature's values are shuffled (whiskers: +/- one "
        "standard deviation over repeats). Near zero or negative: the model does not rely on it.</p>"
        + plots.hbar_chart(
            "importance",
            "feature importance with standard deviation",
            [str(f.get("feature")) for f in features],
            values,
            low=low,
            high=high,
            name="importance",
            value_label=f"drop in {importance.get('metric')}",
            references=[{"value": 0.0, "name": "no effect", "color": "#333"}],
        )
        + _table(
            ["feature", "importance", "std"],
            [[f.get("feature"), f.get("importance"), f.get("std")] for f in features],
        )
    )


def _shap_section(report: dict[str, Any]) -> str | None:
    shap = (report.get("explanation") or {}).get("shap")
    if not shap:
        return None
    features = (shap.get("features") or [])[:15]
    return (
        f"<p>{html.escape(str(shap.get('method')))}: each dot is one of {_fmt(shap.get('rows'))} holdout rows, "
        "placed at how much the feature moved that row's output away from the average "
        f"({_fmt(shap.get('background_rows'))} background rows); features by mean absolute contribution. "
        "One-hot columns are summed back to their feature; a categorical feature's colour follows its code, not "
        f"a magnitude. Additivity error {_fmt(shap.get('additivity_error'))}.</p>"
        + plots.beeswarm(
            "shap",
            "SHAP summary: contribution of each feature per row",
            [(str(f.get("feature")), f.get("points") or []) for f in features],
        )
        + _table(["feature", "mean |SHAP|"], [[f.get("feature"), f.get("mean_abs")] for f in features])
    )


def _counterfactuals_section(report: dict[str, Any]) -> str | None:
    found = (report.get("explanation") or {}).get("counterfactuals")
    if not found:
        return None
    rows = []
    for entry in found.get("rows") or []:
        head = [entry.get("kind"), entry.get("row"), entry.get("score"), entry.get("label")]
        options = entry.get("counterfactuals") or []
        if entry.get("error") or not options:
            rows.append([*head, entry.get("error") or "none found", None])
        for option in options:
            changes = "; ".join(
                f"{name}: {_fmt(change[0])} \u2192 {_fmt(change[1])}"
                for name, change in (option.get("changes") or {}).items()
            )
            rows.append([*head, changes, option.get("score")])
    return (
        f"<p>{html.escape(str(found.get('method')))}, decision threshold {_fmt(found.get('threshold'))}: for the "
        "highest-scored holdout rows and the most wrongly scored ones, the smallest changes the search found that "
        "turn the decision around. They show what the model responds to, not what would change the outcome.</p>"
        + _table(["kind", "holdout row", "score", "label", "change", "score after"], rows)
    )


def _errors_section(report: dict[str, Any]) -> str:
    explanation = report.get("explanation") or {}
    parts = []
    analysis = explanation.get("error_analysis")
    if analysis:
        cohorts = analysis.get("cohorts") or []
        overall = number(analysis.get("overall_error"))
        # a classification's cohorts hold a share of wrong decisions; a regression's the mean absolute error
        label = "mean absolute error" if report.get("task") == "regression" else "error rate"
        parts += [
            f"<h3>Error cohorts ({html.escape(str(analysis.get('method', '')))})</h3>",
            f"<p>An error is: {html.escape(str(analysis.get('error', 'n/a')))}. Overall {label} "
            f"{_fmt(overall)}; cohorts with the highest {label} first.</p>",
            _table(
                ["cohort", "rows", label, "interval", "vs overall"],
                [
                    [
                        c.get("rule"),
                        c.get("rows"),
                        c.get("error_rate"),
                        _interval(c.get("low"), c.get("high")),
                        _ratio(c.get("error_rate"), overall),
                    ]
                    for c in cohorts
                ],
            ),
            plots.hbar_chart(
                "error_cohorts",
                f"{label} per cohort with intervals, against the overall {label}",
                [str(c.get("rule")) for c in cohorts],
                [c.get("error_rate") for c in cohorts],
                low=[c.get("low") for c in cohorts],
                high=[c.get("high") for c in cohorts],
                color=plots.ALERT,
                name=label,
                value_label=label,
                references=[] if overall is None else [{"value": overall, "name": f"overall {label}"}],
            ),
        ]
    errors = explanation.get("errors") or {}
    cm = errors.get("confusion_matrix")
    if cm is not None:
        keys = ("threshold", "tp", "fp", "tn", "fn", "precision", "recall", "accuracy")
        parts += [
            "<h3>Confusion matrix at the decision threshold</h3>",
            _table(list(keys), [[cm.get(k) for k in keys]]),
            "<table class='cm'><tr><th></th><th>predicted positive</th><th>predicted negative</th></tr>"
            f"<tr><th>actual positive</th><td>{_fmt(cm.get('tp'))}</td><td>{_fmt(cm.get('fn'))}</td></tr>"
            f"<tr><th>actual negative</th><td>{_fmt(cm.get('fp'))}</td><td>{_fmt(cm.get('tn'))}</td></tr></table>",
        ]
    if explanation.get("residuals"):
        parts += _residual_sections(explanation["residuals"])
    worst = errors.get("worst_slices")
    if worst is not None:
        metric = str(report.get("primary_metric"))
        parts += [
            f"<h3>Worst slices (at least {_fmt(errors.get('min_slice_rows'))} rows)</h3>",
            _table(
                ["column", "value", "rows", metric],
                [[w.get("column"), w.get("value"), w.get("rows"), w.get(metric)] for w in worst],
            ),
        ]
    return "".join(parts) or _note("No error analysis in this report.")


def _fairness_attribute(attribute: str, entry: dict[str, Any]) -> str:
    metric = str(entry.get("metric"))
    candidate = entry.get("candidate") or {}
    champion = entry.get("champion") or None
    groups = candidate.get("groups") or []
    champion_groups = {str(g.get("group")): g for g in (champion or {}).get("groups") or []}
    headers = ["group", "rows", "positives", metric, "interval"]
    if champion:
        headers += [f"champion {metric}"]
    headers += ["selection rate", "TPR", "FPR", "gated", "note"]
    rows, classes = [], []
    for g in groups:
        name = str(g.get("group"))
        worst = name == candidate.get("worst")
        row = [
            _Raw(f"<b>{html.escape(name)}</b> (worst)") if worst else name,
            g.get("rows"),
            g.get("positives"),
            g.get("value"),
            _interval(g.get("low"), g.get("high")),
        ]
        if champion:
            row.append((champion_groups.get(name) or {}).get("value"))
        row += [
            g.get("selection_rate"),
            g.get("tpr"),
            g.get("fpr"),
            ("on its interval" if g.get("gated_on") == "interval" else "yes")
            if g.get("gated")
            else _Raw("<b>no: flagged</b>"),
            g.get("note"),
        ]
        rows.append(row)
        classes.append("flagged" if not g.get("gated") else ("worst" if worst else ""))

    def summary(who: str, block: dict[str, Any]) -> str:
        return (
            f"<li>{who}: worst group <b>{_fmt(block.get('worst'))}</b>, best {_fmt(block.get('best'))}, "
            f"gap {_fmt(number(block.get('gap')))}, ratio {_fmt(number(block.get('ratio')))}</li>"
        )

    parts = [
        f"<h3 id='fairness-{html.escape(attribute, quote=True)}'>{html.escape(attribute)} "
        f"({html.escape(metric)} per group)</h3>",
        "<ul>"
        + summary("Candidate", candidate)
        + (summary("Champion", champion) if champion else "")
        + "</ul>",
        _table(headers, rows, classes),
        "<p class='note'>Groups under the minimum counts are judged on their interval (they fail only when even "
        "its favourable end fails); flagged groups are too small to have any interval: shown, not judged, and "
        "named in the decision.</p>"
        if any(not g.get("gated") for g in groups)
        else "",
    ]
    labels = [str(g.get("group")) + ("" if g.get("gated") else " (flagged)") for g in groups]
    series = [
        {
            "name": "candidate",
            "values": [g.get("value") for g in groups],
            "low": [g.get("low") for g in groups],
            "high": [g.get("high") for g in groups],
            "color": CANDIDATE,
        }
    ]
    if champion:
        matched = [champion_groups.get(str(g.get("group"))) or {} for g in groups]
        series.append(
            {
                "name": "champion",
                "values": [g.get("value") for g in matched],
                "low": [g.get("low") for g in matched],
                "high": [g.get("high") for g in matched],
                "color": CHAMPION,
            }
        )
    parts.append(
        plots.grouped_hbar_chart(
            f"fairness-{attribute}",
            f"{metric} per {attribute} group with intervals",
            labels,
            series,
            value_label=metric,
        )
    )
    rate_keys = [("selection_rate", "selection rate"), ("tpr", "TPR"), ("fpr", "FPR")]
    present = [(k, n) for k, n in rate_keys if any(number(g.get(k)) is not None for g in groups)]
    if present:
        parts.append(
            plots.grouped_hbar_chart(
                f"fairness-rates-{attribute}",
                f"selection rate, true and false positive rates per {attribute} group (candidate)",
                labels,
                [
                    {"name": n, "values": [g.get(k) for g in groups], "color": PALETTE[i]}
                    for i, (k, n) in enumerate(present)
                ],
                value_label="rate (candidate)",
                domain=(0.0, 1.0),
                bar_height=9,
            )
        )
    return "".join(parts)


def _fairness_section(report: dict[str, Any]) -> str:
    fairness = report.get("fairness")
    if not fairness:
        return _note("No per-group fairness analysis in this report.")
    return "".join(_fairness_attribute(str(a), e or {}) for a, e in fairness.items())


def _slices_section(report: dict[str, Any]) -> str:
    slices = (report.get("explanation") or {}).get("slices") or {}
    if not slices:
        return _note("No slices configured.")
    metric_names = _metric_names([c.get("metrics") for c in (report.get("candidates") or {}).values()])
    parts = []
    for column, values in slices.items():
        first = next(iter(values.values()), {}) or {}
        parts.append(f"<h3>{html.escape(str(column))}</h3>")
        parts.append(
            _table(
                ["value", "rows", "positives" if "positives" in first else "mean label", *metric_names],
                [
                    [
                        v,
                        e.get("rows"),
                        e.get("positives", e.get("label_mean")),
                        *[e.get(m) for m in metric_names],
                    ]
                    for v, e in values.items()
                ],
            )
        )
    return "".join(parts)


def _explorer_section(report: dict[str, Any]) -> str:
    explorer = report.get("data_explorer")
    features = (explorer or {}).get("features") or []
    if not features:
        return _note("No data explorer in this report.")
    rows, classes, charts = [], [], []
    for f in features:
        psi = number(f.get("psi"))
        flagged = psi is not None and psi >= PSI_FLAG
        rows.append(
            [
                f.get("feature"),
                f.get("kind"),
                _pct(f.get("train_missing")),
                _pct(f.get("holdout_missing")),
                psi,
                _Raw("<b>shifted</b>") if flagged else "",
            ]
        )
        classes.append("flagged" if flagged else "")
        train, holdout = f.get("train") or {}, f.get("holdout") or {}
        bins = [str(b) for b in (train.get("bins") or holdout.get("bins") or [])]
        holdout_shares = holdout.get("shares") or []
        if holdout.get("bins") and [str(b) for b in holdout["bins"]] != bins:
            lookup = dict(zip((str(b) for b in holdout["bins"]), holdout_shares, strict=False))
            holdout_shares = [lookup.get(b) for b in bins]
        name = str(f.get("feature"))
        charts.append(
            "<figure>"
            + plots.histogram_compare(
                f"explorer-{name}",
                f"distribution of {name}: train against holdout",
                bins,
                [
                    {"name": "train", "shares": train.get("shares"), "color": CANDIDATE},
                    {"name": "holdout", "shares": holdout_shares, "color": CHAMPION},
                ],
            )
            + f"<figcaption>{html.escape(name)} ({html.escape(str(f.get('kind')))}), PSI {_fmt(psi)}"
            + (" <b>shifted</b>" if flagged else "")
            + "</figcaption></figure>"
        )
    return (
        f"<p>Train against holdout, per feature. PSI = population stability index; at or above {PSI_FLAG} "
        "the distribution has shifted (flagged).</p>"
        + _table(["feature", "kind", "missing (train)", "missing (holdout)", "PSI", "flag"], rows, classes)
        + "<div class='plots'>"
        + "".join(charts)
        + "</div>"
    )


_STYLE = (
    "body{font-family:sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222;line-height:1.4}"
    "h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}"
    "table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#eee}"
    "td:first-child,td.t{text-align:left}"
    "tr.failed td{background:#fde2e1}tr.flagged td{background:#fff4d6}tr.skipped td{color:#777}"
    "tr.best td{font-weight:bold}tr.champion td{background:#fff1e3}tr.worst td{background:#f3f3f3}"
    ".banner{padding:.8em 1em;border-radius:4px;font-size:1.15em;margin:.5em 0}"
    ".banner ul{font-size:.85em;margin:.4em 0 0}"
    ".pass{background:#e6f4ea;border-left:8px solid #1e8e3e}"
    ".fail{background:#fde2e1;border-left:8px solid #d62728}"
    ".pending{background:#eee;border-left:8px solid #888}"
    ".note{color:#555;font-style:italic}.warn{color:#a00}"
    "nav.toc{background:#f6f6f6;padding:.5em 1em;border-radius:4px}"
    "nav.toc ol{margin:.2em 0;columns:2}nav.toc a{text-decoration:none}"
    ".plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
    "figure{margin:0}figcaption{font-size:.85em;text-align:center}"
    "svg.plot{display:block;margin:.5em 0}"
    "table.cm td{min-width:6em}"
)


def _parts_section(report: dict[str, Any]) -> str | None:
    """What the report step ran, in how long, and what it skipped, cut or failed (and why): a missing section
    below is explained here, never silently absent."""
    parts = report.get("parts")
    if not parts:
        return None
    rows = [
        [name, entry.get("status"), entry.get("seconds"), entry.get("budget_s"), entry.get("note") or ""]
        for name, entry in parts.items()
    ]
    classes = ["" if str(entry.get("status")) == "done" else "flagged" for entry in parts.values()]
    return (
        "<p>The explanations are computed after the gate and never change its decision; a part that failed, was "
        "skipped or was cut to its time budget is listed with the reason.</p>"
        + _table(["part", "status", "seconds", "budget (s)", "note"], rows, classes)
    )


def render_report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page for the evaluation report (see the module docstring)."""
    usecase = html.escape(str(report.get("usecase", "")))
    logical_date = html.escape(str(report.get("logical_date", "")))
    holdout = report.get("holdout") or {}
    rate = (
        f"positive rate {_fmt(holdout.get('positive_rate'))}"
        if "positive_rate" in holdout
        else f"mean label {_fmt(holdout.get('label_mean'))}"
    )
    intro = (
        f"<p>Task: {html.escape(str(report.get('task', 'n/a')))}. Holdout [{_fmt(holdout.get('start'))}, "
        f"{_fmt(holdout.get('end_exclusive'))}): {_fmt(holdout.get('rows'))} rows, {rate}.</p>"
    )
    sections: list[tuple[str, str, str | None]] = [
        ("decision", "Gate decision", _decision_section(report)),
        ("parts", "Report parts", _parts_section(report)),
        ("models", "Models", _models_section(report)),
        ("comparison", "Comparison with the champion", _comparison_section(report)),
        ("curves", "ROC and precision-recall curves", _curves_section(report)),
        ("calibration", "Calibration", _calibration_section(report)),
        ("importance", "Feature importance", _importance_section(report)),
        ("shap", "SHAP summary", _shap_section(report)),
        ("errors", "Error analysis", _errors_section(report)),
        ("counterfactuals", "Counterfactuals", _counterfactuals_section(report)),
        ("fairness", "Fairness", _fairness_section(report)),
        ("slices", "Slices", _slices_section(report)),
        ("explorer", "Data explorer", _explorer_section(report)),
    ]
    shown = [(anchor, title, body) for anchor, title, body in sections if body is not None]
    toc = (
        "<nav class='toc'><b>Contents</b><ol>"
        + "".join(f"<li><a href='#{anchor}'>{html.escape(title)}</a></li>" for anchor, title, _ in shown)
        + "</ol></nav>"
    )
    body = "".join(
        f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{content}</section>"
        for anchor, title, content in shown
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Evaluation {usecase} {logical_date}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Evaluation: {usecase} on {logical_date}</h1>{intro}{toc}{body}</body></html>"
    )
