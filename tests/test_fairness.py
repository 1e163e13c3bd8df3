"""Fairness over sensitive attributes on the example use case (appointment_no_show: gender, age band): fairlearn
MetricFrame groups with bootstrap intervals; small groups gated on their interval, and only a group too small for
any interval listed as not gated; a candidate better overall but unfair to one age band is not promoted, with the
group named in the decision and the report; each group is compared with the same group of the champion; the
gaps in false-positive rate at the decision threshold are gated when a bound is set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate
from sklearn.metrics import roc_auc_score

from pipelines.config import load_usecase
from pipelines.evaluation.fairness import fairness_report
from pipelines.evaluation.report import render_report_html
from pipelines.evaluation.significance import paired_difference
from pipelines.steps.gate import decide

ROWS = 8000
BANDS = ["0-17", "18-29", "30-49", "50-69", "70+"]


@pytest.fixture(scope="module")
def usecase():
    return load_usecase("appointment_no_show")


def _holdout(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "gender": rng.choice(["F", "M"], size=ROWS),
            "age_band": rng.choice(BANDS, size=ROWS, p=[0.15, 0.25, 0.3, 0.2, 0.1]),
        }
    )
    frame.loc[frame.index[:40], "age_band"] = "unknown"  # a small group: gated on its interval only
    signal = rng.normal(size=ROWS)
    y = (rng.random(ROWS) < 1 / (1 + np.exp(-(1.5 * signal - 1.2)))).astype("float64")
    return frame, y, signal


def _model(signal: np.ndarray, noise: np.ndarray | float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(signal + rng.normal(size=len(signal)) * noise - 1.2)))


def _evaluation(usecase, frame, y, candidate, incumbent, threshold: float = 0.3, attributes=None) -> dict:
    spec = usecase.gate.fairness
    fairness = fairness_report(
        y,
        candidate,
        incumbent,
        frame,
        attributes=list(attributes or usecase.sensitive_attributes),
        spec=spec,
        task="classification",
        candidate_threshold=threshold,
        champion_threshold=threshold,
        resamples=300,
        confidence=0.95,
        seed=1,
    )
    comparison = paired_difference("roc_auc", y, candidate, incumbent, resamples=500, confidence=0.95, seed=1)
    return {
        "best": "hgb",
        "selected_on": "validation",
        "candidates": {
            "hgb": {
                "run_id": "run-new",
                "model_uri": "models:/m-new",
                "metrics": {"roc_auc": comparison["candidate"]},
                "slices": {},
            }
        },
        "champion": {"version": "4", "run_id": "run-old", "metrics": {"roc_auc": comparison["champion"]}},
        "comparison": {"roc_auc": comparison | {"min_delta": 0.002}},
        "fairness": fairness,
        "calibration_error": 0.02,
        "infrastructure": {"passed": True, "reason": "ok", "max_abs_difference": 0.0},
    }


def test_groups_agree_with_fairlearn_and_small_groups_are_gated_on_their_interval(usecase):
    frame, y, signal = _holdout()
    scores = _model(signal, 0.8, 1)
    found = _evaluation(usecase, frame, y, scores, None)["fairness"]
    assert set(found) == {"gender", "age_band"} and found["age_band"]["champion"] is None
    groups = {g["group"]: g for g in found["age_band"]["candidate"]["groups"]}
    assert set(groups) == {*BANDS, "unknown"}
    rates = MetricFrame(
        metrics=selection_rate,
        y_true=y,
        y_pred=(scores >= 0.3).astype(int),
        sensitive_features=frame["age_band"],
    ).by_group
    for band in BANDS:
        mask = (frame["age_band"] == band).to_numpy()
        assert groups[band]["value"] == pytest.approx(roc_auc_score(y[mask], scores[mask]))
        assert groups[band]["low"] < groups[band]["value"] < groups[band]["high"]
        assert groups[band]["selection_rate"] == pytest.approx(rates[band])
        assert groups[band]["rows"] == mask.sum() and groups[band]["gated_on"] == "value"
        rate = groups[band]["rate_intervals"]["selection_rate"]
        assert rate["low"] < groups[band]["selection_rate"] < rate["high"]
    unknown = groups["unknown"]
    assert unknown["gated_on"] == "interval" and "rows" in unknown["note"]
    assert unknown["low"] < unknown["high"]
    assert found["age_band"]["candidate"]["worst"] != "unknown"


def test_better_overall_but_unfair_to_one_age_band_is_not_promoted(usecase):
    """The candidate ranks everyone better than the champion except patients of 70 and over, whom it ranks
    nearly at random: it wins overall (the change check passes) and fails the age band fairness gap."""
    frame, y, signal = _holdout()
    old = (frame["age_band"] == "70+").to_numpy()
    candidate = _model(signal, np.where(old, 6.0, 0.2), 1)
    incumbent = _model(signal, 0.9, 2)
    evaluated = _evaluation(usecase, frame, y, candidate, incumbent)
    decision = decide(usecase.gate, evaluated)
    checks = {c["name"]: c for c in decision["checks"]}
    assert checks["roc_auc_vs_champion"]["passed"] is True  # better overall, beyond the noise
    gap = checks["fairness_age_band_gap_roc_auc"]
    assert gap["passed"] is False and gap["group"] == "70+" and "'70+'" in gap["reason"]
    assert gap["threshold"] == 0.15
    assert checks["fairness_gender_gap_roc_auc"]["threshold"] == 0.10  # the per-attribute bound
    assert checks["fairness_gender_gap_roc_auc"]["passed"] is True
    assert decision["passed"] is False
    page = render_report_html(
        {
            "usecase": usecase.name,
            "logical_date": "2024-03-01",
            "primary_metric": "roc_auc",
            "task": "classification",
            "best": "hgb",
            "holdout": {
                "start": "2024-02-23",
                "end_exclusive": "2024-03-01",
                "rows": ROWS,
                "positive_rate": float(y.mean()),
            },
            "candidates": {"hgb": {"run_id": "run-new", "metrics": {"roc_auc": 0.7}}},
            "champion": None,
            "fairness": evaluated["fairness"],
            "explanation": {
                "feature_importance": {"metric": "roc_auc", "method": "permutation", "features": []},
                "slices": {},
                "errors": {"worst_slices": [], "min_slice_rows": 1},
            },
            "decision": {k: decision[k] for k in ("passed", "checks", "reasons", "candidate")},
        }
    )
    assert "NOT PASSED" in page and "70+" in page and "fairness_age_band_gap_roc_auc" in page


def test_the_worst_group_may_not_get_worse_than_the_champions(usecase):
    frame, y, signal = _holdout()
    gate = usecase.gate.model_copy(
        update={
            "fairness": usecase.gate.fairness.model_copy(
                update={"max_gap": None, "attributes": {}, "max_worst_drop": 0.01}
            )
        }
    )
    old = (frame["age_band"] == "70+").to_numpy()
    evaluated = _evaluation(
        usecase, frame, y, _model(signal, np.where(old, 2.0, 0.5), 1), _model(signal, 0.5, 2)
    )
    check = next(
        c for c in decide(gate, evaluated)["checks"] if c["name"] == "fairness_age_band_worst_drop_roc_auc"
    )
    assert check["passed"] is False and check["value"] > 0.01 and check["group"] == "70+"


def _gate(usecase, **bounds):
    """The example use case's gate with the fairness bounds replaced (the per-attribute overrides dropped)."""
    fairness = usecase.gate.fairness.model_copy(update={"attributes": {}, **bounds})
    return usecase.gate.model_copy(update={"fairness": fairness})


