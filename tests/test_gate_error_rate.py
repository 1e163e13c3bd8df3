"""The gate's false-promotion rate under the null, on real scikit-learn fits: a candidate that is the champion
refitted with another seed (and, nightly, on a window one day later) is no better than it, so every promotion is
a false one. The monthly test, and a month of nightly tests under the Bonferroni rule, promote in at most 5% of 200
simulated months; the uncorrected nightly rule, on the same fits and holdouts, does not hold 5% (so the test
can fail: it has the power to see an error rate that is too high).

The holdout rows of a day share a day effect (a shift of the features and of the label rate), as flights of one
day share its weather, so the intervals are the gate's cluster bootstrap by date, as evaluate draws them
(``draw_resampling``), turned into pass/fail by the gate's own ``decide``. Cost: about 6,000 small SGD fits and
12,000 decisions; ROC AUC under a date-clustered bootstrap costs resamples x 14**2 (per-cluster pair counts), so
even the nightly rule's 2,400 resamples are cheap.
"""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import SGDClassifier

from pipelines.config import ChangeBound, GateSpec, SignificanceSpec
from pipelines.evaluation.significance import (
    NIGHTLY_BONFERRONI,
    NIGHTLY_UNCORRECTED,
    SINGLE_TEST,
    change_rule,
    draw_resampling,
    paired_difference,
)
from pipelines.steps.gate import decide

TRIALS = 200
NIGHTS = 30  # the nights '0 5 2-31 * *' allows in a 31-day month
TRAIN_DAYS, HOLDOUT_DAYS, ROWS_PER_DAY, FEATURES = 28, 14, 40, 4
NIGHTLY = "0 5 2-31 * *"
# the strictest null: any lower bound above zero promotes (no min_delta cushion); no other check interferes
GATE = GateSpec(
    primary_metric="roc_auc",
    change={"roc_auc": ChangeBound(min_delta=0.0)},
    infrastructure_check=False,
)
COEF = np.array([0.9, -0.6, 0.4, 0.0])


def _days(rng: np.random.Generator, days: int) -> tuple[np.ndarray, np.ndarray]:
    """``days`` days of rows: features and labels, each day with its own shift (rows of a day are not
    independent), stacked day by day."""
    shift = rng.normal(scale=0.5, size=(days, 1, FEATURES))
    level = rng.normal(scale=0.5, size=(days, 1))
    x = rng.normal(size=(days, ROWS_PER_DAY, FEATURES)) + shift
    logit = x @ COEF - 1.0 + level
    y = (rng.random((days, ROWS_PER_DAY)) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")
    return x, y


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> SGDClassifier:
    """The use case's refit: the same estimator and settings, another seed (the shuffling of its passes)."""
    model = SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=5, tol=None, average=True, random_state=seed)
    return model.fit(x.reshape(-1, FEATURES), y.reshape(-1))


def _promoted(y: np.ndarray, candidate: np.ndarray, champion: np.ndarray, rule: dict, seed: int) -> bool:
    """The gate's decision, as evaluate and gate take it: one date-clustered draw of the resamples the rule asks
    for, the paired interval at the rule's confidence, ``decide`` holding it to the rule."""
    day = np.repeat(np.arange(HOLDOUT_DAYS), ROWS_PER_DAY)
    draws = draw_resampling(len(y), rule["resamples"], seed, day, ["date"])
    found = paired_difference(
        "roc_auc",
        y,
        candidate,
        champion,
        resamples=rule["resamples"],
        confidence=rule["confidence"],
        seed=seed,
        resampling=draws,
    )
    evaluation = {
        "best": "refit",
        "candidates": {
            "refit": {"run_id": "candidate", "metrics": {"roc_auc": found["candidate"]}, "slices": {}}
        },
        "champion": {"version": "1", "run_id": "champion", "metrics": {"roc_auc": found["champion"]}},
        "comparison": {"roc_auc": found | {"min_delta": 0.0}},
    }
    return bool(decide(GATE, evaluation, rule)["passed"])


def _scores(model: SGDClassifier, x: np.ndarray) -> np.ndarray:
    return model.predict_proba(x.reshape(-1, FEATURES))[:, 1]


