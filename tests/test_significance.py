"""The gate's statistics on real numbers: weighted bootstrap metrics equal the metric of the resampled rows, the
paired interval is seeded, an improvement within the noise is not promoted, and a clear one is."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from test_gate import GATE, champion, evaluation

from pipelines.config import HIGHER_IS_BETTER, SignificanceSpec
from pipelines.evaluation.metrics import model_metrics
from pipelines.evaluation.significance import (
    CHUNK_CELLS,
    CLEARS,
    NIGHTLY_BONFERRONI,
    NIGHTLY_UNCORRECTED,
    SINGLE_TEST,
    WITHIN_NOISE,
    WORSE,
    bootstrap_weights,
    change_reading,
    change_rule,
    direction_words,
    draw_resampling,
    metric_interval,
    paired_difference,
    resampled_metric,
    runs_per_month,
    small_cluster_factor,
    weighted_metric,
)
from pipelines.steps.gate import decide

ROWS = 6000


def _holdout(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=ROWS)
    y = (rng.random(ROWS) < 1 / (1 + np.exp(-(signal - 1.5)))).astype("float64")
    return y, signal


def _scores(signal: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(signal + rng.normal(scale=noise, size=len(signal)) - 1.5)))


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc", "log_loss", "brier", "rmse", "mae", "r2"])
def test_weighted_metric_equals_the_metric_of_the_resampled_rows(metric):
    y, signal = _holdout()
    scores = np.round(_scores(signal, 1.0, 5), 3)  # rounded: ties in the ranking metrics
    weights = bootstrap_weights(ROWS, 3, seed=11)
    got = weighted_metric(metric, y, scores, weights)
    for row, value in zip(weights, got, strict=True):
        rows = np.repeat(np.arange(ROWS), row.astype(int))
        assert value == pytest.approx(model_metrics(y[rows], scores[rows], [metric])[metric], rel=1e-9)
    assert got[0] != got[1]  # the resamples differ


def test_ranking_metrics_agree_with_scikit_learn_on_one_resample():
    y, signal = _holdout()
    scores = _scores(signal, 0.5, 1)
    rows = np.repeat(np.arange(ROWS), bootstrap_weights(ROWS, 1, seed=2)[0].astype(int))
    weights = np.bincount(rows, minlength=ROWS)[None, :].astype(float)
    assert weighted_metric("roc_auc", y, scores, weights)[0] == pytest.approx(
        roc_auc_score(y[rows], scores[rows])
    )
    assert weighted_metric("pr_auc", y, scores, weights)[0] == pytest.approx(
        average_precision_score(y[rows], scores[rows])
    )


def test_the_interval_is_seeded_and_covers_the_value():
    y, signal = _holdout()
    scores = _scores(signal, 1.0, 5)
    first = metric_interval("roc_auc", y, scores, resamples=400, confidence=0.95, seed=9)
    assert first == metric_interval("roc_auc", y, scores, resamples=400, confidence=0.95, seed=9)
    assert first["low"] < first["value"] < first["high"]
    assert first != metric_interval("roc_auc", y, scores, resamples=400, confidence=0.95, seed=10)
    wider = metric_interval("roc_auc", y, scores, resamples=400, confidence=0.99, seed=9)
    assert wider["low"] < first["low"] and wider["high"] > first["high"]


def _decision(candidate: np.ndarray, incumbent: np.ndarray, y: np.ndarray) -> dict:
    """The gate's decision for a candidate and a champion scored on the same holdout rows."""
    comparison = paired_difference(
        "roc_auc", y, candidate, incumbent, resamples=1000, confidence=0.95, seed=7
    )
    evaluated = evaluation(roc_auc=comparison["candidate"], champion=champion(comparison["champion"]))
    evaluated["comparison"] = {"roc_auc": comparison}
    return decide(GATE, evaluated)


def test_a_candidate_better_by_less_than_the_noise_is_not_promoted():
    """Two models of the same quality: one of them is ahead on this holdout by more than min_delta (0.002),
    which the old gate promoted; its paired interval reaches below min_delta, so it is not promoted."""
    y, signal = _holdout()
    incumbent = _scores(signal, 1.0, 5)
    ahead = None
    for seed in range(20):  # the same model refitted with other noise: find one ahead by > min_delta
        candidate = _scores(signal, 1.0, 100 + seed)
        if roc_auc_score(y, candidate) - roc_auc_score(y, incumbent) > 0.002:
            ahead = candidate
            break
    assert ahead is not None
    decision = _decision(ahead, incumbent, y)
    change = next(c for c in decision["checks"] if c["name"] == "roc_auc_vs_champion")
    assert change["difference"] > 0.002  # a point estimate the old gate promoted
    assert change["interval"]["low"] < 0.002 and change["interval"]["resamples"] == 1000
    assert change["passed"] is False and decision["passed"] is False
    assert "within the noise, not shown to beat the champion by min_delta" in change["reason"]
    assert _decision(ahead, incumbent, y) == decision  # seeded: the same decision again