def _checks(decision: dict) -> dict:
    return {c["name"]: c for c in decision["checks"]}


def test_a_poor_auc_on_an_80_row_group_is_rejected(usecase):
    """80 rows are under min_group_rows (200): before, the group was shown and never gated. A candidate that
    ranks it backwards (ROC AUC about 0.30) and everyone else well is rejected on the group's interval."""
    frame, y, signal = _holdout()
    frame.loc[frame.index[100:180], "age_band"] = "90+"
    small = (frame["age_band"] == "90+").to_numpy()
    candidate = np.where(small, _model(-0.4 * signal, 0.5, 3), _model(signal, 0.3, 1))
    incumbent = _model(signal, 0.9, 2)
    assert small.sum() == 80 and roc_auc_score(y[small], candidate[small]) == pytest.approx(0.30, abs=0.02)
    evaluated = _evaluation(usecase, frame, y, candidate, incumbent)
    group = next(g for g in evaluated["fairness"]["age_band"]["candidate"]["groups"] if g["group"] == "90+")
    assert group["gated_on"] == "interval" and group["high"] < 0.5
    # with the use case's bounds (max_gap 0.15): the group's interval shows a gap far over the bound
    decision = decide(usecase.gate, evaluated)
    gap = _checks(decision)["fairness_age_band_gap_roc_auc"]
    assert gap["passed"] is False and gap["group"] == "90+" and "gated on its interval" in gap["reason"]
    assert _checks(decision)["roc_auc_vs_champion"]["passed"] is True  # better overall, beyond the noise
    assert decision["passed"] is False
    # with a floor: the group fails it because even its interval's upper bound is below the floor
    floor = _checks(decide(_gate(usecase, max_gap=None, min_value=0.55), evaluated))[
        "fairness_age_band_min_roc_auc"
    ]
    assert floor["passed"] is False and floor["group"] == "90+" and floor["value"] == group["high"]
    assert floor["interval"] == {"low": group["low"], "high": group["high"]}
    # against the same group under the champion: judged on the paired interval of the group's change
    drop = _checks(decide(_gate(usecase, max_gap=None, max_worst_drop=0.05), evaluated))[
        "fairness_age_band_worst_drop_roc_auc"
    ]
    assert drop["passed"] is False and drop["group"] == "90+" and "paired interval" in drop["reason"]
    assert drop["value"] == pytest.approx(-evaluated["fairness"]["age_band"]["changes"]["90+"]["high"])
    # the same candidate without the backwards group passes every fairness check
    fair = _evaluation(usecase, frame, y, _model(signal, 0.3, 1), incumbent)
    fair_decision = decide(_gate(usecase, min_value=0.55), fair)
    assert all(c["passed"] for c in fair_decision["checks"] if c["kind"] == "fairness"), fair_decision[
        "reasons"
    ]


