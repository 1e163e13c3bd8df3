"""Small inline-SVG charts for the evaluation report: pure Python, no scripts, no external resources.

Each function returns one ``<svg>`` string carrying ``data-plot="<id>"``, ``role="img"``, an ``aria-label`` and a
``<title>``, sized by its ``viewBox`` so it scales down with the page. Values that are None or not finite are left
out of a plot rather than failing it. Colours are shared: candidate blue, champion orange.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

CANDIDATE = "#1f77b4"
CHAMPION = "#ff7f0e"
REFERENCE = "#888888"
ALERT = "#d62728"
# further series (other candidates, rates): none of them blue or orange
PALETTE = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]

FONT = "font-family='sans-serif' font-size='11'"


def esc(text: Any) -> str:
    """``text`` escaped for SVG/HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (None, NaN, infinities and non-numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def short(value: float | None, digits: int = 3) -> str:
    """A compact label for a tick or a value."""
    if value is None:
        return "n/a"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2g}"
    return f"{value:.{digits}g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _domain(values: Sequence[float | None], *, include: Sequence[float] = ()) -> tuple[float, float]:
    found = [v for v in (*values, *include) if v is not None]
    if not found:
        return 0.0, 1.0
    low, high = min(found), max(found)
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - (pad if low < 0 or low - pad >= 0 else 0.0), high + pad


def _open(plot_id: str, label: str, width: int, height: int) -> str:
    return (
        f"<svg viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img' "
        f"aria-label='{esc(label)}' data-plot='{esc(plot_id)}' class='plot' "
        f"style='max-width:100%;height:auto'><title>{esc(label)}</title>"
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='#fff'/>"
    )


def _legend(entries: Sequence[tuple[str, str, str]], x: float, y: float, width: float) -> tuple[str, float]:
    """Legend swatches (name, colour, dash) laid out in rows from (x, y); returns the SVG and its height."""
    parts, cx, cy = [], x, y
    for name, color, dash in entries:
        item_width = 26 + 6.2 * len(name)
        if cx > x and cx + item_width > x + width:
            cx, cy = x, cy + 16
        dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
        parts.append(
            f"<line x1='{cx:.1f}' y1='{cy:.1f}' x2='{cx + 18:.1f}' y2='{cy:.1f}' stroke='{color}' "
            f"stroke-width='3'{dash_attr}/>"
            f"<text x='{cx + 22:.1f}' y='{cy + 4:.1f}' {FONT}>{esc(name)}</text>"
        )
        cx += item_width + 12
    return "".join(parts), (cy - y + 16 if entries else 0.0)


