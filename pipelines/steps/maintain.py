"""Lake maintenance: vacuum the use case's Delta tables and clean their logs, keeping every version that a
registered model names.

``python -m pipelines maintain --usecase NAME --date D [--retention-hours H] [--dry-run]``

Tables: the raw table of every source, the features and predictions tables, and the partition-facts table of
each. Kept versions: the latest, plus, from the MLflow registry, the features version and the raw versions each
registered model version of the use case was trained on (``lineage.*`` tags), so ``mlops lineage --reload`` keeps
working for every registered model. Vacuum deletes the files of other versions once they were removed more than
``--retention-hours`` ago (Delta's own clock; default a week), and files no writer committed (a writer killed
mid-write) once they are that old. Each table then gets a checkpoint at its latest version, so the nightly steps
replay at most the commits since maintenance, whatever the table's age. Log cleanup (Delta's ``cleanup_metadata``, which drops commits older than
``delta.logRetentionDuration`` before the newest checkpoint) runs only when no kept version is older than that
checkpoint, since it would make the kept version unloadable; otherwise it is skipped with the reason.

The requests a scoring service captured (``captures/<usecase>``, appended in many small commits) are compacted
first: every date partition before the run's date becomes few large files, so reading a day, and the log's
checkpoints, stay cheap as the service keeps appending. The table is then vacuumed and its log cleaned like the
others (no model names its versions).

Retention: before that, a registered version that never held ``champion`` (by the alias moves of
``registry/<usecase>/alias_moves`` and the alias itself) and was trained more than ``retention.archive_after_days``
before the run's date is archived: tagged ``archived`` (with the date and why), not deleted. An archived version
names no kept lake version, so the vacuum may release what only it was trained on; every version that ever was
champion keeps its lineage.

Fail closed: when the registry or the alias moves cannot be read the step fails (and Airflow retries it); it never
archives or vacuums without knowing which versions models name.
"""

from __future__ import annotations

import argparse
import json
from datetime import date, timedelta
from typing import Any

from pipelines.context import StepContext, progress
from pipelines.lake import FACTS_ZONE, LakeError, captures_table, features_table, labels_table
from pipelines.lake.tables import data_tables

DEFAULT_RETENTION_HOURS = 168
ARCHIVED_TAG = "archived"  # model version tag: "true" once retention archived the version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retention-hours",
        type=int,
        default=DEFAULT_RETENTION_HOURS,
        help="delete files removed (or never committed) more than this many hours ago (default 168, a week); "
        "below 1 also deletes the files of a writer that is still writing",
    )
    parser.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")


def _registered_model(ctx: StepContext) -> tuple[Any, str] | None:
    """(MLflow client, the use case's registered model name), or None when nothing is registered yet; raises
    when the registry cannot be read."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.modeling.tracking import configure_mlflow, model_name

    configure_mlflow(ctx.profile, ctx.usecase)
    client = MlflowClient()
    name = model_name(ctx.usecase)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return client, name


def archive_stale_versions(ctx: StepContext, dry_run: bool) -> list[dict[str, Any]]:
    """Archive the registered versions that never held ``champion`` and were trained more than
    ``retention.archive_after_days`` before the run's date (see the module doc); what was (or, in a dry run,
    would be) archived. Raises when the registry or the alias moves cannot be read."""
    from pipelines.modeling.model_ops import read_moves
    from pipelines.modeling.tracking import CHAMPION_ALIAS, champion_version

    days = ctx.usecase.retention.archive_after_days
    if days is None:
        return []
    registered = _registered_model(ctx)
    if registered is None:
        return []
    client, name = registered
    moves = read_moves(ctx.lake, ctx.usecase.name, CHAMPION_ALIAS)
    champions = {int(m["to_version"]) for m in moves} | {
        int(m["from_version"]) for m in moves if m.get("from_version") is not None
    }
    current = champion_version(ctx.usecase)
    if current is not None:
        champions.add(int(current.version))
    cutoff = ctx.day - timedelta(days=days)
    archived = []
    for version in client.search_model_versions(f"name = '{name}'"):
        tags = version.tags or {}
        number = int(version.version)
        if tags.get(ARCHIVED_TAG) == "true" or number in champions:
            continue
        trained = json.loads(tags.get("lineage.window") or "{}").get("holdout_end")
        if not trained or date.fromisoformat(trained) > cutoff:
            continue
        reason = f"never champion; trained {trained}, more than {days} days before {ctx.ds}"
        if not dry_run:
            for key, value in ((ARCHIVED_TAG, "true"), ("archived_on", ctx.ds), ("archived_reason", reason)):
                client.set_model_version_tag(name, str(number), key, value)
        archived.append({"version": number, "trained": trained, "reason": reason})
    if archived:
        verb = "would archive" if dry_run else "archived"
        progress(f"maintain: {verb} version(s) {[a['version'] for a in archived]} of {name} (never champion)")
    return archived


def versions_named_by_models(ctx: StepContext, released: frozenset[int] = frozenset()) -> dict[str, set[int]]:
    """Table -> versions that registered model versions of the use case were trained on (lineage tags), but
    archived versions and ``released`` (those a dry run would archive).

    Raises when the registry cannot be read: the caller must not vacuum without this answer."""
    registered = _registered_model(ctx)
    if registered is None:
        return {}
    client, name = registered
    kept: dict[str, set[int]] = {}
    for version in client.search_model_versions(f"name = '{name}'"):
        tags = version.tags or {}
        if tags.get(ARCHIVED_TAG) == "true" or int(version.version) in released:
            continue
        if tags.get("lineage.features_version"):
            kept.setdefault(features_table(ctx.usecase.name), set()).add(
                int(tags["lineage.features_version"])
            )
        if tags.get("lineage.labels_version"):
            kept.setdefault(labels_table(ctx.usecase.name), set()).add(int(tags["lineage.labels_version"]))
        for table, number in json.loads(tags.get("lineage.raw_versions") or "{}").items():
            kept.setdefault(table, set()).add(int(number))
    return kept


def _last_checkpoint(ctx: StepContext, table: str) -> int | None:
    """The version of the table's newest checkpoint (``_delta_log/_last_checkpoint``), or None."""
    try:
        return int(ctx.lake.read_json(f"{table}/_delta_log/_last_checkpoint")["version"])
    except (LakeError, KeyError, ValueError):
        return None


