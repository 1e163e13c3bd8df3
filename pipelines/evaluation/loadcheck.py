"""The gate's infrastructure check: load a model in a fresh process exactly as the scorer does
(``tracking.load_model`` of its ``models:/`` URI, ``tracking.predict_proba``, ``tracking.decision_threshold``)
and score sample rows; the scores must equal the ones the evaluation computed in-process.

``python -m pipelines.evaluation.loadcheck MODEL_URI ROWS.parquet OUT.json`` is the fresh process;
``start_infrastructure_check`` starts it (evaluate goes on meanwhile) and its ``result`` compares.

What a fresh load depends on is the environment, not the weights: the model's family, its MLflow flavors and
requirements, the versions installed here of what it requires, Python and our code version
(:func:`load_fingerprint`). A passed check is recorded under that fingerprint (:class:`VerifiedLoads`), and a
later evaluation whose candidate has a recorded fingerprint reuses the record instead of paying a fresh process's
imports again; anything changed, or a record that cannot be read, runs the check. (Whether this model's own
files load is shown by evaluate, which loads and scores every candidate in-process.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# same runtime, same rows: the scores agree to rounding. A Keras model computes in float32, whose results differ
# in the last bits between processes and batch sizes (1.5e-8 measured here); 1e-6 is far below any decision.
MAX_ABS_DIFFERENCE = 1e-6


def main(argv: list[str] | None = None) -> int:
    """Load ``MODEL_URI`` as the scorer does, score the rows of ``ROWS.parquet``, write the scores as JSON."""
    import pandas as pd

    from pipelines.modeling.tracking import decision_threshold, load_model, predict_proba

    uri, rows, out = argv if argv is not None else sys.argv[1:]
    model = load_model(uri)
    scores = predict_proba(model, pd.read_parquet(rows))
    Path(out).write_text(json.dumps({"scores": scores.tolist(), "threshold": decision_threshold(model)}))
    return 0


class PendingCheck:
    """An infrastructure check under way: the fresh process runs while the caller goes on with other work;
    ``result(expected)`` waits for it and compares."""

    def __init__(self, model_uri: str, rows: Any, *, timeout_s: float = 600.0) -> None:
        import mlflow

        self.model_uri, self.rows, self.timeout_s = model_uri, len(rows), timeout_s
        self.started = time.perf_counter()
        self._folder = tempfile.TemporaryDirectory(prefix="mlops-loadcheck-")
        rows_path = Path(self._folder.name) / "rows.parquet"
        self._out_path = Path(self._folder.name) / "scores.json"
        self._stderr = (Path(self._folder.name) / "stderr.txt").open("w+")
        rows.to_parquet(rows_path)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
            "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri(),
        }
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.evaluation.loadcheck",
                model_uri,
                str(rows_path),
                str(self._out_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
        )

    def close(self) -> None:
        """Stop the process if it still runs and remove its files (after ``result``, or when the caller fails)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._stderr.close()
        self._folder.cleanup()

    def _scores(self) -> tuple[Any, str | None]:
        """The fresh process's scores, or None and why not."""
        import numpy as np

        left = self.timeout_s - (time.perf_counter() - self.started)
        try:
            code = self._process.wait(timeout=max(left, 0.001))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            return (
                None,
                f"loading and scoring {self.model_uri} in a fresh process took over {self.timeout_s:.0f} s",
            )
        if code != 0 or not self._out_path.exists():
            self._stderr.seek(0)
            lines = [line for line in self._stderr.read().strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {code}"
            return None, f"the scorer cannot load or score {self.model_uri} in a fresh process: {last[:500]}"
        return np.asarray(json.loads(self._out_path.read_text())["scores"], dtype="float64"), None

    def result(self, expected: Any) -> dict[str, Any]:
        """Wait for the fresh process and compare its scores with ``expected`` (the in-process scores of the
        same rows): ``{"passed", "reason", "rows", "max_abs_difference", "seconds"}``."""
        import numpy as np

        try:
            scores, failure = self._scores()
        finally:
            self.close()
        seconds = round(time.perf_counter() - self.started, 2)
        out: dict[str, Any] = {"model_uri": self.model_uri, "rows": self.rows, "max_abs_difference": None}
        if failure is not None:
            return out | {"passed": False, "reason": failure, "seconds": seconds}
        expected = np.asarray(expected, dtype="float64")
        if scores.shape != expected.shape:
            return out | {
                "passed": False,
                "reason": f"the fresh process returned {scores.shape} scores for {expected.shape} rows",
                "seconds": seconds,
            }
        difference = float(np.max(np.abs(scores - expected))) if len(scores) else 0.0
        passed = bool(np.isfinite(scores).all()) and difference <= MAX_ABS_DIFFERENCE
        reason = (
            f"loaded {self.model_uri} in a fresh process as the scorer does and scored {len(scores)} rows "
            f"(finished {seconds} s after it started); largest difference from the evaluation's scores "
            f"{difference:.2e}"
            + ("" if passed else f" (allowed {MAX_ABS_DIFFERENCE:.0e}, or a non-finite score)")
        )
        return out | {
            "passed": passed,
            "reason": reason,
            "max_abs_difference": difference,
            "seconds": seconds,
        }


def load_fingerprint(model_uri: str, family: str, code_version: str) -> str | None:
    """A hash of what loading ``model_uri`` in a fresh process depends on (see the module docstring); None when
    the model's metadata cannot be read (the check then runs)."""
    import importlib.metadata
    import platform

    import mlflow
    from mlflow.models import get_model_info

    try:
        flavors = get_model_info(model_uri).flavors
        requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text()
    except Exception:  # no metadata to compare: the check runs
        return None
    installed: dict[str, str | None] = {}
    for line in requirements.splitlines():
        name = re.split(r"[=<>!~\[;@ ]", line.strip(), maxsplit=1)[0]
        if name and not name.startswith(("#", "-")):
            try:
                installed[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                installed[name] = None
    body = {
        "family": family,
        "flavors": flavors,
        "requirements": requirements,
        "installed": installed,
        "python": platform.python_version(),
        "code_version": code_version,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


class VerifiedLoads:
    """The passed infrastructure checks of a use case, by :func:`load_fingerprint`
    (``_meta/loadchecks/<usecase>.json`` in the lake)."""

    def __init__(self, lake: Any, usecase: str) -> None:
        self.lake, self.key = lake, f"_meta/loadchecks/{usecase}.json"

    def _records(self) -> dict[str, Any]:
        if not self.lake.storage.exists(self.key):
            return {}
        try:
            records = self.lake.read_json(self.key)
        except Exception:  # an unreadable record verifies nothing: the check runs and rewrites it
            return {}
        return records if isinstance(records, dict) else {}

    def find(self, fingerprint: str | None) -> dict[str, Any] | None:
        """The recorded passed check of ``fingerprint``, or None."""
        return None if fingerprint is None else self._records().get(fingerprint)

    def record(self, fingerprint: str | None, check: dict[str, Any], *, day: str, run: str) -> None:
        """Keep a passed check under ``fingerprint`` (the first record of a fingerprint stays)."""
        if fingerprint is None or not check.get("passed"):
            return
        records = self._records()
        if fingerprint in records:
            return
        records[fingerprint] = {
            "model_uri": check.get("model_uri"),
            "rows": check.get("rows"),
            "max_abs_difference": check.get("max_abs_difference"),
            "date": day,
            "run": run,
        }
        self.lake.write_json(self.key, records)


def reused_check(model_uri: str, fingerprint: str, verified: dict[str, Any]) -> dict[str, Any]:
    """The infrastructure check of ``model_uri`` answered by an earlier passed check of the same fingerprint."""
    return {
        "model_uri": model_uri,
        "passed": True,
        "reused": True,
        "fingerprint": fingerprint,
        "rows": verified.get("rows"),
        "max_abs_difference": verified.get("max_abs_difference"),
        "seconds": 0.0,
        "reason": (
            f"a model of the same family, flavors and requirements, in this environment and code version "
            f"(fingerprint {fingerprint}), loaded in a fresh process as the scorer does and scored the same "
            f"({verified.get('model_uri')}, evaluated {verified.get('date')} in run {verified.get('run')}); "
            f"not rerun"
        ),
    }


def start_infrastructure_check(model_uri: str, rows: Any, *, timeout_s: float = 600.0) -> PendingCheck:
    """Start loading ``model_uri`` in a fresh Python process and scoring ``rows`` (the model's input frame);
    the caller goes on (evaluate explains the model meanwhile) and calls ``.result(expected)``."""
    return PendingCheck(model_uri, rows, timeout_s=timeout_s)


if __name__ == "__main__":
    raise SystemExit(main())
