"""Model artifacts we can trust (issue 26 item 1), on a real MLflow store: the models train logs load without
pickle (scikit-learn through skops with the types our code trusts, the Keras wrapper as a model from code), each
with the digest recorded when it was logged; every loader checks it before reading a byte of the model, so a
tampered artifact is refused by evaluate's and the scorer's load, register, the fresh-process load check and the
REST service, and the code planted in it never runs (a marker file it would write stays absent)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pytest
from _model_fixtures import FAST_CANDIDATES, fast_usecase, make_context, synthetic_day, use_tmp_platform

from pipelines import modeling
from pipelines.features.model_inputs import model_inputs
from pipelines.modeling import tracking

REPO_ROOT = Path(__file__).resolve().parent.parent
DAY = date(2013, 2, 1)


class PickledOnLoad(mlflow.pyfunc.PythonModel):
    """A pyfunc MLflow can only store by pickling: unpickling it writes ``marker`` (code run on load)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("unpickled")
        self.__dict__.update(state)

    def predict(self, context, model_input, params=None):  # pragma: no cover - never loaded
        return np.zeros(len(model_input))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A Keras MLP and a HistGradientBoosting candidate fitted and logged as train logs them, each registered as
    a version of the use case's model (with the digest register copies), and the rows they score."""
    home = tmp_path_factory.mktemp("artifacts")
    patch = pytest.MonkeyPatch()
    use_tmp_platform(patch, home)
    usecase = fast_usecase()
    frame = synthetic_day(usecase, DAY, 600)
    frame = frame[frame[usecase.target.column].notna()].reset_index(drop=True)
    X = model_inputs(usecase, frame, "test rows")
    y = frame[usecase.target.column].to_numpy()
    tracking.configure_mlflow(make_context(usecase, DAY).profile, usecase)
    models = {}
    for spec in [s for s in FAST_CANDIDATES if s.name in ("mlp", "hgb")]:
        fitted = modeling.fit_candidate(spec, usecase, X, y, seed=3)
        with mlflow.start_run(run_name=spec.name) as run:
            info = modeling.log_fitted_model(fitted, modeling.input_example(X), {"decision_threshold": 0.5})
        version = mlflow.register_model(
            info.model_uri,
            tracking.model_name(usecase),
            tags={tracking.MODEL_DIGEST_TAG: tracking.verified_digest(info.model_uri)},
        )
        models[spec.name] = {
            "uri": info.model_uri,
            "run_id": run.info.run_id,
            "model_id": info.model_id,
            "version": version,
            "scores": fitted.scores(X),
            "folder": Path(mlflow.get_logged_model(info.model_id).artifact_location.removeprefix("file://")),
        }
    yield {"home": home, "usecase": usecase, "X": X, "models": models}
    patch.undo()


def test_the_models_train_logs_load_without_pickle_and_carry_their_digest(
    logged, tmp_path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    assert not list(logged["home"].rglob("*.pkl")), "no pickle is written for any model"
    for name, model in logged["models"].items():
        digest = tracking.model_digest(model["uri"])
        assert client.get_run(model["run_id"]).data.tags[tracking.MODEL_DIGEST_TAG] == digest, name
        assert mlflow.get_logged_model(model["model_id"]).tags[tracking.MODEL_DIGEST_TAG] == digest, name
        assert tracking.recorded_digest(model["uri"]) == digest
        assert (
            tracking.recorded_digest(
                f"models:/{tracking.model_name(logged['usecase'])}/{model['version'].version}"
            )
            == digest
        )
        tracking.check_no_pickle(model["folder"])
        # MLflow's own pickle gate stays down in this process: our load needs no pickle
        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        scores = tracking.predict_proba(tracking.load_model(model["uri"]), logged["X"])
        np.testing.assert_allclose(scores, model["scores"], rtol=1e-6, atol=1e-7)
    mlp = (logged["models"]["mlp"]["folder"] / "MLmodel").read_text()
    assert "model_code_path" in mlp and "python_model.pkl" not in mlp

    # a model that only pickle can load is refused even with a digest recorded for it, and its code never runs
    marker = tmp_path / "unpickled.txt"
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=PickledOnLoad(str(marker)))
        tracking.record_logged_digest(info)
    with pytest.raises(tracking.ArtifactRefused, match="needs pickle"):
        tracking.load_model(info.model_uri)
    assert not marker.exists()

    # a model logged before digests were recorded is refused, saying how to fix it
    with mlflow.start_run():
        bare = mlflow.pyfunc.log_model(name="model", python_model=PickledOnLoad(str(marker)))
    with pytest.raises(tracking.ArtifactRefused, match="no 'model_sha256' tag.*retrain"):
        tracking.load_model(bare.model_uri)
    assert not marker.exists()


