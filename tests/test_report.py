"""The evaluation report page: every section and plot from a realistic report, self-contained, and rendered.

``sample_report`` builds a report dict the way the evaluate and gate steps write it, from seeded synthetic
predictions (curves from scikit-learn, calibration, confusion and residuals from ``pipelines.evaluation.metrics``). The
browser test opens the written page in Debian's headless Chromium through Playwright (no browser download) and
checks that nothing but the page itself is requested and that every plot is laid out.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.evaluation import metrics as quality
from pipelines.evaluation.report import render_report_html, residual_plot_svg

FAILED_GROUP = "LGA"  # the origin group whose recall fails the fairness check
FLAGGED_GROUP = "OO"  # a carrier group too small to be gated
CHROMIUM_MISSING = (
    "Debian's chromium is needed: apt-get install chromium (make test runs scripts/ensure-chromium.sh)"
)


def _interval(rng: np.random.Generator, value: float, width: float) -> tuple[float, float]:
    half = width * (0.8 + 0.4 * rng.random())
    return value - half, value + half


def _fairness_groups(
    rng: np.random.Generator, groups: dict[str, tuple[int, float]], *, gated_min_rows: int = 50
) -> dict[str, Any]:
    out = []
    for name, (rows, value) in groups.items():
        low, high = _interval(rng, value, 1.5 / np.sqrt(rows))
        out.append(
            {
                "group": name,
                "rows": rows,
                "positives": int(rows * 0.3),
                "value": value,
                "low": max(low, 0.0),
                "high": min(high, 1.0),
                "selection_rate": 0.2 + 0.1 * rng.random(),
                "tpr": value,
                "fpr": 0.05 + 0.1 * rng.random(),
                "gated": rows >= gated_min_rows,
                "note": ""
                if rows >= gated_min_rows
                else f"fewer than {gated_min_rows} rows: shown, not gated",
            }
        )
    gated = [g for g in out if g["gated"]]
    worst = min(gated, key=lambda g: g["value"])
    best = max(gated, key=lambda g: g["value"])
    return {
        "groups": out,
        "worst": worst["group"],
        "best": best["group"],
        "gap": best["value"] - worst["value"],
        "ratio": worst["value"] / best["value"],
    }


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[float]:
    counts, _ = np.histogram(values, bins=edges)
    return [float(c) for c in counts / max(len(values), 1)]


def _explorer(rng: np.random.Generator) -> dict[str, Any]:
    train_delay = rng.gamma(2.0, 10.0, 3000)
    holdout_delay = rng.gamma(2.6, 10.0, 1000)  # shifted
    edges = np.quantile(train_delay, np.linspace(0, 1, 11))
    edges[0], edges[-1] = -np.inf, np.inf
    delay_bins = [f"{edges[i]:.0f}..{edges[i + 1]:.0f}" for i in range(10)]
    train_hour = rng.integers(5, 23, 3000)
    holdout_hour = rng.integers(5, 23, 1000)
    hour_edges = np.arange(5, 24, 3)
    carriers = ["UA", "B6", "EV", "DL", "AA", "MQ", FLAGGED_GROUP]
    p = np.array([0.25, 0.2, 0.2, 0.15, 0.1, 0.09, 0.01])
    train_carrier = rng.choice(carriers, 3000, p=p)
    holdout_carrier = rng.choice(carriers, 1000, p=p)
    return {
        "features": [
            {
                "feature": "dep_delay_mean_7d",
                "kind": "numeric",
                "train_missing": 0.01,
                "holdout_missing": 0.02,
                "psi": 0.27,
                "train": {"bins": delay_bins, "shares": _histogram(train_delay, edges)},
                "holdout": {"bins": delay_bins, "shares": _histogram(holdout_delay, edges)},
            },
            {
                "feature": "sched_dep_hour",
                "kind": "numeric",
                "train_missing": 0.0,
                "holdout_missing": 0.0,
                "psi": 0.01,
                "train": {
                    "bins": [f"{h}-{h + 3}" for h in hour_edges[:-1]],
                    "shares": _histogram(train_hour, hour_edges),
                },
                "holdout": {
                    "bins": [f"{h}-{h + 3}" for h in hour_edges[:-1]],
                    "shares": _histogram(holdout_hour, hour_edges),
                },
            },
            {
                "feature": "carrier",
                "kind": "categorical",
                "train_missing": 0.0,
                "holdout_missing": 0.0,
                "psi": None,
                "train": {"bins": carriers, "shares": [float(np.mean(train_carrier == c)) for c in carriers]},
                "holdout": {
                    "bins": carriers,
                    "shares": [float(np.mean(holdout_carrier == c)) for c in carriers],
                },
            },
        ]
    }


def _curves(y: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    out = {}
    for label, proba in scores.items():
        fpr, tpr, _ = roc_curve(y, proba)
        precision, recall, _ = precision_recall_curve(y, proba)
        out[label] = {
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(roc_auc_score(y, proba))},
            "pr": {
                "recall": recall.tolist(),
                "precision": precision.tolist(),
                "average_precision": float(average_precision_score(y, proba)),
                "base_rate": float(np.mean(y)),
            },
        }
    return out


def sample_report(task: str = "classification", seed: int = 7) -> dict[str, Any]:
    """A realistic evaluation report (evaluate step plus gate step) from seeded synthetic predictions."""
    rng = np.random.default_rng(seed)
    n = 2000
    signal = rng.normal(size=n)
    classification = task == "classification"
    if classification:
        y = (rng.random(n) < 1 / (1 + np.exp(-(1.6 * signal - 1.0)))).astype(float)
        candidate = 1 / (1 + np.exp(-(1.5 * signal - 1.0 + rng.normal(scale=0.4, size=n))))
        champion = 1 / (1 + np.exp(-(1.1 * signal - 0.6 + rng.normal(scale=0.7, size=n))))
        names = ["roc_auc", "pr_auc", "log_loss", "brier"]
    else:
        y = 20 + 8 * signal + rng.normal(scale=4, size=n)
        candidate = 20 + 7.5 * signal + rng.normal(scale=3, size=n)
        champion = 20 + 6 * signal + rng.normal(scale=5, size=n)
        names = ["rmse", "mae", "r2"]

    def scored(proba: np.ndarray) -> dict[str, float | None]:
        return quality.model_metrics(y, proba, names)

    primary = names[0]
    candidates = {
        "hgb": {"run_id": "r-hgb", "metrics": scored(candidate), "validation_metrics": scored(candidate)},
        "logreg": {"run_id": "r-logreg", "metrics": scored(0.5 * candidate + 0.5 * champion)},
        "mlp": {"run_id": "r-mlp", "metrics": dict.fromkeys(names)},  # failed to score: all None
    }
    champion_metrics = scored(champion)
    comparison = {}
    for metric in names:
        cand, champ = candidates["hgb"]["metrics"][metric], champion_metrics[metric]
        difference = quality.better_direction(metric) * (cand - champ)
        low, high = _interval(rng, difference, 0.02 if classification else 0.3)
        comparison[metric] = {
            "candidate": cand,
            "champion": champ,
            "difference": difference,
            "low": low,
            "high": high,
            "confidence": 0.95,
            "resamples": 500,
            "method": "paired bootstrap",
            "rows": n,
            "min_delta": 0.005 if classification else 0.1,
        }
    fairness_metric = "recall" if classification else "mae"
    checks = [
        {
            "name": f"{primary}_min",
            "kind": "absolute",
            "metric": primary,
            "value": candidates["hgb"]["metrics"][primary],
            "threshold": 0.6 if classification else 10.0,
            "baseline": None,
            "passed": True,
            "skipped": False,
            "reason": f"{primary} within its bound",
        },
        {
            "name": f"{primary}_vs_champion",
            "kind": "change",
            "metric": primary,
            "value": comparison[primary]["difference"],
            "threshold": comparison[primary]["min_delta"],
            "baseline": champion_metrics[primary],
            "interval": {
                "low": comparison[primary]["low"],
                "high": comparison[primary]["high"],
                "confidence": 0.95,
                "resamples": 500,
            },
            "passed": True,
            "skipped": False,
            "reason": "improves on the champion by more than min_delta",
        },
        {
            "name": "regression_vs_previous_run",
            "kind": "change",
            "metric": primary,
            "value": None,
            "threshold": None,
            "baseline": None,
            "passed": True,
            "skipped": True,
            "reason": "same run as the champion: skipped",
        },
        {
            "name": f"fairness_origin_min_{fairness_metric}",
            "kind": "fairness",
            "metric": fairness_metric,
            "value": 0.41,
            "threshold": 0.5,
            "baseline": None,
            "interval": {"low": 0.36, "high": 0.46, "confidence": 0.95, "resamples": 500},
            "passed": False,
            "skipped": False,
            "reason": f"origin={FAILED_GROUP}: {fairness_metric} 0.4100 below the minimum 0.5000",
        },
    ]
    explanation: dict[str, Any] = {
        "feature_importance": {
            "metric": primary,
            "method": "permutation",
            "features": [
                {"feature": "dep_delay_mean_7d", "importance": 0.081, "std": 0.006},
                {"feature": "sched_dep_hour", "importance": 0.034, "std": 0.004},
                {"feature": "carrier", "importance": 0.012, "std": 0.003},
                {"feature": "visib", "importance": 0.0005, "std": 0.001},
                {"feature": "wind_gust", "importance": -0.001, "std": 0.002},
                {"feature": "<b>odd & name</b>", "importance": None, "std": None},
            ],
        },
        "slices": {
            "origin": {
                g: {
                    "rows": r,
                    **({"positives": r // 3} if classification else {"label_mean": 20.0}),
                    **scored(candidate),
                }
                for g, r in (("EWR", 700), ("JFK", 650), (FAILED_GROUP, 650))
            }
        },
        "errors": {
            "worst_slices": [{"column": "origin", "value": FAILED_GROUP, "rows": 650, primary: 0.71}],
            "min_slice_rows": 50,
        },
        "error_analysis": {
            "method": "decision tree on the features, depth 2",
            "error": "misclassified at the decision threshold" if classification else "absolute error",
            "overall_error": 0.18,
            "cohorts": [
                {
                    "rule": "sched_dep_hour >= 18 and dep_delay_mean_7d > 25",
                    "rows": 210,
                    "error_rate": 0.34,
                    "low": 0.28,
                    "high": 0.41,
                },
                {"rule": "carrier in {EV, MQ}", "rows": 380, "error_rate": 0.24, "low": 0.20, "high": 0.29},
                {"rule": "sched_dep_hour < 9", "rows": 420, "error_rate": 0.09, "low": 0.07, "high": 0.12},
            ],
        },
    }
    rng = np.random.default_rng(seed)
    explanation["shap"] = {
        "method": "SHAP permutation explainer on the transformed frame (log-odds)",
        "rows": 80,
        "background_rows": 40,
        "additivity_error": 1e-15,
        "features": [
            {
                "feature": name,
                "mean_abs": scale,
                "points": [
                    [float(v), float(r)]
                    for v, r in zip(rng.normal(0, scale, 80), rng.random(80), strict=True)
                ]
                + [[0.01, None]],
            }
            for name, scale in (("dep_hour", 0.6), ("carrier", 0.3), ("distance", 0.05))
        ],
    }
    if classification:
        explanation["counterfactuals"] = {
            "method": "dice-ml random search on the whole model (decision at the threshold flipped)",
            "threshold": 0.4,
            "rows": [
                {
                    "kind": "high risk",
                    "row": 17,
                    "score": 0.93,
                    "label": 1,
                    "counterfactuals": [
                        {"changes": {"dep_hour": [21.0, 7.0], "carrier": ["EV", "DL"]}, "score": 0.31}
                    ],
                },
                {
                    "kind": "wrongly scored",
                    "row": 4,
                    "score": 0.88,
                    "label": 0,
                    "counterfactuals": [],
                    "error": "no counterfactual found",
                },
            ],
        }
    if classification:
        explanation["errors"]["confusion_matrix"] = quality.confusion(y, candidate, 0.4)
        explanation["calibration"] = quality.calibration(y, candidate)
        explanation["calibration_champion"] = quality.calibration(y, champion)
    else:
        explanation["residuals"] = quality.residuals(y, candidate, seed=seed)
    groups_origin = {"EWR": (700, 0.62), "JFK": (650, 0.58), FAILED_GROUP: (650, 0.41)}
    groups_carrier = {
        "UA": (600, 0.6),
        "B6": (500, 0.55),
        "EV": (480, 0.5),
        "MQ": (406, 0.57),
        FLAGGED_GROUP: (14, 0.2),
    }
    report: dict[str, Any] = {
        "usecase": "flight_delay",
        "logical_date": "2013-06-01",
        "primary_metric": primary,
        "holdout": {
            "start": "2013-05-01",
            "end_exclusive": "2013-06-01",
            "rows": n,
            ("positive_rate" if classification else "label_mean"): float(np.mean(y)),
        },
        "task": task,
        "best": "hgb",
        "selected_on": "validation",
        "candidates": candidates,
        "champion": {"version": "3", "candidate": "logreg", "metrics": champion_metrics, "error": None},
        "comparison": comparison,
        "explanation": explanation,
        "fairness": {
            "origin": {
                "metric": fairness_metric,
                "candidate": _fairness_groups(rng, groups_origin),
                "champion": _fairness_groups(rng, {g: (r, v + 0.03) for g, (r, v) in groups_origin.items()}),
            },
            "carrier": {
                "metric": fairness_metric,
                "candidate": _fairness_groups(rng, groups_carrier),
                "champion": None,
            },
        },
        "data_explorer": _explorer(rng),
        "decision": {
            "passed": False,
            "candidate": "hgb",
            "run_id": "r-hgb",
            "primary_metric": primary,
            "candidate_value": candidates["hgb"]["metrics"][primary],
            "champion_value": champion_metrics[primary],
            "champion_version": "3",
            "checks": checks,
            "reasons": [c["reason"] for c in checks if not c["passed"]],
        },
    }
    if classification:
        report["curves"] = _curves(y, {"hgb (candidate)": candidate, "champion v3": champion})
    else:
        for attribute in report["fairness"].values():
            for block in (attribute["candidate"], attribute["champion"]):
                for group in (block or {}).get("groups", []):
                    group.update(positives=None, selection_rate=None, tpr=None, fpr=None)
    return report


def expected_plots(report: dict[str, Any]) -> set[str]:
    """The data-plot ids the page of ``report`` must carry."""
    ids = {"comparison", "importance", "error_cohorts", "shap"}
    ids |= {f"fairness-{a}" for a in report["fairness"]}
    ids |= {f"explorer-{f['feature']}" for f in report["data_explorer"]["features"]}
    if report["task"] == "classification":
        ids |= {"roc", "pr", "calibration"}
        ids |= {f"fairness-rates-{a}" for a in report["fairness"]}
    else:
        ids.add("residuals")
    return ids


def minimal_report(task: str = "classification") -> dict[str, Any]:
    """An older report: none of the optional keys, no champion."""
    report = copy.deepcopy(sample_report(task))
    for key in ("decision", "comparison", "curves", "fairness", "data_explorer", "selected_on"):
        report.pop(key, None)
    for key in ("error_analysis", "calibration_champion", "shap", "counterfactuals"):
        report["explanation"].pop(key, None)
    for c in report["candidates"].values():
        c.pop("validation_metrics", None)
    report["champion"] = None
    return report


def _plot_ids(page: str) -> set[str]:
    return set(re.findall(r"<svg[^>]*data-plot='([^']*)'", page))


@pytest.fixture(scope="module", params=["classification", "regression"])
def rendered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, str, Path]:
    report = sample_report(request.param)
    page = render_report_html(report)
    path = tmp_path_factory.mktemp("report") / f"report-{request.param}.html"
    path.write_text(page, encoding="utf-8")
    return report, page, path


def test_every_plot_is_present(rendered: tuple[dict, str, Path]) -> None:
    report, page, _ = rendered
    assert _plot_ids(page) == expected_plots(report)
    assert page.count("<svg") == page.count("role='img'") == page.count("aria-label=")


def test_page_is_self_contained_and_small(rendered: tuple[dict, str, Path]) -> None:
    _, page, path = rendered
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page
    assert "<link" not in page.lower() and "<img" not in page.lower()
    assert path.stat().st_size < 5 * 1024 * 1024


def test_sections_in_order_and_content(rendered: tuple[dict, str, Path]) -> None:
    report, page, _ = rendered
    order = ["decision", "models", "comparison", "curves", "calibration", "importance", "shap", "errors"]
    order += ["counterfactuals", "fairness", "slices", "explorer"]
    if report["task"] != "classification":
        order = [s for s in order if s not in ("curves", "calibration", "counterfactuals")]
    positions = [page.index(f"<section id='{s}'>") for s in order]
    assert positions == sorted(positions)
    assert all(f"href='#{s}'" in page for s in order)
    assert "NOT PASSED" in page and "<b>FAILED</b>" in page and ">skipped<" in page
    assert "tr class='failed'" in page and "tr class='flagged'" in page
    assert FAILED_GROUP in page and f"{FLAGGED_GROUP} (flagged)" in page
    assert "&lt;b&gt;odd &amp; name&lt;/b&gt;" in page and "<b>odd" not in page
    assert "selected on the validation set" in page and "Validation metrics" in page
    assert "<b>shifted</b>" in page  # dep_delay_mean_7d has PSI 0.27
    if report["task"] == "classification":
        assert (
            "dep_hour: 21.0000 \u2192 7.0000; carrier: EV \u2192 DL" in page
            and "no counterfactual found" in page
        )


def test_missing_optional_keys_still_render() -> None:
    for task in ("classification", "regression"):
        page = render_report_html(minimal_report(task))
        assert "Decision pending" in page and "gate has not run" in page
        assert "No champion yet" in page
        ids = _plot_ids(page)
        assert "importance" in ids
        assert ("calibration" in ids) == (task == "classification")
        assert ("residuals" in ids) == (task == "regression")
        assert not ids & {"roc", "pr", "comparison", "error_cohorts"}


def test_none_values_render_as_na() -> None:
    report = sample_report()
    report["champion"] = {
        "version": "3",
        "candidate": None,
        "metrics": dict.fromkeys(report["candidates"]["hgb"]["metrics"]),
        "error": "OSError: gone",
    }
    report["decision"]["checks"][0]["value"] = None
    report["explanation"]["calibration"]["ece"] = None
    report["fairness"]["origin"]["candidate"]["gap"] = None
    report["fairness"]["origin"]["candidate"]["groups"][0].update(value=None, low=None, high=None)
    report["data_explorer"]["features"][0]["psi"] = float("nan")
    report["comparison"]["roc_auc"].update(low=None, high=None)
    page = render_report_html(report)
    assert "Champion could not be scored" in page and "OSError: gone" in page
    assert "n/a" in page and "nan" not in page.lower().replace("nan'", "")


def test_a_regression_report_speaks_in_regression_terms() -> None:
    """A regression's error cohorts hold a mean absolute error, not an error rate; metrics carry their direction."""
    page = render_report_html(sample_report("regression"))
    assert "error rate" not in page
    assert "Overall mean absolute error" in page and "<th>mean absolute error</th>" in page
    assert "Primary metric rmse (lower is better)" in page and "rmse (lower is better)" in page
    assert "r2 (higher is better)" in page
    classification = render_report_html(sample_report("classification"))
    assert "Overall error rate" in classification and "roc_auc (higher is better)" in classification


