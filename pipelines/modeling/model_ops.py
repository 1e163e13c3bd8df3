"""Model operations (``mlops models ...``): show, promote, roll back and the history of alias moves.

Every move of the ``champion`` alias, whoever makes it, goes through :func:`move_alias`, which records it as one
row of the append-only Delta table ``registry/<usecase>/alias_moves`` (``pipelines.lake.alias_moves_table``):
use case, model, alias, from and to version, kind, who, why, the run (``MLOPS_RUN_ID``, ``manual`` from the
command line), when, the gate decision of the version moved to, and a move id. Kinds:

- ``gate``: the promote step after a passed gate (pipelines.steps.promote);
- ``promote``: ``mlops models promote VERSION`` of a version whose gate passed;
- ``forced``: ``mlops models promote VERSION --force --reason TEXT`` of a version whose gate did not pass;
- ``rollback``: ``mlops models rollback``: the alias back to the previous champion;
- ``approval``: a person approved a version (kept for the approval flow; same record, same tags).

Fail closed: the row is committed first and the alias set after it, so the alias never moves without its record.
When the alias cannot be set, the row of that move is deleted again in one commit (the Delta log keeps it), so the
table never claims a move that did not happen. The move is then mirrored as tags on the version moved to
(``champion_move.kind``, ``.by``, ``.reason``, ``.at``, ``.from``, ``.id``, ``.run_id``): a tag that cannot be
written is reported, the lake record is the reference.

MLflow has no compare-and-set for an alias: a move names the version it expects the alias to hold and reads the
alias again right before setting it; the Airflow tasks that move it (promote of the train DAGs, the
``<usecase>_models`` DAG) share the pool ``<usecase>_train`` (one slot).

The previous champion (what ``rollback`` restores) comes from the records: replaying the moves, a promotion
(gate, promote, forced, approval) pushes the version it moved to and a rollback pops it, so two rollbacks in a row
go back two champions. A registry whose champion was promoted before these records existed falls back on the
champion's ``promoted_from`` tag (written by the promote step).
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from pipelines.config import UseCase
from pipelines.context import MANUAL_RUN, StepFailed
from pipelines.lake import Lake, LakeError, alias_moves_table

KINDS = ("gate", "promote", "forced", "rollback", "approval")
PROMOTING_KINDS = frozenset({"gate", "promote", "forced", "approval"})
MOVE_TAG_PREFIX = "champion_move"
COLUMNS = (
    "date",
    "move_id",
    "usecase",
    "model_name",
    "alias",
    "from_version",
    "to_version",
    "kind",
    "by",
    "reason",
    "run_id",
    "moved_at",
    "decision_uri",
)


class ModelOpsError(StepFailed):
    """A model operation refused or failed; the message names what is wrong and the fix. Nothing moved."""


def default_actor() -> str:
    """Who moves the alias when ``--by`` is not given: ``MLOPS_USER``, else the OS user."""
    if os.environ.get("MLOPS_USER"):
        return os.environ["MLOPS_USER"]
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container without a passwd entry
        return "unknown"


def current_run() -> str:
    return os.environ.get("MLOPS_RUN_ID") or MANUAL_RUN


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("date", pa.string()),
            ("move_id", pa.string()),
            ("usecase", pa.string()),
            ("model_name", pa.string()),
            ("alias", pa.string()),
            ("from_version", pa.int64()),
            ("to_version", pa.int64()),
            ("kind", pa.string()),
            ("by", pa.string()),
            ("reason", pa.string()),
            ("run_id", pa.string()),
            ("moved_at", pa.timestamp("us", tz="UTC")),
            ("decision_uri", pa.string()),
        ]
    )


# --------------------------------------------------------------------------------------------- registry


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _setup(usecase: str | UseCase) -> tuple[UseCase, Lake, Any, str]:
    """The use case, its lake, an MLflow client on the profile's registry and the registered model's name."""
    from pipelines.config import load_profile, load_usecase
    from pipelines.modeling.tracking import configure_mlflow, model_name

    spec = load_usecase(usecase) if isinstance(usecase, str) else usecase
    profile = load_profile()
    configure_mlflow(profile, spec)
    return spec, Lake(profile.lake_uri), _client(), model_name(spec)


def alias_version(spec: UseCase, alias: str) -> int | None:
    """The version ``alias`` points at (None: no such alias); a registry failure raises RegistryError."""
    from pipelines.modeling.tracking import (
        CHAMPION_ALIAS,
        RegistryError,
        champion_version,
        model_name,
        version_by_alias,
    )

    if alias == CHAMPION_ALIAS:
        version = champion_version(spec)
        return None if version is None else int(version.version)
    try:
        version = version_by_alias(_client(), model_name(spec), alias)
        return None if version is None else int(version.version)
    except Exception as exc:
        raise RegistryError(f"the model registry could not say where {alias!r} points: {exc}") from exc


def get_version(client: Any, spec: UseCase, version: int | str) -> Any:
    """The registry's ModelVersion ``version`` of the use case's model; ModelOpsError naming the versions that
    exist when it does not."""
    from mlflow.exceptions import MlflowException

    from pipelines.modeling.tracking import is_not_found, model_name

    name = model_name(spec)
    try:
        return client.get_model_version(name, str(int(version)))
    except (MlflowException, ValueError) as exc:
        if isinstance(exc, MlflowException) and not is_not_found(exc):
            raise
        numbers = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        known = f"versions {numbers[0]}..{numbers[-1]}" if numbers else "no versions yet"
        raise ModelOpsError(
            f"model {name!r} has no version {version} ({known}); see `mlops models list --usecase {spec.name}`"
        ) from None


# --------------------------------------------------------------------------------------------- records


def read_moves(lake: Lake, usecase: str, alias: str | None = None) -> list[dict[str, Any]]:
    """Every recorded alias move of ``usecase`` (of ``alias`` when given), oldest first."""
    table = alias_moves_table(usecase)
    if lake.open_table(table) is None:
        return []
    rows = lake.read(table).to_pylist()
    if alias is not None:
        rows = [row for row in rows if row["alias"] == alias]
    rows.sort(key=lambda row: (row["moved_at"], row["move_id"]))
    for row in rows:
        row["moved_at"] = row["moved_at"].isoformat()
    return rows


def champion_stack(moves: list[dict[str, Any]]) -> list[int]:
    """The champions a rollback walks back through, oldest first (the last is the current one): a promotion
    pushes the version it moved to, a rollback pops the version it left."""
    stack: list[int] = []
    for move in moves:
        if move["kind"] == "rollback":
            if stack and stack[-1] == move["from_version"]:
                stack.pop()
            if not stack or stack[-1] != move["to_version"]:  # records that begin mid-history
                stack.append(move["to_version"])
        else:
            stack.append(move["to_version"])
    return stack


def _record(lake: Lake, row: dict[str, Any]) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist([row], schema=_schema())
    lake.append_rows(
        alias_moves_table(row["usecase"]),
        table,
        commit_info={"mlops_operation": "alias_move", "move_id": row["move_id"], "kind": row["kind"]},
    )


def _unrecord(lake: Lake, usecase: str, move_id: str) -> None:
    handle = lake.open_table(alias_moves_table(usecase))
    if handle is not None:
        handle.delete(f"move_id = '{move_id}'")


def move_alias(
    spec: UseCase,
    lake: Lake,
    to_version: int,
    *,
    kind: str,
    by: str,
    reason: str,
    expected_from: int | None,
    run_id: str | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """Move ``alias`` (champion by default) of the use case's model to ``to_version`` in one alias move, recorded
    (see the module doc). ``expected_from``: the version the caller saw (None: no alias); when the alias holds
    another one now, nothing moves. Returns the record."""
    from pipelines.modeling.tracking import CHAMPION_ALIAS, model_name

    if kind not in KINDS:
        raise ValueError(f"unknown alias move kind {kind!r}; one of {KINDS}")
    alias = alias or CHAMPION_ALIAS
    name = model_name(spec)
    client = _client()
    target = get_version(client, spec, to_version)
    current = alias_version(spec, alias)
    if current != expected_from:
        shown = "no version" if expected_from is None else f"version {expected_from}"
        raise ModelOpsError(
            f"the {alias!r} alias of {name!r} moved meanwhile: expected {shown}, it is now "
            f"{'no version' if current is None else f'version {current}'}; nothing moved. Look at "
            f"`mlops models history --usecase {spec.name}` and retry"
        )
    moved_at = datetime.now(UTC)
    row = {
        "date": moved_at.date().isoformat(),
        "move_id": uuid.uuid4().hex,
        "usecase": spec.name,
        "model_name": name,
        "alias": alias,
        "from_version": expected_from,
        "to_version": int(target.version),
        "kind": kind,
        "by": by,
        "reason": reason,
        "run_id": run_id or current_run(),
        "moved_at": moved_at,
        "decision_uri": (target.tags or {}).get("gate_decision_uri") or None,
    }
    try:
        _record(lake, row)
    except Exception as exc:
        raise ModelOpsError(
            f"the alias move could not be recorded in {lake.table_uri(alias_moves_table(spec.name))} "
            f"({type(exc).__name__}: {exc}); the {alias!r} alias was not moved (still "
            f"{'no version' if current is None else f'version {current}'}). Fix the lake and retry"
        ) from exc
    try:
        client.set_registered_model_alias(name, alias, str(target.version))
    except Exception as exc:
        try:
            _unrecord(lake, spec.name, row["move_id"])
            undone = "its record was withdrawn"
        except Exception as undo:  # pragma: no cover - the lake failed right after it committed
            undone = f"its record {row['move_id']} could not be withdrawn ({undo})"
        raise ModelOpsError(
            f"the {alias!r} alias of {name!r} could not be set to version {target.version} ({type(exc).__name__}: "
            f"{exc}); {undone}. The alias is unchanged; check the registry (MLFLOW_TRACKING_URI) and retry"
        ) from exc
    record = {**row, "moved_at": moved_at.isoformat()}
    tags = {
        "kind": kind,
        "by": by,
        "reason": reason[:4000],
        "at": record["moved_at"],
        "from": "" if expected_from is None else str(expected_from),
        "id": row["move_id"],
        "run_id": row["run_id"],
    }
    prefix = MOVE_TAG_PREFIX if alias == CHAMPION_ALIAS else f"{alias}_move"
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, str(target.version), f"{prefix}.{key}", value)
    except Exception as exc:  # the record and the move are done; the tags only mirror the record
        record["tags_error"] = f"{type(exc).__name__}: {exc}"
    return record


# --------------------------------------------------------------------------------------------- operations


def promote(
    usecase: str | UseCase,
    version: int,
    *,
    force: bool = False,
    reason: str | None = None,
    by: str | None = None,
    run_id: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """Make ``version`` the champion: only a version whose gate passed, or with ``force`` and a ``reason``
    (recorded as kind ``forced``). Already the champion: nothing moves (``moved: false``)."""
    spec, lake, client, name = _setup(usecase)
    target = get_version(client, spec, version)
    number = int(target.version)
    status = (target.tags or {}).get("gate_status") or "unknown (no gate recorded)"
    reason = (reason or "").strip()
    if force and not reason:
        raise ModelOpsError(
            f"--force needs --reason: say why version {number} of {name!r} is promoted without a passed gate "
            f"(`mlops models promote --usecase {spec.name} {number} --force --reason '...'`)"
        )
    passed = status == "passed"
    if not passed and not force:
        why = (target.tags or {}).get("gate_reasons") or status
        raise ModelOpsError(
            f"version {number} of {name!r} did not pass its gate (gate: {status}; {why}); not promoted. Promote a "
            f"version whose gate passed (`mlops models list --usecase {spec.name}`), or override with "
            f"`mlops models promote --usecase {spec.name} {number} --force --reason '...'` (recorded)"
        )
    current = alias_version(spec, "champion")
    if current == number:
        return {
            "moved": False,
            "champion_version": number,
            "message": f"version {number} is already the champion",
        }
    move_kind = kind or ("promote" if passed else "forced")
    record = move_alias(
        spec,
        lake,
        number,
        kind=move_kind,
        by=by or default_actor(),
        reason=reason or f"manual promote of version {number} (gate passed)",
        expected_from=current,
        run_id=run_id,
    )
    return {"moved": True, "champion_version": number, "previous_champion_version": current, "record": record}


def previous_champion(spec: UseCase, lake: Lake, current: int | None) -> int:
    """The version a rollback restores (see the module doc); ModelOpsError when there is none."""
    from pipelines.modeling.tracking import CHAMPION_ALIAS, champion_version

    name = spec.name
    if current is None:
        raise ModelOpsError(
            f"model {name!r} has no champion: nothing to roll back. Promote a version first "
            f"(`mlops models promote --usecase {name} VERSION`)"
        )
    moves = read_moves(lake, name, CHAMPION_ALIAS)
    if moves:
        stack = champion_stack(moves)
        if stack[-1] != current:
            raise ModelOpsError(
                f"the champion of {name!r} is version {current}, but the last recorded move put version "
                f"{stack[-1]} there: the alias was moved outside `mlops models` (e.g. in the MLflow UI), so the "
                f"previous champion is not known. Move it explicitly: `mlops models promote --usecase {name} "
                "VERSION --force --reason '...'`"
            )
        if len(stack) < 2:
            raise ModelOpsError(
                f"nothing to roll back to: version {current} is the first champion of {name!r} on record "
                f"(`mlops models history --usecase {name}`)"
            )
        return stack[-2]
    champion = champion_version(spec)
    before = (champion.tags or {}).get("promoted_from") if champion is not None else None
    if not before:
        raise ModelOpsError(
            f"nothing to roll back to: version {current} of {name!r} has no previous champion on record"
        )
    return int(before)


def rollback(
    usecase: str | UseCase, *, reason: str, by: str | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Move ``champion`` back to the previous champion in one alias move, recorded as kind ``rollback``."""
    spec, lake, client, name = _setup(usecase)
    reason = (reason or "").strip()
    if not reason:
        raise ModelOpsError(
            f"a rollback needs --reason: say why the champion of {name!r} goes back "
            f"(`mlops models rollback --usecase {spec.name} --reason '...'`)"
        )
    current = alias_version(spec, "champion")
    target = previous_champion(spec, lake, current)
    get_version(client, spec, target)  # still registered
    record = move_alias(
        spec,
        lake,
        target,
        kind="rollback",
        by=by or default_actor(),
        reason=reason,
        expected_from=current,
        run_id=run_id,
    )
    return {"moved": True, "champion_version": target, "previous_champion_version": current, "record": record}


