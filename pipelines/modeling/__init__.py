"""Candidate models by family, fitted deterministically and logged to MLflow as pyfunc models.

Families (``CandidateSpec.family``):

- ``logistic_regression`` (classification) and ``ridge`` (regression): scikit-learn pipeline: median imputation
  with missing indicators and scaling for numeric columns, one-hot encoding for categorical columns (unknown and
  null values -> all zeros), then ``LogisticRegression(**params)`` or ``Ridge(**params)``.
- ``hist_gradient_boosting``: scikit-learn pipeline: numeric columns as they are (the model handles nulls),
  categorical columns ordinal-encoded (unknown/null -> missing) and declared categorical, then
  ``HistGradientBoostingClassifier(**params)``.
- ``keras_mlp``: a Keras 3 (TensorFlow) multilayer perceptron; its preprocessing (median imputation, scaling,
  one-hot) is a :class:`TabularEncoder` stored as JSON next to the ``.keras`` weights, and both are served by the
  pyfunc wrapper :class:`pipelines.keras_pyfunc.KerasProbabilityModel`. Params: ``hidden_units`` (list),
  ``epochs``, ``batch_size``, ``learning_rate``, ``dropout``.

A regression (``target.kind: regression``) gets the regressor of each family (``HistGradientBoostingRegressor``, a
Keras MLP with a linear output on the standardised label); ``target.transform: log1p`` fits on log1p(label) and
predicts in the label's units (scikit-learn: ``TransformedTargetRegressor`` with numpy's log1p/expm1; Keras: a
``target.json`` next to the weights). A regressor's pyfunc ``predict`` gives the values.

Every classifier is logged as an MLflow pyfunc whose ``predict(frame)`` gives the probability of the positive class
(scikit-learn models through ``pyfunc_predict_fn="predict_proba"``, an (n, 2) array; the Keras wrapper a 1-D
array); read it with :func:`pipelines.modeling.tracking.predict_proba`. Feed models with
:func:`pipelines.features.model_inputs.model_inputs` (training, evaluation, scoring and serving alike).

Serialization, no pickle anywhere: scikit-learn models use MLflow's skops format (no code runs on load) with the
HistGradientBoosting tree predictor as the one extra trusted type; the Keras model is a ``.keras`` file (weights
and architecture, loaded in safe mode) plus a JSON encoder, and its wrapper is an MLflow model from code
(``pipelines/keras_model_code.py``, stored with the model), so loading a Keras candidate needs the ``pipelines``
package importable (it is in every runtime of this project). Train records each model's digest when it logs it
and every loader checks it first (pipelines.modeling.tracking.load_model).

Determinism: scikit-learn estimators get ``random_state=seed``; Keras runs with
``keras.utils.set_random_seed(seed)`` and TensorFlow op determinism, so the same data and seed give the same
predictions.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import CandidateSpec, ConfigError, UseCase

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

FAMILIES = ("logistic_regression", "ridge", "hist_gradient_boosting", "keras_mlp")
MODEL_ARTIFACT_NAME = "model"
KERAS_MLP_DEFAULTS: dict[str, Any] = {
    "hidden_units": [64, 32],
    "epochs": 4,
    "batch_size": 512,
    "learning_rate": 0.001,
    "dropout": 0.0,
}
MAX_CATEGORIES = 50  # per categorical column; rarer values share the "unknown" encoding


# --------------------------------------------------------------------------------------------------- inputs


def label_dtype(usecase: UseCase) -> str:
    """The label's dtype: 0/1 integers for a classification, floats for a regression."""
    return "float64" if usecase.task == "regression" else "int64"


def feature_columns(usecase: UseCase) -> list[str]:
    """Model inputs, in order (pipelines.features.model_inputs.model_columns)."""
    from pipelines.features.model_inputs import model_columns

    return model_columns(usecase)


# --------------------------------------------------------------------------------------------------- encoder