@pytest.mark.parametrize(
    ("task", "metric", "worse"),
    [("classification", "roc_auc", "a lower roc_auc"), ("regression", "rmse", "a higher rmse")],
)
def test_comparison_reads_worse_within_the_noise_and_better(task: str, metric: str, worse: str) -> None:
    report = sample_report(task)
    entry = report["comparison"][metric]
    report["comparison"] = {metric: entry}
    min_delta = entry["min_delta"]

    def reading(low: float, high: float) -> str:
        entry.update(low=low, high=high)
        return render_report_html(report).split("<section id='comparison'>")[1].split("</section>")[0]

    below = reading(-3 * min_delta, -min_delta)
    assert f"worse than the champion ({worse}): the whole interval lies below zero" in below
    assert "within the noise" not in below
    straddling = reading(-min_delta, 2 * min_delta)
    assert "within the noise: no clear difference, not shown to beat the champion by min_delta" in straddling
    short = reading(min_delta / 2, 2 * min_delta)
    assert "within the noise: better, but not shown to beat the champion by min_delta" in short
    assert "better than the champion by at least min_delta" in reading(min_delta, 3 * min_delta)


def test_residual_plot_svg_keeps_its_signature() -> None:
    svg = residual_plot_svg([[1.0, 0.5], [2.0, -0.5], [None, 1.0]], 320, 160)
    assert svg.startswith("<svg") and "data-plot='residuals'" in svg and svg.count("<circle") == 2
    assert residual_plot_svg([]) == "<p>(no residuals to plot)</p>"