def history(usecase: str | UseCase) -> dict[str, Any]:
    """Every recorded alias move, oldest first, and where the champion is now (``consistent``: the registry's
    champion is the version the last champion move put there)."""
    spec, lake, client, name = _setup(usecase)
    moves = read_moves(lake, spec.name)
    champion = alias_version(spec, "champion")
    last = [m for m in moves if m["alias"] == "champion"]
    consistent = (last[-1]["to_version"] if last else None) == champion
    return {
        "usecase": spec.name,
        "model_name": name,
        "champion_version": champion,
        "consistent": consistent,
        "moves": moves,
    }


def _decision(lake: Lake, uri: str | None) -> dict[str, Any] | None:
    """The gate decision record at ``uri`` (a lake URI), summarised; None when there is none."""
    if not uri:
        return None
    prefix = lake.uri.rstrip("/") + "/"
    key = uri[len(prefix) :] if uri.startswith(prefix) else uri
    try:
        decision = lake.read_json(key)
    except (LakeError, OSError, ValueError) as exc:
        return {"uri": uri, "error": f"could not be read: {exc}"}
    checks = [
        {k: check.get(k) for k in ("name", "passed", "skipped", "value", "threshold", "reason")}
        for check in decision.get("checks") or []
    ]
    return {
        "uri": uri,
        "decision_id": decision.get("decision_id"),
        "passed": decision.get("passed"),
        "candidate": decision.get("candidate"),
        "primary_metric": decision.get("primary_metric"),
        "candidate_value": decision.get("candidate_value"),
        "champion_value": decision.get("champion_value"),
        "champion_version": decision.get("champion_version"),
        "reasons": decision.get("reasons") or [],
        "checks": checks,
        "date": decision.get("date"),
        "run": decision.get("run"),
    }


