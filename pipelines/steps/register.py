"""Register every trained candidate as a version of the use case's model, tagged with its lineage and gate result.

Reads this run's ``runs/<usecase>/train/date=<D>/run=<run>/result.json`` and gate decision
``runs/<usecase>/gate/date=<D>/run=<run>/result.json`` (and the evaluate result for each candidate's holdout
metric). Idempotent: a rerun finds the version whose run id matches instead of creating another, and rewrites the
same tags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.failpoints import failpoint
from pipelines.results import read_step_result

# MLflow limits tag values (5000 characters in the SQL store); long gate reasons are cut to this length
MAX_TAG_CHARS = 4000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The register step needs only --usecase and --date."""


def partitions_tag(dates: list[str]) -> str:
    """``first..last (n)`` for a list of partition dates."""
    ordered = sorted(dates)
    return f"{ordered[0]}..{ordered[-1]} ({len(ordered)})" if ordered else "none (0)"


def raw_partitions_tag(keys: list[str]) -> tuple[str, str]:
    """``<count> (sha256:<16 hex>)`` for a list of raw partition keys, and the full hash."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return f"{len(keys)} (sha256:{digest[:16]})", digest


def lineage_tags(train: dict[str, Any]) -> dict[str, str]:
    """Tags that let ``mlops lineage`` rebuild a model's training set: the lake table versions the train step
    read (features and labels) and that its features were built from (raw), the content hashes of the train and holdout
    rows, the code version and the image train ran in."""
    hashes = train.get("data_hashes") or {}
    return {
        "lineage.window": json.dumps(train.get("window") or {}, sort_keys=True),
        "lineage.features_version": str(train.get("features_version", "")),
        "lineage.labels_version": "" if train.get("labels_version") is None else str(train["labels_version"]),
        "lineage.tables_read": json.dumps(train.get("tables_read") or {}, sort_keys=True),
        "lineage.raw_versions": json.dumps(train.get("raw_versions") or {}, sort_keys=True),
        "lineage.train_data_hash": str(hashes.get("train", "")),
        "lineage.holdout_data_hash": str(hashes.get("holdout", "")),
        "lineage.validation_data_hash": str(hashes.get("validation", "")),
        "lineage.code_version": str(train.get("code_version", "")),
        "lineage.image": str(train.get("image", "")),
    }


def fit_window(window: dict[str, Any], parts: list[str]) -> str:
    """``start..end`` (end exclusive) of the consecutive window ``parts`` a model is fitted on."""
    if not parts or f"{parts[0]}_start" not in window or f"{parts[-1]}_end" not in window:
        return ""
    return f"{window[f'{parts[0]}_start']}..{window[f'{parts[-1]}_end']}"


def fit_tags(candidate: dict[str, Any], window: dict[str, Any]) -> dict[str, str]:
    """Tags that say which rows one candidate's model is fitted on (``mlops lineage`` reloads exactly those):
    the window parts (train + validation for the chosen candidate's refit, train for the others), their dates,
    the row count and the content hash. None for a train result from before these were recorded."""
    parts = candidate.get("fitted_on")
    if not parts:
        return {}
    return {
        "lineage.fitted_on": json.dumps(list(parts)),
        "lineage.fit_window": fit_window(window, list(parts)),
        "lineage.fit_rows": str(candidate.get("fit_rows", "")),
        "lineage.fit_data_hash": str(candidate.get("fit_data_hash", "")),
    }


def format_metric(value: Any) -> str:
    """A metric value as a tag string ("nan" when it is missing or not a number)."""
    try:
        return format(float(value), ".6f")
    except (TypeError, ValueError):
        return "nan"


def gate_status_for(candidate: str, gate: dict[str, Any]) -> tuple[str, str]:
    """The gate status and reasons to record on one candidate's model version."""
    if candidate != gate.get("candidate"):
        metric = gate.get("primary_metric", "the primary metric")
        return "not selected", f"not selected: the gate checked {gate.get('candidate')!r} (best by {metric})"
    if gate.get("passed") is True:
        return "passed", ""
    reasons = gate.get("reasons") or ["gate did not pass (no reason recorded)"]
    return "failed", "; ".join(map(str, reasons))


def _check_gate_matches_train(ctx: StepContext, train: dict[str, Any], gate: dict[str, Any]) -> None:
    """Fail closed when the gate decision was taken on other runs than the ones this train result lists."""
    runs = {c["name"]: c["run_id"] for c in train.get("candidates", [])}
    name = gate.get("candidate")
    if name not in runs:
        raise StepFailed(
            f"gate decision for {ctx.ds} names candidate {name!r}, which is not in the train result "
            f"({sorted(runs)}); rerun evaluate and gate for {ctx.ds}"
        )
    if gate.get("run_id") and gate["run_id"] != runs[name]:
        raise StepFailed(
            f"gate decision for {ctx.ds} is for run {gate['run_id']} but the train result lists run {runs[name]} "
            f"for {name!r}: the decision is stale; rerun evaluate and gate for {ctx.ds}"
        )


def ensure_registered_model(client: Any, name: str, ctx: StepContext) -> None:
    """Create the registered model for the use case if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(
            name,
            tags={"usecase": ctx.usecase.name, "owner": ctx.usecase.owner},
            description=ctx.usecase.description.strip() or None,
        )
    except MlflowException:  # created concurrently
        client.get_registered_model(name)


def find_version(client: Any, name: str, run_id: str) -> Any | None:
    """The oldest model version of ``name`` created from ``run_id``, or None."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Register the day's candidates and tag them; return the versions and the gate candidate's version."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.features.feature_identity import FEATURES_CONFIG_TAG, features_config_hash
    from pipelines.modeling.tracking import MODEL_DIGEST_TAG, configure_mlflow, model_name, verified_digest

    train = read_step_result(ctx, "train")
    gate = read_step_result(ctx, "gate")
    evaluate = read_step_result(ctx, "evaluate", required=False) or {}
    if not train.get("candidates"):
        raise StepFailed(f"train result for {ctx.ds} lists no candidates; rerun train for {ctx.ds}")
    _check_gate_matches_train(ctx, train, gate)

    configure_mlflow(ctx.profile, ctx.usecase)
    client = MlflowClient()
    name = model_name(ctx.usecase)
    ensure_registered_model(client, name, ctx)

    window = train.get("window", {})
    raw_keys = sorted(train.get("inputs", []))
    raw_tag, raw_hash = raw_partitions_tag(raw_keys)
    primary = ctx.usecase.gate.primary_metric
    evaluated = evaluate.get("candidates", {})
    # the decision's own record (never overwritten); an older gate result has only the per-date result
    gate_uri = (
        gate.get("decision_uri")
        or gate.get("result_uri")
        or ctx.lake.storage.uri(f"{ctx.run_key('gate')}/result.json")
    )
    common_tags = {
        "usecase": ctx.usecase.name,
        "logical_date": ctx.ds,
        "data_window": f"{window.get('train_start')}..{window.get('holdout_end')}",
        "feature_partitions": partitions_tag(train.get("feature_partitions", [])),
        "raw_partitions": raw_tag,
        "config_hash": ctx.usecase.config_hash,
        # the features it was trained with: a scoring service refuses snapshots built with others
        FEATURES_CONFIG_TAG: features_config_hash(ctx.usecase),
        "code_version": ctx.code_version,
        "primary_metric": primary,
        "gate_decision_uri": gate_uri,
        "gate_decision_id": str(gate.get("decision_id") or ""),
        **lineage_tags(train),
    }

    versions: list[dict[str, Any]] = []
    gate_version: int | None = None
    for candidate in train["candidates"]:
        cand_name, run_id = candidate["name"], candidate["run_id"]
        status, reasons = gate_status_for(cand_name, gate)
        metric_value = evaluated.get(cand_name, {}).get("metrics", {}).get(primary)
        if metric_value is None and cand_name == gate.get("candidate"):
            metric_value = gate.get("candidate_value")
        tags = {
            **common_tags,
            "candidate": cand_name,
            "family": candidate.get("family", ""),
            "primary_metric_value": format_metric(metric_value),
            "decision_threshold": format_metric(candidate.get("decision_threshold")),
            # how train chose it (pipelines.steps.train.registered_decision); none for a regression
            **(
                {"threshold_source": str(candidate["threshold_source"])[:MAX_TAG_CHARS]}
                if candidate.get("threshold_source")
                else {}
            ),
            **fit_tags(candidate, window),
            "gate_status": status,
            "gate_reasons": reasons[:MAX_TAG_CHARS],
            # the digest train recorded when it logged the model, once the artifacts were checked against it:
            # what every loader of this version checks (a changed artifact is refused)
            MODEL_DIGEST_TAG: verified_digest(candidate["model_uri"]),
        }
        version = find_version(client, name, run_id)
        if version is None:
            progress(f"register: {cand_name} (run {run_id}) -> new version of {name!r}")
            version = mlflow.register_model(candidate["model_uri"], name, tags=tags)
            failpoint("register.version_created")
        else:
            progress(
                f"register: {cand_name} (run {run_id}) is already version {version.version}; updating tags"
            )
            for key, value in tags.items():
                client.set_model_version_tag(name, str(version.version), key, value)
        client.update_model_version(
            name,
            str(version.version),
            description=f"{cand_name} ({candidate.get('family', '')}) trained for {ctx.ds} on "
            f"{tags['data_window']}"
            + (
                f", fitted on {' + '.join(candidate['fitted_on'])} {tags['lineage.fit_window']}"
                if tags.get("lineage.fit_window")
                else ""
            )
            + f"; gate: {status}",
        )
        number = int(version.version)
        if cand_name == gate.get("candidate"):
            gate_version = number
        versions.append({"candidate": cand_name, "version": number, "run_id": run_id, "gate_status": status})

    result_key = f"{ctx.run_key('register')}/result.json"
    result = {
        "model_name": name,
        "versions": versions,
        "gate_candidate_version": gate_version,
        "gate_passed": gate.get("passed") is True,
        "result_uri": ctx.lake.storage.uri(result_key),
    }
    ctx.lake.write_json(result_key, {**result, "raw_partitions": raw_keys, "raw_partitions_sha256": raw_hash})
    return result
