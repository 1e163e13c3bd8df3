"""Train the candidate models on the rolling window before the logical date and log each to MLflow.

Window (dates of feature partitions, end exclusive, never on or after the logical date D)::

    train   = [D - split.train_window_days, D - split.holdout_days)
    holdout = [D - split.holdout_days, D)

Rows with an unknown label are dropped; the train rows are capped at ``split.max_train_rows`` by a seeded sample.

Complete windows: each part (train, validation, holdout) needs ``split.min_days_share`` of its expected days as
committed feature partitions and ``split.min_labelled_share`` of its due outcomes as labels, else the step fails
naming the part and the missing days (:func:`check_window_days`, :func:`check_labels`). Expected days count from
the features table's first partition: a window that reaches back before the first data the lake has (the first
trainings after go-live, e.g. the demo's first training on 2013-02-01 with only January) is short by design and
trains on what there is, while a day missing after the first partition is a gap. The labels come from the labels
table (``labels/<usecase>``), joined to the features by the feature keys and the date; train reads one version of
each and records both (``features_version``, ``labels_version``, ``tables_read``). An outcome is due when the event
is older than ``time.outcome.label_delay`` at the training date; events whose due outcome never arrived (no row in
the labels table) are counted per part in the result (``unlabelled_events``; with ``target.missing_outcome: drop``
an outcome that arrived without a value has no label row either, and both count).
Validation window (a threshold rule, or several candidates): each candidate is fitted on train and scored on the
validation rows, where its decision threshold is chosen by ``decision.rule`` and the candidate to gate is chosen by
``gate.primary_metric`` (:func:`choose_candidate`; the holdout takes no part). Only the chosen candidate is refitted
on train + validation, the way scikit-learn's ``TunedThresholdClassifierCV(refit=True)`` refits once; the others
are logged as fitted on train, with the thresholds chosen for them on validation. The refit's scores have their own
scale, so its threshold is its own score that flags the share of rows the rule flagged on validation, taken on the
holdout window's model inputs, which it did not train on (labels unused: :func:`registered_decision`);
``threshold_source`` says so with each model, ``fitted_on`` (and each candidate's ``fit_rows`` and
``fit_data_hash`` in the result) what it was fitted on, ``chosen`` which one was chosen on what.
``--mode full`` trains every candidate; ``--mode refresh`` only the champion's candidate (registry alias
``champion``, tag ``candidate``), or every candidate while there is no champion. A refresh of a champion that was
itself refitted under the same rule fits once, on train + validation: it keeps the champion's decision, the share
of rows flagged, as its own score on the holdout inputs (:func:`carried_decision`), and the rule chooses again at
the next full training (a nightly refresh moves the model by a day of data, not its operating point). Each
candidate is one MLflow run named ``<candidate>@<D>``. A rerun with the same data, config and code reuses the finished runs fitted on the
same rows (same result); ``--retrain`` forces new runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from datetime import date, timedelta
from typing import Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.features.feature_identity import FEATURES_CONFIG_TAG, features_config_hash
from pipelines.lake import (
    DATE,
    PartitionInfo,
    Snapshot,
    raw_table,
)
from pipelines.modeling.leakage import check_leakage
from pipelines.modeling.training_window import (
    features_snapshot,
    label_counts,
    labels_known_before,
    labels_snapshot,
    served_dates,
    training_frames,
    training_window,
    window_parts,
)

MIN_TRAIN_ROWS = 100
MIN_HOLDOUT_ROWS = 50
VALIDATION_PREFIX = (
    "validation_"  # MLflow metrics of a candidate's fit on train, scored on the validation rows
)
DECISION_THRESHOLD = "decision_threshold"  # MLflow metric and model metadata key of a candidate's threshold
THRESHOLD_SOURCE = "threshold_source"  # how it was chosen, in words: MLflow tag, model metadata, version tag
# the window parts a model is fitted on: "train+validation" (the chosen candidate's refit) or "train" as an MLflow
# tag, param and model metadata; a list of parts in the train result and the version's lineage tags
FITTED_ON = "fitted_on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=["full", "refresh"],
        default="full",
        help="full: every candidate; refresh: only the champion's candidate (all while there is no champion)",
    )
    parser.add_argument(
        "--candidates", default=None, help="comma-separated candidate names (default: by --mode)"
    )
    parser.add_argument("--retrain", action="store_true", help="train new runs even if identical runs exist")
    parser.add_argument(
        "--window-days",
        type=int,
        default=None,
        help="days of data before --date to train and hold out on (default: split.train_window_days)",
    )


def _day_ranges(days: list[str]) -> str:
    """``2013-01-27..2013-02-04, 2013-02-06`` for sorted ISO dates: runs of consecutive days as ranges."""
    runs: list[list[date]] = []
    for day in sorted(date.fromisoformat(d) for d in days):
        if runs and day - runs[-1][-1] == timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(r[0].isoformat() if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


def check_window_days(
    ctx: StepContext, snapshot: Snapshot, window: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Each part's expected, present and missing days; StepFailed naming the part and its missing days when
    fewer than ``split.min_days_share`` of its expected days have a committed feature partition.

    Expected days are the part's dates from the features table's first partition on: a window that starts before
    the first data the lake has (the first trainings after go-live) is short by design, not incomplete. A part
    with no expected day at all is left to :func:`training_frames` (no committed feature partitions)."""
    first = min(snapshot.partitions) if snapshot.partitions else None
    minimum = ctx.usecase.split.min_days_share
    found: dict[str, dict[str, Any]] = {}
    for part in window_parts(window):
        start, end = window[f"{part}_start"], window[f"{part}_end"]
        begin = (
            max(date.fromisoformat(start), date.fromisoformat(first)) if first else date.fromisoformat(end)
        )
        expected = [
            (begin + timedelta(days=n)).isoformat() for n in range((date.fromisoformat(end) - begin).days)
        ]
        present = [d for d in expected if d in snapshot.partitions]
        missing = [d for d in expected if d not in snapshot.partitions]
        found[part] = {
            "expected_from": begin.isoformat() if expected else None,
            "expected_days": len(expected),
            "present_days": len(present),
            "missing_days": missing,
        }
        if expected and len(present) < minimum * len(expected) - 1e-9:
            counted = (
                f" (counted from the first features partition, {first})" if first and first > start else ""
            )
            raise StepFailed(
                f"{part} window [{start}, {end}) of use case {ctx.usecase.name!r} has feature partitions for "
                f"{len(present)} of its {len(expected)} expected days{counted}, less than split.min_days_share "
                f"{minimum:g}; missing: {_day_ranges(missing)}. Run ingest and features for these dates (or "
                f"lower split.min_days_share in config/usecases/{ctx.usecase.name}.yaml); "
                f"{served_dates(ctx.usecase, snapshot, window)}",
                {"window": window, "completeness": found},
            )
    return found


