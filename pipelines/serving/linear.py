"""A numpy pass of this project's linear scikit-learn pipelines, for the scoring service.

The logistic regression and ridge candidates (``pipelines.modeling._sklearn_pipeline``) are a ColumnTransformer
(median imputation with missing-value indicators and standard scaling of the numeric inputs, one-hot encoding of
the categorical ones) before the linear model. Called through scikit-learn, one request costs about 3.3 ms
whatever its size, almost all of it per-call validation and the ColumnTransformer's dispatch: a one-record request
spends nearly all its time there, a 1000-row batch a third of it. The same arithmetic on the fitted attributes
(medians, means and scales, the encoder's categories, coefficients) is a few numpy operations.

:func:`linear_pass` builds it for exactly that shape of pipeline and returns None for anything else; the service
serves it only where it agrees with the pipeline's own scores (``pipelines.serving.models``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Scorer = Callable[[Mapping[str, Any]], np.ndarray]


_NAN = object()  # NaN as a dict key (every NaN is a different float object, unequal to itself)


def _key(value: Any) -> Any:
    """``value`` as the encoder tells categories apart: None and NaN are two different ones."""
    return _NAN if isinstance(value, float) and math.isnan(value) else value


def _numeric_block(step: Any, columns: list[str]) -> Callable[[Mapping[str, Any]], np.ndarray] | None:
    """The fitted numeric Pipeline(SimpleImputer, StandardScaler) as a function of the input columns."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(step, Pipeline) or [type(s) for _, s in step.steps] != [SimpleImputer, StandardScaler]:
        return None
    imputer, scaler = step.steps[0][1], step.steps[1][1]
    if imputer.strategy not in ("median", "mean", "most_frequent", "constant"):
        return None
    if not (isinstance(imputer.missing_values, float) and math.isnan(imputer.missing_values)):
        return None
    statistics = np.asarray(imputer.statistics_, dtype="float64")
    # a column missing in every training row has no statistic: scikit-learn drops it unless told to keep it
    kept = ~np.isnan(statistics) if not imputer.keep_empty_features else np.ones(len(statistics), dtype=bool)
    indicated = (
        np.asarray(imputer.indicator_.features_, dtype="int64")
        if imputer.add_indicator
        else np.array([], "int64")
    )
    if imputer.add_indicator and imputer.indicator_.features != "missing-only":
        return None
    # with_mean=False still fits mean_ (for the variance) but does not subtract it
    mean = np.asarray(scaler.mean_, dtype="float64") if scaler.with_mean else None
    scale = np.asarray(scaler.scale_, dtype="float64") if scaler.with_std else None
    fill = np.where(np.isnan(statistics), 0.0, statistics)

    def block(inputs: Mapping[str, Any]) -> np.ndarray:
        x = np.column_stack([np.asarray(inputs[c], dtype="float64") for c in columns])
        missing = np.isnan(x)
        imputed = np.where(missing, fill, x)[:, kept]
        out = np.hstack([imputed, missing[:, indicated].astype("float64")]) if len(indicated) else imputed
        if mean is not None:
            out = out - mean
        if scale is not None:
            out = out / scale
        return out

    return block


def _one_hot_block(step: Any, columns: list[str]) -> Callable[[Mapping[str, Any]], np.ndarray] | None:
    """A fitted OneHotEncoder (no dropped category), or Pipeline(SimpleImputer(strategy='constant'),
    OneHotEncoder), as a function of the input columns: each value to its output column by a dict (an infrequent
    category to the infrequent column), a value never seen to the infrequent column where there is one (as
    ``handle_unknown='infrequent_if_exist'`` does), else to none."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    fill: Any = None
    encoder = step
    if isinstance(step, Pipeline):
        if [type(s) for _, s in step.steps] != [SimpleImputer, OneHotEncoder]:
            return None
        imputer, encoder = step.steps[0][1], step.steps[1][1]
        missing = imputer.missing_values
        if imputer.strategy != "constant" or imputer.add_indicator:
            return None
        if not (isinstance(missing, float) and math.isnan(missing)):
            return None
        fill = (imputer.fill_value,)  # scikit-learn fills NaN only: None stays None
    if not isinstance(encoder, OneHotEncoder) or encoder.drop is not None:
        return None
    if encoder.handle_unknown not in ("infrequent_if_exist", "ignore"):
        return None
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * len(columns)
    lookups: list[tuple[dict[Any, int], int | None]] = []
    offset = 0
    for categories, rare in zip(encoder.categories_, infrequent, strict=True):
        rare_keys = set() if rare is None else {_key(v) for v in rare}
        frequent = [_key(v) for v in categories if _key(v) not in rare_keys]
        index = {v: offset + i for i, v in enumerate(frequent)}
        rare_at = offset + len(frequent) if rare is not None else None
        index.update(dict.fromkeys(rare_keys, rare_at))
        unknown = rare_at if encoder.handle_unknown == "infrequent_if_exist" else None
        lookups.append((index, unknown))
        offset += len(frequent) + (1 if rare is not None else 0)
    total = offset

    def block(inputs: Mapping[str, Any]) -> np.ndarray:
        rows = len(inputs[columns[0]])
        out = np.zeros((rows, total), dtype="float64")
        for column, (index, unknown) in zip(columns, lookups, strict=True):
            values = [_key(v) for v in np.asarray(inputs[column]).tolist()]
            if fill is not None:
                values = [fill[0] if v is _NAN else v for v in values]
            hit = np.fromiter(
                (-1 if (p := index.get(v, unknown)) is None else p for v in values), dtype="int64", count=rows
            )
            found = hit >= 0
            out[np.flatnonzero(found), hit[found]] = 1.0
        return out

    return block


def linear_pass(model: Any, classification: bool) -> Scorer | None:
    """The scores of ``model`` (a fitted Pipeline(ColumnTransformer, LogisticRegression) of two classes, or
    Pipeline(ColumnTransformer, Ridge)) computed with numpy from its fitted attributes, as a function of
    model-input columns; None for any other model."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline) or len(model.steps) != 2:
        return None
    preprocess, linear = model.steps[0][1], model.steps[1][1]
    if not isinstance(preprocess, ColumnTransformer):
        return None
    if classification and not (isinstance(linear, LogisticRegression) and len(linear.classes_) == 2):
        return None
    if not classification and not isinstance(linear, Ridge):
        return None
    blocks: list[Callable[[Mapping[str, Any]], np.ndarray]] = []
    for name, step, columns in preprocess.transformers_:
        if step == "drop" or (name == "remainder" and len(columns) == 0):
            continue
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            return None
        block = _numeric_block(step, columns) or _one_hot_block(step, columns)
        if block is None:
            return None
        blocks.append(block)
    coef = np.asarray(linear.coef_, dtype="float64").reshape(-1)
    intercept = float(np.asarray(linear.intercept_, dtype="float64").reshape(-1)[0])

    def score(inputs: Mapping[str, Any]) -> np.ndarray:
        x = np.hstack([block(inputs) for block in blocks])
        decision = x @ coef + intercept
        if not classification:
            return decision
        from scipy.special import expit

        return expit(decision)

    return score