def test_page_renders_in_chromium_without_network(rendered: tuple[dict, str, Path]) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(CHROMIUM_MISSING)
    from playwright.sync_api import Route, sync_playwright

    report, _, path = rendered
    url = path.as_uri()
    requested: list[str] = []
    blocked: list[str] = []

    def handle(route: Route) -> None:
        requested.append(route.request.url)
        if route.request.url == url:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requested.append(request.url))
            page.route("**/*", handle)
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            missing, empty = [], []
            for plot in sorted(expected_plots(report)):
                element = page.query_selector(f'svg[data-plot="{plot}"]')
                if element is None:
                    missing.append(plot)
                    continue
                box = element.bounding_box()
                if box is None or box["width"] <= 0 or box["height"] <= 0:
                    empty.append(plot)
            banner = page.locator(".banner")
            assert banner.is_visible()
            assert "NOT PASSED" in banner.inner_text()
            text = page.inner_text("body")
        finally:
            browser.close()
    assert not missing, f"plots missing from the page: {missing}"
    assert not empty, f"plots laid out with an empty box: {empty}"
    assert FAILED_GROUP in text and FLAGGED_GROUP in text
    assert not blocked, f"the page requested more than itself: {blocked}"
    assert set(requested) <= {url}, requested


# ------------------------------------------------------------------------------------- the report step