def check_labels(
    ctx: StepContext,
    window: dict[str, str],
    counts: dict[str, dict[str, Any]],
    days: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Each part's day and label completeness (``days`` from :func:`check_window_days`, ``counts`` from
    :func:`label_counts`), with ``labelled_share`` of the events whose outcome was due; StepFailed when a part's
    share is below ``split.min_labelled_share``, naming the part and the days with the most missing outcomes."""
    minimum = ctx.usecase.split.min_labelled_share
    known_before = labels_known_before(ctx, window)
    found: dict[str, dict[str, Any]] = {}
    for part in window_parts(window):
        part_counts = counts.get(part) or label_counts(ctx, None, known_before)
        due = part_counts["events_due"]
        share = None if due == 0 else part_counts["labelled"] / due
        found[part] = {**days.get(part, {}), **part_counts, "labelled_share": share}
    for part, entry in found.items():
        share = entry["labelled_share"]
        if share is not None and share < minimum - 1e-9:
            worst = sorted(entry["unlabelled_by_day"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            named = ", ".join(f"{day} ({n})" for day, n in worst)
            raise StepFailed(
                f"{part} window [{window[f'{part}_start']}, {window[f'{part}_end']}) of use case "
                f"{ctx.usecase.name!r} has labels for {entry['labelled']} of the {entry['events_due']} events "
                f"whose outcome was due before {known_before.isoformat()} ({share:.1%}, less than "
                f"split.min_labelled_share {minimum:g}): {entry['unlabelled_events']} outcomes never arrived, "
                f"most on {named}. Land the outcomes and rerun features for these dates (or lower "
                f"split.min_labelled_share in config/usecases/{ctx.usecase.name}.yaml)",
                {"window": window, "completeness": found},
            )
    return found


def candidate_decision(
    ctx: StepContext, name: str, proba: Any, validation: Any, window: dict[str, str]
) -> dict[str, Any] | None:
    """The candidate's decision threshold: ``decision.threshold`` for rule fixed, else chosen by the rule from its
    scores ``proba`` of the validation rows (which it was not fitted on), with the confusion matrix there. None
    for a regression (its prediction is the value)."""
    from pipelines.evaluation.metrics import ThresholdError, choose_threshold

    decision = ctx.usecase.decision
    if ctx.usecase.task == "regression":
        return None
    if not decision.uses_validation:
        return {"rule": "fixed", "threshold": float(decision.threshold or 0.5)}
    try:
        return choose_threshold(
            validation[ctx.usecase.target.column].to_numpy(dtype="int64"), proba, decision
        )
    except ThresholdError as exc:
        raise StepFailed(
            f"{name}: validation window [{window['validation_start']}, {window['validation_end']}): "
            f"{exc}; change decision in config/usecases/{ctx.usecase.name}.yaml"
        ) from None


def _days(window: dict[str, str], part: str) -> str:
    """A window part's first and last day (inclusive), e.g. ``2013-01-27..2013-02-02``."""
    last = date.fromisoformat(window[f"{part}_end"]) - timedelta(days=1)
    return f"{window[f'{part}_start']}..{last.isoformat()}"


