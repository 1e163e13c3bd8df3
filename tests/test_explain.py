"""Error cohorts and the training-versus-holdout data explorer on seeded synthetic data."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluation.explain import data_explorer, error_cohorts, psi

Z = 1.959963984540054
CONDITION = re.compile(r"^(\w+) (<=|>|=|!=) (.+)$")


def rule_mask(frame: pd.DataFrame, rule: str) -> np.ndarray:
    """Rows a cohort rule selects, read independently of the module (no missing values in ``frame``)."""
    mask = np.ones(len(frame), dtype=bool)
    if rule == "all rows":
        return mask
    for part in rule.split(" and "):
        col, op, value = CONDITION.match(part).groups()
        column = frame[col]
        if op == ">":
            mask &= column.to_numpy() > float(value)
        elif op == "<=":
            mask &= column.to_numpy() <= float(value)
        elif op == "=":
            mask &= column.astype(str).to_numpy() == value
        else:
            mask &= column.astype(str).to_numpy() != value
    return mask


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def planted(n: int = 4000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.uniform(0, 10, n),
            "z": rng.normal(0, 1, n),
            "cat": rng.choice(["a", "b", "c"], n),
            "origin": rng.choice(["JFK", "LGA", "EWR"], n),
        }
    )


def hot(frame: pd.DataFrame) -> np.ndarray:
    return (frame["x"] > 5).to_numpy() & (frame["cat"] == "b").to_numpy()


def test_classification_finds_the_planted_cohort() -> None:
    frame = planted()
    rng = np.random.default_rng(2)
    errors = (rng.random(len(frame)) < np.where(hot(frame), 0.6, 0.05)).astype(int)

    out = error_cohorts(
        frame, errors, task="classification", numeric=["x", "z"], categorical=["cat", "origin"]
    )
    json.dumps(out, allow_nan=False)

    assert out["method"] == "decision tree (depth <= 3) on the holdout errors"
    assert out["error"] == "wrongly decided at the decision threshold"
    assert out["rows"] == len(frame)
    assert out["overall_error"] == pytest.approx(errors.mean())
    cohorts = out["cohorts"]
    assert 1 < len(cohorts) <= 8
    assert [c["error_rate"] for c in cohorts] == sorted((c["error_rate"] for c in cohorts), reverse=True)

    best = cohorts[0]
    assert "cat = b" in best["rule"]
    threshold = float(re.search(r"x > ([\d.]+)", best["rule"]).group(1))
    assert 4.5 < threshold < 5.5
    mask = rule_mask(frame, best["rule"])
    assert best["rows"] == mask.sum()
    k = int(errors[mask].sum())
    assert best["error_rate"] == pytest.approx(k / mask.sum())
    assert best["error_rate"] > 0.45
    low, high = wilson(k, int(mask.sum()))
    assert best["low"] == pytest.approx(low)
    assert best["high"] == pytest.approx(high)
    assert best["low"] < best["error_rate"] < best["high"]
    for cohort in cohorts:  # every rule selects exactly its rows (at least the default 50 of them)
        assert rule_mask(frame, cohort["rule"]).sum() == cohort["rows"] >= 50


def test_leaves_partition_the_rows_and_top_limits() -> None:
    frame = planted(seed=3)
    rng = np.random.default_rng(4)
    errors = (rng.random(len(frame)) < np.where(hot(frame), 0.5, 0.1)).astype(int)
    kwargs = {"task": "classification", "numeric": ["x", "z"], "categorical": ["cat", "origin"]}

    every = error_cohorts(frame, errors, top=100, **kwargs)["cohorts"]
    assert sum(c["rows"] for c in every) == len(frame)
    masks = np.array([rule_mask(frame, c["rule"]) for c in every])
    assert (masks.sum(axis=0) == 1).all()

    assert len(error_cohorts(frame, errors, top=2, **kwargs)["cohorts"]) == 2
    shallow = error_cohorts(frame, errors, max_depth=1, min_rows=400, **kwargs)
    assert shallow["method"] == "decision tree (depth <= 1) on the holdout errors"
    assert len(shallow["cohorts"]) == 2
    assert all(c["rows"] >= 400 for c in shallow["cohorts"])


def test_regression_uses_mean_absolute_error() -> None:
    frame = planted(seed=5)
    rng = np.random.default_rng(6)
    errors = np.abs(rng.normal(0, np.where(hot(frame), 5.0, 0.5)))

    out = error_cohorts(frame, errors, task="regression", numeric=["x", "z"], categorical=["cat", "origin"])
    json.dumps(out, allow_nan=False)
    assert out["error"] == "absolute error"
    assert out["overall_error"] == pytest.approx(errors.mean())
    best = out["cohorts"][0]
    assert "cat = b" in best["rule"] and "x > " in best["rule"]
    values = errors[rule_mask(frame, best["rule"])]
    assert best["rows"] == len(values)
    assert best["error_rate"] == pytest.approx(values.mean())
    half = Z * values.std(ddof=1) / math.sqrt(len(values))
    assert best["low"] == pytest.approx(values.mean() - half)
    assert best["high"] == pytest.approx(values.mean() + half)
    assert best["error_rate"] > 2 * out["overall_error"]


def test_missing_values_and_null_category() -> None:
    frame = planted(seed=7)
    frame.loc[frame.index[::10], "x"] = np.nan
    frame["cat"] = frame["cat"].astype(object)
    frame.loc[frame["cat"] == "c", "cat"] = None
    errors = (frame["cat"].isna() & (frame["z"] > 0)).astype(int).to_numpy()

    out = error_cohorts(frame, errors, task="classification", numeric=["x", "z"], categorical=["cat"])
    json.dumps(out, allow_nan=False)
    best = out["cohorts"][0]
    assert "cat = (null)" in best["rule"]
    assert re.search(r"z > -?0\.0\d*", best["rule"])
    assert best["error_rate"] == pytest.approx(1.0)
    assert best["high"] == pytest.approx(1.0)


def test_one_leaf_and_empty() -> None:
    frame = planted(n=300)
    out = error_cohorts(frame, np.zeros(300), task="classification", numeric=["x"], categorical=["cat"])
    assert out["overall_error"] == 0.0
    assert out["cohorts"] == [
        {
            "rule": "all rows",
            "rows": 300,
            "error_rate": 0.0,
            "low": 0.0,
            "high": pytest.approx(wilson(0, 300)[1]),
        }
    ]
    regression = error_cohorts(frame, np.full(300, 2.5), task="regression", numeric=["x"], categorical=[])
    assert regression["cohorts"] == [
        {"rule": "all rows", "rows": 300, "error_rate": 2.5, "low": 2.5, "high": 2.5}
    ]
    no_features = error_cohorts(frame, np.arange(300) % 2, task="classification", numeric=[], categorical=[])
    assert [c["rule"] for c in no_features["cohorts"]] == ["all rows"]

    empty = error_cohorts(frame.iloc[:0], np.array([]), task="regression", numeric=["x"], categorical=["cat"])
    assert empty["cohorts"] == [] and empty["overall_error"] is None and empty["rows"] == 0


def test_error_cohorts_rejects_bad_input() -> None:
    frame = planted(n=100)
    with pytest.raises(ValueError, match="nope"):
        error_cohorts(frame, np.zeros(100), task="classification", numeric=["nope"], categorical=[])
    with pytest.raises(ValueError, match="99 values"):
        error_cohorts(frame, np.zeros(99), task="classification", numeric=["x"], categorical=[])
    with pytest.raises(ValueError, match="task"):
        error_cohorts(frame, np.zeros(100), task="ranking", numeric=["x"], categorical=[])
    with pytest.raises(ValueError, match="0/1"):
        error_cohorts(frame, np.full(100, 0.5), task="classification", numeric=["x"], categorical=[])


def test_psi() -> None:
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    expected = (0.6 - 0.5) * math.log(0.6 / 0.5) + (0.4 - 0.5) * math.log(0.4 / 0.5)
    assert psi([0.5, 0.5], [0.6, 0.4]) == pytest.approx(expected)
    clipped = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert psi([0.5, 0.5], [0.0, 1.0]) == pytest.approx(clipped)
    assert psi([], []) is None
    assert psi([0.5, float("nan")], [0.5, 0.5]) is None
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


def frames(seed: int, shift: float = 0.0, n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "num": rng.normal(10 + shift, 2, n),
            "const": np.full(n, 3.0),
            "cat": rng.choice(["a", "b", "c", "d", "e"], n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
        }
    )


def by_feature(out: dict) -> dict[str, dict]:
    return {f["feature"]: f for f in out["features"]}


def test_explorer_same_distribution_and_shape() -> None:
    train, holdout = frames(1), frames(2, n=3000)
    out = data_explorer(train, holdout, numeric=["num", "const"], categorical=["cat"])
    json.dumps(out, allow_nan=False)
    assert (out["train_rows"], out["holdout_rows"]) == (5000, 3000)
    assert [f["feature"] for f in out["features"]] == ["num", "const", "cat"]
    assert [f["kind"] for f in out["features"]] == ["numeric", "numeric", "categorical"]
    for feature in out["features"]:
        assert feature["train"]["bins"] == feature["holdout"]["bins"]
        for side in ("train", "holdout"):
            assert sum(feature[side]["shares"]) == pytest.approx(1.0)
            assert len(feature[side]["shares"]) == len(feature[side]["bins"])
        assert feature["psi"] is not None and 0.0 <= feature["psi"] < 0.05
        assert feature["train_missing"] == feature["holdout_missing"] == 0.0

    num = by_feature(out)["num"]
    assert len(num["train"]["bins"]) == 10
    assert num["train"]["bins"][0].startswith("<= ") and num["train"]["bins"][-1].startswith("> ")
    assert all(re.fullmatch(r"\([\d.]+, [\d.]+\]", b) for b in num["train"]["bins"][1:-1])
    assert num["train"]["shares"] == pytest.approx([0.1] * 10, abs=0.002)
    assert by_feature(out)["const"]["train"]["bins"] == ["all values"]
    assert by_feature(out)["cat"]["train"]["bins"] == ["a", "b", "c", "d", "e", "(other)"]
    assert by_feature(out)["cat"]["train"]["shares"][-1] == 0.0


def test_explorer_shift_missing_out_of_range_and_other() -> None:
    train, holdout = frames(3), frames(4, shift=2.0, n=2000)
    train.loc[train.index[:500], "num"] = np.nan  # 10% missing
    holdout["cat"] = holdout["cat"].astype(object)
    holdout.loc[holdout.index[:200], "cat"] = None  # 10% missing
    holdout.loc[holdout.index[200:300], "cat"] = "zzz"  # unseen in train
    holdout.loc[holdout.index[300:310], "num"] = -1000.0
    holdout.loc[holdout.index[310:330], "num"] = 1000.0

    out = by_feature(data_explorer(train, holdout, numeric=["num"], categorical=["cat"], top_categories=2))
    num, cat = out["num"], out["cat"]
    assert num["train_missing"] == pytest.approx(0.1) and num["holdout_missing"] == 0.0
    assert cat["train_missing"] == 0.0 and cat["holdout_missing"] == pytest.approx(0.1)
    assert num["psi"] > 0.2
    for feature in (num, cat):
        for side in ("train", "holdout"):
            assert sum(feature[side]["shares"]) == pytest.approx(1.0)

    # shares are over non-missing train values; holdout values far outside the train range land in the end bins
    values = holdout["num"].to_numpy()
    first = float(num["train"]["bins"][0].removeprefix("<= "))
    last = float(num["train"]["bins"][-1].removeprefix("> "))
    assert num["holdout"]["shares"][0] == pytest.approx((values <= first).mean())
    assert num["holdout"]["shares"][-1] == pytest.approx((values > last).mean())
    assert num["holdout"]["shares"][-1] > 0.3  # shifted up by one sd

    assert cat["train"]["bins"] == ["a", "b", "(other)"]
    present = holdout["cat"].dropna()
    assert cat["holdout"]["shares"][-1] == pytest.approx((~present.isin(["a", "b"])).mean())
    assert cat["train"]["shares"][-1] == pytest.approx((~train["cat"].isin(["a", "b"])).mean())


def test_explorer_edge_cases() -> None:
    train = pd.DataFrame({"num": [0, 0, 0, 0, 1, 1], "cat": ["x", "x", "y", "y", "y", None]})
    holdout = pd.DataFrame({"num": [0, 1, 1, 2, None], "cat": ["y", "w", None, None, "x"]})
    out = by_feature(data_explorer(train, holdout, numeric=["num"], categorical=["cat"]))
    assert out["num"]["train"]["bins"] == ["<= 0", "> 0"]
    assert out["num"]["holdout"]["shares"] == [0.25, 0.75]
    assert out["num"]["holdout_missing"] == pytest.approx(0.2)
    assert out["cat"]["train"]["bins"] == ["y", "x", "(other)"]
    assert out["cat"]["train_missing"] == pytest.approx(1 / 6)
    assert out["cat"]["holdout"]["shares"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])

    with pytest.raises(ValueError, match="holdout.*cat"):
        data_explorer(train, holdout.drop(columns="cat"), numeric=["num"], categorical=["cat"])
    with pytest.raises(ValueError, match="train.*missing_col"):
        data_explorer(train, holdout, numeric=["missing_col"], categorical=[])

    empty = data_explorer(train.iloc[:0], holdout, numeric=["num"], categorical=["cat"])
    assert empty["train_rows"] == 0
    assert all(f["psi"] is None for f in empty["features"])
    json.dumps(empty, allow_nan=False)


@pytest.fixture(scope="module")
def tree_candidate():
    """A real histogram gradient boosting candidate (native categorical features) on synthetic flights."""
    from datetime import date, timedelta
    from types import SimpleNamespace

    from _model_fixtures import fast_usecase, synthetic_day

    from pipelines import modeling
    from pipelines.config import CandidateSpec
    from pipelines.features.model_inputs import model_inputs

    usecase = fast_usecase()
    frame = pd.concat([synthetic_day(usecase, date(2013, 1, 1) + timedelta(days=d), 300) for d in range(10)])
    frame = frame[frame[usecase.target.column].notna()].reset_index(drop=True)
    X = model_inputs(usecase, frame, "test rows")
    y = frame[usecase.target.column].to_numpy(dtype="int64")
    spec = CandidateSpec(name="hgb", family="hist_gradient_boosting", params={"max_iter": 40})
    return SimpleNamespace(
        usecase=usecase, X=X, y=y, spec=spec, fitted=modeling.fit_candidate(spec, usecase, X, y, 1)
    )


class _Pyfunc:
    """What MLflow's pyfunc flavor of the candidate does: ``predict`` gives P(label == 1)."""

    def __init__(self, estimator):
        self.estimator = estimator

    def predict(self, frame):
        return self.estimator.predict_proba(frame)[:, 1]


