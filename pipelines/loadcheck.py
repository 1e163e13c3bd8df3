"""The gate's infrastructure check: load a model in a fresh process exactly as the scorer does
(``tracking.load_model`` of its ``models:/`` URI, ``tracking.predict_proba``, ``tracking.decision_threshold``)
and score sample rows; the scores must equal the ones the evaluation computed in-process.

``python -m pipelines.loadcheck MODEL_URI ROWS.parquet OUT.json`` is the fresh process; ``infrastructure_check``
runs it and compares.
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


def infrastructure_check(
    model_uri: str, rows: Any, expected: Any, *, timeout_s: float = 600.0
) -> dict[str, Any]:
    """Score ``rows`` (the model's input frame) with ``model_uri`` loaded in a fresh Python process and compare
    with ``expected`` (the in-process scores): ``{"passed", "reason", "rows", "max_abs_difference",
    "seconds"}``. Any failure to load or score is a failed check with the process's last error line."""
    import mlflow
    import numpy as np

    started = time.perf_counter()
    expected = np.asarray(expected, dtype="float64")
    out: dict[str, Any] = {"model_uri": model_uri, "rows": len(rows), "max_abs_difference": None}
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri(),
    }
    with tempfile.TemporaryDirectory(prefix="mlops-loadcheck-") as folder:
        rows_path, out_path = Path(folder) / "rows.parquet", Path(folder) / "scores.json"
        rows.to_parquet(rows_path)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pipelines.loadcheck", model_uri, str(rows_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return out | {
                "passed": False,
                "reason": f"loading and scoring {model_uri} in a fresh process took over {timeout_s:.0f} s",
                "seconds": round(time.perf_counter() - started, 2),
            }
        seconds = round(time.perf_counter() - started, 2)
        if done.returncode != 0 or not out_path.exists():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {done.returncode}"
            return out | {
                "passed": False,
                "reason": f"the scorer cannot load or score {model_uri} in a fresh process: {last[:500]}",
                "seconds": seconds,
            }
        scores = np.asarray(json.loads(out_path.read_text())["scores"], dtype="float64")
    if scores.shape != expected.shape:
        return out | {
            "passed": False,
            "reason": f"the fresh process returned {scores.shape} scores for {expected.shape} rows",
            "seconds": seconds,
        }
    difference = float(np.max(np.abs(scores - expected))) if len(scores) else 0.0
    passed = bool(np.isfinite(scores).all()) and difference <= MAX_ABS_DIFFERENCE
    reason = (
        f"loaded {model_uri} in a fresh process as the scorer does and scored {len(scores)} rows in {seconds} s; "
        f"largest difference from the evaluation's scores {difference:.2e}"
        + ("" if passed else f" (allowed {MAX_ABS_DIFFERENCE:.0e}, or a non-finite score)")
    )
    return out | {"passed": passed, "reason": reason, "max_abs_difference": difference, "seconds": seconds}


if __name__ == "__main__":
    raise SystemExit(main())
