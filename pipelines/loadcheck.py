"""The gate's infrastructure check: load a model in a fresh process exactly as the scorer does
(``tracking.load_model`` of its ``models:/`` URI, ``tracking.predict_proba``, ``tracking.decision_threshold``)
and score sample rows; the scores must equal the ones the evaluation computed in-process.

``python -m pipelines.loadcheck MODEL_URI ROWS.parquet OUT.json`` is the fresh process;
``start_infrastructure_check`` starts it (evaluate goes on meanwhile) and its ``result`` compares.
"""

from __future__ import annotations

import json
import os
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

    from pipelines.tracking import decision_threshold, load_model, predict_proba

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
            [sys.executable, "-m", "pipelines.loadcheck", model_uri, str(rows_path), str(self._out_path)],
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


def start_infrastructure_check(model_uri: str, rows: Any, *, timeout_s: float = 600.0) -> PendingCheck:
    """Start loading ``model_uri`` in a fresh Python process and scoring ``rows`` (the model's input frame);
    the caller goes on (evaluate explains the model meanwhile) and calls ``.result(expected)``."""
    return PendingCheck(model_uri, rows, timeout_s=timeout_s)


if __name__ == "__main__":
    raise SystemExit(main())