def test_shap_summary_of_a_tree_candidate_adds_up_and_finds_the_signal(tree_candidate):
    """The summary's contributions add up to the model's log-odds (shap's TreeExplainer does not, on native
    categorical splits), the strongest synthetic signal ranks first and every model input is one row of the
    summary."""
    from pipelines.evaluation.explain import shap_summary

    usecase, X, spec, fitted = (
        tree_candidate.usecase,
        tree_candidate.X,
        tree_candidate.spec,
        tree_candidate.fitted,
    )
    summary = shap_summary(fitted.estimator, X, family=spec.family, seed=3, rows=60, background=30)
    assert summary["rows"] == 60 and summary["additivity_error"] < 1e-6
    names = [f["feature"] for f in summary["features"]]
    assert sorted(names) == sorted(X.columns)
    assert names[0] == usecase.features.numeric[0]  # weight 1.2, the strongest in the synthetic label
    assert all(len(f["points"]) == 60 for f in summary["features"])
    json.dumps(summary, allow_nan=False)
    assert "cut" not in summary


def test_shap_summary_explains_every_family_that_can_win(tree_candidate):
    """A logistic regression (once silently left out) is explained on its transformed frame, and a model without
    a scikit-learn pipeline (the Keras MLP's case: only the pyfunc's predict) on its input columns through that
    predict: both add up to the model's log-odds and find the strongest synthetic signal."""
    from pipelines import modeling
    from pipelines.config import CandidateSpec
    from pipelines.evaluation.explain import shap_summary

    usecase, X, y = tree_candidate.usecase, tree_candidate.X, tree_candidate.y
    spec = CandidateSpec(name="logreg", family="logistic_regression", params={"C": 1.0, "max_iter": 200})
    linear = modeling.fit_candidate(spec, usecase, X, y, 1).estimator
    summary = shap_summary(linear, X, family=spec.family, seed=3, rows=40, background=20)
    assert summary["rows"] == 40 and summary["additivity_error"] < 1e-6
    assert "transformed frame" in summary["method"]
    assert summary["features"][0]["feature"] == usecase.features.numeric[0]

    pyfunc_only = _Pyfunc(tree_candidate.fitted.estimator)  # no get_raw_model, no pipeline steps
    agnostic = shap_summary(pyfunc_only, X, family="keras_mlp", seed=3, rows=30, background=20)
    assert agnostic["rows"] == 30 and agnostic["additivity_error"] < 1e-6
    assert "pyfunc prediction" in agnostic["method"]
    assert sorted(f["feature"] for f in agnostic["features"]) == sorted(X.columns)
    assert agnostic["features"][0]["feature"] == usecase.features.numeric[0]
    json.dumps(agnostic, allow_nan=False)


