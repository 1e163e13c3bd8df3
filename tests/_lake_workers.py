"""Processes for the lake's concurrency tests: writers that overwrite one partition in lock-step rounds, and a
reader that reads it all the while. Run with multiprocessing's ``spawn`` context (fresh interpreters, like
Airflow's task processes); results come back through a queue."""

from __future__ import annotations

import os
from typing import Any

TABLE = "raw/uc/flights"
DAY = "2013-01-02"
ROWS = 400


def rows(writer: str, round_: int) -> Any:
    """The partition a writer commits in one round: ROWS rows tagged with the writer and the round."""
    import pyarrow as pa

    return pa.table(
        {
            "writer": [writer] * ROWS,
            "round": [round_] * ROWS,
            "value": [float(i) for i in range(ROWS)],
            "date": [DAY] * ROWS,
        }
    )


def writer(
    lake_uri: str, env: dict[str, str], name: str, rounds: int, retry: bool, barrier: Any, out: Any
) -> None:
    """Each round: read the table's snapshot, wait for the other writer to have read too, then commit from that
    snapshot. Without ``retry`` the loser reports the conflict; with it, it rebuilds from a fresh snapshot."""
    os.environ.update(env)
    from pipelines.lake import CommitConflict, Lake, commit_with_retry

    lake = Lake(lake_uri)
    for round_ in range(rounds):
        snapshot = lake.snapshot(TABLE, facts=False)
        barrier.wait(timeout=120)
        try:
            commit = lake.write_partitions(TABLE, rows(name, round_), read_version=snapshot.version)
            outcome: dict[str, Any] = {"won": True, "version": commit.version}
        except CommitConflict as conflict:
            outcome = {"won": False, "message": str(conflict), "winning_version": conflict.winning_version}
            if retry:
                commit = commit_with_retry(lake, TABLE, lambda _snapshot, r=round_: rows(name, r))
                outcome["retried_version"] = commit.version if commit else None
        out.put({"writer": name, "round": round_, "read_version": snapshot.version, **outcome})
        barrier.wait(timeout=120)


def reader(lake_uri: str, env: dict[str, str], stop: Any, out: Any) -> None:
    """Read the partition through the Delta log until ``stop`` is set; report every read's shape and errors."""
    os.environ.update(env)
    from pipelines.lake import Lake

    lake = Lake(lake_uri)
    reads, errors, mixed = 0, [], []
    while not stop.is_set():
        try:
            if lake.version(TABLE) is None:
                continue
            table = lake.read(TABLE, [DAY], ["writer", "round"])
        except Exception as exc:  # any read error fails the test
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        reads += 1
        tags = set(zip(table.column("writer").to_pylist(), table.column("round").to_pylist(), strict=True))
        if table.num_rows != ROWS or len(tags) != 1:
            mixed.append({"rows": table.num_rows, "tags": sorted(tags)[:4]})
    out.put(
        {"reader": True, "reads": reads, "errors": errors[:5], "error_count": len(errors), "mixed": mixed[:5]}
    )