def test_a_failed_report_part_changes_no_decision_nor_promotion_and_is_listed(tmp_path, monkeypatch) -> None:
    """The report step runs after gate, register and promote of its run: a healthy report explains the chosen
    candidate; a report whose model cannot be loaded (a bad model URI injected into the evaluate record it reads:
    no mock of our code) lists the model's parts as ``failed: <error>``, still renders the rest, and leaves the
    decision record, the gate and promote results and the champion alias as they were."""
    from datetime import date

    from _model_fixtures import (
        FAST_CANDIDATES,
        fast_usecase,
        use_tmp_platform,
        write_config_dir,
        write_feature_partitions,
    )

    from pipelines.cli import run_step
    from pipelines.config import ReportSpec
    from pipelines.context import run_result_key, safe_run_id
    from pipelines.lake import Lake
    from pipelines.modeling.tracking import champion_version

    day = "2013-02-10"
    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase([FAST_CANDIDATES[0]])  # logistic regression: no TensorFlow, a few seconds
    usecase = usecase.model_copy(
        update={
            "gate": usecase.gate.model_copy(update={"infrastructure_check": False}),
            "report": ReportSpec(importance_rows=300, importance_repeats=1, budgets={"counterfactuals": 5.0}),
        }
    )
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    monkeypatch.setenv("MLOPS_RUN_ID", "manual__report")
    lake = Lake(str(tmp_path / "lake"))
    write_feature_partitions(lake, usecase, date(2013, 1, 1), 45, rows_per_day=60)

    def step(name: str) -> dict:
        return run_step([name, "--usecase", usecase.name, "--date", day])

    for name in ("train", "evaluate", "gate", "register"):
        step(name)
    promoted = step("promote")
    gate_key = run_result_key(usecase.name, day, "gate", "manual__report")
    promote_key = run_result_key(usecase.name, day, "promote", "manual__report")
    before = {key: lake.read_json(key) for key in (gate_key, promote_key)}
    decisions = sorted(lake.storage.list(f"decisions/{usecase.name}"))
    assert before[gate_key]["passed"] is True and promoted["champion_version"] is not None

    healthy = step("report")
    assert healthy["failed_parts"] == {}
    assert all(p["status"] == "done" or p["status"].startswith("cut: ") for p in healthy["parts"].values())
    prefix = f"reports/{usecase.name}/evaluation/date={day}/run={safe_run_id('manual__report')}"
    assert healthy["report_uri"].endswith(f"{prefix}/report.json")
    written = lake.read_json(f"{prefix}/report.json")
    assert written["decision"]["decision_id"] == before[gate_key]["decision_id"]
    assert written["explanation"]["feature_importance"]["method"] == "permutation"
    # SHAP explains the logistic regression that won (the section used to vanish for it)
    assert written["explanation"]["shap"]["family"] == "logistic_regression"
    assert written["explanation"]["shap"]["additivity_error"] < 1e-6

    evaluate_key = run_result_key(usecase.name, day, "evaluate", "manual__report")
    evaluation = lake.read_json(evaluate_key)
    lake.write_json(evaluate_key, {**evaluation, "best_model_uri": f"models:/{usecase.name}-missing/1"})
    broken = step("report")  # the step itself succeeds: a part's failure is the part's, not the run's
    for part in ("feature_importance", "shap", "counterfactuals"):
        assert broken["parts"][part]["status"].startswith("failed: "), broken["parts"][part]
    for part in ("performance", "error_analysis", "data_explorer"):
        assert broken["parts"][part]["status"] == "done", broken["parts"][part]
    page = lake.storage.read_bytes(f"{prefix}/report.html").decode()
    assert "Report parts" in page and "failed: " in page and "Calibration" in page
    # nothing on the decision path moved
    assert {key: lake.read_json(key) for key in before} == before
    assert sorted(lake.storage.list(f"decisions/{usecase.name}")) == decisions
    assert str(champion_version(usecase).version) == str(promoted["champion_version"])