def _thin(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def line_chart(
    plot_id: str,
    label: str,
    series: Sequence[dict[str, Any]],
    *,
    x_label: str = "",
    y_label: str = "",
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    references: Sequence[dict[str, Any]] = (),
    width: int = 480,
    height: int = 360,
    max_points: int = 400,
) -> str:
    """Several lines (or point series) on shared axes with a legend.

    ``series``: ``{"name", "x": [...], "y": [...], "color"?, "markers"?: bool, "dash"?}``; pairs with a missing
    value are skipped and long series are thinned to ``max_points``. ``references``: dashed grey segments
    ``{"name", "x": [x0, x1], "y": [y0, y1]}`` (a diagonal, a base rate) that also appear in the legend.
    """
    cleaned = []
    for index, s in enumerate(series):
        pairs = [
            (x, y)
            for x, y in zip(
                (number(v) for v in s.get("x") or []), (number(v) for v in s.get("y") or []), strict=False
            )
            if x is not None and y is not None
        ]
        color = s.get("color") or PALETTE[index % len(PALETTE)]
        cleaned.append((str(s.get("name", f"series {index + 1}")), color, s, _thin(pairs, max_points)))
    refs = [
        (str(r.get("name", "")), [number(v) for v in r["x"]], [number(v) for v in r["y"]]) for r in references
    ]
    all_x = [x for *_, pts in cleaned for x, _ in pts] + [v for _, xs, _ in refs for v in xs]
    all_y = [y for *_, pts in cleaned for _, y in pts] + [v for _, _, ys in refs for v in ys]
    x0, x1 = x_range or _domain(all_x)
    y0, y1 = y_range or _domain(all_y)
    entries = [(n, c, s.get("dash", "")) for n, c, s, _ in cleaned] + [
        (n, REFERENCE, "4 3") for n, _, _ in refs
    ]
    legend, legend_height = _legend(entries, 50, 14, width - 60)
    left, right, top, bottom = 52, width - 14, 14 + legend_height + 6, height - 40
    if bottom - top < 60:
        height += int(60 - (bottom - top))
        bottom = height - 40

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / ((x1 - x0) or 1.0) * (right - left),
            bottom - (y - y0) / ((y1 - y0) or 1.0) * (bottom - top),
        )

    parts = [_open(plot_id, label, width, height), legend]
    parts.append(_axes(left, right, top, bottom, (x0, x1), (y0, y1), x_label, y_label, at))
    for name, xs, ys in refs:
        if None in xs or None in ys:
            continue
        (ax, ay), (bx, by) = at(xs[0], ys[0]), at(xs[1], ys[1])
        parts.append(
            f"<line x1='{ax:.1f}' y1='{ay:.1f}' x2='{bx:.1f}' y2='{by:.1f}' stroke='{REFERENCE}' "
            f"stroke-dasharray='4 3'><title>{esc(name)}</title></line>"
        )
    if not any(pts for *_, pts in cleaned):
        parts.append(_no_data(width, (top + bottom) / 2))
    for name, color, s, pts in cleaned:
        coords = [at(x, y) for x, y in pts]
        if len(coords) > 1:
            dash = f" stroke-dasharray='{s['dash']}'" if s.get("dash") else ""
            path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
            parts.append(
                f"<polyline points='{path}' fill='none' stroke='{color}' stroke-width='2'{dash}>"
                f"<title>{esc(name)}</title></polyline>"
            )
        if s.get("markers") or len(coords) == 1:
            parts.extend(
                f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='3.5' fill='{color}'>"
                f"<title>{esc(name)}: ({short(x)}, {short(y)})</title></circle>"
                for (cx, cy), (x, y) in zip(coords, pts, strict=True)
            )
    parts.append("</svg>")
    return "".join(parts)


def _no_data(width: float, y: float) -> str:
    return f"<text x='{width / 2:.1f}' y='{y:.1f}' text-anchor='middle' {FONT} fill='#666'>no data</text>"


def _axes(
    left: float,
    right: float,
    top: float,
    bottom: float,
    x_domain: tuple[float, float],
    y_domain: tuple[float, float],
    x_label: str,
    y_label: str,
    at: Any,
) -> str:
    parts = [
        f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='#333'/>",
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='#333'/>",
    ]
    for tick in nice_ticks(*x_domain):
        x = at(tick, y_domain[0])[0]
        parts.append(
            f"<line x1='{x:.1f}' y1='{bottom}' x2='{x:.1f}' y2='{bottom + 4}' stroke='#333'/>"
            f"<text x='{x:.1f}' y='{bottom + 15}' text-anchor='middle' {FONT}>{short(tick)}</text>"
        )
    for tick in nice_ticks(*y_domain):
        y = at(x_domain[0], tick)[1]
        parts.append(
            f"<line x1='{left}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{left - 5}' y='{y + 4:.1f}' text-anchor='end' {FONT}>{short(tick)}</text>"
        )
    parts.append(
        f"<text x='{(left + right) / 2:.1f}' y='{bottom + 32}' text-anchor='middle' {FONT}>{esc(x_label)}</text>"
        f"<text x='12' y='{(top + bottom) / 2:.1f}' text-anchor='middle' {FONT} "
        f"transform='rotate(-90 12 {(top + bottom) / 2:.1f})'>{esc(y_label)}</text>"
    )
    return "".join(parts)