def test_shap_summary_cuts_its_rows_to_the_budget_and_says_so(tree_candidate):
    from pipelines.evaluation.explain import shap_summary

    hurried = shap_summary(
        tree_candidate.fitted.estimator,
        tree_candidate.X,
        family="hist_gradient_boosting",
        rows=80,
        budget_s=1e-9,
    )
    assert hurried["rows"] == 10 and all(len(f["points"]) == 10 for f in hurried["features"])
    assert hurried["cut"] == "10 of 80 rows explained to fit the 1e-09 s budget"


def test_the_shap_budget_counts_what_ran_before_the_model_calls() -> None:
    """The budget is the part's from its start: shap's import (seconds, the first time in a process) and the
    preparation are inside it. A budget spent before the first model call leaves the ten rows of the floor; the
    same budget counted from the model calls alone explains every row."""
    import time

    import numpy as np

    from pipelines.evaluation.explain import _explain

    rng = np.random.default_rng(0)
    Z, background = rng.normal(size=(40, 3)), rng.normal(size=(8, 3))

    def output(values: np.ndarray) -> np.ndarray:
        return values @ np.array([1.0, -2.0, 0.5])

    spent = _explain(output, Z, background, rows=40, seed=0, budget_s=5.0, started=time.perf_counter() - 5.0)
    fresh = _explain(output, Z, background, rows=40, seed=0, budget_s=5.0, started=time.perf_counter())
    assert spent[3] == 10 and len(spent[1]) == 10
    assert fresh[3] == 40 and fresh[2] < 1e-9


