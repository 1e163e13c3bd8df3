"""The code MLflow logs with each Keras candidate (an MLflow model from code): loading the model runs this file,
whose digest the loader checked first (pipelines.modeling.tracking.load_model), instead of unpickling a wrapper object.

The wrapper's behaviour stays in :mod:`pipelines.keras_pyfunc` (installed code); this file only names it.
"""

from mlflow.models import set_model

from pipelines.keras_pyfunc import KerasProbabilityModel

set_model(KerasProbabilityModel())