def _json_tag(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def show(usecase: str | UseCase, version: int) -> dict[str, Any]:
    """One version: metrics, gate decision, approval, lineage and the alias moves that involve it."""
    spec, lake, client, name = _setup(usecase)
    target = get_version(client, spec, version)
    number = int(target.version)
    tags = dict(target.tags or {})
    metrics: dict[str, Any] = {}
    try:
        metrics = dict(client.get_run(target.run_id).data.metrics)
    except Exception as exc:  # the run was deleted: the tags still say what the gate saw
        metrics = {"error": f"run {target.run_id} could not be read: {exc}"}
    primary = tags.get("primary_metric")
    if primary and tags.get("primary_metric_value") not in (None, "", "nan"):
        metrics.setdefault(f"holdout.{primary}", float(tags["primary_metric_value"]))
    moves = [m for m in read_moves(lake, spec.name) if number in (m["from_version"], m["to_version"])]
    approval = {k: v for k, v in tags.items() if k.startswith("approval")}
    approvals = [m for m in moves if m["kind"] == "approval" and m["to_version"] == number]
    lineage = {
        "logical_date": tags.get("logical_date"),
        "data_window": tags.get("data_window"),
        "window": _json_tag(tags.get("lineage.window")),
        "fit_window": tags.get("lineage.fit_window"),
        "fitted_on": _json_tag(tags.get("lineage.fitted_on")),
        "feature_partitions": tags.get("feature_partitions"),
        "raw_partitions": tags.get("raw_partitions"),
        "features_version": tags.get("lineage.features_version"),
        "labels_version": tags.get("lineage.labels_version"),
        "raw_versions": _json_tag(tags.get("lineage.raw_versions")),
        "tables_read": _json_tag(tags.get("lineage.tables_read")),
        "config_hash": tags.get("config_hash"),
        "code_version": tags.get("code_version") or tags.get("lineage.code_version"),
        "image": tags.get("lineage.image"),
    }
    return {
        "usecase": spec.name,
        "model_name": name,
        "version": number,
        "champion": alias_version(spec, "champion") == number,
        "candidate": tags.get("candidate"),
        "family": tags.get("family"),
        "run_id": target.run_id,
        "source": target.source,
        "decision_threshold": tags.get("decision_threshold"),
        "metrics": metrics,
        "gate": {
            "status": tags.get("gate_status"),
            "reasons": tags.get("gate_reasons") or None,
            "decision": _decision(lake, tags.get("gate_decision_uri")),
        },
        "approval": {"tags": approval, "moves": approvals} if approval or approvals else None,
        "lineage": lineage,
        "alias_moves": moves,
    }


# --------------------------------------------------------------------------------------------- printing


def _version_text(value: Any) -> str:
    return "-" if value is None else f"v{value}"


def format_history(result: dict[str, Any]) -> str:
    moves = result["moves"]
    if not moves:
        return f"No alias moves recorded for {result['usecase']!r} yet."
    header = ["moved at (UTC)", "alias", "from", "to", "kind", "by", "run", "reason"]
    rows = [
        [
            m["moved_at"][:19],
            m["alias"],
            _version_text(m["from_version"]),
            _version_text(m["to_version"]),
            m["kind"],
            m["by"] or "",
            m["run_id"] or "",
            m["reason"] or "",
        ]
        for m in moves
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
        for r in [header, *rows]
    ]
    if not result["consistent"]:
        lines.append(
            f"WARNING: the registry's champion is {_version_text(result['champion_version'])}, not the version the "
            "last recorded move put there: it was moved outside `mlops models` (e.g. in the MLflow UI)"
        )
    return "\n".join(lines)


def format_show(info: dict[str, Any]) -> str:
    lines = [
        f"{info['model_name']} version {info['version']}" + ("  (champion)" if info["champion"] else ""),
        f"  candidate: {info['candidate']} ({info['family']}), run {info['run_id']}",
        f"  decision threshold: {info['decision_threshold']}",
        "metrics:",
        *(f"  {k}: {v}" for k, v in sorted(info["metrics"].items())),
        f"gate: {info['gate']['status']}"
        + (f" ({info['gate']['reasons']})" if info["gate"]["reasons"] else ""),
    ]
    decision = info["gate"]["decision"]
    if decision:
        if decision.get("error"):
            lines.append(f"  decision {decision['uri']}: {decision['error']}")
        else:
            lines.append(f"  decision {decision['decision_id']} ({decision['uri']})")
            for check in decision["checks"]:
                state = "skipped" if check.get("skipped") else ("passed" if check.get("passed") else "FAILED")
                lines.append(
                    f"    {state:8} {check.get('name')}"
                    + (f": {check['reason']}" if check.get("reason") else "")
                )
    approval = info["approval"]
    lines.append("approval: " + ("none" if not approval else ""))
    if approval:
        lines += [f"  {k}: {v}" for k, v in sorted(approval["tags"].items())]
        lines += [f"  approved by {m['by']} at {m['moved_at']}: {m['reason']}" for m in approval["moves"]]
    lines.append("lineage:")
    lines += [
        f"  {k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in info["lineage"].items()
    ]
    lines.append("alias moves:")
    lines += [
        f"  {m['moved_at'][:19]} {m['alias']} {_version_text(m['from_version'])} -> "
        f"{_version_text(m['to_version'])} ({m['kind']} by {m['by']}): {m['reason']}"
        for m in info["alias_moves"]
    ] or ["  none"]
    return "\n".join(lines)


def main(args: Any) -> int:
    """``mlops models <command>`` (other than list); returns the exit code."""
    import sys

    from pipelines.context import write_line

    command = args.models_command
    try:
        if command == "show":
            info = show(args.usecase, args.version)
            print(json.dumps(info, indent=2, default=str) if args.json else format_show(info))
        elif command == "promote":
            result = promote(args.usecase, args.version, force=args.force, reason=args.reason, by=args.by)
            print(json.dumps(result, default=str) if args.json else _moved_text(args.usecase, result))
        elif command == "rollback":
            result = rollback(args.usecase, reason=args.reason, by=args.by)
            print(json.dumps(result, default=str) if args.json else _moved_text(args.usecase, result))
        elif command == "history":
            result = history(args.usecase)
            print(json.dumps(result, indent=2, default=str) if args.json else format_history(result))
        else:  # pragma: no cover - argparse allows only the commands above
            return 2
    except StepFailed as exc:  # ModelOpsError, RegistryError: the message names the fix
        write_line(f"ERROR: {exc}", sys.stderr)
        return 1
    return 0


def _moved_text(usecase: str, result: dict[str, Any]) -> str:
    if not result["moved"]:
        return f"{usecase}: {result['message']}; nothing moved"
    record = result["record"]
    return (
        f"{usecase}: champion moved from {_version_text(result['previous_champion_version'])} to "
        f"{_version_text(result['champion_version'])} ({record['kind']} by {record['by']}: {record['reason']}); "
        f"recorded as move {record['move_id']}"
    )
