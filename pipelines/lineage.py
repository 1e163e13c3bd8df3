"""``mlops lineage <usecase> <version> [--reload]``: what a registered model was trained on, and proof that the
lake still holds exactly that training set.

The register step tags every model version with the lake table versions train read (``lineage.*`` tags, see
``pipelines.steps.register.lineage_tags``). ``--reload`` reads the features table at that version (Delta time
travel), rebuilds the train and holdout frames exactly as train did, and compares their content hashes with the
recorded ones; it also checks that each raw table version the features were built from can still be loaded.
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

    from pipelines.tracking import configure_mlflow, model_name

    usecase = load_usecase(usecase_name)
    configure_mlflow(load_profile(), usecase)
    name = model_name(usecase)
    try:
        found = MlflowClient().get_model_version(name, str(version))
    except MlflowException as exc:
        raise ConfigError(f"model {name!r} has no version {version} in the registry ({exc})") from None
    tags = dict(found.tags or {})
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
        "window": _json_tag(tags, "lineage.window") or {},
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


def reload_training_set(lineage: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the train and holdout frames of ``lineage`` from the recorded features and labels versions and
    compare their content hashes with the recorded ones; check that the recorded raw versions still load."""
    from pipelines.steps.train import features_snapshot, recorded_labels, training_frames

    usecase = load_usecase(lineage["model"])
    profile = load_profile()
    lake = Lake(profile.lake_uri)
    ctx = StepContext(
        usecase=usecase, day=date.fromisoformat(lineage["logical_date"]), profile=profile, lake=lake
    )
    try:
        snapshot = features_snapshot(ctx, lineage["features_version"])
        labels = recorded_labels(ctx, lineage)
        frames = training_frames(ctx, snapshot, lineage["window"], labels=labels)
    except (LakeError, StepFailed) as exc:
        return {"identical": False, "error": str(exc)}
    hashes = frames.hashes()
    raw = {}
    for table, version in sorted(lineage["raw_versions"].items()):
        try:
            raw[table] = {
                "version": version,
                "rows": sum(p.rows for p in lake.partitions(table, int(version)).values()),
            }
        except LakeError as exc:
            raw[table] = {"version": version, "error": str(exc)}
    identical = hashes == lineage["data_hashes"]
    reason = None
    if not identical and lineage["config_hash"] != lineage["current_config_hash"]:
        reason = (
            f"the use case config changed since training (config hash {lineage['config_hash']} then, "
            f"{lineage['current_config_hash']} now): features or the split may differ"
        )
    return {
        "identical": identical,
        "rows": {"train": len(frames.train), "holdout": len(frames.holdout)},
        "data_hashes": hashes,
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
        window = lineage["window"]
        lines = [
            f"model {lineage['model']} version {lineage['version']} ({lineage['candidate']}), trained for "
            f"{lineage['logical_date']}, run {lineage['run_id']}",
            f"  window         train [{window.get('train_start')}, {window.get('train_end')}), holdout "
            f"[{window.get('holdout_start')}, {window.get('holdout_end')})",
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
                lines.append(
                    f"  reload         {verdict}: {outcome['rows']['train']} train + {outcome['rows']['holdout']} "
                    f"holdout rows; hashes train {outcome['data_hashes']['train']}, holdout "
                    f"{outcome['data_hashes']['holdout']}"
                )
                for table, info in outcome["raw_tables"].items():
                    state = f"error: {info['error']}" if "error" in info else f"{info['rows']} rows"
                    lines.append(f"  raw reload     {table} version {info['version']}: {state}")
                if outcome.get("reason"):
                    lines.append(f"  why            {outcome['reason']}")
        print("\n".join(lines))
    return 0 if outcome is None or outcome.get("identical") else 1
