"""Build leak-free, time-aware feature partitions with Spark, only for days whose inputs changed.

``python -m pipelines features --usecase NAME --date D [--start S] [--rebuild]``

Every committed raw partition of the primary source with S <= date <= D is a candidate day. A day's features depend
on the primary partition of that day, the ``lookback_days`` primary partitions before it, the same-day partitions of
joined events sources, the newest reference snapshot committed on or before that day, and the features/target
configuration; their content hashes make the day's *inputs fingerprint*. Days whose features partition is missing
or carries another fingerprint are built together in one Spark job and committed one lake partition per day at
``features/<usecase>/date=<day>`` (manifest: ``rows``, ``inputs_fingerprint``, ``inputs``, ``columns``).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError, UseCase
from pipelines.context import StepContext, StepFailed, progress
from pipelines.lake import Lake, Partition
from pipelines.spark import get_spark
from pipelines.transforms import (
    ALIGN_COLUMN,
    TRANSFORMS_VERSION,
    TransformContext,
    apply_transforms,
    check_transforms,
    joined_sources,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

DAY_COLUMN = "_day"  # partition date of each primary row (DateType) while the transforms run
DATE_COLUMN = "date"  # partition date in the output (ISO string)
# directory partition column of the Spark write (not in the committed files)
_WRITE_PARTITION = "_features_date"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=None,
        help="consider primary partitions from this date (YYYY-MM-DD) only; default: all up to --date",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild every considered day, even when its fingerprint matches",
    )


# --------------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class DayPlan:
    """One candidate day: the raw partitions it depends on (source -> date -> content hash) and their hash."""

    day: str
    inputs: dict[str, dict[str, str]]
    fingerprint: str


def features_config_hash(usecase: UseCase) -> str:
    """Hash of everything in the configuration that shapes the features (not the models or schedules)."""
    sources = [usecase.features.primary_source, *joined_sources(usecase.features)]
    payload = {
        "features": usecase.features.model_dump(mode="json"),
        "target": usecase.target.model_dump(mode="json"),
        "columns": {s: {c: spec.type for c, spec in usecase.sources[s].columns.items()} for s in sources},
        "transforms_version": TRANSFORMS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _content_hash(partition: Partition) -> str:
    # ingest records data_hash; without it the commit id is a safe (over-eager) stand-in
    return str(partition.manifest.get("data_hash") or partition.manifest.get("commit_id") or partition.prefix)


def _window(day: str, lookback_days: int) -> list[str]:
    """The day and the ``lookback_days`` calendar days before it, oldest first."""
    last = date.fromisoformat(day)
    return [(last - timedelta(days=k)).isoformat() for k in range(lookback_days, -1, -1)]


def _snapshot_for(day: str, snapshots: list[str]) -> str | None:
    """The newest snapshot date on or before ``day`` (ISO dates sort as strings)."""
    index = bisect.bisect_right(snapshots, day)
    return snapshots[index - 1] if index else None


def plan_days(
    usecase: UseCase, raw: dict[str, dict[str, Partition]], start: str | None, end: str
) -> list[DayPlan]:
    """Inputs and fingerprint of every candidate day (primary partitions with start <= date <= end)."""
    features = usecase.features
    primary = raw[features.primary_source]
    config_hash = features_config_hash(usecase)
    plans = []
    for day in primary:
        if day > end or (start is not None and day < start):
            continue
        inputs: dict[str, dict[str, str]] = {
            features.primary_source: {
                d: _content_hash(primary[d]) for d in _window(day, features.lookback_days) if d in primary
            }
        }
        for source in joined_sources(features):
            partitions = raw[source]
            used = day if usecase.sources[source].kind == "events" else _snapshot_for(day, list(partitions))
            inputs[source] = {used: _content_hash(partitions[used])} if used in partitions else {}
        body = json.dumps({"inputs": inputs, "config": config_hash}, sort_keys=True).encode()
        plans.append(DayPlan(day, inputs, hashlib.sha256(body).hexdigest()[:32]))
    return plans


# --------------------------------------------------------------------------------------------------- reading

_ARROW_TYPES = {"int": "int64", "float": "float64", "string": "string", "bool": "bool"}


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    if kind == "timestamp":
        return pa.timestamp("us", tz="UTC")
    return pa.type_for_alias(_ARROW_TYPES[kind])


def read_source(
    lake: Lake, usecase: UseCase, source: str, partitions: dict[str, Partition], tag: str
) -> pa.Table:
    """Rows of ``partitions`` (date -> partition) as one Arrow table typed from the configuration, plus a date
    column ``tag`` holding each row's partition date. Inputs are staged through the lake (local or S3)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = usecase.sources[source]
    schema = pa.schema([(name, _arrow_type(column.type)) for name, column in spec.columns.items()])
    keys = [key for partition in partitions.values() for key in partition.files]
    owner = {key: day for day, partition in partitions.items() for key in partition.files}
    tables = []
    with lake.local_files(keys) as paths:
        for key, path in zip(keys, paths, strict=True):
            table = pq.read_table(path)
            columns = []
            for field in schema:
                if field.name not in table.column_names:
                    raise StepFailed(
                        f"{lake.storage.uri(key)}: column {field.name!r} of source {source!r} is missing; "
                        f"re-run ingest for {owner[key]} (or fix sources.{source}.columns)",
                        {"file": lake.storage.uri(key), "column": field.name},
                    )
                try:
                    columns.append(
                        table[field.name].cast(field.type, safe=field.type.id != pa.timestamp("us").id)
                    )
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise StepFailed(
                        f"{lake.storage.uri(key)}: column {field.name!r} of source {source!r} has type "
                        f"{table.schema.field(field.name).type}, not castable to {field.type} ({exc}); "
                        f"re-run ingest for {owner[key]}",
                        {"file": lake.storage.uri(key), "column": field.name},
                    ) from None
            day = pa.array([date.fromisoformat(owner[key])] * table.num_rows, pa.date32())
            tables.append(
                pa.Table.from_arrays([*columns, day], schema=schema.append(pa.field(tag, pa.date32())))
            )
    if not tables:
        return schema.append(pa.field(tag, pa.date32())).empty_table()
    return pa.concat_tables(tables)