def test_counterfactuals_flip_the_decision_at_the_threshold(tree_candidate):
    from pipelines.evaluation.explain import counterfactuals

    usecase, X, y = tree_candidate.usecase, tree_candidate.X, tree_candidate.y
    model = _Pyfunc(tree_candidate.fitted.estimator)
    train, holdout = slice(0, 2000), slice(2000, None)
    scores = model.predict(X.iloc[holdout])
    threshold = 0.35
    inputs = (model, X.iloc[train], y[train], X.iloc[holdout].reset_index(drop=True), y[holdout], scores)
    options = {
        "threshold": threshold,
        "numeric": list(usecase.features.numeric),
        "categorical": list(usecase.features.categorical),
        "per_kind": 2,
        "seed": 5,
    }
    found = counterfactuals(*inputs, **options)
    kinds = [r["kind"] for r in found["rows"]]
    assert kinds == ["high risk", "high risk", "wrongly scored", "wrongly scored"]
    assert found["rows"][0]["score"] == pytest.approx(scores.max())
    flipped = 0
    for row in found["rows"]:
        assert "error" not in row, row
        before = row["score"] >= threshold
        if row["kind"] == "wrongly scored":
            assert before != bool(row["label"])
        for cf in row["counterfactuals"]:
            assert cf["changes"] and (cf["score"] >= threshold) != before  # the decision flipped
            flipped += 1
    assert flipped >= 4
    json.dumps(found, allow_nan=False)

    # a spent time budget starts no further search: the rows left are listed as skipped, with the reason
    hurried = counterfactuals(*inputs, **options, budget_s=0.0)
    assert [r["row"] for r in hurried["rows"]] == [r["row"] for r in found["rows"]]
    assert all("budget" in r["error"] and not r["counterfactuals"] for r in hurried["rows"][1:])


