"""MLflow conventions shared by the train, evaluate, register, promote and score steps.

- One experiment and one registered model per use case, both named after it.
- Artifacts go to ``<profile.mlflow_artifact_root>/<usecase>`` (never ``./mlruns``), or with an MLflow server
  and no artifact root, where the server puts them (proxied artifacts).
- Every logged candidate is a pyfunc whose ``predict(frame)`` returns the probability of the positive class;
  :func:`predict_proba` normalises the output shape.
- The alias ``champion`` moves only through :func:`pipelines.model_ops.move_alias`, recorded in the lake: the gate's
  promote step (pipelines.steps.promote) and `mlops models promote|rollback` (and the `<usecase>_models` DAG).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError, Profile, UseCase
from pipelines.context import StepFailed

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = (
    "challenger"  # optional: a version a scoring service sends a share (or a shadow copy) of traffic
)
MODEL_DIGEST_TAG = "model_sha256"  # model version tag: the digest of its artifact files, recorded by register


def configure_mlflow(profile: Profile, usecase: UseCase) -> str:
    """Point MLflow at the profile's tracking/registry store; return the use case's experiment id (a fixed cost
    of the step: MLflow's import and its store's first use)."""
    from pipelines.timings import fixed_cost

    with fixed_cost("mlflow_client"):
        return _configure_mlflow(profile, usecase)


def _configure_mlflow(profile: Profile, usecase: UseCase) -> str:
    os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = profile.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(usecase.name)
    if experiment is None:
        root = profile.mlflow_artifact_root
        location = None
        if not root and not uri.startswith(("http://", "https://")):
            raise ConfigError(
                "config/platform.yaml: mlflow_artifact_root is required when mlflow_tracking_uri is not an "
                f"MLflow server ({uri}); set it to a folder or an s3:// URI"
            )
        if root:
            base = root if ":/" in root else Path(root).resolve().as_uri()
            location = f"{base.rstrip('/')}/{usecase.name}"
        # another task may create it at the same moment: then use theirs
        with contextlib.suppress(Exception):
            mlflow.create_experiment(usecase.name, artifact_location=location)
        experiment = mlflow.get_experiment_by_name(usecase.name)
        if experiment is None:
            raise RuntimeError(f"MLflow experiment {usecase.name!r} could not be created at {uri}")
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def model_name(usecase: UseCase) -> str:
    return usecase.name


def feature_columns(usecase: UseCase) -> list[str]:
    """Model inputs, in order (pipelines.model_inputs.model_columns)."""
    from pipelines.model_inputs import model_columns

    return model_columns(usecase)


class RegistryError(StepFailed):
    """The model registry could not answer (down, refused, misconfigured): nothing may be decided on it; the
    step fails (and Airflow retries it)."""


def is_not_found(exc: Exception) -> bool:
    """Whether an MLflow error says the registered model or the alias does not exist (a first run), as opposed
    to any other failure (server down, permissions, timeouts), which must never be read as "no champion"."""
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    message = str(exc).lower()
    return code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message


def champion_version(usecase: UseCase) -> Any | None:
    """The registry's current champion ModelVersion, or None when the registered model or its ``champion`` alias
    does not exist (before the first promotion). Any other registry failure raises RegistryError: the caller
    fails closed (the task fails and is retried) instead of taking the first-run path."""
    from mlflow import MlflowClient

    try:
        return MlflowClient().get_model_version_by_alias(model_name(usecase), CHAMPION_ALIAS)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise RegistryError(
            f"the model registry could not say which version of {model_name(usecase)!r} is the champion "
            f"({type(exc).__name__}: {str(exc)[:300]}); nothing was decided. Check the MLflow tracking server "
            "(MLFLOW_TRACKING_URI) and rerun the task"
        ) from exc


def load_model(uri: str) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(uri)


# written into a model's artifacts by the registry when a version is registered: bookkeeping, not the model
REGISTRY_FILES = frozenset({"registered_model_meta"})


def artifact_digest(folder: str | Path) -> str:
    """SHA-256 over every file under ``folder`` (relative path and content, in path order), but the registry's
    own REGISTRY_FILES: equal for the same model artifacts wherever they were downloaded, before or after
    registration; different when any file changed, appeared or went."""
    import hashlib

    root = Path(folder)
    digest = hashlib.sha256()
    files = (
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in REGISTRY_FILES
    )
    for path in sorted(files):
        content = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                content.update(block)
        digest.update(f"{path.relative_to(root).as_posix()}\0{content.hexdigest()}\n".encode())
    return digest.hexdigest()


def model_digest(model_uri: str) -> str:
    """:func:`artifact_digest` of the artifacts of ``model_uri`` (downloaded to a temporary folder)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="mlops-digest-") as folder:
        return artifact_digest(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))


LEGACY_THRESHOLD = 0.5  # models logged before thresholds were recorded


def decision_threshold(model: Any) -> float:
    """The decision threshold recorded with a loaded pyfunc model (its MLflow metadata, written by train):
    predicted positive when probability >= it. A model logged before thresholds were recorded gets 0.5."""
    metadata = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    value = metadata.get("decision_threshold")
    return LEGACY_THRESHOLD if value is None else float(value)


def predict_proba(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class (a classifier) or the predicted value (a regressor) as a 1-D float
    array, whatever the flavor returns."""
    return scores_of(model.predict(frame))


def scores_of(out: Any) -> np.ndarray:
    """A model's output as a 1-D float array: the last column of a 2-D output (the positive class)."""
    import numpy as np
    import pandas as pd

    if isinstance(out, pd.DataFrame):
        out = out.iloc[:, -1].to_numpy()
    elif isinstance(out, pd.Series):
        out = out.to_numpy()
    arr = np.asarray(out, dtype="float64")
    if arr.ndim == 2:
        arr = arr[:, -1]
    return arr.reshape(-1)
