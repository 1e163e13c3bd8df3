"""MLflow conventions shared by the train, evaluate, register, promote and score steps.

- One experiment and one registered model per use case, both named after it.
- Artifacts go to ``<profile.mlflow_artifact_root>/<usecase>`` (never ``./mlruns``), or with an MLflow server
  and no artifact root, where the server puts them (proxied artifacts).
- Every logged candidate is a pyfunc whose ``predict(frame)`` returns the probability of the positive class;
  :func:`predict_proba` normalises the output shape.
- The alias ``champion`` moves only through :func:`pipelines.modeling.model_ops.move_alias`, recorded in the lake: the gate's
  promote step (pipelines.steps.promote) and `mlops models promote|rollback` (and the `<usecase>_models` DAG).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError, Profile, UseCase
from pipelines.context import StepFailed
from pipelines.environ import patched_environ

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = (
    "challenger"  # optional: a version a scoring service sends a share (or a shadow copy) of traffic
)
# the digest of a model's artifact files: computed by train when it logs the model (a tag of its run and of its
# logged model), copied by register onto the registry version; every loader checks it before reading the model
MODEL_DIGEST_TAG = "model_sha256"

# the only types a scikit-learn model in skops format may name: what log_fitted_model (pipelines.modeling) saves
# with, and what check_no_pickle accepts on load
SKOPS_TRUSTED_TYPES = [
    "numpy.dtype",  # SimpleImputer keeps the dtype it was fitted on
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # HistGradientBoosting with categorical features keeps FunctionTransformer(partial(check_array, ...))
    "functools.partial",
    "sklearn.utils.validation.check_array",
]


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
    """Model inputs, in order (pipelines.features.model_inputs.model_columns)."""
    from pipelines.features.model_inputs import model_columns

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


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The ModelVersion ``alias`` of registered model ``name`` points at, or None when the model or the alias does
    not exist; any other failure is raised as MLflow raised it.

    MLflow's basic-auth app (the compose stack's server) answers 403, not 404, for a registered model that does not
    exist, so that a user learns nothing about names it may not read. A 403 is read as "absent" only when a search
    for the exact name, whose results the app filters by read permission, does not find it either; a model this
    user may not read then looks absent, but the steps that would write it (register, promote) are refused by the
    server, so nothing is promoted on that reading."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        if is_not_found(exc):
            return None
        if "error code 403" not in str(exc) and getattr(exc, "error_code", None) != "PERMISSION_DENIED":
            raise
        escaped = name.replace("'", "\\'")
        if any(model.name == name for model in client.search_registered_models(f"name = '{escaped}'")):
            raise  # the model exists: this user was refused
        return None


def champion_version(usecase: UseCase) -> Any | None:
    """The registry's current champion ModelVersion, or None when the registered model or its ``champion`` alias
    does not exist (before the first promotion). Any other registry failure raises RegistryError: the caller
    fails closed (the task fails and is retried) instead of taking the first-run path."""
    from mlflow import MlflowClient

    try:
        return version_by_alias(MlflowClient(), model_name(usecase), CHAMPION_ALIAS)
    except Exception as exc:
        raise RegistryError(
            f"the model registry could not say which version of {model_name(usecase)!r} is the champion "
            f"({type(exc).__name__}: {str(exc)[:300]}); nothing was decided. Check the MLflow tracking server "
            "(MLFLOW_TRACKING_URI) and rerun the task"
        ) from exc


class ArtifactRefused(StepFailed):
    """A model's artifacts do not match the digest recorded when it was logged (or none was recorded, or a file
    name leaves its folder): nothing of it was loaded."""


def load_model(uri: str) -> Any:
    """The pyfunc model at ``uri``, loaded from a downloaded copy whose digest matched the one recorded when the
    model was logged (:func:`recorded_digest`); raises :class:`ArtifactRefused` before any byte of the model is
    interpreted otherwise. Our models load without pickle (scikit-learn through skops, the Keras wrapper as a
    model from code), so the only code a model file runs is code whose digest was checked."""
    import tempfile

    expected = recorded_digest(uri)
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as folder:
        return load_verified_folder(verified_download(uri, expected, folder))


def load_verified_folder(path: Path) -> Any:
    """The pyfunc model of a folder :func:`verified_download` checked, once its MLmodel shows it loads without
    pickle (:func:`check_no_pickle`). MLflow gates skops loads behind ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``
    because the trusted types come from the model's own MLmodel; here they were checked against our code's list,
    so the flag is raised for this load only."""
    import mlflow

    check_no_pickle(path)
    with _LOAD_LOCK, patched_environ({"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}):
        return mlflow.pyfunc.load_model(str(path))  # both our flavors read every file at load


_LOAD_LOCK = threading.Lock()  # the flag is process-wide: one load at a time holds it raised


def check_no_pickle(path: Path) -> None:
    """Raise :class:`ArtifactRefused` unless the model in ``path`` loads without pickle: a pyfunc model from code,
    or a scikit-learn model in skops format whose trusted types are all in our code's list
    (:data:`SKOPS_TRUSTED_TYPES`), never the list a model file brings."""
    import yaml

    try:
        flavors = (yaml.safe_load((Path(path) / "MLmodel").read_text()) or {}).get("flavors") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ArtifactRefused(
            f"{path}: its MLmodel cannot be read ({exc}); the model was not loaded"
        ) from None
    if (flavors.get("python_function") or {}).get("model_code_path"):
        return
    sklearn = flavors.get("sklearn") or {}
    untrusted = sorted(set(sklearn.get("skops_trusted_types") or []) - set(SKOPS_TRUSTED_TYPES))
    if sklearn and sklearn.get("serialization_format") == "skops" and not untrusted:
        return
    raise ArtifactRefused(
        f"{path}: the model needs pickle to load (flavors {sorted(flavors)}, sklearn format "
        f"{sklearn.get('serialization_format')!r}"
        + (f", types our code does not trust: {untrusted}" if untrusted else "")
        + "); it was not loaded. Retrain it: every model train logs loads without pickle"
    )


def verified_download(uri: str, expected: str, folder: str | Path) -> Path:
    """Download the artifacts of ``uri`` into ``folder``; return their path when their digest is ``expected``,
    else raise :class:`ArtifactRefused` (a tampered, added or missing file, a link, a name outside the folder)."""
    import hashlib

    import mlflow

    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    digest = artifact_digest(path)
    if digest == hashlib.sha256().hexdigest():
        # the digest of no file at all: MLflow downloads nothing, without an error, when the artifact store no
        # longer holds the files (a moved or deleted artifact root), so say that, not "changed"
        raise ArtifactRefused(
            f"{uri}: no artifacts were found where MLflow recorded them (the artifact store moved or its files "
            "were deleted); it was not loaded. Restore the artifact store at its recorded location, or retrain"
        )
    if digest != expected:
        raise ArtifactRefused(
            f"{uri}: its artifacts changed since the model was logged (sha256 {digest[:16]}..., recorded "
            f"{expected[:16]}...); it was not loaded. Retrain, or restore the artifacts from the run that logged it"
        )
    return path


def recorded_digest(uri: str) -> str:
    """The digest recorded for the model at ``uri`` (``models:/<name>/<version>``, ``models:/<name>@<alias>``,
    ``models:/<logged model id>`` or ``runs:/<run id>/<path>``): the registry version's tag, else its logged
    model's, else its run's (train records it on both when it logs the model). Raises :class:`ArtifactRefused`
    when none was recorded (a model logged before digests were), RegistryError when MLflow cannot be asked."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()

    def logged_model_tags(model_id: str) -> dict[str, str]:
        logged = mlflow.get_logged_model(model_id)
        tags = dict(logged.tags or {})
        if MODEL_DIGEST_TAG not in tags and logged.source_run_id:
            tags = client.get_run(logged.source_run_id).data.tags
        return tags

    tags: dict[str, str] = {}
    try:
        if uri.startswith("runs:/"):
            tags = client.get_run(uri.removeprefix("runs:/").split("/", 1)[0]).data.tags
        elif uri.startswith("models:/"):
            ref = uri.removeprefix("models:/").strip("/")
            if "@" in ref or "/" in ref:
                if "@" in ref:
                    name, alias = ref.split("@", 1)
                    version = client.get_model_version_by_alias(name, alias)
                else:
                    name, number = ref.rsplit("/", 1)
                    version = client.get_model_version(name, number)
                tags = dict(version.tags or {})
                if MODEL_DIGEST_TAG not in tags and str(version.source or "").startswith("models:/m-"):
                    tags = logged_model_tags(str(version.source).removeprefix("models:/"))
                elif MODEL_DIGEST_TAG not in tags and version.run_id:
                    tags = client.get_run(version.run_id).data.tags
            else:
                tags = logged_model_tags(ref)
    except Exception as exc:
        raise RegistryError(
            f"MLflow could not say which digest {uri} was logged with ({type(exc).__name__}: {str(exc)[:300]}); "
            "nothing was loaded. Check the MLflow tracking server (MLFLOW_TRACKING_URI) and rerun the task"
        ) from exc
    digest = tags.get(MODEL_DIGEST_TAG)
    if not digest:
        raise ArtifactRefused(
            f"{uri} has no {MODEL_DIGEST_TAG!r} tag, so its artifacts cannot be verified and it was not loaded: "
            "it was logged before digests were recorded; retrain it (python -m pipelines train ...)"
        )
    return digest


