"""Each registered candidate of one training run at its recorded decision threshold, on its holdout.

    MLOPS_HOME=DIR .venv/bin/python bench/thresholds.py [--usecase flight_delay] [--date 2013-02-01]

Reads the train result of ``--date`` from the lake of ``MLOPS_HOME`` (a demo state, e.g. after
``mlops demo --months 1``), reloads the holdout train recorded (``pipelines.evaluation.evaluation_data.load_holdout``), loads
each candidate's logged model and prints, for its recorded threshold, for the threshold the rule chose for the fit
on train (``validation_threshold``, which earlier releases registered as is) and for the best F1 that any threshold
reaches on the holdout labels (an upper bound, not a method): the threshold, the share of holdout rows flagged and
the F1 there, with the holdout ROC AUC and ``threshold_source``. Labels are read here only to measure.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from typing import Any

from pipelines.config import DecisionSpec, load_profile, load_usecase
from pipelines.context import MANUAL_RUN, StepContext, run_result_key
from pipelines.evaluation import metrics
from pipelines.evaluation.evaluation_data import load_holdout
from pipelines.features.model_inputs import model_inputs
from pipelines.lake import Lake
from pipelines.modeling import tracking


def at(y: Any, scores: Any, threshold: float) -> dict[str, Any]:
    """Threshold, share flagged and F1 of ``scores`` at ``threshold``."""
    found = metrics.confusion(y, scores, threshold)
    precision, recall = found["precision"] or 0.0, found["recall"] or 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    flagged = (found["tp"] + found["fp"]) / len(y)
    return {"threshold": round(threshold, 4), "flagged": round(flagged, 4), "f1": round(f1, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default="flight_delay")
    parser.add_argument("--date", default="2013-02-01", type=date.fromisoformat)
    parser.add_argument(
        "--run", default=None, help="the run key part (default: the only train run of --date)"
    )
    args = parser.parse_args()
    profile, usecase = load_profile(), load_usecase(args.usecase)
    lake = Lake(profile.lake_uri)
    ctx = StepContext(usecase=usecase, day=args.date, profile=profile, lake=lake)
    if args.run:
        train = lake.read_json(run_result_key(usecase.name, args.date, "train", args.run))
    else:
        prefix = run_result_key(usecase.name, args.date, "train", MANUAL_RUN).split("/run=")[0]
        keys = [k for k in lake.storage.list(prefix) if k.endswith("/result.json")]
        if len(keys) != 1:
            raise SystemExit(f"{len(keys)} train results under {prefix}: name one with --run")
        train = lake.read_json(keys[0])
    tracking.configure_mlflow(profile, usecase)
    holdout = load_holdout(ctx, train)
    X = model_inputs(usecase, holdout, "the holdout rows")
    y = holdout[usecase.target.column].to_numpy(dtype="int64")
    for candidate in train["candidates"]:
        decision = candidate.get("decision") or {}
        scores = tracking.predict_proba(tracking.load_model(candidate["model_uri"]), X)
        best = metrics.choose_threshold(y, scores, DecisionSpec(rule="best_f1"))["threshold"]
        row = {
            "candidate": candidate["name"],
            "roc_auc": round(float(metrics.model_metrics(y, scores, ["roc_auc"])["roc_auc"]), 4),
            "recorded": at(y, scores, float(candidate["decision_threshold"])),
            "validation_threshold_as_is": at(
                y, scores, float(decision.get("validation_threshold", candidate["decision_threshold"]))
            ),
            "best_on_holdout_labels": at(y, scores, float(best)),
            "threshold_source": candidate.get("threshold_source"),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
