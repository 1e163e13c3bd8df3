"""Raw reads: one raw table version's rows typed from the use case's configuration, the way the features step
and the online snapshot read them (the same columns, types and arrival times).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.config import UseCase
from pipelines.context import StepFailed
from pipelines.lake import ARRIVED_AT, DATE, Lake, Snapshot, arrow_type

if TYPE_CHECKING:
    import pyarrow as pa


def read_source(
    lake: Lake, usecase: UseCase, source: str, snapshot: Snapshot, dates: list[str], tag: str
) -> pa.Table:
    """Rows of ``dates`` of one raw table version as an Arrow table typed from the configuration, plus
    :data:`ARRIVED_AT` (when each row's file arrived; NULL for rows ingested before arrivals were recorded) and a
    date column ``tag`` holding each row's partition date. Read through the Delta log (local or S3)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    spec = usecase.sources[source]
    schema = pa.schema([(name, arrow_type(column.type)) for name, column in spec.columns.items()])
    schema = schema.append(pa.field(ARRIVED_AT, pa.timestamp("us", tz="UTC")))
    target = schema.append(pa.field(tag, pa.date32()))
    present = [d for d in dates if d in snapshot.partitions]
    if not present:
        return target.empty_table()
    missing = [name for name in spec.columns if name not in snapshot.columns]
    if missing:
        raise StepFailed(
            f"{snapshot.uri}: column(s) {missing} of source {source!r} are not in the table (version "
            f"{snapshot.version}); re-run ingest for the affected days (or fix sources.{source}.columns)",
            {"table": snapshot.uri, "columns": missing},
        )
    recorded = [ARRIVED_AT] if ARRIVED_AT in snapshot.columns else []
    table = lake.read(snapshot.table, present, [*spec.columns, *recorded, DATE], snapshot.version)
    if not recorded:
        table = table.append_column(ARRIVED_AT, pa.nulls(table.num_rows, pa.timestamp("us", tz="UTC")))
    columns = []
    for item in schema:
        try:
            columns.append(table[item.name].cast(item.type, safe=item.type.id != pa.timestamp("us").id))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise StepFailed(
                f"{snapshot.uri}: column {item.name!r} of source {source!r} has type "
                f"{table.schema.field(item.name).type}, not castable to {item.type} ({exc}); re-run ingest for "
                f"the affected days (or fix sources.{source}.columns.{item.name}.type)",
                {"table": snapshot.uri, "column": item.name},
            ) from None
    day = pc.cast(pc.strptime(table[DATE], format="%Y-%m-%d", unit="s"), pa.date32())
    return pa.Table.from_arrays([*columns, day], schema=target)
