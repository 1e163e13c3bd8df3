"""Fairness over sensitive attributes on the example use case (appointment_no_show: gender, age band): fairlearn
MetricFrame groups with bootstrap intervals, small groups flagged not gated, and a candidate better overall but
unfair to one age band is not promoted, with the group named in the decision and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, selection_rate
from sklearn.metrics import roc_auc_score

from pipelines.config import load_usecase
from pipelines.fairness import fairness_report
from pipelines.report import render_report_html
from pipelines.significance import paired_difference
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
    frame.loc[frame.index[:40], "age_band"] = "unknown"  # a tiny group: shown, flagged, never gated
    signal = rng.normal(size=ROWS)
    y = (rng.random(ROWS) < 1 / (1 + np.exp(-(1.5 * signal - 1.2)))).astype("float64")
    return frame, y, signal


def _model(signal: np.ndarray, noise: np.ndarray | float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(signal + rng.normal(size=len(signal)) * noise - 1.2)))


def _evaluation(usecase, frame, y, candidate, incumbent) -> dict:
    spec = usecase.gate.fairness
    fairness = fairness_report(
        y,
        candidate,
        incumbent,
        frame,
        attributes=list(usecase.sensitive_attributes),
        spec=spec,
        task="classification",
        candidate_threshold=0.3,
        champion_threshold=0.3,
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


def test_groups_agree_with_fairlearn_and_small_groups_are_flagged(usecase):
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
        assert groups[band]["rows"] == mask.sum() and groups[band]["gated"] is True
    assert groups["unknown"]["gated"] is False and "rows" in groups["unknown"]["note"]
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
