"""Faults the tests inject into a lake that the platform itself never makes: partitions deleted behind its back
(a lost partition, a raw commit that names no dates), and the decision records a test reads back."""

from __future__ import annotations

from typing import Any

from pipelines.lake import DATE, Lake


def delete_partitions(lake: Lake, table: str, dates: list[str]) -> int | None:
    """Remove ``dates`` from ``table`` in one Delta commit (their files stay for time travel until vacuum), the
    way an operator's manual delete would; returns the new version, or None when the table does not exist."""
    handle = lake.open_table(table)
    if handle is None or not dates:
        return None if handle is None else int(handle.version())
    quoted = ", ".join("'" + str(day).replace("'", "''") + "'" for day in sorted(set(dates)))
    handle.delete(f"{DATE} IN ({quoted})")
    return int(handle.version())


def read_decisions(lake: Lake, usecase: str, day: Any) -> list[dict[str, Any]]:
    """Every gate decision recorded for a use case and date, oldest run first (by key)."""
    prefix = Lake.dated_key("decisions", usecase, day)
    return [lake.read_json(key) for key in sorted(lake.storage.list(prefix)) if key.endswith(".json")]