def registered_decision(
    decision: dict[str, Any], refit_scores: Any, window: dict[str, str]
) -> dict[str, Any]:
    """The threshold of the model that is registered, the refit on train + validation, from ``decision`` (chosen
    by the rule on the validation rows for the fit on the train rows only). The refit's scores are on their own
    scale (more rows, newer rows, another positive rate), so the chosen number is not carried over: what is kept
    is the decision the rule made, the share of the validation rows flagged, and the refit's threshold is its own
    score that flags that share of rows it did not train on, the holdout window's model inputs
    (``refit_scores``; :func:`pipelines.evaluation.metrics.rate_threshold`). No label is read there: the gate's metrics at
    the threshold, which evaluate computes on the holdout labels later, judge a threshold chosen without them.

    (The other way to carry it, the share that the fit on train flags of the same holdout inputs, follows that
    smaller, older fit's drift: on the demo's first month it flagged 81-93% of them against 47-82% of validation,
    at a lower F1 for two of three candidates.)

    Returns ``decision`` with the refit's ``threshold``, the first fit's ``validation_threshold``, the share
    ``validation_positive_rate`` and ``threshold_source``: how it was chosen, in words (recorded with the
    model)."""
    from pipelines.evaluation.metrics import rate_threshold

    chosen = float(decision["threshold"])
    flagged = int(decision["tp"]) + int(decision["fp"])
    rate = flagged / (flagged + int(decision["tn"]) + int(decision["fn"]))
    moved = rate_threshold(rate, refit_scores)
    source = (
        f"{decision['rule']} on validation {_days(window, 'validation')} for the fit on train only: threshold "
        f"{chosen:.4f}, {rate:.1%} of the validation rows flagged; that share transferred to the registered refit "
        f"(train + validation) on its scores of the holdout inputs {_days(window, 'holdout')}: {moved['threshold']:.4f}"
        " (labels unused)"
    )
    return decision | {
        "threshold": moved["threshold"],
        "validation_threshold": chosen,
        "validation_positive_rate": moved["positive_rate"],
        "holdout_inputs_positive_rate": moved["target_positive_rate"],
        "holdout_inputs_rows": moved["rows"],
        "threshold_source": source,
    }


def champion_decision(ctx: StepContext, spec: Any) -> dict[str, Any] | None:
    """For a refresh of the champion's candidate ``spec``: the decision the champion's registered refit carries
    (its rule and the share of validation rows flagged, ``validation_positive_rate``), so the refresh fits once,
    on train + validation, and flags that share (:func:`carried_decision`). None (fit on train, choose on
    validation, refit, as a full training does) when the champion is another candidate, was fitted on train only,
    or chose under another rule."""
    from mlflow import MlflowClient

    from pipelines.modeling.tracking import champion_version

    champion = champion_version(ctx.usecase)
    if champion is None or (champion.tags or {}).get("candidate") != spec.name:
        return None
    run = MlflowClient().get_run(champion.run_id)
    rate = run.data.metrics.get("validation_positive_rate")
    if rate is None or run.data.params.get("decision.rule") != ctx.usecase.decision.rule:
        return None
    return {"rule": ctx.usecase.decision.rule, "rate": float(rate), "version": int(champion.version)}


