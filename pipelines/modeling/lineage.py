"""``mlops lineage <usecase> <version> [--reload]``: what a registered model was trained on, and proof that the
lake still holds exactly that training set.

The register step tags every model version with the lake table versions train read (``lineage.*`` tags, see
``pipelines.steps.register.lineage_tags``) and the window parts the model is fitted on (``lineage.fitted_on``:
train + validation for the candidate train chose and refitted, train for the others; ``register.fit_tags``).
``--reload`` reads the features table at that version (Delta time travel), rebuilds the train, validation and
holdout frames exactly as train did, and from them the rows the model was fitted on, and compares their content
hashes with the recorded ones; it also checks that each raw table version the features were built from can still
be loaded.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from pipelines.config import ConfigError, load_profile, load_usecase
from pipelines.context import StepContext, StepFailed
from pipelines.lake import Lake, LakeError, features_table, labels_table


def _json_tag(tags: dict[str, str], name: str) -> Any:
    try:
        return json.loads(tags.get(name) or "null")
    except json.JSONDecodeError:
        return None


def model_lineage(usecase_name: str, version: int) -> dict[str, Any]:
    """The lineage recorded on one model version: tables and versions, data hashes, config, code and image."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.modeling.tracking import configure_mlflow, model_name

    usecase = load_usecase(usecase_name)
    configure_mlflow(load_profile(), usecase)
    name = model_name(usecase)
    try:
        found = MlflowClient().get_model_version(name, str(version))
    except MlflowException as exc:
        raise ConfigError(f"model {name!r} has no version {version} in the registry ({exc})") from None
    tags = dict(found.tags or {})
    window = _json_tag(tags, "lineage.window") or {}
    # a version registered before fitted_on was recorded: every candidate was refitted on train + validation
    # when the window had a validation part, and its fit hash was not recorded
    fitted_on = _json_tag(tags, "lineage.fitted_on") or (
        ["train", "validation"] if "validation_start" in window else ["train"]
    )
    if not tags.get("lineage.features_version"):
        raise ConfigError(
            f"model {name!r} version {version} has no lineage tags (registered before lake versions were "
            "recorded); retrain and register it to record them"
        )
    return {
        "model": name,
        "version": int(found.version),
        "run_id": found.run_id,
        "candidate": tags.get("candidate"),
        "logical_date": tags.get("logical_date"),
        "window": window,
        "fitted_on": fitted_on,
        "fit_window": {
            "start": window.get(f"{fitted_on[0]}_start"),
            "end_exclusive": window.get(f"{fitted_on[-1]}_end"),
        },
        "fit_rows": int(tags["lineage.fit_rows"]) if tags.get("lineage.fit_rows") else None,
        "fit_data_hash": tags.get("lineage.fit_data_hash") or None,
        "features_table": features_table(usecase.name),
        "features_version": int(tags["lineage.features_version"]),
        "labels_table": labels_table(usecase.name),
        # None: registered before labels had their own table, or none existed when it trained
        "labels_version": int(tags["lineage.labels_version"]) if tags.get("lineage.labels_version") else None,
        "raw_versions": _json_tag(tags, "lineage.raw_versions") or {},
        "data_hashes": {
            "train": tags.get("lineage.train_data_hash"),
            "holdout": tags.get("lineage.holdout_data_hash"),
            # a window with a validation part (decision thresholds chosen on it) records its hash too
            **(
                {"validation": tags["lineage.validation_data_hash"]}
                if tags.get("lineage.validation_data_hash")
                else {}
            ),
        },
        "config_hash": tags.get("config_hash"),
        "current_config_hash": usecase.config_hash,
        "code_version": tags.get("lineage.code_version") or tags.get("code_version"),
        "image": tags.get("lineage.image"),
    }


def _context(lineage: dict[str, Any]) -> StepContext:
    usecase = load_usecase(lineage["model"])
    profile = load_profile()
    return StepContext(
        usecase=usecase,
        day=date.fromisoformat(lineage["logical_date"]),
        profile=profile,
        lake=Lake(profile.lake_uri),
    )


def reload_frames(lineage: dict[str, Any]) -> tuple[Any, Any]:
    """The train, validation and holdout frames of ``lineage`` rebuilt from the recorded features and labels
    versions with the event keys (:func:`pipelines.modeling.training_window.training_frames`), and the rows the model was
    fitted on (``fitted_on``: the train rows, or the refit's train + validation rows, capped as train capped
    them). Raises LakeError or StepFailed when a version or a partition is gone."""
    from pipelines.modeling.training_window import features_snapshot, recorded_labels, training_frames

    ctx = _context(lineage)
    snapshot = features_snapshot(ctx, lineage["features_version"])
    labels = recorded_labels(ctx, lineage)
    frames = training_frames(ctx, snapshot, lineage["window"], labels=labels, keys=True)
    split = ctx.usecase.split
    return frames, frames.fitted_rows(list(lineage["fitted_on"]), split.max_train_rows, split.seed)