def test_a_clearly_better_candidate_is_promoted():
    y, signal = _holdout()
    decision = _decision(_scores(signal, 0.3, 5), _scores(signal, 1.5, 6), y)
    change = next(c for c in decision["checks"] if c["name"] == "roc_auc_vs_champion")
    assert change["interval"]["low"] > 0.002 and change["passed"] is True
    assert decision["passed"] is True


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_regression_differences_are_signed_by_the_better_direction(metric):
    rng = np.random.default_rng(0)
    y = rng.normal(size=3000) * 10
    better, worse = y + rng.normal(scale=2, size=3000), y + rng.normal(scale=4, size=3000)
    out = paired_difference(metric, y, better, worse, resamples=300, confidence=0.95, seed=1)
    assert not HIGHER_IS_BETTER[metric]
    assert out["difference"] > 0 and out["low"] > 0  # lower error = an improvement, positive
    assert out["difference"] == pytest.approx(out["champion"] - out["candidate"])


@pytest.mark.parametrize(
    ("low", "high", "min_delta", "expected"),
    [
        (-0.03, -0.01, 0.002, WORSE),  # wholly below zero: worse, not noise
        (-0.01, 0.02, 0.002, WITHIN_NOISE),  # straddles zero and min_delta
        (0.001, 0.02, 0.002, WITHIN_NOISE),  # above zero, straddles min_delta
        (0.0005, 0.0015, 0.002, WITHIN_NOISE),  # between zero and min_delta
        (0.002, 0.01, 0.002, CLEARS),  # lower bound reaches min_delta
        (-0.004, -0.001, -0.005, CLEARS),  # a tolerated loss (negative min_delta) passes
        (-0.01, -0.006, -0.005, WORSE),
        (None, 0.01, 0.002, None),
        (float("nan"), 0.01, 0.002, None),
    ],
)
def test_change_reading_against_zero_and_min_delta(low, high, min_delta, expected):
    assert change_reading(low, high, min_delta) == expected


def test_a_worse_regression_candidate_reads_worse_on_real_rows():
    """A candidate with the larger error on the same rows: its paired RMSE interval lies below zero (signed so
    positive is better) and the reading says worse, in RMSE's direction (higher is worse)."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=3000) * 10
    good, bad = y + rng.normal(scale=2, size=3000), y + rng.normal(scale=4, size=3000)
    out = paired_difference("rmse", y, bad, good, resamples=300, confidence=0.95, seed=1)
    assert out["high"] < 0 and change_reading(out["low"], out["high"], 0.1) == WORSE
    assert direction_words("rmse") == ("lower", "higher") and direction_words("r2") == ("higher", "lower")


DAYS, PER_DAY = 14, 400


def _daily_holdout(seed: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 14-day holdout whose days differ: which of two models ranks a day's flights better changes from day to
    day (a day effect on each model's noise), as a day's weather favours one model or the other."""
    rng = np.random.default_rng(seed)
    day = np.repeat(np.arange(DAYS), PER_DAY)
    signal = rng.normal(size=len(day))
    y = (rng.random(len(day)) < 1 / (1 + np.exp(-(signal - 1.0)))).astype("float64")
    noise_a = rng.uniform(0.3, 2.0, size=DAYS)[day]  # each day, each model its own quality
    noise_b = rng.uniform(0.3, 2.0, size=DAYS)[day]
    a = np.round(signal + rng.normal(size=len(day)) * noise_a, 2)  # rounded: ties
    b = signal + rng.normal(size=len(day)) * noise_b
    return y, a, b, day


@pytest.mark.parametrize("metric", ["roc_auc", "log_loss", "brier", "rmse", "mae", "r2", "pr_auc"])
def test_cluster_forms_equal_the_metric_of_the_resampled_days(metric):
    """The per-cluster forms (ROC AUC from the day x day pair counts, losses from day sums) give the metric of
    the rows of the drawn days, repeated as drawn: the same value as the expanded row weights."""
    y, a, _, day = _daily_holdout()
    scores = 1 / (1 + np.exp(-a))
    draws = draw_resampling(len(y), 5, seed=3, cluster=day, cluster_by=["date"])
    got = resampled_metric(metric, y, scores, draws)
    expanded = np.concatenate([weighted_metric(metric, y, scores, w) for w in draws.chunks()])
    assert got == pytest.approx(expanded, rel=1e-9)
    for counts, value in zip(draws.counts, got, strict=True):
        rows = np.concatenate([np.flatnonzero(day == d) for d in np.repeat(np.arange(DAYS), counts)])
        assert value == pytest.approx(model_metrics(y[rows], scores[rows], [metric])[metric], rel=1e-9)