def grouped_hbar_chart(
    plot_id: str,
    label: str,
    categories: Sequence[str],
    series: Sequence[dict[str, Any]],
    *,
    value_label: str = "",
    references: Sequence[dict[str, Any]] = (),
    domain: tuple[float, float] | None = None,
    width: int = 640,
    bar_height: int = 12,
    label_width: int | None = None,
) -> str:
    """Horizontal bars, one group per category and one bar per series in each group, with optional intervals.

    ``series``: ``{"name", "values": [...], "low"?: [...], "high"?: [...], "color"?}`` aligned with
    ``categories`` (None leaves a bar out and writes "n/a"). ``references``: vertical lines
    ``{"value", "name", "color"?}`` (zero, a threshold, an overall rate). ``domain`` fixes the value axis.
    """
    series = list(series)
    n = len(categories)
    values = [[number(v) for v in s.get("values") or []] + [None] * n for s in series]
    lows = [[number(v) for v in s.get("low") or []] + [None] * n for s in series]
    highs = [[number(v) for v in s.get("high") or []] + [None] * n for s in series]
    ref_values = [number(r.get("value")) for r in references]
    if domain is None:
        found = [v for rows in (values, lows, highs) for row in rows for v in row[:n]]
        domain = _domain(found, include=[0.0, *(v for v in ref_values if v is not None)])
    d0, d1 = domain
    longest = max((len(str(c)) for c in categories), default=4)
    label_width = label_width or int(min(max(60, 6.3 * longest + 12), width * 0.4))
    entries = [
        (str(s.get("name", "")), s.get("color") or PALETTE[i % len(PALETTE)], "")
        for i, s in enumerate(series)
    ]
    entries += [(str(r.get("name", "")), r.get("color") or REFERENCE, "4 3") for r in references]
    show_legend = len(series) > 1 or bool(references)
    legend, legend_height = (
        _legend(entries, label_width, 14, width - label_width - 10) if show_legend else ("", 0.0)
    )
    group_height = bar_height * max(len(series), 1) + 8
    left, right = label_width, width - 50
    top = 10 + legend_height + 4
    bottom = top + group_height * max(n, 1)
    height = int(bottom + 38)

    def x_at(value: float) -> float:
        return left + (min(max(value, d0), d1) - d0) / ((d1 - d0) or 1.0) * (right - left)

    parts = [_open(plot_id, label, width, height), legend]
    for tick in nice_ticks(d0, d1):
        x = x_at(tick)
        parts.append(
            f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{bottom}' stroke='#eee'/>"
            f"<text x='{x:.1f}' y='{bottom + 14}' text-anchor='middle' {FONT}>{short(tick)}</text>"
        )
    parts.append(
        f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='#333'/>"
        f"<text x='{(left + right) / 2:.1f}' y='{bottom + 30}' text-anchor='middle' {FONT}>{esc(value_label)}</text>"
    )
    if n == 0:
        parts.append(_no_data(width, (top + bottom) / 2))
    base = x_at(max(d0, min(0.0, d1)))
    for row, category in enumerate(categories):
        y_group = top + row * group_height + 4
        fits = max(int((label_width - 10) / 6.0), 4)
        text = str(category) if len(str(category)) <= fits else str(category)[: fits - 1] + "…"
        parts.append(
            f"<text x='{left - 6}' y='{y_group + group_height / 2:.1f}' text-anchor='end' "
            f"{FONT}><title>{esc(category)}</title>{esc(text)}</text>"
        )
        for k, s in enumerate(series):
            color = s.get("color") or PALETTE[k % len(PALETTE)]
            y = y_group + k * bar_height
            value, low, high = values[k][row], lows[k][row], highs[k][row]
            name = esc(s.get("name", ""))
            if value is None:
                parts.append(
                    f"<text x='{base + 3:.1f}' y='{y + bar_height - 2:.1f}' {FONT} fill='#666'>n/a</text>"
                )
                continue
            x = x_at(value)
            tip = f"{esc(category)} {name}: {short(value, 4)}"
            if low is not None and high is not None:
                tip += f" [{short(low, 4)}, {short(high, 4)}]"
            parts.append(
                f"<rect x='{min(base, x):.1f}' y='{y + 1:.1f}' width='{max(abs(x - base), 1):.1f}' "
                f"height='{bar_height - 2}' fill='{color}' fill-opacity='0.75'><title>{tip}</title></rect>"
            )
            if low is not None and high is not None:
                mid, a, b = y + bar_height / 2, x_at(low), x_at(high)
                parts.append(
                    f"<line x1='{a:.1f}' y1='{mid:.1f}' x2='{b:.1f}' y2='{mid:.1f}' stroke='#222' stroke-width='1.5'/>"
                    f"<line x1='{a:.1f}' y1='{mid - 4:.1f}' x2='{a:.1f}' y2='{mid + 4:.1f}' stroke='#222'/>"
                    f"<line x1='{b:.1f}' y1='{mid - 4:.1f}' x2='{b:.1f}' y2='{mid + 4:.1f}' stroke='#222'/>"
                )
            text_x = max(x, x_at(high) if high is not None else x) + 4
            parts.append(
                f"<text x='{min(text_x, right + 2):.1f}' y='{y + bar_height - 2:.1f}' {FONT} "
                f"fill='#333'>{short(value)}</text>"
            )
    for r, value in zip(references, ref_values, strict=True):
        if value is None:
            continue
        x = x_at(value)
        color = r.get("color") or REFERENCE
        parts.append(
            f"<line x1='{x:.1f}' y1='{top - 2}' x2='{x:.1f}' y2='{bottom}' stroke='{color}' stroke-width='1.5' "
            f"stroke-dasharray='4 3'><title>{esc(r.get('name', ''))}: {short(value, 4)}</title></line>"
        )
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(
    plot_id: str,
    label: str,
    labels: Sequence[str],
    values: Sequence[Any],
    *,
    low: Sequence[Any] | None = None,
    high: Sequence[Any] | None = None,
    color: str = CANDIDATE,
    name: str = "",
    value_label: str = "",
    references: Sequence[dict[str, Any]] = (),
    domain: tuple[float, float] | None = None,
    width: int = 640,
) -> str:
    """One bar per label, with optional intervals [low, high] and vertical reference lines."""
    return grouped_hbar_chart(
        plot_id,
        label,
        labels,
        [{"name": name, "values": values, "low": low, "high": high, "color": color}],
        value_label=value_label,
        references=references,
        domain=domain,
        width=width,
        bar_height=16,
    )