@dataclass
class TabularEncoder:
    """Numeric imputation + scaling and categorical one-hot in plain numpy, stored as JSON with the model."""

    numeric: list[str]
    categorical: list[str]
    medians: list[float]
    means: list[float]
    scales: list[float]
    vocabulary: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> TabularEncoder:
        import numpy as np
        import pandas as pd

        from pipelines.features.model_inputs import canonical_strings

        values = frame[numeric].to_numpy(dtype="float64") if numeric else np.zeros((len(frame), 0))
        with np.errstate(all="ignore"):
            medians = np.array(
                [np.nanmedian(col) if np.isfinite(col).any() else 0.0 for col in values.T], dtype="float64"
            )
        filled = np.where(np.isnan(values), medians, values)
        means = filled.mean(axis=0) if len(filled) else np.zeros(len(numeric))
        scales = filled.std(axis=0) if len(filled) else np.ones(len(numeric))
        scales = np.where(scales > 1e-12, scales, 1.0)
        vocabulary = {}
        for (
            column
        ) in categorical:  # the canonical strings model inputs hold (pipelines.features.model_inputs)
            counts = pd.Series(canonical_strings(frame[column])).dropna().value_counts()
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_CATEGORIES]
            vocabulary[column] = sorted(value for value, _ in ranked)
        return cls(numeric, categorical, medians.tolist(), means.tolist(), scales.tolist(), vocabulary)

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.vocabulary.values())

    @cached_property
    def _positions(self) -> dict[str, dict[str, int]]:
        """Per categorical column, each known value's position in its one-hot block."""
        return {
            column: {value: i for i, value in enumerate(self.vocabulary[column])}
            for column in self.categorical
        }

    def transform(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """A float32 matrix: scaled numeric columns, then one-hot blocks (null/unknown -> zeros). ``frame`` is a
        DataFrame or a mapping of column name to values (pipelines.features.model_inputs.model_input_columns)."""
        import numpy as np

        rows = len(frame[self.numeric[0]] if self.numeric else frame[self.categorical[0]])
        out = np.zeros((rows, self.width), dtype="float32")
        if self.numeric:
            values = np.empty((rows, len(self.numeric)), dtype="float64")
            for i, column in enumerate(self.numeric):
                values[:, i] = np.asarray(frame[column], dtype="float64")
            values = np.where(np.isnan(values), np.asarray(self.medians), values)
            out[:, : len(self.numeric)] = (values - np.asarray(self.means)) / np.asarray(self.scales)
        offset = len(self.numeric)
        for column in self.categorical:
            positions = self._positions[column]
            values = frame[column]  # strings or None; only strings are in the vocabulary
            codes = np.fromiter(
                map(positions.get, values, itertools.repeat(-1, rows)), dtype="int64", count=rows
            )
            hit = codes >= 0
            out[np.flatnonzero(hit), offset + codes[hit]] = 1.0
            offset += len(positions)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "medians": self.medians,
            "means": self.means,
            "scales": self.scales,
            "vocabulary": self.vocabulary,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabularEncoder:
        return cls(**data)


# --------------------------------------------------------------------------------------------------- keras


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time and is never closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """Not ours to close."""


def _import_keras() -> Any:
    """Import Keras on TensorFlow quietly, with absl's log handler writing to the current ``sys.stderr``.

    TensorFlow imports absl, whose handler keeps the ``sys.stderr`` it found at import and closes it when it is
    closed, unless it is ``sys.stderr`` at that moment. Every ``logging.config.dictConfig`` (Airflow's, uvicorn's)
    closes every handler ever made, so a process that had redirected stderr to a log file (the demo's runners),
    or a test runner capturing it, had that stream closed under it and every later write failed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler().python_handler
    if not isinstance(handler.stream, _CurrentStderr):
        handler.stream = _CurrentStderr()
    return keras


def _init_tensorflow(seed: int) -> Any:
    """Import Keras on TensorFlow quietly, seed everything and turn on op determinism."""
    keras = _import_keras()
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    return keras


def load_keras_model(path: str | Path) -> Any:
    """Load a ``.keras`` file for inference (no optimizer state)."""
    keras = _import_keras()
    # safe mode: a Lambda layer's serialized Python code is refused, never run
    return keras.saving.load_model(str(path), compile=False, safe_mode=True)


_KERAS_FORWARD: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
_KERAS_FORWARD_LOCK = threading.Lock()


def keras_forward(model: Any, width: int) -> Any:
    """The model's inference call for float32 matrices of ``width`` columns, traced once by ``tf.function``:
    the same kernels as the eager call (the same numbers), without its per-call Python dispatch (2.85 ms eager,
    0.49 ms through the ``tf.function``, 0.20 ms through its concrete function, for one row of the demo's MLP)."""
    with _KERAS_FORWARD_LOCK:
        by_width = _KERAS_FORWARD.setdefault(model, {})
        if width not in by_width:
            import tensorflow as tf

            traced = tf.function(
                lambda matrix: model(matrix, training=False),
                input_signature=[tf.TensorSpec([None, width], tf.float32)],
            )
            by_width[width] = traced.get_concrete_function()  # called directly: no argument binding per call
        return by_width[width]


def keras_numpy_forward(model: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The inference pass of a Keras MLP as numpy float32 arithmetic in the calling thread, or None when the model
    is not a plain chain of ``Dense`` (linear, ReLU or sigmoid) and ``Dropout`` layers.

    For single records: one row through TensorFlow costs a kernel launch per layer and a hand-off to its thread
    pool; numpy's matrix-vector products cost microseconds. The sums run in another order than TensorFlow's
    kernels, so scores differ in the last float32 digits: a caller compares both before use
    (pipelines.serving.models)."""
    import numpy as np

    activations: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "linear": lambda x: x,
        "relu": lambda x: np.maximum(x, np.float32(0)),
        "sigmoid": lambda x: np.float32(1) / (np.float32(1) + np.exp(-np.maximum(x, np.float32(-80)))),
    }
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if len(model.inputs) != 1 or len(model.outputs) != 1 or not layers:
        return None
    steps: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]] = []
    previous = model.inputs[0]
    for layer in layers:
        kind = type(layer).__name__
        if len(layer._inbound_nodes) != 1 or layer.input is not previous:
            return None  # not a chain (a branch, a shared layer): leave it to TensorFlow
        previous = layer.output
        if kind == "Dropout":  # the identity at inference
            continue
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        if kind != "Dense" or activation not in activations or not layer.use_bias:
            return None
        kernel, bias = (np.asarray(w, dtype="float32") for w in layer.get_weights())
        steps.append((kernel, bias, activations[activation]))
    if previous is not model.outputs[0]:
        return None

    def forward(matrix: np.ndarray) -> np.ndarray:
        out = np.asarray(matrix, dtype="float32")
        for kernel, bias, activation in steps:
            out = activation(out @ kernel + bias)
        return out.reshape(-1).astype("float64")

    return forward


def numpy_forward_difference(
    model: Any,
    forward: Callable[[np.ndarray], np.ndarray],
    examples: np.ndarray,
    target: TargetScaling | None = None,
    random_rows: int = 1000,
    seed: int = 0,
) -> float:
    """The largest difference between ``forward`` (one row at a time, as the single-record path calls it) and
    the TensorFlow pass, over ``examples`` and ``random_rows`` standard-normal rows of the same width, on the
    output scale (after ``target``)."""
    import numpy as np

    examples = np.asarray(examples, dtype="float32")
    rows = np.random.default_rng(seed).standard_normal((random_rows, examples.shape[1])).astype("float32")
    matrix = np.concatenate([examples, rows])
    expected = keras_predict(model, matrix)
    given = np.concatenate([forward(matrix[i : i + 1]) for i in range(len(matrix))])
    if target is not None:
        expected, given = target.unscaled(expected), target.unscaled(given)
    if not np.isfinite(given).all():
        return float("inf")
    return float(np.max(np.abs(given - expected)))


def keras_predict(model: Any, matrix: np.ndarray, batch_rows: int = 65536) -> np.ndarray:
    """Probabilities from a Keras model, called through :func:`keras_forward` in batches (faster than
    ``model.predict``)."""
    import numpy as np

    if len(matrix) == 0:
        return np.zeros(0, dtype="float64")
    forward = keras_forward(model, matrix.shape[1])
    matrix = np.asarray(matrix, dtype="float32")
    parts = []
    for start in range(0, len(matrix), batch_rows):
        out = forward(matrix[start : start + batch_rows])
        parts.append(out.numpy() if hasattr(out, "numpy") else np.asarray(out))  # TensorFlow tensor -> numpy
    return np.concatenate(parts).reshape(-1).astype("float64")


@dataclass
class TargetScaling:
    """How a Keras regression's output maps back to the label: ``value = out * std + mean`` on the (optionally
    log1p-transformed) scale, then ``expm1`` for ``transform: log1p``. Stored as JSON with the model."""

    mean: float
    std: float
    transform: str = "none"

    @classmethod
    def fit(cls, y: np.ndarray, transform: str) -> TargetScaling:
        import numpy as np

        values = np.log1p(y) if transform == "log1p" else np.asarray(y, dtype="float64")
        std = float(values.std())
        return cls(float(values.mean()), std if std > 1e-12 else 1.0, transform)

    def scaled(self, y: np.ndarray) -> np.ndarray:
        import numpy as np

        values = np.log1p(y) if self.transform == "log1p" else np.asarray(y, dtype="float64")
        return (values - self.mean) / self.std

    def unscaled(self, out: np.ndarray) -> np.ndarray:
        import numpy as np

        values = np.asarray(out, dtype="float64") * self.std + self.mean
        return np.expm1(values) if self.transform == "log1p" else values


class KerasMLP:
    """A fitted Keras MLP with its encoder; ``scores`` gives P(label == 1) (classification, sigmoid output) or
    the predicted value (regression: linear output on the scaled label, mapped back by ``target``)."""

    def __init__(
        self, encoder: TabularEncoder, model: Any, params: dict[str, Any], target: TargetScaling | None = None
    ) -> None:
        self.encoder = encoder
        self.model = model
        self.params = params
        self.target = target

    @classmethod
    def fit(
        cls, spec: CandidateSpec, usecase: UseCase, X: pd.DataFrame, y: np.ndarray, seed: int
    ) -> KerasMLP:
        import numpy as np

        unknown = sorted(set(spec.params) - set(KERAS_MLP_DEFAULTS))
        if unknown:
            raise ConfigError(
                f"candidate {spec.name!r} (keras_mlp): unknown params {unknown}; "
                f"allowed: {sorted(KERAS_MLP_DEFAULTS)}"
            )
        params = {**KERAS_MLP_DEFAULTS, **spec.params}
        keras = _init_tensorflow(seed)
        encoder = TabularEncoder.fit(X, usecase.features.numeric, usecase.features.categorical)
        matrix = encoder.transform(X)
        inputs = keras.Input(shape=(encoder.width,), name="features")
        hidden = inputs
        for units in params["hidden_units"]:
            hidden = keras.layers.Dense(int(units), activation="relu")(hidden)
            if params["dropout"]:
                hidden = keras.layers.Dropout(float(params["dropout"]), seed=seed)(hidden)
        regression = usecase.task == "regression"
        target = (
            TargetScaling.fit(np.asarray(y, dtype="float64"), usecase.target.transform)
            if regression
            else None
        )
        if target is not None:
            outputs = keras.layers.Dense(1, name="value")(hidden)
        else:
            outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(hidden)
        model = keras.Model(inputs, outputs, name=f"{spec.name}_mlp")
        model.compile(
            optimizer=keras.optimizers.Adam(float(params["learning_rate"])),
            loss="mse" if target is not None else "binary_crossentropy",
        )
        model.fit(
            matrix,
            (np.asarray(y, dtype="float32") if target is None else target.scaled(y)).astype("float32"),
            epochs=int(params["epochs"]),
            batch_size=int(params["batch_size"]),
            shuffle=True,
            verbose=0,
        )
        return cls(encoder, model, params, target)

    def scores(self, X: pd.DataFrame) -> np.ndarray:
        out = keras_predict(self.model, self.encoder.transform(X))
        return out if self.target is None else self.target.unscaled(out)


# --------------------------------------------------------------------------------------------------- sklearn

# params a family's pipeline sets from the use case itself (a candidate's params may not override them)
PIPELINE_PARAMS: dict[str, dict[str, str]] = {
    "hist_gradient_boosting": {"categorical_features": "features.categorical"},
}


def estimator_class(family: str, task: str) -> Any:
    """The scikit-learn estimator class a family fits for a task (None for ``keras_mlp``)."""
    if family == "keras_mlp":
        return None
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    if family == "hist_gradient_boosting":
        return HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    return {"logistic_regression": LogisticRegression, "ridge": Ridge}[family]


def accepted_params(family: str, task: str) -> list[str]:
    """The params a candidate of ``family`` may set: the estimator's keyword arguments (``keras_mlp``: its own
    params), less those the pipeline sets from the use case (:data:`PIPELINE_PARAMS`)."""
    import inspect

    cls = estimator_class(family, task)
    if cls is None:
        return sorted(KERAS_MLP_DEFAULTS)
    names = [
        name
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    return sorted(set(names) - set(PIPELINE_PARAMS.get(family, {})))


def _sklearn_pipeline(spec: CandidateSpec, usecase: UseCase, seed: int) -> Any:
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric, categorical = usecase.features.numeric, usecase.features.categorical
    try:
        if spec.family in ("logistic_regression", "ridge"):
            numeric_steps = Pipeline(
                [
                    ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                    ("scale", StandardScaler()),
                ]
            )
            transformers: list[tuple[str, Any, list[str]]] = [("numeric", numeric_steps, numeric)]
            if categorical:
                encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=MAX_CATEGORIES)
                transformers.append(("categorical", encoder, categorical))
            classifier: Any = (
                LogisticRegression(**{"max_iter": 300, "random_state": seed, **spec.params})
                if spec.family == "logistic_regression"
                else Ridge(**{"random_state": seed, **spec.params})
            )
        elif spec.family == "hist_gradient_boosting":
            transformers = [("numeric", "passthrough", numeric)]
            if categorical:
                encoder = OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                    max_categories=MAX_CATEGORIES,
                )
                transformers.append(("categorical", encoder, categorical))
            mask = [False] * len(numeric) + [True] * len(categorical)
            boosting = (
                HistGradientBoostingRegressor
                if usecase.task == "regression"
                else HistGradientBoostingClassifier
            )
            classifier = boosting(
                **{"random_state": seed, "categorical_features": mask if categorical else None, **spec.params}
            )
        else:  # pragma: no cover - guarded by fit_candidate
            raise ConfigError(f"candidate {spec.name!r}: {spec.family} is not a scikit-learn family")
    except TypeError as exc:
        raise ConfigError(
            f"candidate {spec.name!r} ({spec.family}): bad params {spec.params}: {exc}"
        ) from None
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    pipeline = Pipeline([("preprocess", preprocess), ("model", classifier)])
    if usecase.task == "regression" and usecase.target.transform == "log1p":
        from sklearn.compose import TransformedTargetRegressor

        # numpy ufuncs only: skops loads them without trusting any code
        return TransformedTargetRegressor(regressor=pipeline, func=np.log1p, inverse_func=np.expm1)
    return pipeline


# --------------------------------------------------------------------------------------------------- fit + log


@dataclass
class FittedCandidate:
    """A fitted candidate, ready to predict and to be logged."""

    spec: CandidateSpec
    estimator: Any
    fit_seconds: float

    def scores(self, X: pd.DataFrame) -> np.ndarray:
        """P(label == 1) of a classifier, or the predicted value of a regressor, as a 1-D float array."""
        import numpy as np

        if isinstance(self.estimator, KerasMLP):
            return self.estimator.scores(X)
        if self.is_regressor:
            return np.asarray(self.estimator.predict(X), dtype="float64").reshape(-1)
        return self.estimator.predict_proba(X)[:, 1].astype("float64")

    @property
    def is_regressor(self) -> bool:
        return not isinstance(self.estimator, KerasMLP) and not hasattr(self.estimator, "predict_proba")

    @property
    def params(self) -> dict[str, Any]:
        if isinstance(self.estimator, KerasMLP):
            return dict(self.estimator.params)
        pipeline = getattr(
            self.estimator, "regressor_", self.estimator
        )  # a TransformedTargetRegressor's pipeline
        return dict(pipeline.named_steps["model"].get_params())


def fit_candidate(
    spec: CandidateSpec,
    usecase: UseCase,
    X: pd.DataFrame,
    y: Any,
    seed: int,
    start_from: FittedCandidate | None = None,
) -> FittedCandidate:
    """Fit one candidate on ``X`` (from :func:`pipelines.features.model_inputs.model_inputs`) and labels ``y``
    (0/1, or values for a regression), deterministically.

    ``start_from``: a fit of the same candidate on overlapping rows (the fit on train, before the refit on train
    + validation). A logistic regression starts its solver from that fit's coefficients when the encoded inputs
    have the same width: the regularised loss is convex, so it goes to the same optimum in about a quarter of the
    iterations, and stops, as a start from zero does, within the solver's ``tol`` of it (the coefficients of the
    two differ by that slack, not what they rank). Other families ignore it."""
    import numpy as np

    if spec.family not in FAMILIES:  # pragma: no cover - the config Literal guards this
        raise ConfigError(f"candidate {spec.name!r}: unknown family {spec.family!r}; known: {list(FAMILIES)}")
    labels = np.asarray(y, dtype=label_dtype(usecase))
    started = time.perf_counter()
    if spec.family == "keras_mlp":
        estimator: Any = KerasMLP.fit(spec, usecase, X, labels, seed)
    else:
        estimator = _sklearn_pipeline(spec, usecase, seed)
        previous = _warm_start_model(spec, start_from)
        if previous is None:
            estimator.fit(X, labels)
        else:
            _fit_from(estimator, previous, X, labels)
    return FittedCandidate(spec, estimator, time.perf_counter() - started)


def _warm_start_model(spec: CandidateSpec, start_from: FittedCandidate | None) -> Any | None:
    """The fitted logistic regression of ``start_from`` when the solver can start from it, else None."""
    if start_from is None or spec.family != "logistic_regression" or start_from.spec.family != spec.family:
        return None
    steps = getattr(start_from.estimator, "named_steps", None)
    model = None if steps is None else steps.get("model")
    return model if getattr(model, "coef_", None) is not None else None


def _fit_from(pipeline: Any, previous: Any, X: pd.DataFrame, labels: Any) -> None:
    """Fit ``pipeline`` (preprocess -> LogisticRegression) with the solver started at ``previous``'s
    coefficients: what ``Pipeline.fit`` does, the model's ``warm_start`` on for this one fit."""
    encoded = pipeline.named_steps["preprocess"].fit_transform(X)
    model = pipeline.named_steps["model"]
    if encoded.shape[1] == previous.coef_.shape[1]:  # a category more or fewer: start from zero, as always
        model.coef_, model.intercept_ = previous.coef_.copy(), previous.intercept_.copy()
        model.warm_start = True
    try:
        model.fit(encoded, labels)
    finally:
        model.warm_start = False  # the logged params are those of a plain fit


