"""Build point-in-time feature partitions and their labels with Spark, only for days whose inputs changed.

``python -m pipelines features --usecase NAME --date D [--start S] [--rebuild]``

Every committed raw partition of the primary source (the events, partitioned by event date) with S <= date <= D +
``time.prediction_time.days_before`` is a candidate day: on day D the schedule predicted that evening is built too.
Every event gets its prediction time, and its features use only what was known before it (see
pipelines.features.transforms): what had *arrived* by then (each raw row carries when its file landed) and whose declared
time had come. Because availability is a recorded fact, a day's model inputs are a function of what had arrived
by its prediction time: rebuilding the day after more files landed gives the same rows.

Features and labels are two tables. A day's features depend on the primary partitions of that day and the
``lookback_days`` before it, the outcome files of those days that had arrived *before the day's prediction time*
(what past rates and means count; an outcome file's arrival is in its raw partition's facts, and a partition whose
arrivals were not recorded counts whole), the partitions of joined events sources its transforms read, the
reference snapshot that serves it, and the features/target/time configuration; their content hashes make the
day's *inputs fingerprint*. Its labels (``labels/<usecase>``: the feature keys, the label and
``outcome_known_at``, one row per event whose outcome arrived) come from the outcome source: known at the later of
``label_delay`` after the event time and the arrivals of the rows they need, and depend on the day's primary
partition and the outcome partitions of the same window, with their own fingerprint. So an arriving outcome
commits labels and rebuilds no features of the days predicted before it arrived: a file that arrives late changes
only the features of the days predicted after its arrival. Training, evaluation and monitoring join the two
tables by the keys and the date.

Days whose features partition is missing or carries another fingerprint are built together in one Spark job from
one snapshot of each raw table, and committed in one commit to the Delta table ``features/<usecase>`` (partition
facts: ``rows``, ``inputs_fingerprint``, ``inputs``, ``raw_versions``, ``columns``). The same job publishes their
online snapshot (the lookups a request at each day's prediction time joins; see pipelines.features.online), committed next
to ``features_online/<usecase>`` with the same facts; a day is stale when either table lacks its fingerprint.
Days whose labels are stale are committed to ``labels/<usecase>`` in one commit (a day without labels yet is
committed empty, with its facts); when the features job's labelled frame holds their events joined to the same
outcome partitions (a whole rebuild, say), the labels come from it, so the label join runs once. Inputs reach
Spark as Arrow (through the driver) and results come back as Arrow, so any master works (local or a cluster) and the
lake may be local or S3; large inputs of a local lake with a local master are read by the executors from the
snapshot's Parquet files instead (see :func:`source_frame`, chosen by ``profile.spark_direct_read_bytes``), and
large outputs are written by the executors as Parquet under their tables and committed as they are
(:func:`_lake_rows`). A concurrent commit to the same partitions makes the step plan and build again from the new
snapshots.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import OUTCOME_KNOWN_AT, PREDICTION_TIME, ConfigError, TargetSpec, TimeSpec, UseCase
from pipelines.context import StepContext, StepFailed, progress
from pipelines.features.feature_identity import features_config_hash, input_sources
from pipelines.features.online import SNAPSHOT_HEADER
from pipelines.features.raw_reads import read_source
from pipelines.features.scoring_time import EVENTS_ARRIVED_AT
from pipelines.features.spark import get_spark
from pipelines.features.transforms import (
    ALIGN_COLUMN,
    TransformContext,
    apply_transforms_with_lookups,
    check_transforms,
    joined_sources,
    source_dates,
)
from pipelines.lake import (
    ARRIVED_AT,
    COMMIT_ATTEMPTS,
    DATE,
    Commit,
    CommitConflict,
    Lake,
    PartitionInfo,
    Snapshot,
    StagedFiles,
    arrow_type,
    features_table,
    labels_table,
    online_table,
    raw_table,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

DAY_COLUMN = "_day"  # partition date of each primary row (DateType) while the transforms run
DATE_COLUMN = DATE  # partition date in the output (ISO string)
# Bump when the labels change for the same inputs: the features step then rebuilds every labels partition.
LABELS_VERSION = "1"
# Columns of the online snapshot table: per served event date, one row per lookup and key (see pipelines.features.online).
SNAPSHOT_COLUMNS = [DATE, PREDICTION_TIME, "lookup", "key", "value", "observed_at"]


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


def _window(day: str, lookback_days: int) -> list[str]:
    """The day and the ``lookback_days`` calendar days before it, oldest first."""
    last = date.fromisoformat(day)
    return [(last - timedelta(days=k)).isoformat() for k in range(lookback_days, -1, -1)]


def partition_arrival(partition: PartitionInfo) -> datetime | None:
    """When a raw partition had arrived whole: the latest arrival of the files it was built from (its facts);
    None when a file's arrival was not recorded (a partition ingested before arrivals were)."""
    files = partition.facts.get("source_files") or []
    times = [item.get("arrived_at") for item in files]
    if not times or None in times:
        return None
    return max(datetime.fromisoformat(t) for t in times)