# --------------------------------------------------------------------------------------------------- building


def output_columns(usecase: UseCase) -> list[str]:
    """Columns of a features partition, in order: keys, event time, date, numeric, categorical, label."""
    features = usecase.features
    names = [*features.keys, features.event_time, DATE_COLUMN, *features.numeric, *features.categorical]
    return list(dict.fromkeys([*names, usecase.target.column]))


def _select_output(frame: DataFrame, usecase: UseCase) -> DataFrame:
    from pyspark.sql import functions as F

    features = usecase.features
    listed = {
        **{n: "features.keys" for n in features.keys},
        features.event_time: "features.event_time",
        **{n: "features.categorical" for n in features.categorical},
        **{n: "features.numeric" for n in features.numeric},
    }
    missing = [f"{name} ({field})" for name, field in listed.items() if name not in frame.columns]
    if missing:
        raise ConfigError(
            f"use case {usecase.name!r}: feature column(s) {missing} are neither columns of source "
            f"{features.primary_source!r} nor outputs of features.transforms; available: {sorted(frame.columns)}"
        )
    numeric, categorical = set(features.numeric), set(features.categorical)
    selected = []
    for name in output_columns(usecase):
        if name == DATE_COLUMN:
            column = F.date_format(F.col(DAY_COLUMN), "yyyy-MM-dd")
        elif name == usecase.target.column:
            column = F.col(name).cast("int")
        elif name in numeric:
            column = F.col(name).cast("double")
        elif name in categorical:
            column = F.col(name).cast("string")
        else:
            column = F.col(name)
        selected.append(column.alias(name))
    return frame.select(*selected, F.date_format(F.col(DAY_COLUMN), "yyyy-MM-dd").alias(_WRITE_PARTITION))


def _to_spark(spark: SparkSession, table: pa.Table, staging: Path, name: str) -> DataFrame:
    """Hand an Arrow table to Spark through a local Parquet file (faster to scan than an in-memory relation)."""
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema

    path = staging / f"{name}.parquet"
    pq.write_table(table, path)
    return spark.read.schema(from_arrow_schema(table.schema)).parquet(str(path))


def _frames(
    spark: SparkSession,
    ctx: StepContext,
    raw: dict[str, dict[str, Partition]],
    days: list[str],
    staging: Path,
) -> tuple[DataFrame, TransformContext]:
    """The primary rows of ``days`` (with their label) and the transform context with the joined sources."""
    from pyspark.sql import functions as F

    usecase = ctx.usecase
    features, target = usecase.features, usecase.target
    primary = features.primary_source
    if target.source_column not in usecase.sources[primary].columns:
        raise ConfigError(
            f"use case {usecase.name!r}: target.source_column {target.source_column!r} is not a column of the "
            f"primary source {primary!r}; columns: {sorted(usecase.sources[primary].columns)}"
        )
    table = read_source(ctx.lake, usecase, primary, {d: raw[primary][d] for d in days}, DAY_COLUMN)
    frame = _to_spark(spark, table, staging, primary).withColumn(
        target.column, (F.col(target.source_column) > F.lit(float(target.threshold))).cast("int")
    )
    source_frames, day_maps = {}, {}
    for source in joined_sources(features):
        partitions = raw[source]
        if usecase.sources[source].kind == "events":
            used = {d: partitions[d] for d in days if d in partitions}
        else:
            snapshots = list(partitions)
            by_day = {d: _snapshot_for(d, snapshots) for d in days}
            used = {s: partitions[s] for s in sorted({s for s in by_day.values() if s})}
            day_maps[source] = {
                date.fromisoformat(d): date.fromisoformat(s) if s else None for d, s in by_day.items()
            }
        table = read_source(ctx.lake, usecase, source, used, ALIGN_COLUMN)
        source_frames[source] = _to_spark(spark, table, staging, source)
    context = TransformContext(
        usecase=usecase,
        day_column=DAY_COLUMN,
        label_column=target.column,
        source_frames=source_frames,
        day_maps=day_maps,
    )
    return frame, context


