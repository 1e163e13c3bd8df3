"""Train the candidate models on the rolling window before the logical date and log each to MLflow.

Window (dates of feature partitions, end exclusive, never on or after the logical date D)::

    train   = [D - split.train_window_days, D - split.holdout_days)
    holdout = [D - split.holdout_days, D)

Rows with an unknown label are dropped; the train rows are capped at ``split.max_train_rows`` by a seeded sample.
``--mode full`` trains every candidate; ``--mode refresh`` only the champion's candidate (registry alias
``champion``, tag ``candidate``), or every candidate while there is no champion. Each candidate is one MLflow
run named ``<candidate>@<D>``. A rerun with the same data, config and code reuses the finished runs (same result);
``--retrain`` forces new runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import date, timedelta
from typing import Any

from pipelines.context import StepContext, StepFailed, progress

MIN_TRAIN_ROWS = 100
MIN_HOLDOUT_ROWS = 50


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


def training_window(day: date, train_window_days: int, holdout_days: int) -> dict[str, str]:
    """ISO dates of the train and holdout windows before ``day`` (ends exclusive)."""
    return {
        "train_start": (day - timedelta(days=train_window_days)).isoformat(),
        "train_end": (day - timedelta(days=holdout_days)).isoformat(),
        "holdout_start": (day - timedelta(days=holdout_days)).isoformat(),
        "holdout_end": day.isoformat(),
    }


def window_partitions(ctx: StepContext, start: str, end: str) -> dict[str, Any]:
    """Committed feature partitions with ``start <= date < end``, by ISO date."""
    found = ctx.lake.partitions("features", ctx.usecase.name)
    return {day: part for day, part in found.items() if start <= day < end}


def read_labeled(ctx: StepContext, partitions: dict[str, Any], columns: list[str]) -> Any:
    """Rows of ``partitions`` (oldest first) with a known 0/1 label; StepFailed names a bad partition."""
    import pandas as pd

    label = ctx.usecase.target.column
    frames = []
    for day, part in partitions.items():
        listed = part.manifest.get("columns")
        missing = [c for c in columns if listed is not None and c not in listed]
        if missing:
            raise StepFailed(
                f"{ctx.lake.storage.uri(part.prefix)}: columns {missing} are missing from the feature "
                f"partition of {day}; rerun the features step for {day} (python -m pipelines features "
                f"--usecase {ctx.usecase.name} --date {day})"
            )
        try:
            frame = ctx.lake.read_frame(part, columns)
        except (KeyError, ValueError, OSError) as exc:
            raise StepFailed(
                f"{ctx.lake.storage.uri(part.prefix)}: cannot read columns {columns} of the feature partition "
                f"of {day}: {exc}; rerun the features step for {day}"
            ) from exc
        labels = pd.to_numeric(frame[label], errors="coerce")
        bad = sorted(set(labels.dropna().unique()) - {0, 1})
        if bad:
            raise StepFailed(
                f"{ctx.lake.storage.uri(part.prefix)}: label column {label!r} has values {bad[:5]} "
                f"(expected 0/1 or null); fix the target in the features step"
            )
        frame[label] = labels
        frames.append(frame[labels.notna()])
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def _check_rows(ctx: StepContext, part: str, frame: Any, minimum: int, window: dict[str, str]) -> None:
    label = ctx.usecase.target.column
    start, end = (
        (window["train_start"], window["train_end"])
        if part == "train"
        else (window["holdout_start"], window["holdout_end"])
    )
    if len(frame) < minimum:
        raise StepFailed(
            f"{part} window [{start}, {end}) of use case {ctx.usecase.name!r} has {len(frame)} labeled rows; "
            f"at least {minimum} are needed. Run ingest and features for these dates or widen "
            f"split.train_window_days/holdout_days in config/usecases/{ctx.usecase.name}.yaml"
        )
    classes = sorted(int(v) for v in frame[label].unique())
    if len(classes) < 2:
        raise StepFailed(
            f"{part} window [{start}, {end}) of use case {ctx.usecase.name!r} has a single class "
            f"({label}={classes}); the model needs both classes. Check the target definition "
            f"(target.threshold) or widen the window"
        )


def raw_inputs(usecase_name: str, inputs: Any) -> list[str]:
    """Raw partition keys from a features manifest's ``inputs``.

    Accepts the features step's ``{source: {date: content_hash}}`` (-> ``raw/<usecase>/<source>/date=<date>``)
    or a plain list of keys/URIs.
    """
    from pipelines.lake import Lake

    if isinstance(inputs, dict):
        return [
            Lake.partition_key("raw", usecase_name, day, str(source))
            for source, days in inputs.items()
            for day in (days or {})
        ]
    return [str(item) for item in inputs or []]


def select_candidates(ctx: StepContext, mode: str, requested: str | None) -> tuple[list[Any], str]:
    """The candidate specs to train and a note saying why."""
    usecase = ctx.usecase
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        return [usecase.candidate(n) for n in names], f"--candidates {','.join(names)}"
    if mode == "full":
        return list(usecase.candidates), "full: every candidate"
    from pipelines.tracking import champion_version

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


def _fingerprint(ctx: StepContext, spec: Any, mode: str, partitions: dict[str, Any], rows: int) -> str:
    usecase = ctx.usecase
    payload = {
        "candidate": spec.model_dump(mode="json"),
        "split": usecase.split.model_dump(mode="json"),
        "features": [usecase.features.numeric, usecase.features.categorical],
        "target": usecase.target.model_dump(mode="json"),
        "data": {
            d: p.manifest.get("data_hash") or p.manifest.get("commit_id") for d, p in partitions.items()
        },
        "rows": rows,
        "mode": mode,
        "logical_date": ctx.ds,
        "code_version": ctx.code_version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _reusable_run(experiment_id: str, fingerprint: str) -> Any | None:
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.train_fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return next((r for r in runs if r.data.tags.get("model_uri")), None)


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Train the selected candidates; write the result to ``runs/<usecase>/train/date=<D>/result.json``."""
    import mlflow
    import numpy as np

    from pipelines import modeling
    from pipelines.tracking import configure_mlflow

    usecase, split = ctx.usecase, ctx.usecase.split
    mode = getattr(args, "mode", "full") or "full"
    window_days = getattr(args, "window_days", None) or split.train_window_days
    if window_days <= split.holdout_days:
        raise StepFailed(
            f"--window-days {window_days} must be larger than split.holdout_days ({split.holdout_days}) in "
            f"config/usecases/{usecase.name}.yaml"
        )
    window = training_window(ctx.day, window_days, split.holdout_days)
    train_parts = window_partitions(ctx, window["train_start"], window["train_end"])
    holdout_parts = window_partitions(ctx, window["holdout_start"], window["holdout_end"])
    for part, found, start, end in (
        ("train", train_parts, window["train_start"], window["train_end"]),
        ("holdout", holdout_parts, window["holdout_start"], window["holdout_end"]),
    ):
        if not found:
            raise StepFailed(
                f"no committed feature partitions under "
                f"{ctx.lake.storage.uri(f'features/{usecase.name}')} for the {part} window [{start}, {end}); "
                f"run ingest and features for these dates first",
                {"window": window},
            )

    label = usecase.target.column
    columns = [*modeling.feature_columns(usecase), label]
    progress(f"train: reading {len(train_parts)} + {len(holdout_parts)} feature partitions")
    train = read_labeled(ctx, train_parts, columns)
    holdout = read_labeled(ctx, holdout_parts, columns)
    if split.max_train_rows and len(train) > split.max_train_rows:
        train = train.sample(n=split.max_train_rows, random_state=split.seed).sort_index()
    _check_rows(ctx, "train", train, MIN_TRAIN_ROWS, window)
    _check_rows(ctx, "holdout", holdout, MIN_HOLDOUT_ROWS, window)

    X = modeling.prepare_features(train, usecase)
    y = train[label].to_numpy(dtype="int64")
    example = modeling.input_example(X)
    all_parts = {**train_parts, **holdout_parts}
    inputs = sorted(
        {k for p in all_parts.values() for k in raw_inputs(usecase.name, p.manifest.get("inputs"))}
    )
    specs, selection_note = select_candidates(ctx, mode, getattr(args, "candidates", None))

    experiment_id = configure_mlflow(ctx.profile, usecase)
    candidates = []
    for spec in specs:
        fingerprint = _fingerprint(ctx, spec, mode, all_parts, len(train))
        previous = None if getattr(args, "retrain", False) else _reusable_run(experiment_id, fingerprint)
        if previous is not None:
            progress(
                f"train: {spec.name}: reusing finished run {previous.info.run_id} (same data, config, code)"
            )
            run_id, model_uri = previous.info.run_id, previous.data.tags["model_uri"]
        else:
            progress(f"train: fitting {spec.name} ({spec.family}) on {len(train)} rows")
            with mlflow.start_run(run_name=f"{spec.name}@{ctx.ds}", experiment_id=experiment_id) as active:
                mlflow.set_tags(
                    {
                        "usecase": usecase.name,
                        "logical_date": ctx.ds,
                        "mode": mode,
                        "candidate": spec.name,
                        "family": spec.family,
                        "config_hash": usecase.config_hash,
                        "code_version": ctx.code_version,
                        "train_fingerprint": fingerprint,
                        "data_window": f"{window['train_start']}..{window['holdout_end']}",
                    }
                )
                fitted = modeling.fit_candidate(spec, usecase, X, y, split.seed)
                mlflow.log_params(
                    {
                        **modeling.mlflow_params(fitted),
                        **{f"window.{k}": v for k, v in window.items()},
                        "split.train_window_days": window_days,
                        "split.holdout_days": split.holdout_days,
                        "split.max_train_rows": split.max_train_rows,
                        "split.seed": split.seed,
                        "rows.train": len(train),
                        "rows.holdout": len(holdout),
                        "features": len(X.columns),
                    }
                )
                mlflow.log_metrics(
                    {
                        "fit_seconds": fitted.fit_seconds,
                        "train_positive_rate": float(np.mean(y)),
                    }
                )
                info = modeling.log_fitted_model(fitted, example)
                mlflow.set_tag("model_uri", info.model_uri)
                run_id, model_uri = active.info.run_id, info.model_uri
            progress(f"train: {spec.name} fitted in {fitted.fit_seconds:.1f}s, run {run_id}")
        candidates.append(
            {"name": spec.name, "family": spec.family, "run_id": run_id, "model_uri": model_uri}
        )

    result: dict[str, Any] = {
        "mode": mode,
        "selection": selection_note,
        "window": window,
        "feature_partitions": sorted(all_parts),
        "feature_data_hashes": {
            d: p.manifest.get("data_hash") or p.manifest.get("commit_id")
            for d, p in sorted(all_parts.items())
        },
        "inputs": inputs,
        "rows": {"train": len(train), "holdout": len(holdout)},
        "candidates": candidates,
    }
    key = f"{ctx.run_key('train')}/result.json"
    result["result_uri"] = ctx.lake.storage.uri(key)
    ctx.lake.write_json(key, result)
    small = {
        k: v for k, v in result.items() if k not in {"inputs", "feature_data_hashes", "feature_partitions"}
    }
    small["feature_partitions_count"] = len(all_parts)
    small["inputs_count"] = len(inputs)
    return small