def test_parts_lists_skipped_failed_and_cut_parts() -> None:
    from pipelines.steps.report import Parts

    parts = Parts(lambda name: {"slow": 1.0}.get(name, 30.0), skip=["skipped"])
    assert parts.run("ok", lambda budget: {"x": 1}) == {"x": 1}
    assert parts.run("skipped", lambda budget: 1) is None
    assert parts.run("slow", lambda budget: ({"rows": 10}, f"10 rows to fit {budget:g} s")) == {"rows": 10}
    assert parts.run("bad", lambda budget: 1 / 0) is None
    assert parts.status["ok"]["status"] == "done"
    assert parts.status["skipped"]["status"].startswith("skipped: ")
    assert parts.status["slow"] == {
        "status": "cut: 10 rows to fit 1 s",
        "seconds": parts.status["slow"]["seconds"],
        "budget_s": 1.0,
    }
    assert parts.status["bad"]["status"] == "failed: ZeroDivisionError: division by zero"
    page = render_report_html({"parts": parts.status})
    assert "failed: ZeroDivisionError" in page and "cut: 10 rows" in page


def test_importance_plan_fits_the_budget_fewer_shuffles_first(monkeypatch) -> None:
    """Two timed predictions size permutation importance, the fixed cost of a call counted once (the one batched
    call pays it once): within budget nothing changes; over it the shuffles drop to one, then the rows, and the
    full run's estimate is returned for the report's note. The model's time runs on a test clock (each call
    advances it by what it would take), so a loaded machine changes nothing."""
    from types import SimpleNamespace

    import pandas as pd

    import pipelines.steps.report as report_step
    from pipelines.steps.report import importance_plan

    X = pd.DataFrame({f"f{i}": np.arange(3000.0) for i in range(10)})
    clock = {"now": 0.0}
    monkeypatch.setattr(report_step, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))

    def slow(frame: pd.DataFrame) -> np.ndarray:  # 20 ms a call, plus 1 ms per 100 rows
        clock["now"] += 0.02 + len(frame) / 100_000
        return np.zeros(len(frame))

    # 1000 rows x (10 features x 3 + 1): 0.02 + 0.31 s; one 500-row timing per row would have said 1.55 s
    rows, repeats, estimate = importance_plan(slow, X, 1000, 3, budget=1.0)
    assert (rows, repeats) == (1000, 3) and estimate == pytest.approx(0.33)
    assert importance_plan(slow, X, 1000, 3, budget=0.2)[:2] == (1000, 1)
    rows, repeats, _ = importance_plan(slow, X, 1000, 3, budget=0.08)
    assert repeats == 1 and 100 <= rows < 1000