def reload_training_set(lineage: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the train, validation and holdout frames of ``lineage`` and the rows the model was fitted on from
    the recorded features and labels versions and compare their content hashes with the recorded ones; check
    that the recorded raw versions still load."""
    lake = _context(lineage).lake
    try:
        frames, fitted = reload_frames(lineage)
    except (LakeError, StepFailed) as exc:
        return {"identical": False, "error": str(exc)}
    hashes = frames.hashes()
    fit_hash = frames.content_hash(fitted)
    raw = {}
    for table, version in sorted(lineage["raw_versions"].items()):
        try:
            raw[table] = {
                "version": version,
                "rows": sum(p.rows for p in lake.partitions(table, int(version)).values()),
            }
        except LakeError as exc:
            raw[table] = {"version": version, "error": str(exc)}
    recorded_fit = lineage.get("fit_data_hash")
    identical = hashes == lineage["data_hashes"] and (recorded_fit is None or fit_hash == recorded_fit)
    reason = None
    if not identical and lineage["config_hash"] != lineage["current_config_hash"]:
        reason = (
            f"the use case config changed since training (config hash {lineage['config_hash']} then, "
            f"{lineage['current_config_hash']} now): features or the split may differ"
        )
    return {
        "identical": identical,
        "rows": {
            "train": len(frames.train),
            **({"validation": len(frames.validation)} if frames.validation is not None else {}),
            "holdout": len(frames.holdout),
        },
        "data_hashes": hashes,
        # the rows the model was fitted on (None recorded: a version from before the fit hash was)
        "fitted": {
            "on": lineage["fitted_on"],
            "rows": len(fitted),
            "data_hash": fit_hash,
            "recorded_data_hash": recorded_fit,
        },
        "raw_tables": raw,
        "reason": reason,
    }


def print_lineage(usecase_name: str, version: int, reload: bool = False, as_json: bool = False) -> int:
    """Print the lineage of one model version (and the reload check); returns the exit code (1: not identical)."""
    lineage = model_lineage(usecase_name, version)
    outcome = reload_training_set(lineage) if reload else None
    if as_json:
        print(json.dumps({**lineage, "reload": outcome}, indent=2, default=str))
    else:
        window, fit = lineage["window"], lineage["fit_window"]
        validation = (
            f", validation [{window['validation_start']}, {window['validation_end']})"
            if window.get("validation_start")
            else ""
        )
        fit_rows = "" if lineage["fit_rows"] is None else f", {lineage['fit_rows']} rows"
        lines = [
            f"model {lineage['model']} version {lineage['version']} ({lineage['candidate']}), trained for "
            f"{lineage['logical_date']}, run {lineage['run_id']}",
            f"  window         train [{window.get('train_start')}, {window.get('train_end')}){validation}, holdout "
            f"[{window.get('holdout_start')}, {window.get('holdout_end')})",
            f"  fitted on      {' + '.join(lineage['fitted_on'])} [{fit['start']}, {fit['end_exclusive']})"
            f"{fit_rows}",
            f"  features       {lineage['features_table']} version {lineage['features_version']}",
            f"  labels         {lineage['labels_table']} version {lineage['labels_version']}",
            *[f"  raw            {t} version {v}" for t, v in sorted(lineage["raw_versions"].items())],
            f"  data hashes    train {lineage['data_hashes']['train']}",
            f"                 holdout {lineage['data_hashes']['holdout']}",
            f"  config hash    {lineage['config_hash']} (current config: {lineage['current_config_hash']})",
            f"  code version   {lineage['code_version']}",
            f"  image          {lineage['image']}",
        ]
        if outcome is not None:
            if outcome.get("error"):
                lines.append(f"  reload         FAILED: {outcome['error']}")
            else:
                verdict = "identical" if outcome["identical"] else "DIFFERENT"
                rows = " + ".join(f"{n} {part}" for part, n in outcome["rows"].items())
                lines.append(
                    f"  reload         {verdict}: {rows} rows; hashes train {outcome['data_hashes']['train']}, "
                    f"holdout {outcome['data_hashes']['holdout']}"
                )
                fitted = outcome["fitted"]
                lines.append(
                    f"  reload fitted  {fitted['rows']} rows ({' + '.join(fitted['on'])}), hash "
                    f"{fitted['data_hash']}"
                    + ("" if fitted["recorded_data_hash"] else " (no fit hash recorded: not compared)")
                )
                for table, info in outcome["raw_tables"].items():
                    state = f"error: {info['error']}" if "error" in info else f"{info['rows']} rows"
                    lines.append(f"  raw reload     {table} version {info['version']}: {state}")
                if outcome.get("reason"):
                    lines.append(f"  why            {outcome['reason']}")
        print("\n".join(lines))
    return 0 if outcome is None or outcome.get("identical") else 1