def test_one_integer_draw_per_evaluation_is_shared_and_seeded():
    y, a, b, day = _daily_holdout()
    draws = draw_resampling(len(y), 500, seed=3, cluster=day, cluster_by=["date"])
    assert draws.counts.dtype == np.int32 and draws.counts.shape == (500, DAYS)
    assert (draws.counts.sum(axis=1) == DAYS).all()  # each resample draws as many days as there are
    assert "chunks of at most 4194304 resample-row cells" in draws.record()["memory_bound"]
    assert draws.record() | {"draws_bytes": 0, "memory_bound": ""} == {
        "method": "cluster bootstrap by date",
        "cluster_by": ["date"],
        "clusters": DAYS,
        "resamples": 500,
        "seed": 3,
        "draws_bytes": 0,
        "memory_bound": "",
    }
    found = paired_difference("roc_auc", y, a, b, resamples=500, confidence=0.95, seed=3, resampling=draws)
    assert found["method"] == "cluster bootstrap by date" and found["clusters"] == DAYS
    again = draw_resampling(len(y), 500, seed=3, cluster=day, cluster_by=["date"])
    assert found == paired_difference(
        "roc_auc", y, a, b, resamples=500, confidence=0.95, seed=3, resampling=again
    )
    # the candidate's own interval reads the same draws: its ends are those of its metric under these days
    own = metric_interval("roc_auc", y, a, resamples=500, confidence=0.95, seed=3, resampling=draws)
    assert own["value"] == pytest.approx(found["candidate"])
    # a group keeps its days' counts: its interval resamples the same days as the whole holdout
    group = day < 7
    assert (draws.subset(group).counts is draws.counts) and draws.subset(group).rows == int(group.sum())


def test_resampling_days_gives_the_wider_honest_interval_when_days_differ():
    """Rows of one day are not independent here: resampling rows understates the noise of the difference."""
    y, a, b, day = _daily_holdout()
    by_rows = paired_difference("roc_auc", y, a, b, resamples=1000, confidence=0.95, seed=1)
    by_days = paired_difference(
        "roc_auc",
        y,
        a,
        b,
        resamples=1000,
        confidence=0.95,
        seed=1,
        resampling=draw_resampling(len(y), 1000, 1, day, ["date"]),
    )
    assert by_rows["method"] == "paired bootstrap" and by_rows["clusters"] == len(y)
    assert by_rows["difference"] == by_days["difference"]
    assert by_days["high"] - by_days["low"] > 1.5 * (by_rows["high"] - by_rows["low"])
    assert small_cluster_factor(DAYS, 0.95) == pytest.approx(2.1604 / 1.95996 * (14 / 13) ** 0.5, rel=1e-3)


def test_expanded_weights_come_in_bounded_chunks():
    draws = draw_resampling(50_000, 400, seed=1)  # the row bootstrap: 20 million cells in all
    sizes = [chunk.size for chunk in draws.chunks()]
    assert max(sizes) <= CHUNK_CELLS and sum(sizes) == 400 * 50_000


@pytest.mark.parametrize(
    ("cron", "runs"),
    [("0 5 2-31 * *", 30), ("0 4 1 * *", 1), ("0 5 * * 1-5", 23), ("0 */12 * * *", 62), ("0 5 * 2 *", 29)],
)
def test_runs_per_month_counts_the_most_runs_a_schedule_allows(cron, runs):
    assert runs_per_month(cron) == runs


def test_the_nightly_rule_shares_the_month_s_error_budget():
    spec = SignificanceSpec()
    nightly = change_rule(spec, "refresh", "0 5 2-31 * *")
    assert nightly["rule"] == NIGHTLY_BONFERRONI and nightly["tests_per_month"] == 30
    assert nightly["confidence"] == pytest.approx(1 - 0.05 / 30)
    assert nightly["resamples"] == 2400  # 4N/alpha: two resamples beyond each end of the interval
    assert change_rule(spec, "full", "0 5 2-31 * *")["confidence"] == 0.95  # the monthly run: one test
    assert change_rule(spec, "refresh", None)["rule"] == SINGLE_TEST  # no nightly schedule: one test
    uncorrected = change_rule(spec.model_copy(update={"nightly": "uncorrected"}), "refresh", "0 5 2-31 * *")
    assert uncorrected["confidence"] == 0.95 and uncorrected["rule"] == NIGHTLY_UNCORRECTED


def test_the_gate_fails_closed_on_an_interval_below_the_rule_s_confidence():
    """An evaluation whose interval was computed at 95% is not enough for a nightly test: the change check fails
    naming the rule; held to the monthly rule it passes. The record says the rule and the confidence used."""
    y, signal = _holdout()
    found = paired_difference(
        "roc_auc",
        y,
        _scores(signal, 0.3, 5),
        _scores(signal, 1.5, 6),
        resamples=1000,
        confidence=0.95,
        seed=7,
    )
    evaluated = evaluation(roc_auc=found["candidate"], champion=champion(found["champion"]))
    evaluated["comparison"] = {"roc_auc": found}
    spec = SignificanceSpec()
    nightly = decide(GATE, evaluated, change_rule(spec, "refresh", "0 5 2-31 * *"))
    change = next(c for c in nightly["checks"] if c["name"] == "roc_auc_vs_champion")
    assert change["passed"] is False and "needs 0.99833; rerun evaluate" in change["reason"]
    assert nightly["significance"]["rule"] == NIGHTLY_BONFERRONI
    assert nightly["significance"]["confidence_used"] == 0.95
    monthly = decide(GATE, evaluated, change_rule(spec, "full", "0 5 2-31 * *"))
    assert monthly["passed"] is True and monthly["significance"]["rule"] == SINGLE_TEST