def histogram_compare(
    plot_id: str,
    label: str,
    bins: Sequence[str],
    series: Sequence[dict[str, Any]],
    *,
    y_label: str = "share of rows",
    width: int = 360,
    height: int = 200,
) -> str:
    """Side-by-side vertical bars per bin: the shares of several samples (train against holdout).

    ``series``: ``{"name", "shares": [...], "color"?}`` aligned with ``bins`` (labels as strings).
    """
    bins = [str(b) for b in bins]
    shares = [[number(v) for v in s.get("shares") or []] + [None] * len(bins) for s in series]
    top_value = max((v for row in shares for v in row[: len(bins)] if v is not None), default=0.0)
    y1 = nice_ticks(0.0, top_value or 1.0)[-1]
    y1 = y1 if y1 >= top_value else top_value
    entries = [
        (str(s.get("name", "")), s.get("color") or PALETTE[i % len(PALETTE)], "")
        for i, s in enumerate(series)
    ]
    legend, legend_height = _legend(entries, 44, 12, width - 50)
    rotate = len(bins) > 6 or max((len(b) for b in bins), default=0) * len(bins) * 6 > width - 60
    label_room = min(max((len(b) for b in bins), default=1), 14) * 5.5 + 8 if rotate else 16
    left, right, top = 44, width - 8, 12 + legend_height + 2
    bottom = height - label_room - 4
    if bottom - top < 60:
        height += int(60 - (bottom - top))
        bottom = height - label_room - 4
    parts = [_open(plot_id, label, width, height), legend]
    for tick in nice_ticks(0.0, y1, 4):
        y = bottom - tick / (y1 or 1.0) * (bottom - top)
        parts.append(
            f"<line x1='{left}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{left - 4}' y='{y + 4:.1f}' text-anchor='end' {FONT}>{short(tick)}</text>"
        )
    parts.append(
        f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='#333'/>"
        f"<text x='10' y='{(top + bottom) / 2:.1f}' text-anchor='middle' {FONT} "
        f"transform='rotate(-90 10 {(top + bottom) / 2:.1f})'>{esc(y_label)}</text>"
    )
    if not bins:
        parts.append(_no_data(width, (top + bottom) / 2))
    slot = (right - left) / max(len(bins), 1)
    bar = max((slot - 4) / max(len(series), 1), 1.0)
    for i, b in enumerate(bins):
        x_slot = left + i * slot
        for k, s in enumerate(series):
            value = shares[k][i]
            if value is None:
                continue
            h = value / (y1 or 1.0) * (bottom - top)
            color = s.get("color") or PALETTE[k % len(PALETTE)]
            parts.append(
                f"<rect x='{x_slot + 2 + k * bar:.1f}' y='{bottom - h:.1f}' width='{bar:.1f}' "
                f"height='{max(h, 0.5):.1f}' fill='{color}' fill-opacity='0.75'>"
                f"<title>{esc(b)} {esc(s.get('name', ''))}: {short(value, 4)}</title></rect>"
            )
        cx = x_slot + slot / 2
        text = esc(b if len(b) <= 14 else b[:13] + "…")
        if rotate:
            parts.append(
                f"<text x='{cx:.1f}' y='{bottom + 10}' text-anchor='end' {FONT} "
                f"transform='rotate(-45 {cx:.1f} {bottom + 10})'>{text}</text>"
            )
        else:
            parts.append(f"<text x='{cx:.1f}' y='{bottom + 13}' text-anchor='middle' {FONT}>{text}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _value_color(rank: float | None) -> str:
    """Blue (low feature value) to red (high); grey when the value is missing."""
    if rank is None:
        return "#aaaaaa"
    r = max(0.0, min(1.0, float(rank)))
    return f"rgb({int(30 + 200 * r)},{int(100 - 60 * r)},{int(230 - 200 * r)})"


def beeswarm(
    plot_id: str,
    label: str,
    rows: Sequence[tuple[str, Sequence[Sequence[Any]]]],
    *,
    value_label: str = "SHAP value",
    width: int = 640,
    row_height: int = 22,
) -> str:
    """A SHAP summary plot: one row per feature, one dot per explained row at its contribution (x), coloured by
    the feature's value rank (blue low, red high, grey missing), jittered deterministically within the row."""
    left, right, top = 150, 20, 24
    values = [number(p[0]) for _, points in rows for p in points]
    low, high = _domain(values, include=[0.0])
    height = top + row_height * max(len(rows), 1) + 40
    plot_width = width - left - right

    def x_of(v: float) -> float:
        return left + (v - low) / (high - low or 1.0) * plot_width

    parts = [_open(plot_id, label, width, height)]
    zero = x_of(0.0)
    parts.append(f"<line x1='{zero:.1f}' y1='{top - 6}' x2='{zero:.1f}' y2='{height - 34}' stroke='#333'/>")
    for index, (feature, points) in enumerate(rows):
        middle = top + row_height * index + row_height / 2
        parts.append(
            f"<text x='{left - 6}' y='{middle + 4:.1f}' text-anchor='end' {FONT}>{esc(short_label(feature))}"
            f"<title>{esc(feature)}</title></text>"
        )
        for k, point in enumerate(points):
            v = number(point[0])
            if v is None:
                continue
            jitter = ((k * 7919) % 97) / 96.0 - 0.5
            rank = number(point[1]) if len(point) > 1 else None
            parts.append(
                f"<circle cx='{x_of(v):.1f}' cy='{middle + jitter * (row_height - 8):.1f}' r='2' "
                f"fill='{_value_color(rank)}' fill-opacity='0.75'/>"
            )
    axis = height - 30
    parts.append(f"<line x1='{left}' y1='{axis}' x2='{width - right}' y2='{axis}' stroke='#333'/>")
    for tick in nice_ticks(low, high):
        parts.append(
            f"<text x='{x_of(tick):.1f}' y='{axis + 13}' text-anchor='middle' {FONT}>{esc(short(tick))}</text>"
        )
    parts.append(
        f"<text x='{left + plot_width / 2:.1f}' y='{height - 4}' text-anchor='middle' {FONT}>"
        f"{esc(value_label)} (colour: feature value, blue low to red high, grey missing)</text></svg>"
    )
    return "".join(parts)


def short_label(text: str, limit: int = 22) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