def test_a_tampered_artifact_is_refused_by_every_loader_and_runs_no_code(logged, tmp_path) -> None:
    from pipelines.evaluation.loadcheck import PendingCheck
    from pipelines.serving.models import ModelRefused, load_verified

    marker = tmp_path / "planted-code-ran.txt"
    mlp = logged["models"]["mlp"]
    (code,) = [
        p for p in mlp["folder"].rglob("*.py")
    ]  # the Keras wrapper's model code, stored with the model
    original = code.read_bytes()
    code.write_bytes(original + f"\nopen({str(marker)!r}, 'w').write('ran')\n".encode())
    uri = mlp["uri"]
    try:
        # evaluate, score, report, monitor and the backtest load through tracking.load_model
        with pytest.raises(tracking.ArtifactRefused, match="changed since the model was logged"):
            tracking.load_model(uri)
        # register copies the digest only after checking the artifacts against it
        with pytest.raises(tracking.ArtifactRefused, match="changed since the model was logged"):
            tracking.verified_digest(uri)
        # the load check, in a fresh process as the scorer
        check = PendingCheck(uri, logged["X"].head(20), timeout_s=300).result(mlp["scores"][:20])
        assert check["passed"] is False and "changed since the model was logged" in check["reason"], check
        # the REST service, from the registry version
        with pytest.raises(ModelRefused, match="changed since the model was logged"):
            load_verified(logged["usecase"], mlp["version"], "champion")
        assert not marker.exists(), "the planted code ran"
    finally:
        code.write_bytes(original)
    assert tracking.load_model(uri) is not None  # restored: loads again

    # one byte more in a scikit-learn model's skops file
    hgb = logged["models"]["hgb"]
    (weights,) = list(hgb["folder"].rglob("*.skops"))
    saved = weights.read_bytes()
    weights.write_bytes(saved + b"\0")
    try:
        with pytest.raises(tracking.ArtifactRefused, match="changed since the model was logged"):
            tracking.load_model(hgb["uri"])
    finally:
        weights.write_bytes(saved)


def test_artifacts_gone_from_their_store_are_refused_as_missing(logged) -> None:
    """A store moved or deleted (MLflow then downloads nothing, without an error) is named as such, not as a
    change, so the user restores it instead of hunting for a tamperer."""
    hgb = logged["models"]["hgb"]
    moved = hgb["folder"].with_name(hgb["folder"].name + "-moved")
    hgb["folder"].rename(moved)
    try:
        with pytest.raises(
            tracking.ArtifactRefused, match="no artifacts were found where MLflow recorded them"
        ):
            tracking.load_model(hgb["uri"])
    finally:
        moved.rename(hgb["folder"])
    assert tracking.load_model(hgb["uri"]) is not None


def test_a_link_or_a_name_outside_the_folder_is_refused(tmp_path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not the model's")
    (folder / "weights.bin").symlink_to(secret)
    with pytest.raises(tracking.ArtifactRefused, match="a link or a name outside"):
        tracking.artifact_digest(folder)


def test_every_model_load_goes_through_the_digest_check() -> None:
    """The only calls that read a model file are the checked ones: MLflow's loaders in tracking (after
    verified_download) and Keras' in modeling.load_keras_model (inside the checked model's load_context)."""
    allowed = {
        ("pipelines/modeling/tracking.py", "mlflow.pyfunc.load_model"),
        ("pipelines/modeling/__init__.py", "keras.saving.load_model"),
    }
    loader = re.compile(
        r"\b(mlflow\.(?:pyfunc|sklearn|keras|pytorch)\.load_model|keras\.saving\.load_model|"
        r"keras\.models\.load_model|skops\.io\.load|pickle\.loads?|cloudpickle\.loads?|joblib\.load)\("
    )
    found = set()
    for path in [*REPO_ROOT.glob("pipelines/**/*.py"), *REPO_ROOT.glob("plugins/**/*.py")]:
        for match in loader.finditer(path.read_text()):
            found.add((path.relative_to(REPO_ROOT).as_posix(), match.group(1)))
    assert found == allowed, f"model loads outside the checked path: {sorted(found - allowed)}"