def verified_digest(uri: str) -> str:
    """The digest recorded when the model at ``uri`` was logged, once its stored artifacts were checked against
    it (register copies it onto the registry version); raises :class:`ArtifactRefused` otherwise."""
    import tempfile

    expected = recorded_digest(uri)
    with tempfile.TemporaryDirectory(prefix="mlops-digest-") as folder:
        verified_download(uri, expected, folder)
    return expected


def record_logged_digest(model_info: Any) -> str:
    """Record the digest of a just-logged model (:func:`model_digest` of its stored artifacts) on the active run
    and on the logged model; return it."""
    import mlflow

    digest = model_digest(model_info.model_uri)
    mlflow.set_tag(MODEL_DIGEST_TAG, digest)
    if getattr(model_info, "model_id", None):
        mlflow.set_logged_model_tags(model_info.model_id, {MODEL_DIGEST_TAG: digest})
    return digest


# written into a model's artifacts by the registry when a version is registered: bookkeeping, not the model
REGISTRY_FILES = frozenset({"registered_model_meta"})


def artifact_digest(folder: str | Path) -> str:
    """SHA-256 over every file under ``folder`` (relative path and content, in path order), but the registry's
    own REGISTRY_FILES: equal for the same model artifacts wherever they were downloaded, before or after
    registration; different when any file changed, appeared or went."""
    import hashlib

    root = Path(folder).resolve()
    digest = hashlib.sha256()
    files = []
    for path in root.rglob("*"):
        # a link (or a name that resolves outside the folder) could make a loader read a file nobody hashed
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise ArtifactRefused(
                f"{path}: a link or a name outside the model's folder; the model was not loaded"
            )
        if path.is_file() and path.relative_to(root).as_posix() not in REGISTRY_FILES:
            files.append(path)
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