def _isoformat(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def reference_snapshot_for(usecase: UseCase, day: str, partitions: Mapping[str, PartitionInfo]) -> str | None:
    """The reference snapshot (partition date) that serves the events of ``day``: the newest one dated on or
    before ``day`` whose files had all arrived by the day's prediction time (one whose arrival is unknown counts
    from its date). None: no snapshot had arrived, so the joined columns are NULL."""
    cutoff = usecase.time.prediction_time_of(date.fromisoformat(day))
    dates = sorted(partitions)
    for snapshot in reversed(dates[: bisect.bisect_right(dates, day)]):
        arrived = partition_arrival(partitions[snapshot])
        if arrived is None or arrived <= cutoff:
            return snapshot
    return None


_SECOND = timedelta(seconds=1)


def arrived_before(partition: PartitionInfo, cutoff: datetime) -> str | None:
    """An identity of the rows of a raw partition that had arrived strictly before ``cutoff``: its files (name,
    bytes, arrival) that had landed by then, from the partition's facts. None: none had. The partition's whole
    content id when a file's arrival was not recorded (then every change counts)."""
    files = partition.facts.get("source_files") or []
    if not files or any(item.get("arrived_at") is None for item in files):
        return partition.content_id
    early = sorted(
        (str(item.get("name")), str(item.get("sha256")), str(item["arrived_at"]))
        for item in files
        if datetime.fromisoformat(item["arrived_at"]) < cutoff
    )
    if not early:
        return None
    return "arrived:" + hashlib.sha256(json.dumps(early).encode()).hexdigest()[:32]


def plan_days(
    usecase: UseCase,
    raw: dict[str, dict[str, PartitionInfo]],
    start: str | None,
    end: str,
    days: set[str] | None = None,
) -> list[DayPlan]:
    """Inputs and fingerprint of the features of every candidate day (primary partitions with start <= date <=
    end). The outcome source and the joined events sources count only the files that had arrived by the day's
    prediction time (see :func:`arrived_before`; the transforms use no row that arrived later): outcomes arriving
    later write labels, not features, and an observation landing late changes only the days predicted after
    it."""
    features = usecase.features
    primary = raw[features.primary_source]
    config_hash = features_config_hash(usecase)
    outcome_source = usecase.outcome_source
    plans = []
    for day in primary:
        if day > end or (start is not None and day < start) or (days is not None and day not in days):
            continue
        window = _window(day, features.lookback_days)
        cutoff = usecase.time.prediction_time_of(date.fromisoformat(day))
        inputs: dict[str, dict[str, str]] = {
            features.primary_source: {d: primary[d].content_id for d in window if d in primary}
        }
        if outcome_source != features.primary_source:
            outcomes = raw[outcome_source]
            arrived = {d: arrived_before(outcomes[d], cutoff) for d in window if d in outcomes}
            inputs[outcome_source] = {d: known for d, known in arrived.items() if known is not None}
        for source in joined_sources(features):
            partitions = raw[source]
            if usecase.sources[source].kind == "events" and source != features.primary_source:
                # a joined row counts once it had arrived by the prediction time (the as-of join compares whole
                # seconds: a second's slack)
                used = [d.isoformat() for d in source_dates(usecase, source, date.fromisoformat(day))]
                seen = {d: arrived_before(partitions[d], cutoff + _SECOND) for d in used if d in partitions}
                joined = {d: known for d, known in seen.items() if known is not None}
            elif (
                usecase.time.prediction_time.per_event
            ):  # any snapshot that had arrived by the day's last one
                joined = {
                    d: partitions[d].content_id
                    for d in partitions
                    if d <= day and (partition_arrival(partitions[d]) or cutoff) <= cutoff
                }
            else:
                used = [reference_snapshot_for(usecase, day, partitions)]
                joined = {d: partitions[d].content_id for d in used if d in partitions}
            if source == outcome_source:  # joined and the outcome source too: what the join reads counts
                joined = {d: partitions[d].content_id for d in joined}
            inputs[source] = {**inputs.get(source, {}), **joined}
        body = json.dumps({"inputs": inputs, "config": config_hash}, sort_keys=True).encode()
        plans.append(DayPlan(day, inputs, hashlib.sha256(body).hexdigest()[:32]))
    return plans


def labels_config_hash(usecase: UseCase) -> str:
    """Hash of everything in the configuration that shapes the labels: the target, the outcome's time, the keys
    and the columns of the primary and outcome sources."""
    sources = dict.fromkeys([usecase.features.primary_source, usecase.outcome_source])
    payload = {
        "target": usecase.target.model_dump(mode="json"),
        "event_time": usecase.time.event_time,
        "outcome": usecase.time.outcome.model_dump(mode="json"),
        "keys": usecase.features.keys,
        "lookback_days": usecase.features.lookback_days,
        "columns": {s: {c: spec.type for c, spec in usecase.sources[s].columns.items()} for s in sources},
        "labels_version": LABELS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def plan_labels(
    usecase: UseCase,
    raw: dict[str, dict[str, PartitionInfo]],
    start: str | None,
    end: str,
    days: set[str] | None = None,
) -> list[DayPlan]:
    """Inputs and fingerprint of the labels of every candidate day: the day's primary partition (its events and
    their arrival) and the outcome partitions of the day and the ``lookback_days`` before it (the outcome rows
    its events are joined to), whole."""
    features = usecase.features
    primary = raw[features.primary_source]
    outcomes = raw[usecase.outcome_source]
    config_hash = labels_config_hash(usecase)
    plans = []
    for day in primary:
        if day > end or (start is not None and day < start) or (days is not None and day not in days):
            continue
        inputs = {features.primary_source: {day: primary[day].content_id}}
        if usecase.outcome_source != features.primary_source:
            window = _window(day, features.lookback_days)
            inputs[usecase.outcome_source] = {d: outcomes[d].content_id for d in window if d in outcomes}
        body = json.dumps({"inputs": inputs, "config": config_hash}, sort_keys=True).encode()
        plans.append(DayPlan(day, inputs, hashlib.sha256(body).hexdigest()[:32]))
    return plans


# --------------------------------------------------------------------------------------------------- building


def output_columns(usecase: UseCase) -> list[str]:
    """Columns of a features partition, in order: keys, event time, prediction time, date, numeric, categorical,
    then the slice columns that are none of these (for evaluation, never model inputs). The label lives in the
    labels table (:func:`label_columns`)."""
    features = usecase.features
    names = [*features.keys, usecase.time.event_time, PREDICTION_TIME, DATE_COLUMN]
    return list(dict.fromkeys([*names, *features.numeric, *features.categorical, *usecase.evaluated_columns]))


def label_columns(usecase: UseCase) -> list[str]:
    """Columns of a labels partition, in order: the feature keys, the date, the label and when it became known."""
    return list(dict.fromkeys([*usecase.features.keys, DATE_COLUMN, usecase.target.column, OUTCOME_KNOWN_AT]))


def _select_output(frame: DataFrame, usecase: UseCase) -> DataFrame:
    from pyspark.sql import functions as F

    features = usecase.features
    listed = {
        **{n: "features.keys" for n in features.keys},
        usecase.time.event_time: "time.event_time",
        **{n: "features.categorical" for n in features.categorical},
        **{n: "features.numeric" for n in features.numeric},
        **{
            n: "slices"
            for n in usecase.evaluated_columns
            if n not in features.numeric and n not in features.categorical
        },
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
        elif name in numeric:
            column = F.col(name).cast("double")
        elif name in categorical:
            column = F.col(name).cast("string")
        else:
            column = F.col(name)
        selected.append(column.alias(name))
    return frame.select(*selected)


def _to_spark(spark: SparkSession, table: pa.Table) -> DataFrame:
    """Hand an Arrow table to Spark through the driver, so executors on any host receive it.

    The local checkpoint materializes the rows in the executors' block managers and cuts the plan there: without
    it every branch of the transforms (joins, one window per past rate) re-derives the rows from the Arrow
    batches, which made a month of features 4x slower than reading staged Parquet; with it, as fast."""
    return spark.createDataFrame(table).localCheckpoint()


@dataclass(frozen=True)
class DirectRead:
    """The data files of the partitions a job needs, as the Delta log lists them: absolute local paths, each
    file's partition date, and their bytes."""

    paths: list[str]
    dates: list[str]
    size_bytes: int


def direct_read_plan(
    lake: Lake, snapshot: Snapshot, dates: list[str], expected: Mapping[str, pa.DataType]
) -> DirectRead | None:
    """The files Spark's executors can read themselves for the ``dates`` partitions of ``snapshot``, or None when
    the rows must go through Arrow instead: an S3 lake (Spark has no ``s3a`` jars here), a table whose protocol
    has reader features (deletion vectors, column mapping: plain Parquet reads would be wrong), or a column whose
    stored type is not the one configured (the Arrow path casts it, or fails naming it). File list, sizes and
    partition values come from the log's add actions (``get_add_actions(flatten=True)``), never a listing."""
    import pyarrow as pa

    if lake.is_s3 or not dates:
        return None
    handle = lake.open_table(snapshot.table, snapshot.version)
    if handle is None:
        return None
    protocol = handle.protocol()
    if protocol.reader_features:
        return None
    stored = {field.name: field.type for field in pa.schema(handle.schema().to_arrow())}
    for name, kind in expected.items():
        found = stored.get(name)
        if found is None or not _same_type(found, kind):
            return None
    adds = pa.table(handle.get_add_actions(flatten=True))
    part = f"partition.{DATE}"
    if not adds.num_rows or part not in adds.column_names:
        return None
    wanted = set(dates)
    root = lake.table_uri(snapshot.table).rstrip("/")
    paths, days, size = [], [], 0
    for path, day, nbytes in zip(
        adds.column("path").to_pylist(),
        adds.column(part).to_pylist(),
        adds.column("size_bytes").to_pylist(),
        strict=True,
    ):
        if str(day) not in wanted:
            continue
        from urllib.parse import unquote

        relative = unquote(str(path))
        if "://" in relative or relative.startswith("/"):
            return None  # absolute paths (shallow clones): leave them to the Arrow reader
        paths.append(f"{root}/{relative}")
        days.append(str(day))
        size += int(nbytes or 0)
    names = [p.rsplit("/", 1)[-1] for p in paths]
    if not paths or len(set(names)) != len(names):
        return None  # file names must tell the partition of each row apart
    return DirectRead(paths, days, size)


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_large_string(found) or pa.types.is_string_view(found):
        found = pa.string()
    if pa.types.is_timestamp(found) and pa.types.is_timestamp(expected):
        return found.unit == expected.unit and (found.tz is None) == (expected.tz is None)
    return found.equals(expected)


def source_frame(
    spark: SparkSession, ctx: StepContext, source: str, snapshot: Snapshot, dates: list[str], tag: str
) -> DataFrame:
    """The rows of :func:`read_source` as a Spark frame (same columns, types and rows), chosen by size: when the
    partitions hold at least ``profile.spark_direct_read_bytes`` and Spark runs locally beside a local lake, the
    executors read the snapshot's Parquet files themselves (:func:`direct_read_plan`), so a large day never goes
    through the driver; otherwise (small inputs, S3, a cluster master) the rows go through Arrow
    (:func:`_to_spark`)."""
    import pyarrow as pa

    usecase, lake, profile = ctx.usecase, ctx.lake, ctx.profile
    spec = usecase.sources[source]
    present = [d for d in dates if d in snapshot.partitions]
    threshold = profile.spark_direct_read_bytes
    plan = None
    if present and profile.spark_master.startswith("local"):
        expected = {name: arrow_type(column.type) for name, column in spec.columns.items()}
        if ARRIVED_AT in snapshot.columns:
            expected[ARRIVED_AT] = pa.timestamp("us", tz="UTC")
        # the log is read only for inputs that may be large: 8 bytes a value bounds a Parquet file's size
        counts = [snapshot.partitions[d].rows for d in present]
        if min(counts) < 0 or sum(counts) * 8 * len(expected) >= threshold:
            plan = direct_read_plan(lake, snapshot, present, expected)
            if plan is not None and plan.size_bytes < threshold:
                plan = None
    if plan is None:
        return _to_spark(spark, read_source(lake, usecase, source, snapshot, dates, tag))
    return _read_parquet(spark, usecase, source, snapshot, plan, tag)


def _read_parquet(
    spark: SparkSession, usecase: UseCase, source: str, snapshot: Snapshot, plan: DirectRead, tag: str
) -> DataFrame:
    """Spark reads the files of ``plan``; each row gets its file's partition date (from the log, joined by file
    name) as ``tag``; columns as :func:`read_source` types them."""
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    spec = usecase.sources[source]
    fields = [(name, arrow_type(column.type)) for name, column in spec.columns.items()]
    recorded = ARRIVED_AT in snapshot.columns
    fields.append((ARRIVED_AT, pa.timestamp("us", tz="UTC")))
    schema = StructType(
        [
            StructField(name, from_arrow_type(kind), True)
            for name, kind in fields
            if name != ARRIVED_AT or recorded
        ]
    )
    files = spark.createDataFrame(
        [(path.rsplit("/", 1)[-1], day) for path, day in zip(plan.paths, plan.dates, strict=True)],
        schema="_file_name string, _file_date string",
    )
    rows = (
        spark.read.schema(schema)
        .parquet(*plan.paths)
        .select("*", F.col("_metadata.file_name").alias("_file_name"))
    )
    rows = rows.join(F.broadcast(files), on="_file_name", how="inner")
    arrived = F.col(ARRIVED_AT) if recorded else F.lit(None).cast("timestamp")
    return rows.select(
        *[F.col(name) for name, _ in fields if name != ARRIVED_AT],
        arrived.alias(ARRIVED_AT),
        F.to_date(F.col("_file_date"), "yyyy-MM-dd").alias(tag),
    )


def prediction_time_column(event_time: Column, time: TimeSpec) -> Column:
    """Spark expression of the prediction time (UTC) of an event at ``event_time`` (UTC): the event time minus
    ``lead``, the event's ``column``, or (daily) ``days_before`` its local date at the local clock time ``at``
    (the same rule as :meth:`TimeSpec.prediction_time_of`)."""
    from pyspark.sql import functions as F

    spec = time.prediction_time
    if spec.column is not None:
        return F.col(spec.column)
    if spec.lead is not None:
        return F.timestamp_micros(F.unix_micros(event_time) - F.lit(spec.lead_seconds * 1_000_000))
    local_date = F.to_date(F.from_utc_timestamp(event_time, time.timezone))
    local_clock = F.to_timestamp(
        F.concat(
            F.date_format(F.date_sub(local_date, spec.days_before), "yyyy-MM-dd"), F.lit(f" {spec.at}:00")
        )
    )
    return F.to_utc_timestamp(local_clock, time.timezone)


def label_expression(value: Column, target: TargetSpec) -> Column:
    """1 or 0 from a non-null outcome value, per ``target.kind``; a regression's label is the value itself."""
    from pyspark.sql import functions as F

    if target.kind == "regression":
        return value.cast("double")
    if target.kind == "above_threshold":
        positive = value > F.lit(float(target.threshold or 0.0))
    elif target.kind == "positive_values":
        positive = value.isin([F.lit(v) for v in target.positive_values or []])
    else:  # boolean
        positive = value.cast("boolean")
    return positive.cast("int")


def _label_columns(frame: DataFrame, usecase: UseCase, outcome_rows: DataFrame | None) -> DataFrame:
    """``frame`` plus the label and the time its outcome became known: the latest of the declared time (event
    time + ``label_delay``) and the observed arrivals of the rows it needs (the event's own row and, from another
    source, its outcome row). An arrival that was not recorded leaves the declared time.

    The outcome comes from the primary rows themselves, or from ``outcome_rows`` joined on
    ``time.outcome.keys``; an event without an outcome row has no label yet; an outcome row without a value
    (e.g. a cancelled flight) gets ``target.missing_outcome``. Of several outcome rows of one event, the first to
    arrive counts (then the smallest value), so an outcome arriving later never changes one known before."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    target, outcome = usecase.target, usecase.time.outcome
    arrivals = [F.col(ARRIVED_AT)]
    if outcome_rows is None:
        value, has_outcome = F.col(target.source_column), F.lit(True)
    else:
        aliases = [f"_outcome_key_{i}" for i in range(len(outcome.keys))]
        rows = outcome_rows.select(
            *[F.col(k).alias(a) for k, a in zip(outcome.keys, aliases, strict=True)],
            F.col(target.source_column).alias("_outcome_value"),
            F.col(ARRIVED_AT).alias("_outcome_arrived"),
        ).dropna(subset=aliases)
        first = Window.partitionBy(*aliases).orderBy(
            F.col("_outcome_arrived").asc_nulls_first(), F.col("_outcome_value").asc_nulls_last()
        )
        rows = rows.withColumn("_rank", F.row_number().over(first)).where(F.col("_rank") == 1).drop("_rank")
        rows = rows.withColumn("_has_outcome", F.lit(True))
        condition = None
        for key, alias in zip(outcome.keys, aliases, strict=True):
            clause = F.col(key) == F.col(alias)
            condition = clause if condition is None else condition & clause
        frame = frame.join(rows, on=condition, how="left").drop(*aliases)
        value, has_outcome = F.col("_outcome_value"), F.coalesce(F.col("_has_outcome"), F.lit(False))
        arrivals.append(F.col("_outcome_arrived"))
    missing = {"positive": F.lit(1), "negative": F.lit(0), "drop": F.lit(None)}[target.missing_outcome]
    label = (
        F.when(~has_outcome, F.lit(None))
        .when(value.isNull(), missing)
        .otherwise(label_expression(value, target))
        .cast("double" if usecase.task == "regression" else "int")
    )
    event_time = F.col(usecase.time.event_time)
    declared = F.timestamp_micros(F.unix_micros(event_time) + F.lit(outcome.delay_seconds * 1_000_000))
    known_at = F.greatest(declared, *arrivals)  # greatest skips NULLs: an unrecorded arrival adds nothing
    frame = frame.withColumn(target.column, label).withColumn(
        OUTCOME_KNOWN_AT, F.when(F.col(target.column).isNotNull(), known_at)
    )
    return (
        frame.drop("_outcome_value", "_has_outcome", "_outcome_arrived")
        if outcome_rows is not None
        else frame
    )


def _frames(
    spark: SparkSession,
    ctx: StepContext,
    raw: dict[str, Snapshot],
    days: list[str],
) -> tuple[DataFrame, TransformContext]:
    """The primary rows of ``days`` with their prediction time, label and outcome time, and the transform
    context with the joined sources."""
    from pyspark.sql import functions as F

    usecase = ctx.usecase
    features, target, time = usecase.features, usecase.target, usecase.time
    primary = features.primary_source
    frame = source_frame(spark, ctx, primary, raw[primary], days, DAY_COLUMN).withColumn(
        PREDICTION_TIME, prediction_time_column(F.col(time.event_time), time)
    )
    outcome_rows = None
    if usecase.outcome_source != primary:
        snapshot = raw[usecase.outcome_source]
        outcome_rows = source_frame(spark, ctx, usecase.outcome_source, snapshot, days, "_outcome_day")
    frame = _label_columns(frame, usecase, outcome_rows)
    source_frames, day_maps, reference_arrivals = {}, {}, {}
    for source in joined_sources(features):
        snapshot = raw[source]
        if usecase.sources[source].kind == "events":
            used = [d for d in days if d in snapshot.partitions]
        elif time.prediction_time.per_event:  # each row picks its snapshot by its own prediction time
            used = [d for d in sorted(snapshot.partitions) if d <= max(days, default="")]
            reference_arrivals[source] = {
                date.fromisoformat(d): partition_arrival(snapshot.partitions[d]) for d in used
            }
        else:
            by_day = {d: reference_snapshot_for(usecase, d, snapshot.partitions) for d in days}
            used = sorted({s for s in by_day.values() if s})
            day_maps[source] = {
                date.fromisoformat(d): date.fromisoformat(s) if s else None for d, s in by_day.items()
            }
        source_frames[source] = source_frame(spark, ctx, source, snapshot, used, ALIGN_COLUMN)
    context = TransformContext(
        usecase=usecase,
        day_column=DAY_COLUMN,
        label_column=target.column,
        prediction_time_column=PREDICTION_TIME,
        known_at_column=OUTCOME_KNOWN_AT,
        source_frames=source_frames,
        day_maps=day_maps,
        reference_arrivals=reference_arrivals,
        prediction_times={
            date.fromisoformat(d): usecase.time.prediction_time_of(date.fromisoformat(d)) for d in days
        },
    )
    return frame, context


def _check_prediction_column(frame: DataFrame, usecase: UseCase) -> None:
    """With ``time.prediction_time.column``: every event's prediction time is set, not after the event and at
    most ``max_lead`` before it (older ones would need history the step does not read); else the step fails
    with the count, an example and the fix, so no event is silently dropped or given features of another time."""
    from pyspark.sql import functions as F

    spec, event_time = usecase.time.prediction_time, usecase.time.event_time
    if spec.column is None:
        return
    prediction, event = F.col(PREDICTION_TIME), F.col(event_time)
    earliest = F.timestamp_micros(F.unix_micros(event) - F.lit(spec.max_lead_seconds * 1_000_000))
    bad = frame.where(prediction.isNull() | (prediction > event) | (prediction < earliest))
    found = bad.select(*usecase.features.keys, event_time, PREDICTION_TIME).limit(3).collect()
    if found:
        count = bad.count()
        examples = [row.asDict() for row in found]
        raise StepFailed(
            f"features: {count} event(s) of source {usecase.features.primary_source!r} have a prediction time "
            f"(column {spec.column!r}) that is missing, after the event's {event_time!r} or more than "
            f"time.prediction_time.max_lead ({spec.max_lead}) before it, e.g. {examples}; fix the rows (an "
            f"expectation on {spec.column!r} keeps them out at ingest) or raise max_lead and lookback_days",
            {"bad_prediction_times": count},
        )


def _prediction_times(frame: DataFrame, days: list[date], time: TimeSpec) -> dict[date, Any]:
    """The one prediction time of each day's events (every event of a day is predicted at the same time); with
    per-event prediction times, the latest any event of the day can have (its online snapshot's time)."""
    from pyspark.sql import functions as F

    if time.prediction_time.per_event:
        return {day: time.prediction_time_of(day) for day in days}

    pairs = frame.where(F.col(DAY_COLUMN).isin(days)).select(DAY_COLUMN, PREDICTION_TIME).distinct().collect()
    times: dict[date, Any] = {}
    for day, at in pairs:
        if day in times:  # a bug (ingest keeps each event on its local date), not bad input
            raise RuntimeError(
                f"features: events of {day} have several prediction times ({times[day]}, {at})"
            )
        times[day] = at
    return times


@dataclass(frozen=True)
class BuiltDays:
    """What one Spark job built: the features, their online snapshot and (when they could share its labelled
    frame, see :func:`shares_label_frame`) the labels, each an Arrow table sorted by every column, or (large
    outputs, see :func:`_lake_rows`) Parquet files of sorted rows the executors wrote under the
    table, for :meth:`Lake.write_partitions` to commit."""

    rows: pa.Table | StagedFiles
    snapshot_rows: pa.Table | StagedFiles
    labels: pa.Table | StagedFiles | None


def _feature_days(usecase: UseCase, raw: dict[str, Snapshot], plans: list[DayPlan]) -> list[str]:
    """The primary days the features of ``plans`` read: each day's window."""
    primary = raw[usecase.features.primary_source].partitions
    return sorted(
        {d for plan in plans for d in _window(plan.day, usecase.features.lookback_days) if d in primary}
    )


def _label_outcome_days(usecase: UseCase, days: list[str]) -> list[str]:
    """The outcome partitions :func:`build_labels` joins to the events of ``days``: their windows."""
    return sorted({d for day in days for d in _window(day, usecase.features.lookback_days)})


def shares_label_frame(
    usecase: UseCase, raw: dict[str, Snapshot], plans: list[DayPlan], label_plans: list[DayPlan]
) -> bool:
    """Whether the labels of ``label_plans`` can be taken from the labelled frame the features of ``plans`` start
    from (one label join, not two): every label day's events are in that frame and the frame joined them to the
    same outcome partitions :func:`build_labels` would (more or fewer could pick another first outcome)."""
    if not plans or not label_plans:
        return False
    needed = _feature_days(usecase, raw, plans)
    if not {plan.day for plan in label_plans} <= set(needed):
        return False
    if usecase.outcome_source == usecase.features.primary_source:
        return True
    outcomes = raw[usecase.outcome_source].partitions
    wanted = _label_outcome_days(usecase, [plan.day for plan in label_plans])
    return {d for d in needed if d in outcomes} == {d for d in wanted if d in outcomes}


def build_rows(ctx: StepContext, raw: dict[str, Snapshot], plans: list[DayPlan]) -> tuple[pa.Table, pa.Table]:
    """The features of the days in ``plans`` and their online snapshot, computed in one Spark job, as two Arrow
    tables with a ``date`` column, sorted by every column (so a rebuild from the same inputs gives the same
    files)."""
    built = build_days(ctx, raw, plans, stage=False)
    assert not isinstance(built.rows, StagedFiles) and not isinstance(built.snapshot_rows, StagedFiles)
    return built.rows, built.snapshot_rows


def build_days(
    ctx: StepContext,
    raw: dict[str, Snapshot],
    plans: list[DayPlan],
    label_plans: list[DayPlan] | None = None,
    *,
    stage: bool = True,
) -> BuiltDays:
    """:func:`build_rows`, and the labels of ``label_plans`` from the same labelled frame when
    :func:`shares_label_frame` (else ``labels`` is None and :func:`build_labels` builds them). ``stage``: large
    outputs may be written by the executors (:func:`_lake_rows`); else all come back as Arrow."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    usecase = ctx.usecase
    primary = raw[usecase.features.primary_source].partitions
    needed = _feature_days(usecase, raw, plans)
    spark = get_spark(ctx.profile)
    frame, context = _frames(spark, ctx, raw, needed)
    # labelled rows, materialized once: the transforms and the snapshot's lookups all start from them. Large
    # inputs are kept serialized (compact bytes, spilled to disk when memory runs short), not as objects on the
    # JVM heap: 10M rows as objects filled a 6 GB heap and stalled the job in full collections
    large = (
        sum(max(primary[d].rows, 0) for d in needed) * 8 * len(frame.columns)
        >= ctx.profile.spark_direct_read_bytes
    )
    if large:
        from pyspark import StorageLevel

        frame = frame.localCheckpoint(storageLevel=StorageLevel.MEMORY_AND_DISK)
    else:
        frame = frame.localCheckpoint()
    labels = None
    if label_plans and shares_label_frame(usecase, raw, plans, label_plans):
        label_days = [plan.day for plan in label_plans]
        labels = _label_rows(
            frame,
            usecase,
            [date.fromisoformat(day) for day in label_days],
            ctx if stage else None,
            sum(max(primary[d].rows, 0) for d in label_days),
        )
    built_days = [date.fromisoformat(plan.day) for plan in plans]
    _check_prediction_column(frame.where(F.col(DAY_COLUMN).isin(built_days)), usecase)
    served = _prediction_times(frame, built_days, usecase.time)
    times = spark.createDataFrame(
        sorted(served.items()), schema=f"{DAY_COLUMN} date, {PREDICTION_TIME} timestamp"
    )
    frame, lookups = apply_transforms_with_lookups(frame, context, times)
    output = _select_output(frame.where(F.col(DAY_COLUMN).isin(built_days)), usecase)
    order = [DATE_COLUMN, *usecase.features.keys, usecase.time.event_time]
    order += [c for c in output.columns if c not in order]
    rows = _lake_rows(
        ctx if stage else None,
        output,
        features_table(usecase.name),
        list(dict.fromkeys(order)),
        sum(max(primary[plan.day].rows, 0) for plan in plans),
    )

    header = times.select(
        DAY_COLUMN,
        F.lit(SNAPSHOT_HEADER).alias("lookup"),
        F.lit("{}").alias("key"),
        F.lit("{}").alias("value"),
        F.lit(None).cast("timestamp").alias("observed_at"),
    )
    snapshot = header if lookups is None else header.unionByName(lookups)
    snapshot = snapshot.join(F.broadcast(times), on=DAY_COLUMN).select(
        F.date_format(F.col(DAY_COLUMN), "yyyy-MM-dd").alias(DATE),
        *SNAPSHOT_COLUMNS[1:],
    )
    events = sum(max(primary[plan.day].rows, 0) for plan in plans)
    # about a lookup row per event and lookup: sized as the features are
    staged = _lake_rows(
        ctx if stage else None, snapshot, online_table(usecase.name), SNAPSHOT_COLUMNS, events
    )
    if isinstance(staged, StagedFiles):
        return BuiltDays(rows, staged, labels)
    snapshot_rows = snapshot.toArrow()
    snapshot_rows = snapshot_rows.cast(
        pa.schema(
            [
                (DATE, pa.string()),
                (PREDICTION_TIME, pa.timestamp("us", tz="UTC")),
                ("lookup", pa.string()),
                ("key", pa.string()),
                ("value", pa.string()),
                ("observed_at", pa.timestamp("us", tz="UTC")),
            ]
        )
    )
    snapshot_rows = snapshot_rows.sort_by([(name, "ascending") for name in SNAPSHOT_COLUMNS])
    return BuiltDays(rows, snapshot_rows, labels)


def build_labels(ctx: StepContext, raw: dict[str, Snapshot], plans: list[DayPlan]) -> pa.Table:
    """The labels of the days in ``plans`` (one row per event whose outcome arrived: :func:`label_columns`) as an
    Arrow table sorted by every column, from the primary rows of those days and the outcome rows of their
    windows (the same labels the features' past rates count)."""
    usecase = ctx.usecase
    primary = usecase.features.primary_source
    days = [plan.day for plan in plans]
    spark = get_spark(ctx.profile)
    frame = source_frame(spark, ctx, primary, raw[primary], days, DAY_COLUMN)
    outcome_rows = None
    if usecase.outcome_source != primary:
        snapshot = raw[usecase.outcome_source]
        window = _label_outcome_days(usecase, days)
        outcome_rows = source_frame(spark, ctx, usecase.outcome_source, snapshot, window, "_outcome_day")
    frame = _label_columns(frame, usecase, outcome_rows)
    return _label_rows(frame, usecase, None)


def _label_rows(
    frame: DataFrame,
    usecase: UseCase,
    days: list[date] | None,
    ctx: StepContext | None = None,
    events: int = 0,
) -> pa.Table | StagedFiles:
    """The labels (:func:`label_columns`) of the events of ``days`` (None: all) of a labelled frame
    (:func:`_label_columns`), typed as the features table types the keys and sorted by every column; with
    ``ctx``, the labels of many ``events`` are written by the executors instead (:func:`_lake_rows`)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    if days is not None:
        frame = frame.where(F.col(DAY_COLUMN).isin(days))
    frame = frame.where(F.col(usecase.target.column).isNotNull())
    frame = frame.withColumn(DATE_COLUMN, F.date_format(F.col(DAY_COLUMN), "yyyy-MM-dd"))
    spec, features = usecase.sources[usecase.features.primary_source], usecase.features
    label_type = pa.float64() if usecase.task == "regression" else pa.int32()

    def key_type(name: str) -> pa.DataType:  # the keys typed as in the features table (see _select_output)
        if name in features.numeric:
            return pa.float64()
        if name in features.categorical:
            return pa.string()
        return arrow_type(spec.columns[name].type)

    schema = pa.schema(
        [(name, key_type(name)) for name in features.keys if name != DATE_COLUMN]
        + [
            (DATE_COLUMN, pa.string()),
            (usecase.target.column, label_type),
            (OUTCOME_KNOWN_AT, pa.timestamp("us", tz="UTC")),
        ]
    )
    order = [DATE_COLUMN, *usecase.features.keys]
    order += [c for c in schema.names if c not in order]
    if ctx is not None:
        from pyspark.sql.pandas.types import from_arrow_type

        typed = frame.select(*[F.col(item.name).cast(from_arrow_type(item.type)) for item in schema])
        staged = _lake_rows(ctx, typed, labels_table(usecase.name), list(dict.fromkeys(order)), events)
        if isinstance(staged, StagedFiles):
            return staged
    rows = frame.select(*label_columns(usecase)).toArrow()
    rows = rows.select(schema.names).cast(schema)
    return rows.sort_by([(name, "ascending") for name in dict.fromkeys(order)])


def _lake_rows(
    ctx: StepContext | None, frame: DataFrame, table: str, order: list[str], events: int
) -> pa.Table | StagedFiles:
    """The rows of ``frame`` for ``table``, sorted by ``order`` (every column), chosen by size as the inputs are
    (:func:`source_frame`): small ones come back to the driver as Arrow; when ``events`` rows of the frame's
    columns would hold at least ``profile.spark_direct_write_bytes`` and Spark runs locally beside a local lake,
    the executors write them as Parquet under the table (one file per date, its rows sorted), so a year of rows
    never goes through the driver, and :meth:`Lake.write_partitions` commits those files. ``ctx`` None: Arrow."""
    from pyspark.sql import functions as F

    staging = None
    if (
        ctx is not None
        and ctx.profile.spark_master.startswith("local")
        and events * 8 * len(frame.columns) >= ctx.profile.spark_direct_write_bytes
    ):
        staging = ctx.lake.staging_folder(table)
    if staging is None:
        rows = frame.toArrow()
        return rows.sort_by([(name, "ascending") for name in order])
    spark = frame.sparkSession
    # microsecond timestamps marked UTC, as the lake's Arrow writes store them (Spark's default is INT96)
    setting = "spark.sql.parquet.outputTimestampType"
    previous = spark.conf.get(setting)
    spark.conf.set(setting, "TIMESTAMP_MICROS")
    try:
        # each date in one task, its rows sorted: one file per date, ordered as the Arrow path orders them
        (
            frame.repartition(F.col(DATE_COLUMN))
            .sortWithinPartitions(*[F.col(name).asc_nulls_last() for name in order])
            .write.partitionBy(DATE_COLUMN)
            .parquet(staging[1])
        )
    finally:
        spark.conf.set(setting, previous)
    return ctx.lake.staged_files(table, staging, frame.columns)


def commit_labels(
    ctx: StepContext,
    raw: dict[str, Snapshot],
    labels: Snapshot,
    plans: list[DayPlan],
    rows: pa.Table | StagedFiles | None = None,
) -> Commit:
    """Commit the labels of the days of ``plans`` (``rows``, else built by :func:`build_labels`) in one commit
    made from the ``labels`` snapshot; a day without labels yet is committed empty, with its facts."""
    if rows is None:
        rows = build_labels(ctx, raw, plans)
    raw_versions = {snapshot.table: snapshot.version for snapshot in raw.values()}
    facts = {
        plan.day: {
            "inputs_fingerprint": plan.fingerprint,
            "inputs": plan.inputs,
            "raw_versions": raw_versions,
            "columns": label_columns(ctx.usecase),
            "config_hash": labels_config_hash(ctx.usecase),
            "code_version": ctx.code_version,
        }
        for plan in plans
    }
    return ctx.lake.write_partitions(
        labels.table,
        rows,
        read_version=labels.version,
        facts=facts,
        commit_info={"mlops.step": "features", "mlops.date": ctx.ds},
        empty_dates=[plan.day for plan in plans],
    )


def commit_days(
    ctx: StepContext,
    raw: dict[str, Snapshot],
    features: Snapshot,
    online: Snapshot,
    plans: list[DayPlan],
    label_plans: list[DayPlan] | None = None,
) -> tuple[Commit, Commit, pa.Table | StagedFiles | None]:
    """Build the days of ``plans``; commit their features in one commit made from the ``features`` snapshot, then
    their online snapshot in one commit made from the ``online`` snapshot. Returns the commits and the labels of
    ``label_plans`` when the same job could build them (see :func:`build_days`), for :func:`commit_labels`."""
    usecase = ctx.usecase
    output = build_days(ctx, raw, plans, label_plans)
    rows, snapshot_rows = output.rows, output.snapshot_rows
    built = set(rows.files) if isinstance(rows, StagedFiles) else set(rows.column(DATE_COLUMN).to_pylist())
    empty = [plan.day for plan in plans if plan.day not in built]
    if empty:  # every planned day has primary rows; none may vanish silently
        raise RuntimeError(f"features: no rows were built for {empty}")  # a bug, not bad input
    raw_versions = {snapshot.table: snapshot.version for snapshot in raw.values()}
    events = raw[usecase.features.primary_source].partitions
    facts = {
        plan.day: {
            "inputs_fingerprint": plan.fingerprint,
            # when the day's events had all arrived: the score run's sensor compares it with its deadline
            EVENTS_ARRIVED_AT: _isoformat(partition_arrival(events[plan.day])),
            "inputs": plan.inputs,
            "raw_versions": raw_versions,
            "columns": output_columns(usecase),
            "config_hash": features_config_hash(usecase),
            "code_version": ctx.code_version,
        }
        for plan in plans
    }
    commit_info = {"mlops.step": "features", "mlops.date": ctx.ds}
    commit = ctx.lake.write_partitions(
        features.table, rows, read_version=features.version, facts=facts, commit_info=commit_info
    )
    # what the train DAG's trigger form proposes as the newest date to train on (read at parse time, no Delta)
    ctx.lake.record_extent(features.table, facts, commit.version)
    snapshot_facts = {
        day: {**day_facts, "columns": SNAPSHOT_COLUMNS, "features_version": commit.version}
        for day, day_facts in facts.items()
    }
    snapshot_commit = ctx.lake.write_partitions(
        online.table,
        snapshot_rows,
        read_version=online.version,
        facts=snapshot_facts,
        commit_info=commit_info,
    )
    return commit, snapshot_commit, output.labels


# --------------------------------------------------------------------------------------------------- scope

# After each run that planned every day up to its date, the step records what it planned from (the raw versions,
# the configuration and the versions of its own tables it left): its *plan mark*. The next run plans only the days
# whose inputs can have changed since: the new days, and the days whose windows hold a raw partition that a raw
# commit after the marked version wrote (every commit of write_partitions names its dates in its commit info). A
# day outside them has the inputs it had when the mark was written, when it was up to date, and its partitions are
# untouched (the step's tables are still at the marked versions), so it is still up to date: planning it would
# give the same answer. Anything else (no mark, another configuration, another writer of the step's tables, a raw
# commit that does not name its dates, --start, --rebuild) plans every day, as without a mark.
PLAN_MARK_ZONE = "_meta/plans/features"
# commits that change no rows, so no day's inputs
_NO_DATA_OPERATIONS = frozenset({"VACUUM START", "VACUUM END"})
# days around a changed partition counted as reading it, beyond the lookback: a margin, never a miss
_MARGIN_DAYS = 2


def plan_mark_key(usecase: str) -> str:
    """The lake key of the use case's plan mark (a small JSON object): ``_meta/plans/features/<usecase>.json``."""
    return f"{PLAN_MARK_ZONE}/{usecase}.json"


@dataclass(frozen=True)
class PlanScope:
    """The primary days a run plans (None: every day) and why."""

    days: set[str] | None
    reason: str

    def read_dates(self, usecase: UseCase) -> set[str] | None:
        """The raw dates the plans and the build of :attr:`days` can read (None: all): each day's lookback
        window, with the margin."""
        if self.days is None:
            return None
        span = range(-_MARGIN_DAYS, usecase.features.lookback_days + _MARGIN_DAYS + 1)
        return {(date.fromisoformat(d) - timedelta(days=k)).isoformat() for d in self.days for k in span}


def changed_dates(lake: Lake, table: str, since: int, latest: int) -> set[str] | None:
    """The dates the commits of ``table`` after version ``since`` up to ``latest`` wrote (their
    ``mlops.partitions`` commit info), or None when one of them does not name its dates or the log does not have
    them all (then every day is planned)."""
    if latest == since:
        return set()
    handle = lake.open_table(table, latest)
    if handle is None or latest < since:
        return None
    changed: set[str] = set()
    seen: set[int] = set()
    for entry in handle.history(latest - since):
        version = int(entry.get("version", -1))
        if not since < version <= latest:
            continue
        seen.add(version)
        if entry.get("operation") in _NO_DATA_OPERATIONS:
            continue
        listed = entry.get("mlops.partitions")
        if listed is None:
            return None
        changed.update(str(day) for day in json.loads(listed))
    return changed if seen == set(range(since + 1, latest + 1)) else None


def plan_scope(
    ctx: StepContext,
    raw_versions: Mapping[str, int | None],
    through: str,
    primary_days: list[str],
    own_versions: Mapping[str, int | None],
) -> PlanScope:
    """Which days this run must plan, from the plan mark (see above); ``primary_days``: the primary partitions
    up to ``through``; ``own_versions``: the features, online and labels tables' versions now."""
    from pipelines.lake import LakeError

    usecase = ctx.usecase
    try:
        mark = ctx.lake.read_json(plan_mark_key(usecase.name))
    except (LakeError, ValueError):
        return PlanScope(None, "no plan mark")
    if mark.get("config_hash") != features_config_hash(usecase) or mark.get(
        "labels_config_hash"
    ) != labels_config_hash(usecase):
        return PlanScope(None, "the configuration changed since the plan mark")
    if mark.get("tables") != dict(own_versions):
        return PlanScope(None, "the features tables changed since the plan mark")
    marked = mark.get("raw_versions") or {}
    if set(marked) != set(raw_versions) or str(mark.get("through", "")) > through:
        return PlanScope(None, "the plan mark is of other sources or a later date")
    days = {d for d in primary_days if d > str(mark["through"])}
    lookback = usecase.features.lookback_days
    for source, version in raw_versions.items():
        since = marked[source]
        if since is None or version is None:
            if since != version:
                return PlanScope(None, f"raw table of {source} appeared since the plan mark")
            continue
        changed = changed_dates(ctx.lake, raw_table(usecase.name, source), int(since), int(version))
        if changed is None:
            return PlanScope(None, f"a commit to the raw table of {source} does not name its dates")
        events = usecase.sources[source].kind == "events"
        for day in changed:
            first = (date.fromisoformat(day) - timedelta(days=_MARGIN_DAYS)).isoformat()
            last = (date.fromisoformat(day) + timedelta(days=lookback + _MARGIN_DAYS)).isoformat()
            # a reference snapshot can serve every later day; an events partition the days whose windows hold it
            days.update(d for d in primary_days if first <= d and (not events or d <= last))
    return PlanScope(days, f"{len(days)} day(s) new or with inputs changed since the plan mark")


def write_plan_mark(
    ctx: StepContext,
    through: str,
    raw_versions: Mapping[str, int | None],
    own_versions: Mapping[str, int | None],
) -> None:
    """Record that every day up to ``through`` is up to date as of ``raw_versions`` (see above); never moves the
    mark back to an earlier date."""
    from pipelines.lake import LakeError

    key = plan_mark_key(ctx.usecase.name)
    try:
        previous = ctx.lake.read_json(key)
    except (LakeError, ValueError):
        previous = {}
    if str(previous.get("through", "")) > through:
        return
    ctx.lake.write_json(
        key,
        {
            "through": through,
            "raw_versions": dict(raw_versions),
            "tables": dict(own_versions),
            "config_hash": features_config_hash(ctx.usecase),
            "labels_config_hash": labels_config_hash(ctx.usecase),
            "code_version": ctx.code_version,
        },
    )


# --------------------------------------------------------------------------------------------------- step


def _up_to_date(snapshot: Snapshot, plan: DayPlan) -> bool:
    partition = snapshot.partitions.get(plan.day)
    facts = partition.facts if partition is not None else snapshot.empty.get(plan.day)
    return facts is not None and facts.get("inputs_fingerprint") == plan.fingerprint


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Build the features and labels partitions that are missing or stale for event days up to the last one
    predicted on ``ctx.day``."""
    usecase = ctx.usecase
    primary = usecase.features.primary_source
    check_transforms(usecase)
    start = args.start.isoformat() if getattr(args, "start", None) else None
    rebuild = bool(getattr(args, "rebuild", False))
    sources = input_sources(usecase)
    done: dict[str, Any] = {}  # what an attempt committed before a later commit of it conflicted
    own_tables = [features_table(usecase.name), online_table(usecase.name), labels_table(usecase.name)]
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        # the partitions and versions of the raw tables (the Delta log only), then the facts the plans need
        listing = {s: ctx.lake.snapshot(raw_table(usecase.name, s), facts=False) for s in sources}
        if not listing[primary].partitions:
            raise StepFailed(
                f"no committed raw partitions of the primary source {primary!r} in {listing[primary].uri}; run "
                "ingest first",
                {"built": [], "skipped": 0, "rows": 0, "partitions": []},
            )
        through = usecase.time.predicted_through(ctx.day).isoformat()  # the schedule predicted tonight
        primary_days = [
            d for d in listing[primary].partitions if d <= through and (start is None or d >= start)
        ]
        own_versions = {table: ctx.lake.version(table) for table in own_tables}
        raw_versions = {s: snap.version for s, snap in listing.items()}
        if rebuild or start is not None:
            scope = PlanScope(None, "--rebuild" if rebuild else "--start")
        else:
            scope = plan_scope(ctx, raw_versions, through, primary_days, own_versions)
        read_dates = scope.read_dates(usecase)
        raw = {
            s: ctx.lake.snapshot(
                raw_table(usecase.name, s),
                listing[s].version,
                dates=read_dates if usecase.sources[s].kind == "events" else None,
            )
            for s in sources
        }
        partitions = {s: snap.partitions for s, snap in raw.items()}
        plans = plan_days(usecase, partitions, start, through, scope.days)
        label_plans = plan_labels(usecase, partitions, start, through, scope.days)
        existing, online, labels = (
            ctx.lake.snapshot(table, own_versions[table], dates=scope.days) for table in own_tables
        )
        stale = [
            plan
            for plan in plans
            if rebuild or not _up_to_date(existing, plan) or not _up_to_date(online, plan)
        ]
        stale_labels = [plan for plan in label_plans if rebuild or not _up_to_date(labels, plan)]
        skipped = len(primary_days) - len(stale)
        tables_read = {snap.table: snap.version for snap in raw.values() if snap.version is not None}
        result: dict[str, Any] = {
            "built": [],
            "skipped": skipped,
            "rows": 0,
            "partitions": [],
            "labels_built": [],
            "label_rows": 0,
            "tables_read": tables_read,
            "tables_written": {},
        }
        if done:
            result |= {**done, "tables_written": dict(done["tables_written"])}
        if scope.days is not None:
            progress(f"features: planned {len(plans)} of {len(primary_days)} day(s): {scope.reason}")
        if not stale and not stale_labels:
            progress(f"features: {len(primary_days)} day(s) up to {through} and their labels are up to date")
            if start is None:
                write_plan_mark(ctx, through, raw_versions, own_versions)
            return result
        left = dict(own_versions)  # the step's tables' versions after this attempt's commits
        label_rows = None  # the labels, when the features' job built them from its labelled frame
        try:
            if stale:
                progress(
                    f"features: building {len(stale)} day(s) {stale[0].day}..{stale[-1].day}, {skipped} up to "
                    f"date (raw versions {tables_read})"
                )
                commit, snapshot_commit, label_rows = commit_days(
                    ctx, raw, existing, online, stale, stale_labels
                )
                progress(
                    f"features: committed {commit.table} version {commit.version}: {len(commit.dates)} day(s), "
                    f"{commit.rows} rows; online snapshot {snapshot_commit.table} version "
                    f"{snapshot_commit.version}: {snapshot_commit.rows} lookup rows"
                )
                result |= {"built": commit.dates, "rows": commit.rows, "partitions": commit.partition_uris()}
                result["tables_written"] |= {
                    commit.table: commit.version,
                    snapshot_commit.table: snapshot_commit.version,
                }
                left |= {commit.table: commit.version, snapshot_commit.table: snapshot_commit.version}
                done = {key: result[key] for key in ("built", "rows", "partitions")}
                done["tables_written"] = dict(result["tables_written"])
            if stale_labels:
                label_commit = commit_labels(ctx, raw, labels, stale_labels, label_rows)
                progress(
                    f"features: committed {label_commit.table} version {label_commit.version}: labels of "
                    f"{len(stale_labels)} day(s) {stale_labels[0].day}..{stale_labels[-1].day}, "
                    f"{label_commit.rows} rows"
                )
                result |= {
                    "labels_built": [plan.day for plan in stale_labels],
                    "label_rows": label_commit.rows,
                }
                result["tables_written"][label_commit.table] = label_commit.version
                left[label_commit.table] = label_commit.version
        except CommitConflict as conflict:
            if attempt == COMMIT_ATTEMPTS:
                raise StepFailed(str(conflict), {"built": [], "skipped": skipped, "rows": 0}) from None
            progress(f"features: {conflict}; planning again from the new snapshots")
            continue
        if start is None:
            write_plan_mark(ctx, through, raw_versions, left)
        return result
    raise AssertionError("unreachable")  # pragma: no cover