def build_days(
    ctx: StepContext, raw: dict[str, dict[str, Partition]], plans: list[DayPlan]
) -> list[Partition]:
    """Compute the features of ``plans`` in one Spark job and commit one lake partition per day."""
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    usecase = ctx.usecase
    primary = raw[usecase.features.primary_source]
    needed = sorted(
        {d for plan in plans for d in _window(plan.day, usecase.features.lookback_days) if d in primary}
    )
    spark = get_spark(ctx.profile)
    committed = []
    with tempfile.TemporaryDirectory(prefix="features-") as tmp:
        staging, out = Path(tmp) / "inputs", Path(tmp) / "out"
        staging.mkdir()
        frame, context = _frames(spark, ctx, raw, needed, staging)
        frame = apply_transforms(frame, context)
        built_days = [date.fromisoformat(plan.day) for plan in plans]
        result = _select_output(frame.where(F.col(DAY_COLUMN).isin(built_days)), usecase)
        keys = [k for k in usecase.features.keys if k in result.columns]
        (
            result.repartition(_WRITE_PARTITION)
            .sortWithinPartitions(_WRITE_PARTITION, *keys, usecase.features.event_time)
            .write.partitionBy(_WRITE_PARTITION)
            .parquet(str(out))
        )
        columns = output_columns(usecase)
        for plan in plans:
            folder = out / f"{_WRITE_PARTITION}={plan.day}"
            files = []
            for index, written in enumerate(sorted(folder.glob("*.parquet")) if folder.is_dir() else []):
                files.append(written.rename(folder / f"part-{index:05d}.parquet"))
            rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
            manifest = {
                "rows": rows,
                "inputs_fingerprint": plan.fingerprint,
                "inputs": plan.inputs,
                "columns": columns,
                "config_hash": features_config_hash(usecase),
                "code_version": ctx.code_version,
            }
            prefix = Lake.partition_key("features", usecase.name, plan.day)
            committed.append(ctx.lake.commit_partition(prefix, files, manifest))
    return committed


# --------------------------------------------------------------------------------------------------- step


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Build the features partitions that are missing or stale for primary days up to ``ctx.day``."""
    usecase = ctx.usecase
    primary = usecase.features.primary_source
    check_transforms(usecase)
    start = args.start.isoformat() if getattr(args, "start", None) else None
    rebuild = bool(getattr(args, "rebuild", False))
    sources = [primary, *joined_sources(usecase.features)]
    raw = {source: ctx.lake.partitions("raw", usecase.name, source) for source in sources}
    if not raw[primary]:
        location = ctx.lake.storage.uri(f"raw/{usecase.name}/{primary}")
        raise StepFailed(
            f"no committed raw partitions of the primary source {primary!r} at {location}; run ingest first",
            {"built": [], "skipped": 0, "rows": 0, "partitions": []},
        )
    plans = plan_days(usecase, raw, start, ctx.ds)
    existing = ctx.lake.partitions("features", usecase.name)
    stale = [
        plan
        for plan in plans
        if rebuild
        or plan.day not in existing
        or existing[plan.day].manifest.get("inputs_fingerprint") != plan.fingerprint
    ]
    skipped = len(plans) - len(stale)
    if not stale:
        progress(f"features: {len(plans)} day(s) up to {ctx.ds} are up to date")
        return {"built": [], "skipped": skipped, "rows": 0, "partitions": []}
    progress(f"features: building {len(stale)} day(s) {stale[0].day}..{stale[-1].day}, {skipped} up to date")
    committed = build_days(ctx, raw, stale)
    rows = sum(partition.rows for partition in committed)
    progress(f"features: committed {len(committed)} partition(s), {rows} rows")
    return {
        "built": [plan.day for plan in stale],
        "skipped": skipped,
        "rows": rows,
        "partitions": [ctx.lake.storage.uri(partition.prefix) for partition in committed],
    }