def test_a_group_too_small_for_an_interval_is_listed_as_not_gated(usecase):
    frame, y, signal = _holdout()
    y = y.copy()
    tiny = frame.index[200:203]
    frame.loc[tiny, "age_band"] = "100+"
    y[tiny] = 0.0  # three rows of one class: no ROC AUC, no interval
    evaluated = _evaluation(usecase, frame, y, _model(signal, 0.3, 1), _model(signal, 0.9, 2))
    checks = _checks(decide(usecase.gate, evaluated))
    listed = checks["fairness_age_band_not_gated_roc_auc"]
    assert listed["skipped"] is True and listed["passed"] is True and "['100+']" in listed["reason"]
    assert "not gated" in checks["fairness_age_band_gap_roc_auc"]["reason"]
    assert "'100+'" in checks["fairness_age_band_gap_roc_auc"]["reason"]
    # an attribute none of whose groups can be gated (each group holds one class only): the check fails closed
    frame["outcome"] = np.where(y > 0, "showed-no", "showed-yes")
    closed = _evaluation(usecase, frame, y, _model(signal, 0.3, 1), None, attributes=["outcome"])
    check = _checks(decide(usecase.gate, closed))["fairness_outcome_defined_roc_auc"]
    assert check["passed"] is False and "no outcome group could be gated" in check["reason"]
    assert "not gated" in check["reason"]