def carried_decision(carried: dict[str, Any], refit_scores: Any, window: dict[str, str]) -> dict[str, Any]:
    """The refresh's threshold: its own score that flags the champion's share of rows (``carried``, from
    :func:`champion_decision`) on the holdout window's model inputs, labels unused, as
    :func:`registered_decision` moves a share from the fit on train to the refit. A refresh moves the model by
    a day of data, not its operating point; the rule chooses again at the next full training."""
    from pipelines.evaluation.metrics import rate_threshold

    moved = rate_threshold(carried["rate"], refit_scores)
    source = (
        f"refresh of champion version {carried['version']}: its decision ({carried['rule']}, "
        f"{carried['rate']:.1%} of the validation rows flagged) carried to this refit (train + validation) on its "
        f"scores of the holdout inputs {_days(window, 'holdout')}: {moved['threshold']:.4f} (labels unused; the "
        "rule chooses again at the next full training)"
    )
    return {
        "rule": carried["rule"],
        "threshold": moved["threshold"],
        "validation_positive_rate": moved["positive_rate"],
        "holdout_inputs_positive_rate": moved["target_positive_rate"],
        "holdout_inputs_rows": moved["rows"],
        "threshold_source": source,
    }


def fixed_or_chosen_source(
    decision: dict[str, Any], window: dict[str, str], chosen: dict[str, Any] | None = None
) -> str:
    """``threshold_source`` of a threshold that is not transferred: fixed by the config, or chosen on validation
    for the model that is registered, a candidate fitted on train only because another one was ``chosen``."""
    if decision["rule"] == "fixed":
        return f"fixed: decision.threshold {float(decision['threshold']):g}"
    why = "" if chosen is None else f" (not refitted: {chosen['candidate']!r} was chosen)"
    return (
        f"{decision['rule']} on validation {_days(window, 'validation')} for the registered model, fitted on "
        f"train {_days(window, 'train')} only{why}"
    )


def choose_candidate(validation: dict[str, dict[str, Any]], primary: str) -> tuple[str, str]:
    """The candidate to refit and gate, from each one's metrics on the validation rows (fitted on train only),
    and what it was chosen on: the best ``primary`` there (ties: config order), else, where no candidate has the
    metric defined there, the first in config order. The holdout never takes part (it judges the choice)."""
    from pipelines.evaluation.metrics import best_candidate, is_missing

    defined = {n: {"metrics": m} for n, m in validation.items() if not is_missing(m.get(primary))}
    if defined:
        return str(best_candidate(defined, primary)), "validation"
    return next(iter(validation)), f"config order ({primary} undefined on validation for every candidate)"


def _check_rows(ctx: StepContext, part: str, frame: Any, minimum: int, window: dict[str, str]) -> None:
    label = ctx.usecase.target.column
    start, end = window[f"{part}_start"], window[f"{part}_end"]
    if len(frame) < minimum:
        raise StepFailed(
            f"{part} window [{start}, {end}) of use case {ctx.usecase.name!r} has {len(frame)} labeled rows; "
            f"at least {minimum} are needed. Run ingest and features for these dates or widen "
            f"split.train_window_days/holdout_days in config/usecases/{ctx.usecase.name}.yaml"
        )
    if ctx.usecase.task == "regression":
        if frame[label].nunique() < 2:
            raise StepFailed(
                f"{part} window [{start}, {end}) of use case {ctx.usecase.name!r} has a single label value "
                f"({label}={frame[label].iloc[0]}); a regression needs values that vary: widen the window"
            )
        return
    classes = sorted(int(v) for v in frame[label].unique())
    if len(classes) < 2:
        raise StepFailed(
            f"{part} window [{start}, {end}) of use case {ctx.usecase.name!r} has a single class "
            f"({label}={classes}); the model needs both classes. Check the target definition "
            f"(target.threshold) or widen the window"
        )


def raw_inputs(usecase_name: str, inputs: Any) -> list[str]:
    """Raw partitions (``raw/<usecase>/<source>/date=<date>``) from a features partition's ``inputs`` fact
    (``{source: {date: content id}}``)."""
    if not isinstance(inputs, dict):
        return []
    return [
        f"{raw_table(usecase_name, str(source))}/{DATE}={day}"
        for source, days in inputs.items()
        for day in (days or {})
    ]


def raw_versions(partitions: dict[str, PartitionInfo]) -> dict[str, int]:
    """The newest version of each raw table that the features of ``partitions`` were built from."""
    versions: dict[str, int] = {}
    for part in partitions.values():
        for table, version in (part.facts.get("raw_versions") or {}).items():
            if version is not None:
                versions[table] = max(int(version), versions.get(table, -1))
    return dict(sorted(versions.items()))