def pip_requirements(family: str) -> list[str]:
    """Pinned requirements recorded with a logged model (no slow inference, no whole-project capture)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["mlflow", "numpy", "pandas", "scikit-learn"]
    names += ["skops"] if family != "keras_mlp" else ["keras", "tensorflow-cpu"]
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def input_example(X: pd.DataFrame, rows: int = 5) -> pd.DataFrame:
    """A few complete rows (no nulls) when there are some, for the model signature and example."""
    complete = X.dropna()
    return (complete if len(complete) >= rows else X).head(rows).reset_index(drop=True)


def log_fitted_model(
    fitted: FittedCandidate, example: pd.DataFrame, metadata: dict[str, Any] | None = None
) -> Any:
    """Log ``fitted`` as the active run's pyfunc model with signature, input example and ``metadata`` (the
    decision threshold: every scorer reads it from the loaded model), and record its digest (what every loader
    checks, pipelines.modeling.tracking.load_model); return ModelInfo."""
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.modeling.tracking import SKOPS_TRUSTED_TYPES, record_logged_digest

    requirements = pip_requirements(fitted.spec.family)
    if isinstance(fitted.estimator, KerasMLP):
        signature = infer_signature(example, fitted.scores(example))
        with tempfile.TemporaryDirectory(prefix="keras-model-") as tmp:
            weights = Path(tmp) / "model.keras"
            encoder = Path(tmp) / "encoder.json"
            fitted.estimator.model.save(weights)
            encoder.write_text(json.dumps(fitted.estimator.encoder.to_dict()))
            artifacts = {"keras_model": str(weights), "encoder": str(encoder)}
            if fitted.estimator.target is not None:
                target = Path(tmp) / "target.json"
                target.write_text(json.dumps(asdict(fitted.estimator.target)))
                artifacts["target"] = str(target)
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_NAME,
                # a model from code: loading runs this (digest-checked) file, never unpickles a wrapper
                python_model=str(Path(__file__).parent.with_name("keras_model_code.py")),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
                metadata=metadata,
            )
        record_logged_digest(info)
        return info
    regressor = fitted.is_regressor
    predict = fitted.estimator.predict if regressor else fitted.estimator.predict_proba
    signature = infer_signature(example, predict(example))
    info = mlflow.sklearn.log_model(
        fitted.estimator,
        name=MODEL_ARTIFACT_NAME,
        signature=signature,
        input_example=example,
        pip_requirements=requirements,
        pyfunc_predict_fn="predict" if regressor else "predict_proba",
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        metadata=metadata,
    )
    record_logged_digest(info)
    return info


def mlflow_params(fitted: FittedCandidate) -> dict[str, str]:
    """The candidate's effective hyperparameters as MLflow params (simple values, lists as JSON)."""
    out = {}
    for key, value in sorted(fitted.params.items()):
        if isinstance(value, str | int | float | bool) or value is None:
            out[f"model.{key}"] = str(value)
        elif isinstance(value, list | tuple | dict):
            out[f"model.{key}"] = json.dumps(value, default=str)[:500]
    return out
