"""Decision thresholds: each rule of ``choose_threshold`` against a brute-force search over every threshold, and
the config's checks of the rule's fields."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from pipelines.config import DecisionSpec, UseCase, usecase_path
from pipelines.evaluation.metrics import ThresholdError, choose_threshold, rate_threshold

RULES = [
    DecisionSpec(rule="best_f1"),
    DecisionSpec(rule="min_precision", target=0.4),
    DecisionSpec(rule="min_recall", target=0.7),
    DecisionSpec(rule="min_cost", costs={"false_positive": 1.0, "false_negative": 6.0}),
]


def _brute_force(y: np.ndarray, p: np.ndarray, decision: DecisionSpec) -> float:
    """The rule applied by trying every distinct score as the threshold, highest first (ties: the higher)."""
    best, best_value = None, None
    for t in sorted(set(p.tolist()), reverse=True):
        predicted = p >= t
        tp = int((predicted & (y == 1)).sum())
        fp = int((predicted & (y == 0)).sum())
        fn = int((~predicted & (y == 1)).sum())
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        if decision.rule == "best_f1":
            ok, value = True, f1
        elif decision.rule == "min_precision":
            ok, value = precision >= decision.target, recall
        elif decision.rule == "min_recall":
            ok, value = recall >= decision.target, precision
        else:
            ok, value = True, -(decision.costs.false_positive * fp + decision.costs.false_negative * fn)
        if ok and (best_value is None or value > best_value + 1e-12):
            best, best_value = t, value
    assert best is not None
    return best


@pytest.mark.parametrize("decision", RULES, ids=lambda d: d.rule)
@pytest.mark.parametrize("seed", range(6))
def test_each_rule_matches_a_brute_force_search(decision: DecisionSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 400))
    y = (rng.random(n) < rng.uniform(0.1, 0.5)).astype("int64")
    y[:2] = [0, 1]
    # rounded scores make ties, which the rule must resolve like the brute force
    p = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.2, n), 0, 1), 2)
    chosen = choose_threshold(y, p, decision)
    assert chosen["threshold"] == _brute_force(y, p, decision)
    predicted = p >= chosen["threshold"]
    assert chosen["tp"] == int((predicted & (y == 1)).sum()) and chosen["fp"] == int(
        (predicted & (y == 0)).sum()
    )


def test_a_rate_becomes_the_scores_own_quantile() -> None:
    """rate_threshold: the score at which these scores flag the share (the k-th highest), whatever their scale;
    ties flag a few more; no share flags nothing."""
    rng = np.random.default_rng(3)
    p = rng.random(400)
    for scale in (lambda q: q, lambda q: q**3, lambda q: 0.5 + q / 4):
        found = rate_threshold(0.23, scale(p))
        assert found["positives"] == 92 and found["threshold"] == np.sort(scale(p))[::-1][91]
        assert int((scale(p) >= found["threshold"]).sum()) == 92
    assert rate_threshold(0.23, scale(p))["target_positive_rate"] == pytest.approx(0.23)
    tied = rate_threshold(0.5, np.array([0.9, 0.4, 0.4, 0.4, 0.1, 0.1]))
    assert tied["threshold"] == 0.4 and tied["target_positive_rate"] == pytest.approx(4 / 6)
    none = rate_threshold(0.0, p)
    assert none["threshold"] > p.max() and none["target_positive_rate"] == 0.0
    assert rate_threshold(1.0, p)["threshold"] == p.min()
    with pytest.raises(ValueError):
        rate_threshold(1.5, p)


def test_fixed_threshold_single_class_and_unreachable_target() -> None:
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert choose_threshold(y, p, DecisionSpec(rule="fixed", threshold=0.3))["threshold"] == 0.3
    with pytest.raises(ThresholdError, match="single class"):
        choose_threshold(np.zeros(4), p, DecisionSpec())
    # the only positive at the top has precision 1 by itself: precision 1 is reachable; recall 1 at 0.4
    assert choose_threshold(y, p, DecisionSpec(rule="min_recall", target=1.0))["threshold"] == 0.4
    with pytest.raises(ThresholdError, match="no threshold reaches precision 1.0"):
        choose_threshold(
            np.array([0, 1, 0, 1]),
            np.array([0.9, 0.4, 0.35, 0.4]),
            DecisionSpec(rule="min_precision", target=1.0),
        )


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        ({"rule": "fixed"}, "decision.rule 'fixed' needs decision.threshold"),
        ({"rule": "min_precision"}, "needs decision.target"),
        ({"rule": "min_cost"}, "needs decision.costs"),
        (
            {"rule": "best_f1", "threshold": 0.3},
            "decision.threshold does not apply to decision.rule 'best_f1'",
        ),
        ({"rule": "best_f1", "validation_days": 80}, "decision.validation_days (80) leaves no training days"),
    ],
)
def test_the_config_names_what_a_rule_needs(decision: dict, message: str) -> None:
    data = yaml.safe_load(usecase_path("flight_delay").read_text())
    data["decision"] = decision
    with pytest.raises(ValidationError) as error:
        UseCase.model_validate(data)
    assert message in str(error.value)
