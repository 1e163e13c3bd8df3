"""``mlops lake tables <usecase>`` and ``mlops lake read <table>``: the lake's Delta tables as users see them.

``tables`` lists each table of a use case with its version, partitions and rows; ``read`` reads one table (some
dates, one version) through the Delta log and prints its row count and content hash as JSON. The same tables
are readable from Spark (delta-spark), DuckDB (``delta_scan``), Polars (``read_delta``) or pandas (``deltalake``).
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.config import UseCase, load_profile, load_usecase
from pipelines.lake import (
    FACTS_ZONE,
    Lake,
    content_hash,
    features_table,
    labels_table,
    online_table,
    predictions_table,
    predictions_with_outcomes_table,
    raw_table,
)


def data_tables(usecase: UseCase) -> list[str]:
    """The data tables of a use case: raw per source, features, online snapshot, labels, predictions, predictions
    with outcomes."""
    return [
        *(raw_table(usecase.name, source) for source in usecase.sources),
        features_table(usecase.name),
        online_table(usecase.name),
        labels_table(usecase.name),
        predictions_table(usecase.name),
        predictions_with_outcomes_table(usecase.name),
    ]


def usecase_tables(usecase_name: str) -> list[str]:
    """:func:`data_tables` of the use case named ``usecase_name``."""
    return data_tables(load_usecase(usecase_name))


def describe_tables(usecase_name: str, lake: Lake | None = None) -> list[dict[str, Any]]:
    """One dict per table: key, URI, latest version, partitions (first, last, count), rows."""
    lake = lake or Lake(load_profile().lake_uri)
    rows = []
    for table in usecase_tables(usecase_name):
        snapshot = lake.snapshot(table, facts=False)
        days = list(snapshot.partitions)
        rows.append(
            {
                "table": table,
                "uri": snapshot.uri,
                "version": snapshot.version,
                "partitions": len(days),
                "first": days[0] if days else None,
                "last": days[-1] if days else None,
                "rows": sum(p.rows for p in snapshot.partitions.values()),
                "facts_table": f"{FACTS_ZONE}/{table}",
            }
        )
    return rows


def read_summary(
    table: str, dates: list[str] | None = None, version: int | None = None, lake: Lake | None = None
) -> dict[str, Any]:
    """Read ``table`` (``dates`` of ``version``) through the Delta log: rows, dates and content hash."""
    lake = lake or Lake(load_profile().lake_uri)
    resolved = version if version is not None else lake.version(table)
    data = lake.read(table, dates, version=resolved)
    found = sorted(set(data.column("date").to_pylist())) if "date" in data.column_names else []
    return {
        "table": table,
        "version": resolved,
        "rows": data.num_rows,
        "dates": found,
        "content_hash": content_hash(data),
    }


def print_tables(usecase_name: str, as_json: bool = False) -> None:
    rows = describe_tables(usecase_name)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    header = f"{'table':<34} {'version':>7} {'partitions':>10} {'first':>10} {'last':>10} {'rows':>9}"
    print(header)
    for row in rows:
        version = "-" if row["version"] is None else str(row["version"])
        print(
            f"{row['table']:<34} {version:>7} {row['partitions']:>10} {row['first'] or '-':>10} "
            f"{row['last'] or '-':>10} {row['rows']:>9}"
        )