def test_only_the_explanations_import_shap_and_dice_ml_and_only_the_report_images_install_them() -> None:
    """shap and dice-ml are the optional extra ``report``: the decision path (evaluate, the gate and every module
    but ``pipelines/evaluation/explain.py``) never imports them, the train image (which runs the report step) installs them
    and the core and serve images do not."""
    import ast

    root = Path(__file__).resolve().parents[1]
    importers = set()
    for path in sorted((root / "pipelines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] in {"shap", "dice_ml"} for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"pipelines/evaluation/explain.py"}
    evaluate = (root / "pipelines" / "steps" / "evaluate.py").read_text()
    assert "explain" not in {
        alias.name
        for node in ast.walk(ast.parse(evaluate))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    requirements = root / "docker" / "requirements"
    for image, wanted in (("core", False), ("serve", False), ("train", True), ("gpu", True)):
        text = (requirements / f"{image}.txt").read_text()
        for package in ("shap==", "dice-ml=="):
            assert (package in text) is wanted, (image, package)


def test_evaluate_and_report_import_no_other_step() -> None:
    """The two steps share their readers through ``pipelines.evaluation.evaluation_data``, never through each other."""
    import ast

    root = Path(__file__).resolve().parents[1] / "pipelines" / "steps"
    for step in ("evaluate", "report", "gate"):
        tree = ast.parse((root / f"{step}.py").read_text())
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert not {m for m in imported if m.startswith("pipelines.steps")}, (step, imported)