def test_shap_summary_explains_a_pyfunc_of_our_own_python_model(tree_candidate):
    """A pyfunc of our own Python model (the Keras wrapper is one) answers `get_raw_model` with
    NotImplementedError: SHAP explains it through its prediction instead of failing (the report's SHAP section
    failed for every MLP champion)."""
    from pipelines.evaluation.explain import shap_summary

    class OwnPythonModel(_Pyfunc):
        def get_raw_model(self):
            raise NotImplementedError("`get_raw_model` is not implemented by the underlying model")

    model = OwnPythonModel(tree_candidate.fitted.estimator)
    summary = shap_summary(model, tree_candidate.X, family="keras_mlp", seed=3, rows=20, background=10)
    assert summary["rows"] == 20 and "pyfunc prediction" in summary["method"], summary["method"]
    assert summary["additivity_error"] < 1e-6


def test_shap_in_two_timed_calls_gives_the_values_of_one_call() -> None:
    """The first rows are explained apart (timed, to size the rest): the seeded permutations continue across the
    two calls, so the values are exactly those of one call over every row."""
    import time

    import numpy as np

    from pipelines.evaluation.explain import _explain, _shap

    rng = np.random.default_rng(1)
    Z, background = rng.normal(size=(40, 6)), rng.normal(size=(8, 6))

    def output(values: np.ndarray) -> np.ndarray:  # not additive: the permutations' order matters
        return np.tanh(values @ np.array([1.0, -2.0, 0.5, 0.3, 0.0, 1.0])) + values[:, 0] * values[:, 1]

    values, explained, additivity, allowed = _explain(
        output, Z, background, rows=40, seed=3, budget_s=None, started=time.perf_counter()
    )
    shap = _shap()
    one = shap.PermutationExplainer(output, shap.maskers.Independent(background, max_samples=8), seed=3)
    expected = one(Z, max_evals=13, silent=True, batch_size=13).values
    assert allowed == 40 and len(explained) == 40 and additivity < 1e-9
    np.testing.assert_array_equal(values, expected)