def maintain_table(
    ctx: StepContext, table: str, keep: set[int], retention_hours: int, dry_run: bool
) -> dict[str, Any]:
    """Vacuum one table keeping ``keep`` and clean its log when that cannot lose a kept version."""
    handle = ctx.lake.open_table(table)
    if handle is None:
        return {"table": table, "exists": False}
    latest = int(handle.version())
    kept = sorted({v for v in keep if v <= latest} | {latest})
    deleted = ctx.lake.vacuum(table, kept, retention_hours, dry_run=dry_run)
    checkpoint = _last_checkpoint(ctx, table)
    older = [v for v in kept if checkpoint is not None and v < checkpoint]
    if checkpoint is None:
        log = "nothing to clean (no checkpoint yet)"
    elif older:
        log = f"skipped: kept version(s) {older} are older than the newest checkpoint {checkpoint}"
    elif dry_run:
        log = "would clean expired log entries"
    else:
        handle.cleanup_metadata()
        log = "cleaned expired log entries"
    # a checkpoint at the latest version (after the cleanup, which judged by the previous one): a reader replays
    # the commits since this run, not up to the 99 delta-rs leaves between its own checkpoints
    checkpointed = None
    if not dry_run and (checkpoint is None or checkpoint < int(handle.version())):
        handle.create_checkpoint()
        checkpointed = int(handle.version())
        log += f"; checkpoint at version {checkpointed}"
    progress(f"maintain: {table}: version {latest}, kept {kept}, {len(deleted)} file(s) deleted; log {log}")
    return {
        "table": table,
        "exists": True,
        "version": latest,
        "kept_versions": kept,
        "files_deleted": len(deleted),
        "log_cleanup": log,
        "checkpoint": checkpointed,
    }


def compact_captures(ctx: StepContext, dry_run: bool) -> dict[str, Any]:
    """Compact the capture table's date partitions before the run's date (see the module doc)."""
    table = captures_table(ctx.usecase.name)
    closed = [day for day in ctx.lake.partitions(table) if day < ctx.day.isoformat()]
    files = ctx.lake.compact(table, closed, dry_run=dry_run) if closed else {}
    before, after = sum(b for b, _ in files.values()), sum(a for _, a in files.values())
    if not files:
        done = "nothing to compact"
    elif dry_run:
        done = f"would compact {len(files)} partition(s) of {before} files"
    else:
        done = f"compacted {len(files)} partition(s), {before} files into {after}"
    progress(f"maintain: {table}: days before {ctx.day}: {done}")
    return {"table": table, "compacted": {day: list(counts) for day, counts in files.items()}}


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Vacuum and clean the logs of every table of the use case, keeping the versions models name."""
    retention = int(getattr(args, "retention_hours", DEFAULT_RETENTION_HOURS))
    dry_run = bool(getattr(args, "dry_run", False))
    if retention < 0:
        raise ValueError("--retention-hours must be >= 0")
    archived = archive_stale_versions(
        ctx, dry_run
    )  # fail closed: raises when registry or moves cannot be read
    released = frozenset(a["version"] for a in archived)
    named = versions_named_by_models(ctx, released)  # fail closed: raises when the registry cannot be read
    tables = []
    for table in data_tables(ctx.usecase):
        tables.append(maintain_table(ctx, table, named.get(table, set()), retention, dry_run))
        tables.append(maintain_table(ctx, f"{FACTS_ZONE}/{table}", set(), retention, dry_run))
    captures = compact_captures(ctx, dry_run)
    tables.append(maintain_table(ctx, captures["table"], set(), retention, dry_run))
    return {
        "retention_hours": retention,
        "dry_run": dry_run,
        "archived_versions": archived,
        "versions_named_by_models": {t: sorted(v) for t, v in sorted(named.items())},
        "captures_compacted": captures["compacted"],
        "tables": [t for t in tables if t["exists"]],
        "files_deleted": sum(t.get("files_deleted", 0) for t in tables),
    }
