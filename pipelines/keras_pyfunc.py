"""MLflow pyfunc wrapper serving a Keras candidate: JSON encoder + ``.keras`` model -> P(label == 1).

Kept apart from pipelines.modeling because it subclasses ``mlflow.pyfunc.PythonModel`` at import time (MLflow is
heavy); it is imported only when a Keras model is logged or loaded. The wrapper holds no state of its own (MLflow
pickles it by reference to this module); everything it serves comes from its artifacts in ``load_context``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd


class KerasProbabilityModel(mlflow.pyfunc.PythonModel):
    """``predict(frame of feature columns)`` -> 1-D array of P(label == 1), or of predicted values (regression)."""

    def load_context(self, context: Any) -> None:
        from pipelines.modeling import TabularEncoder, TargetScaling, load_keras_model

        self._encoder = TabularEncoder.from_dict(json.loads(Path(context.artifacts["encoder"]).read_text()))
        self._model = load_keras_model(context.artifacts["keras_model"])
        target = context.artifacts.get("target")  # a regression: the output maps back to the label's scale
        self._target = TargetScaling(**json.loads(Path(target).read_text())) if target else None

    # model_input is typed pd.DataFrame: MLflow then infers no schema from the hints (and does not warn); the
    # signature logged from the input example stays the schema.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        """P(label == 1) for each row of ``model_input`` (a frame of the feature columns)."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.predict_columns(frame)

    def predict_columns(self, columns: Mapping[str, Any], forward: Callable[[Any], Any] | None = None) -> Any:
        """``predict`` of a mapping of feature column -> values (a DataFrame or
        pipelines.features.model_inputs.model_input_columns), without MLflow's input schema check: the scoring service's path.
        ``forward``: another inference pass over the encoded matrix than TensorFlow's (:meth:`single_record_scorer`)."""
        from pipelines.modeling import keras_predict

        matrix = self._encoder.transform(columns)
        out = keras_predict(self._model, matrix) if forward is None else forward(matrix)
        return out if self._target is None else self._target.unscaled(out)

    def single_record_scorer(
        self, example: Mapping[str, Any]
    ) -> tuple[Callable[[Mapping[str, Any]], Any], float] | None:
        """(``predict_columns`` through the model's numpy pass, its largest difference from the TensorFlow pass
        over ``example`` and random rows, each scored alone), or None when the model has no numpy pass
        (pipelines.modeling.keras_numpy_forward)."""
        from pipelines.modeling import keras_numpy_forward, numpy_forward_difference

        forward = keras_numpy_forward(self._model)
        if forward is None:
            return None
        difference = numpy_forward_difference(
            self._model, forward, self._encoder.transform(example), self._target
        )
        return (lambda columns: self.predict_columns(columns, forward)), difference