@pytest.fixture(autouse=True)
def _fast_sklearn():
    """Some 6,000 fits of a few thousand rows each: scikit-learn's argument checks would cost more than the fits
    (the inputs are made here, finite and well-formed)."""
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        yield


@pytest.fixture(scope="module")
def rules() -> dict[str, dict]:
    spec = SignificanceSpec()  # confidence 0.95, the default
    found = {
        "monthly": change_rule(spec, "full", NIGHTLY),
        "nightly": change_rule(spec, "refresh", NIGHTLY),
        "uncorrected": change_rule(spec.model_copy(update={"nightly": "uncorrected"}), "refresh", NIGHTLY),
    }
    assert [r["rule"] for r in found.values()] == [SINGLE_TEST, NIGHTLY_BONFERRONI, NIGHTLY_UNCORRECTED]
    assert found["nightly"]["tests_per_month"] == NIGHTS
    assert found["nightly"]["confidence"] == pytest.approx(1 - 0.05 / NIGHTS)
    return found


def test_the_monthly_test_promotes_a_refit_in_at_most_5_percent_of_null_months(rules):
    promoted = 0
    for trial in range(TRIALS):
        rng = np.random.default_rng(1000 + trial)
        x, y = _days(rng, TRAIN_DAYS + HOLDOUT_DAYS)
        train, hold = slice(0, TRAIN_DAYS), slice(TRAIN_DAYS, None)
        champion = _fit(x[train], y[train], seed=2 * trial)
        candidate = _fit(x[train], y[train], seed=2 * trial + 1)
        promoted += _promoted(
            y[hold].reshape(-1).astype("float64"),
            _scores(candidate, x[hold]),
            _scores(champion, x[hold]),
            rules["monthly"],
            seed=trial,
        )
    assert promoted <= 0.05 * TRIALS, f"{promoted} of {TRIALS} null months promoted a refit"


def test_a_month_of_nightly_tests_holds_5_percent_only_with_the_bonferroni_rule(rules):
    """Each simulated month: the champion fitted once; each night a refit of it with another seed, judged on
    the 14 days up to that night (13 of them shared with the previous night's holdout). The refits see the same
    training rows: a refit on newer rows may be truly better, and promoting it would be no error. A month counts as a false
    promotion if any night promotes. The same fits and holdouts are judged under both rules."""
    corrected = uncorrected = 0
    for trial in range(TRIALS):
        rng = np.random.default_rng(5000 + trial)
        x, y = _days(rng, TRAIN_DAYS + NIGHTS - 1 + HOLDOUT_DAYS)
        champion = _fit(x[:TRAIN_DAYS], y[:TRAIN_DAYS], seed=3 * trial)
        champion_scores = _scores(champion, x[TRAIN_DAYS:])
        any_corrected = any_uncorrected = False
        for night in range(NIGHTS):
            candidate = _fit(x[:TRAIN_DAYS], y[:TRAIN_DAYS], seed=3 * trial + 1 + night)
            hold = slice(night + TRAIN_DAYS, night + TRAIN_DAYS + HOLDOUT_DAYS)
            labels = y[hold].reshape(-1).astype("float64")
            scores = _scores(candidate, x[hold])
            rows = slice(night * ROWS_PER_DAY, (night + HOLDOUT_DAYS) * ROWS_PER_DAY)
            seed = trial * NIGHTS + night
            if not any_uncorrected:  # a month already counted needs no more nights under that rule
                any_uncorrected = _promoted(labels, scores, champion_scores[rows], rules["uncorrected"], seed)
            if not any_corrected:
                any_corrected = _promoted(labels, scores, champion_scores[rows], rules["nightly"], seed)
        corrected += any_corrected
        uncorrected += any_uncorrected
    assert corrected <= 0.05 * TRIALS, f"Bonferroni: {corrected} of {TRIALS} null months promoted a refit"
    # the power of this test: without the correction the same months promote far more often than 5%
    assert uncorrected > 0.05 * TRIALS, f"uncorrected: only {uncorrected} of {TRIALS} null months promoted"