def select_candidates(ctx: StepContext, mode: str, requested: str | None) -> tuple[list[Any], str]:
    """The candidate specs to train and a note saying why."""
    usecase = ctx.usecase
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        return [usecase.candidate(n) for n in names], f"--candidates {','.join(names)}"
    if mode == "full":
        return list(usecase.candidates), "full: every candidate"
    from pipelines.modeling.tracking import champion_version

    champion = champion_version(usecase)
    if champion is None:
        return list(usecase.candidates), "refresh: no champion yet, every candidate"
    name = (champion.tags or {}).get("candidate")
    known = {c.name: c for c in usecase.candidates}
    if name not in known:
        return (
            list(usecase.candidates),
            f"refresh: champion version {champion.version} has candidate {name!r}, not in the config; "
            "every candidate",
        )
    return [known[name]], f"refresh: champion version {champion.version} is candidate {name!r}"


def _fingerprint(
    ctx: StepContext,
    spec: Any,
    mode: str,
    partitions: dict[str, PartitionInfo],
    rows: int,
    label_partitions: dict[str, PartitionInfo] | None = None,
) -> str:
    usecase = ctx.usecase
    payload = {
        "candidate": spec.model_dump(mode="json"),
        "split": usecase.split.model_dump(mode="json"),
        "features": [usecase.features.numeric, usecase.features.categorical],
        "target": usecase.target.model_dump(mode="json"),
        "decision": usecase.decision.model_dump(mode="json"),
        "data": {d: p.content_id for d, p in partitions.items()},
        "labels": {d: p.content_id for d, p in (label_partitions or {}).items()},
        "rows": rows,
        "mode": mode,
        "logical_date": ctx.ds,
        "code_version": ctx.code_version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _reusable_runs(experiment_id: str, fingerprint: str) -> list[Any]:
    """Finished runs with a model of the same data, config and code, newest first (fitted on train, or refitted
    on train + validation: :func:`_run_fitted_on`)."""
    from mlflow import MlflowClient

    from pipelines.modeling.tracking import MODEL_DIGEST_TAG

    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.train_fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    )
    # a run without a recorded digest (logged before digests were) is not reused: no loader would load it
    return [r for r in runs if r.data.tags.get("model_uri") and r.data.tags.get(MODEL_DIGEST_TAG)]


def _run_fitted_on(run: Any, has_validation: bool) -> str:
    """What a run's model is fitted on; a run from before the tag refitted every candidate on train +
    validation when the window had a validation part."""
    default = "train+validation" if has_validation else "train"
    return run.data.tags.get(FITTED_ON, default)