def test_each_group_is_compared_with_the_same_group_of_the_champion(usecase):
    """The candidate's worst group (18-29) is better than the champion's worst group (70+), so worst against
    worst shows no drop; against the same group under the champion, 18-29 got much worse: rejected."""
    frame, y, signal = _holdout()
    bands = frame["age_band"].to_numpy()
    candidate = _model(signal, np.where(bands == "18-29", 1.5, 0.3), 1)
    incumbent = _model(signal, np.where(bands == "70+", 3.0, 0.3), 2)
    evaluated = _evaluation(usecase, frame, y, candidate, incumbent)
    found = evaluated["fairness"]["age_band"]
    assert found["candidate"]["worst"] == "18-29" and found["champion"]["worst"] == "70+"
    assert found["candidate"]["worst_value"] > found["champion"]["worst_value"]  # worst vs worst: no drop
    change = found["changes"]["18-29"]
    assert change["high"] < 0  # the paired interval of the group's change lies below zero
    check = _checks(decide(_gate(usecase, max_gap=None, max_worst_drop=0.02), evaluated))[
        "fairness_age_band_worst_drop_roc_auc"
    ]
    assert check["passed"] is False and check["group"] == "18-29" and check["value"] > 0.05
    assert check["baseline"] == pytest.approx(
        next(g for g in found["champion"]["groups"] if g["group"] == "18-29")["value"]
    )


def test_a_3x_false_positive_rate_gap_is_rejected_when_a_bound_is_set(usecase):
    """The candidate ranks both genders equally well but sets men's scores higher: at the decision threshold
    (0.5) men's false-positive rate is three times women's. Without a rate bound that passes; with
    max_fpr_gap 0.05 it is rejected, the check naming both groups."""
    frame, y, signal = _holdout()
    men = (frame["gender"] == "M").to_numpy()
    base = _model(signal, 0.2, 1)
    candidate = 1 / (1 + np.exp(-(np.log(base / (1 - base)) + np.where(men, 0.55, 0.0))))
    evaluated = _evaluation(usecase, frame, y, candidate, _model(signal, 0.9, 2), threshold=0.5)
    groups = {g["group"]: g for g in evaluated["fairness"]["gender"]["candidate"]["groups"]}
    assert groups["M"]["fpr"] / groups["F"]["fpr"] == pytest.approx(3.0, abs=0.3)
    assert groups["M"]["fpr"] == pytest.approx(
        MetricFrame(
            metrics=false_positive_rate,
            y_true=y,
            y_pred=(candidate >= 0.5).astype(int),
            sensitive_features=men,
        ).by_group[True]
    )
    assert decide(usecase.gate, evaluated)["passed"] is True, decide(usecase.gate, evaluated)["reasons"]
    decision = decide(_gate(usecase, max_fpr_gap=0.05), evaluated)
    check = _checks(decision)["fairness_gender_gap_fpr"]
    assert check["passed"] is False and check["value"] == pytest.approx(
        groups["M"]["fpr"] - groups["F"]["fpr"]
    )
    assert "false-positive rate gap at threshold 0.5000" in check["reason"] and "'M'" in check["reason"]
    assert check["point_gap"] == pytest.approx(
        evaluated["fairness"]["gender"]["candidate"]["rate_gaps"]["fpr"]
    )
    assert decision["passed"] is False
    # a generous bound passes; the true-positive and selection rate bounds are read the same way
    loose = _checks(decide(_gate(usecase, max_fpr_gap=0.5, max_selection_rate_gap=0.5), evaluated))
    assert (
        loose["fairness_gender_gap_fpr"]["passed"] and loose["fairness_gender_gap_selection_rate"]["passed"]
    )
