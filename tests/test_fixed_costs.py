"""Fixed costs a task must not pay: TensorFlow where no Keras model is involved, MLflow's job runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.config import REPO_ROOT

TESTS = Path(__file__).resolve().parent

# A scikit-learn candidate fitted, logged, registered nowhere, loaded back through our tracking helpers and scored,
# in a process that imported every model step: TensorFlow (about 11 s to import) must never be loaded.
SKLEARN_ONLY_TASK = """
import sys
from datetime import date, timedelta

import mlflow
import numpy as np

import pipelines.modeling, pipelines.keras_pyfunc, pipelines.modeling.tracking, pipelines.cli
import pipelines.steps.train, pipelines.steps.evaluate, pipelines.steps.score
import pipelines.steps.register, pipelines.steps.promote, pipelines.steps.gate
from _model_fixtures import FAST_CANDIDATES, fast_usecase, make_context, synthetic_day
from pipelines import modeling
from pipelines.modeling import tracking
from pipelines.features.model_inputs import model_inputs

assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "imported by a module"
spec = next(c for c in FAST_CANDIDATES if c.family == "logistic_regression")
usecase = fast_usecase([spec])
train = synthetic_day(usecase, date(2013, 1, 10), 300)
train = train[train[usecase.target.column].notna()]
X = model_inputs(usecase, train, "rows")
fitted = modeling.fit_candidate(spec, usecase, X, train[usecase.target.column], seed=3)
tracking.configure_mlflow(make_context(usecase, date(2013, 2, 1)).profile, usecase)
with mlflow.start_run():
    info = modeling.log_fitted_model(fitted, modeling.input_example(X))
model = tracking.load_model(info.model_uri)
scores = tracking.predict_proba(model, X)
np.testing.assert_allclose(scores, fitted.scores(X), rtol=1e-6)
print(tracking.decision_threshold(model) if model.metadata.metadata else "no threshold")
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "imported by fitting, logging or loading"
print("OK")
"""


def test_a_scikit_learn_task_never_imports_tensorflow(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO_ROOT), str(REPO_ROOT / "plugins")]),
        "MLOPS_HOME": str(tmp_path / "home"),
        "MLOPS_LAKE_URI": str(tmp_path / "lake"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLOPS_MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "MLFLOW_UV_AUTO_DETECT": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SKLEARN_ONLY_TASK], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), (
        proc.stdout[-2000:] + proc.stderr[-3000:]
    )


def test_the_mlflow_server_of_mlops_ui_runs_no_job_runners(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from mlops_cli.ui import ui_commands

    profile = SimpleNamespace(
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", mlflow_artifact_root=None
    )
    env, children = ui_commands(tmp_path, 8080, 5000, profile)
    assert [name for name, _ in children] == ["airflow", "mlflow"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