def _recorded_validation_metrics(run: Any, wanted: list[str]) -> dict[str, float]:
    """The ``wanted`` metrics a finished run's fit on train scored on the validation rows."""
    return {
        k[len(VALIDATION_PREFIX) :]: v
        for k, v in run.data.metrics.items()
        if k.startswith(VALIDATION_PREFIX) and k[len(VALIDATION_PREFIX) :] in wanted
    }


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Train the selected candidates; write the result to this run's
    ``runs/<usecase>/train/date=<D>/run=<run>/result.json``."""
    import mlflow
    import numpy as np

    from pipelines import modeling
    from pipelines.evaluation.metrics import model_metrics
    from pipelines.features.model_inputs import model_inputs
    from pipelines.modeling.tracking import configure_mlflow

    usecase, split = ctx.usecase, ctx.usecase.split
    mode = getattr(args, "mode", "full") or "full"
    window_days = getattr(args, "window_days", None) or split.train_window_days
    validation_days = usecase.decision.validation_days if usecase.uses_validation_window else 0
    if window_days < usecase.min_window_days:  # the train DAG's Param window_days has the same minimum
        raise StepFailed(
            f"--window-days {window_days} must be larger than split.holdout_days ({split.holdout_days}) plus "
            f"decision.validation_days ({validation_days}) in config/usecases/{usecase.name}.yaml"
        )
    window = training_window(ctx.day, window_days, split.holdout_days, validation_days)
    snapshot = features_snapshot(ctx)
    labels = labels_snapshot(ctx)
    days = check_window_days(ctx, snapshot, window)
    frames = training_frames(ctx, snapshot, window, count_labels=True, labels=labels)
    completeness = check_labels(ctx, window, frames.label_counts, days)
    train, holdout = frames.train, frames.holdout
    _check_rows(ctx, "train", train, MIN_TRAIN_ROWS, window)
    if frames.validation is not None:
        _check_rows(ctx, "validation", frames.validation, MIN_HOLDOUT_ROWS, window)
    _check_rows(ctx, "holdout", holdout, MIN_HOLDOUT_ROWS, window)

    label = usecase.target.column
    X = model_inputs(usecase, train, "the training rows")
    y = train[label].to_numpy(dtype=modeling.label_dtype(usecase))
    single_feature_scores = check_leakage(
        usecase, X, y, f"the training rows [{window['train_start']}, {window['train_end']})"
    )
    has_validation = frames.validation is not None
    # the chosen candidate's refit on train + validation (train alone without a validation window)
    final_rows = frames.final_fit_rows(split.max_train_rows, split.seed)
    fit_hashes = {"train": frames.content_hash(train)}
    example = modeling.input_example(X)
    primary = usecase.gate.primary_metric
    selection_metrics = list(dict.fromkeys([primary, *usecase.metrics]))
    if has_validation:
        X_validation = model_inputs(usecase, frames.validation, "the validation rows")
        y_validation = frames.validation[label].to_numpy(dtype=modeling.label_dtype(usecase))
        fit_hashes["train+validation"] = frames.content_hash(final_rows)
    all_parts = frames.partitions
    inputs = sorted({k for p in all_parts.values() for k in raw_inputs(usecase.name, p.facts.get("inputs"))})
    specs, selection_note = select_candidates(ctx, mode, getattr(args, "candidates", None))

    def fit_on_train(spec: Any) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
        """The candidate fitted on the train rows, its metrics on the validation rows (which it was not fitted
        on) and the decision its rule chooses there."""
        progress(f"train: fitting {spec.name} ({spec.family}) on {len(train)} train rows")
        fitted = modeling.fit_candidate(spec, usecase, X, y, split.seed)
        if not has_validation:
            return fitted, {}, candidate_decision(ctx, spec.name, None, None, window)
        scores = fitted.scores(X_validation)
        return (
            fitted,
            model_metrics(y_validation, scores, selection_metrics),
            candidate_decision(ctx, spec.name, scores, frames.validation, window),
        )

    experiment_id = configure_mlflow(ctx.profile, usecase)
    # 1. every candidate fitted on train and scored on validation (or a finished run that was: its recorded
    # validation metrics are the same), which is all the choice needs
    # (a refresh of the champion's candidate whose decision carries over fits once: on train + validation)
    carried = (
        champion_decision(ctx, specs[0]) if mode == "refresh" and has_validation and len(specs) == 1 else None
    )
    trials: dict[str, dict[str, Any]] = {}
    for spec in specs:
        fingerprint = _fingerprint(ctx, spec, mode, all_parts, len(train), frames.label_partitions)
        runs = [] if getattr(args, "retrain", False) else _reusable_runs(experiment_id, fingerprint)
        trial: dict[str, Any] = {"fingerprint": fingerprint, "runs": runs, "first": None, "decision": None}
        if runs:
            trial["validation_metrics"] = _recorded_validation_metrics(runs[0], selection_metrics)
        elif carried is not None:
            trial["validation_metrics"] = {}
        else:
            trial["first"], trial["validation_metrics"], trial["decision"] = fit_on_train(spec)
        trials[spec.name] = trial

    # 2. the choice, on validation: the holdout that gates the chosen one takes no part in it
    chosen = None
    if carried is not None:
        chosen = {
            "candidate": specs[0].name,
            "on": f"refresh of champion version {carried['version']}",
            "metric": primary,
            "value": None,
        }
        progress(
            f"train: refreshing {specs[0].name}, the champion's candidate: one fit, on train + validation"
        )
    elif has_validation:
        name, on = choose_candidate({n: t["validation_metrics"] for n, t in trials.items()}, primary)
        chosen = {
            "candidate": name,
            "on": on,
            "metric": primary,
            "value": trials[name]["validation_metrics"].get(primary),
        }
        progress(f"train: {name} chosen by {primary} on the {on}; only it is refitted on train + validation")
    if chosen is not None:
        # the holdout's model inputs, labels left out: the rows on which the threshold chosen for the fit on
        # train moves to the refit on train + validation (registered_decision, carried_decision)
        X_holdout_inputs = model_inputs(usecase, holdout, "the holdout inputs")
        X_final = model_inputs(usecase, final_rows, "the final fit rows")
        y_final = final_rows[label].to_numpy(dtype=modeling.label_dtype(usecase))

    # 3. the chosen one refitted on train + validation, the others logged as fitted on train
    candidates = []
    for spec in specs:
        trial = trials[spec.name]
        refit = chosen is not None and spec.name == chosen["candidate"]
        parts = ["train", "validation"] if refit else ["train"]
        fitted_on = "+".join(parts)
        validation_metrics = trial["validation_metrics"]
        previous = next((r for r in trial["runs"] if _run_fitted_on(r, has_validation) == fitted_on), None)
        if previous is not None:
            progress(
                f"train: {spec.name}: reusing finished run {previous.info.run_id} (same data, config, code)"
            )
            run_id, model_uri = previous.info.run_id, previous.data.tags["model_uri"]
            validation_metrics = _recorded_validation_metrics(previous, selection_metrics)
        else:
            if trial["first"] is None and not (refit and carried is not None):
                # its reusable run was fitted on other rows (chosen then, not now)
                trial["first"], validation_metrics, trial["decision"] = fit_on_train(spec)
            fitted, decision = trial["first"], trial["decision"]
            rows = final_rows if refit else train
            with mlflow.start_run(run_name=f"{spec.name}@{ctx.ds}", experiment_id=experiment_id) as active:
                mlflow.set_tags(
                    {
                        "usecase": usecase.name,
                        "logical_date": ctx.ds,
                        "mode": mode,
                        "candidate": spec.name,
                        "family": spec.family,
                        "config_hash": usecase.config_hash,
                        FEATURES_CONFIG_TAG: features_config_hash(usecase),
                        "code_version": ctx.code_version,
                        "train_fingerprint": trial["fingerprint"],
                        "data_window": f"{window['train_start']}..{window['holdout_end']}",
                        FITTED_ON: fitted_on,
                    }
                )
                if refit:  # chosen on validation (or the champion's, refreshed): refit on train + validation
                    progress(f"train: refitting {spec.name} on {len(final_rows)} train + validation rows")
                    first_fit = fitted
                    fitted = modeling.fit_candidate(
                        spec, usecase, X_final, y_final, split.seed, start_from=first_fit
                    )
                    if first_fit is not None:
                        fitted.fit_seconds += first_fit.fit_seconds
                    if carried is not None:
                        decision = carried_decision(carried, fitted.scores(X_holdout_inputs), window)
                    elif decision is not None and decision["rule"] != "fixed":  # onto the refit's own scores
                        decision = registered_decision(decision, fitted.scores(X_holdout_inputs), window)
                if decision is not None and "threshold_source" not in decision:
                    decision = decision | {
                        "threshold_source": fixed_or_chosen_source(decision, window, chosen)
                    }
                mlflow.log_params(
                    {
                        **modeling.mlflow_params(fitted),
                        **{f"window.{k}": v for k, v in window.items()},
                        "split.train_window_days": window_days,
                        "split.holdout_days": split.holdout_days,
                        "split.max_train_rows": split.max_train_rows,
                        "split.seed": split.seed,
                        "rows.train": len(train),
                        "rows.final_fit": len(rows),  # the rows this model is fitted on
                        "rows.holdout": len(holdout),
                        "rows.validation": 0 if frames.validation is None else len(frames.validation),
                        "features": len(X.columns),
                        "decision.rule": usecase.decision.rule,
                        FITTED_ON: fitted_on,
                    }
                )
                label_stat = "train_positive_rate" if usecase.task == "classification" else "train_label_mean"
                recorded = {} if decision is None else {DECISION_THRESHOLD: decision["threshold"]}
                if decision is not None:
                    recorded |= {
                        f"validation_{k}": float(v)
                        for k, v in decision.items()
                        if k in ("precision", "recall", "f1") and v is not None
                    }
                    recorded |= {
                        k: float(decision[k])
                        for k in (
                            "validation_threshold",
                            "validation_positive_rate",
                            "holdout_inputs_positive_rate",
                        )
                        if decision.get(k) is not None
                    }
                    mlflow.set_tag(THRESHOLD_SOURCE, decision["threshold_source"])
                mlflow.log_metrics(
                    {
                        "fit_seconds": fitted.fit_seconds,
                        label_stat: float(np.mean(rows[label].to_numpy(dtype="float64"))),
                        **recorded,
                        **{
                            f"{VALIDATION_PREFIX}{k}": v
                            for k, v in validation_metrics.items()
                            if v is not None
                        },
                    }
                )
                metadata = (
                    None
                    if decision is None
                    else {
                        DECISION_THRESHOLD: decision["threshold"],
                        "decision_rule": decision["rule"],
                        THRESHOLD_SOURCE: decision["threshold_source"],
                        FITTED_ON: fitted_on,
                        **(
                            {"validation_threshold": decision["validation_threshold"]}
                            if "validation_threshold" in decision
                            else {}
                        ),
                    }
                )
                info = modeling.log_fitted_model(fitted, example, metadata)  # its digest recorded too
                mlflow.set_tag("model_uri", info.model_uri)
                run_id, model_uri = active.info.run_id, info.model_uri
            said = (
                ""
                if decision is None
                else f"; decision threshold {decision['threshold']:.4f} ({decision['rule']})"
            )
            progress(f"train: {spec.name} fitted in {fitted.fit_seconds:.1f}s, run {run_id}{said}")
        if previous is not None:
            decision = (
                None
                if DECISION_THRESHOLD not in previous.data.metrics
                else {
                    "rule": previous.data.params.get("decision.rule", usecase.decision.rule),
                    "threshold": previous.data.metrics[DECISION_THRESHOLD],
                    **{
                        k: previous.data.metrics[k]
                        for k in (
                            "validation_threshold",
                            "validation_positive_rate",
                            "holdout_inputs_positive_rate",
                        )
                        if k in previous.data.metrics
                    },
                    THRESHOLD_SOURCE: previous.data.tags.get(THRESHOLD_SOURCE, "not recorded (an older run)"),
                }
            )
        entry = {
            "name": spec.name,
            "family": spec.family,
            "run_id": run_id,
            "model_uri": model_uri,
            # the window parts and rows this model is fitted on (what register tags and lineage reloads)
            FITTED_ON: parts,
            "fit_rows": len(final_rows if refit else train),
            "fit_data_hash": fit_hashes[fitted_on],
        }
        if validation_metrics:
            entry["validation_metrics"] = validation_metrics
        if decision is not None:
            entry |= {
                DECISION_THRESHOLD: decision["threshold"],
                THRESHOLD_SOURCE: decision[THRESHOLD_SOURCE],
                "decision": decision,
            }
        candidates.append(entry)

    result: dict[str, Any] = {
        "mode": mode,
        "selection": selection_note,
        "window": window,
        "feature_partitions": sorted(all_parts),
        "feature_data_hashes": {d: p.content_id for d, p in sorted(all_parts.items())},
        "tables_read": {
            snapshot.table: snapshot.version,
            **({labels.table: labels.version} if labels.version is not None else {}),
        },
        "features_version": snapshot.version,
        "labels_version": labels.version,
        "label_data_hashes": {d: p.content_id for d, p in sorted(frames.label_partitions.items())},
        "raw_versions": raw_versions(
            {**all_parts, **{f"labels:{d}": p for d, p in frames.label_partitions.items()}}
        ),
        "data_hashes": frames.hashes(),
        "code_version": ctx.code_version,
        "image": os.environ.get("MLOPS_IMAGE") or "in-process (no container)",
        "inputs": inputs,
        "rows": {
            "train": len(train),
            "validation": 0 if frames.validation is None else len(frames.validation),
            "holdout": len(holdout),
            "final_fit": len(final_rows),  # the chosen candidate's (train alone without validation)
        },
        # the candidate chosen on validation, the only one refitted on train + validation (None: no validation
        # window, a single candidate that evaluate takes)
        "chosen": chosen,
        # per part: expected, present and missing days; events, due outcomes, labelled, unlabelled (never arrived)
        "completeness": completeness,
        "unlabelled_events": {part: entry["unlabelled_events"] for part, entry in completeness.items()},
        # each model input's ROC AUC or R-squared on its own on the train rows (pipelines.modeling.leakage)
        "single_feature_scores": single_feature_scores,
        "candidates": candidates,
    }
    key = f"{ctx.run_key('train')}/result.json"
    result["result_uri"] = ctx.lake.storage.uri(key)
    ctx.lake.write_json(key, result)
    small = {
        k: v
        for k, v in result.items()
        if k
        not in {
            "inputs",
            "feature_data_hashes",
            "label_data_hashes",
            "feature_partitions",
            "completeness",
            "single_feature_scores",
        }
    }
    small["feature_partitions_count"] = len(all_parts)
    small["inputs_count"] = len(inputs)
    return small
