"""The numpy pass of the linear pipelines (pipelines.serving.linear) against the fitted scikit-learn pipelines
it stands for: the same scores, whole batches and single rows, through every branch of the imputer and the
encoder (missing numbers, a category missing in training and at scoring, infrequent categories, categories never
seen)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.config import CandidateSpec, load_usecase
from pipelines.features.model_inputs import model_input_columns
from pipelines.modeling import _sklearn_pipeline
from pipelines.serving.linear import linear_pass


def _frame(usecase, rows: int, seed: int) -> pd.DataFrame:
    """Model inputs with missing numbers, a skewed categorical of 70 values (past the encoder's 50: the rare ones
    become its infrequent column) with missing values, and a label that depends on both."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(size=rows) for c in usecase.features.numeric})
    for column in usecase.features.numeric[::3]:
        frame.loc[rng.random(rows) < 0.1, column] = np.nan
    codes = np.minimum(rng.geometric(0.08, size=rows), 70)
    frame[usecase.features.categorical[0]] = np.where(rng.random(rows) < 0.05, None, [f"c{k}" for k in codes])
    for column in usecase.features.categorical[1:]:
        frame[column] = rng.choice(["x", "y", "z"], size=rows).astype(object)
    signal = np.nan_to_num(frame[usecase.features.numeric[0]].to_numpy()) + (codes % 3) * 0.5
    frame["label"] = (signal + rng.normal(size=rows) > 0.8).astype(int)
    return frame


def _scoring_rows(usecase, fitted_on: pd.DataFrame, rows: int) -> pd.DataFrame:
    frame = _frame(usecase, rows, seed=99).drop(columns="label")
    first = usecase.features.categorical[0]
    frame.loc[::7, first] = "never-seen"
    frame.loc[1::11, usecase.features.categorical[-1]] = "never-seen-either"
    frame.loc[2::13, first] = None
    return frame


@pytest.mark.parametrize(
    ("usecase_name", "family"), [("flight_delay", "logistic_regression"), ("flight_arrival_delay", "ridge")]
)
def test_the_numpy_pass_scores_as_the_fitted_pipeline(usecase_name: str, family: str) -> None:
    usecase = load_usecase(usecase_name)
    classification = usecase.task == "classification"
    train = _frame(usecase, 4000, seed=1)
    pipeline = _sklearn_pipeline(CandidateSpec(name="c", family=family), usecase, seed=3)
    features = usecase.features.numeric + usecase.features.categorical
    label = train["label"] if classification else train["label"] + train[features[0]].fillna(0)
    pipeline.fit(train[features], label)
    encoder = pipeline.named_steps["preprocess"].named_transformers_["categorical"]
    assert encoder.infrequent_categories_[0] is not None, "the test needs infrequent categories"
    assert pipeline.named_steps["preprocess"].named_transformers_["numeric"][0].indicator_ is not None

    rows = _scoring_rows(usecase, train, 500)
    expected = (
        pipeline.predict_proba(rows[features])[:, 1] if classification else pipeline.predict(rows[features])
    )
    fast = linear_pass(pipeline, classification)
    assert fast is not None
    columns = model_input_columns(usecase, rows[features], "test rows")
    np.testing.assert_allclose(fast(columns), expected, rtol=0, atol=1e-12)
    singles = np.concatenate(
        [fast(model_input_columns(usecase, rows[features].iloc[i : i + 1], "a row")) for i in range(40)]
    )
    np.testing.assert_allclose(singles, expected[:40], rtol=0, atol=1e-12)


def test_models_of_another_shape_have_no_numpy_pass() -> None:
    usecase = load_usecase("flight_delay")
    train = _frame(usecase, 1000, seed=2)
    features = usecase.features.numeric + usecase.features.categorical
    boosting = _sklearn_pipeline(CandidateSpec(name="b", family="hist_gradient_boosting"), usecase, seed=3)
    boosting.fit(train[features], train["label"])
    assert linear_pass(boosting, classification=True) is None
    linear = _sklearn_pipeline(CandidateSpec(name="l", family="logistic_regression"), usecase, seed=3)
    linear.fit(train[features], train["label"])
    assert linear_pass(linear, classification=False) is None  # a classifier is not served as a regressor


def test_a_scaler_that_does_not_centre_is_followed() -> None:
    """StandardScaler(with_mean=False) still fits ``mean_`` (for the variance) but does not subtract it."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    usecase = load_usecase("flight_delay")
    train = _frame(usecase, 1000, seed=4)
    numeric = usecase.features.numeric
    pipeline = make_pipeline(
        ColumnTransformer([("n", make_pipeline(SimpleImputer(), StandardScaler(with_mean=False)), numeric)]),
        LogisticRegression(max_iter=300),
    ).fit(train[numeric] + 3.0, train["label"])
    rows = _scoring_rows(usecase, train, 200)[numeric] + 3.0
    fast = linear_pass(pipeline, classification=True)
    assert fast is not None
    np.testing.assert_allclose(
        fast({column: rows[column].to_numpy() for column in numeric}),
        pipeline.predict_proba(rows)[:, 1],
        rtol=0,
        atol=1e-12,
    )


def test_a_request_the_numpy_pass_cannot_convert_goes_through_scikit_learn_and_is_logged(
    tmp_path, caplog
) -> None:
    """A logged logistic regression (MLflow's scikit-learn flavour, skops) gets the numpy pass once it is verified
    on its input example; a request whose columns the pass cannot convert is scored by scikit-learn instead, and
    the service's log says so (the 1st, 2nd, 4th ... time, not every request)."""
    import logging

    import mlflow

    from pipelines.modeling.tracking import SKOPS_TRUSTED_TYPES
    from pipelines.serving.models import linear_numpy_scorer

    usecase = load_usecase("flight_delay")
    features = usecase.features.numeric + usecase.features.categorical
    train = _frame(usecase, 2000, seed=1)
    pipeline = _sklearn_pipeline(CandidateSpec(name="c", family="logistic_regression"), usecase, seed=3)
    pipeline.fit(train[features], train["label"])
    folder = tmp_path / "model"
    mlflow.sklearn.save_model(
        pipeline,
        str(folder),
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        pyfunc_predict_fn="predict_proba",
        input_example=train[features].dropna().head(5),
    )
    model = mlflow.pyfunc.load_model(str(folder))

    def direct(columns):
        return pipeline.predict_proba(pd.DataFrame(dict(columns))[features])[:, 1]

    scorer = linear_numpy_scorer(model, usecase, folder, direct)
    assert scorer is not None and scorer.runtime == "numpy" and scorer.max_difference <= 1e-12
    rows = _scoring_rows(usecase, train, 20)[features]
    good = model_input_columns(usecase, rows, "test rows")
    np.testing.assert_allclose(scorer.score(good), direct(good), rtol=0, atol=1e-12)
    numeric = usecase.features.numeric[0]
    odd = {**good, numeric: np.array([{"not": "a number"}] * len(rows), dtype=object)}
    caplog.set_level(logging.WARNING)
    with pytest.raises((TypeError, ValueError)):  # what scikit-learn itself answers to such a column
        scorer.score(odd)
    for _ in range(2):
        with pytest.raises((TypeError, ValueError)):
            scorer.score(odd)
    said = [r.getMessage() for r in caplog.records if "not the numpy pass" in r.getMessage()]
    assert len(said) == 2 and said[0].endswith("1 so far") and said[1].endswith("2 so far"), said
