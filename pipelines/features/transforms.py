"""Named feature transforms, applied in order to the primary-source frame by the features step.

A use case lists them under ``features.transforms`` as ``{name, params}``; a new use case needs YAML, not Python.
A transform is ``def name(df: DataFrame, ctx: TransformContext, **params) -> DataFrame`` with keyword-only params.

Time awareness (the use case's ``time`` section): every event row carries its **prediction time**
(``ctx.prediction_time_column``, UTC) and, once its outcome is known, the time the outcome became known
(``ctx.known_at_column``: the declared time or, when later, the recorded arrival of the rows it needs). A
transform that looks at other rows uses only what was known *strictly before* the row's prediction time:
past-outcome aggregates count outcomes known before it, as-of joins take the last observation at or before it
that had also **arrived** by then, a joined events source only rows that had arrived by then, and a reference
source the newest snapshot that had arrived by then. Arrival is the recorded time each raw row's file landed
(:data:`pipelines.lake.ARRIVED_AT`), so rebuilding a day later, after more files landed, gives the same rows.
The frame also holds ``features.lookback_days`` days of raw history before the first day being built; those
rows are dropped after the transforms ran.

PySpark is imported inside the functions: this module is imported by the CLI to validate configuration.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from pipelines.config import ConfigError, FeatureSpec, UseCase, parse_duration
from pipelines.features.online import lookup_name
from pipelines.lake import ARRIVED_AT

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Bump when a transform's output changes for the same input: the features step then rebuilds every partition.
TRANSFORMS_VERSION = "4"  # 2: prediction-time semantics (time section); 3: observed arrival; 4: labels apart,
# the first outcome to arrive counts

# Column joining the primary rows to the rows of another source: the partition date of an events source, or the
# date of the reference snapshot that serves the primary row's day.
ALIGN_COLUMN = "_align_date"
RIGHT_ARRIVED = (
    "_right_arrived"  # when a joined row had arrived (per-event prediction times compare it per row)
)


class TransformError(ConfigError):
    """A transform is unknown or misconfigured; the message names the transform, the param and the choices."""


@dataclass(frozen=True)
class TransformContext:
    """What a transform may use besides the frame: the use case and the rows of the other sources.

    ``source_frames[name]``: rows of source ``name`` with :data:`ALIGN_COLUMN` (an events source: its partition
    date; a reference source: the snapshot date). ``day_maps[name]`` (reference sources only): primary day ->
    date of the snapshot that serves it (None: none had arrived, so the joined columns are NULL).
    ``prediction_times``: primary day -> the prediction time (UTC) of its events, by which a joined events row
    must have arrived (per-event prediction times: the latest of the day; each row then checks its own).
    ``reference_arrivals[name]`` (reference sources, per-event prediction times only): snapshot date -> when it
    had arrived (None: not recorded); each row takes the newest snapshot dated on or before its day that had
    arrived by its own prediction time.
    """

    usecase: UseCase
    day_column: str
    label_column: str
    prediction_time_column: str = "prediction_time"
    known_at_column: str = "outcome_known_at"
    source_frames: Mapping[str, DataFrame] = field(default_factory=dict)
    day_maps: Mapping[str, Mapping[date, date | None]] = field(default_factory=dict)
    prediction_times: Mapping[date, datetime] = field(default_factory=dict)
    reference_arrivals: Mapping[str, Mapping[date, datetime | None]] = field(default_factory=dict)
    # the frame the transforms started from (set by apply_transforms_with_lookups): see rows_with
    base_frame: DataFrame | None = None

    @property
    def lookback_days(self) -> int:
        return self.usecase.features.lookback_days

    def rows_with(self, df: DataFrame, columns: list[str]) -> DataFrame:
        """``df``'s rows for reading ``columns`` only: the frame the transforms started from when it has them.
        Transforms keep every row and never change a column, so both give the same values; reading the start
        frame keeps each transform's plan from repeating the joins of the transforms before it (a past rate
        reads its frame three times: its queries, its outcomes and the join)."""
        base = self.base_frame
        if base is not None and set(columns) <= set(base.columns):
            return base
        return df

    def source_rows(self, name: str) -> DataFrame:
        """Rows of source ``name`` with :data:`ALIGN_COLUMN`."""
        if name not in self.source_frames:
            raise TransformError(f"source {name!r} was not loaded; loaded: {sorted(self.source_frames)}")
        return self.source_frames[name]

    def align(self, df: DataFrame, name: str) -> DataFrame:
        """``df`` plus :data:`ALIGN_COLUMN`: the partition date (events) or snapshot date (reference) to join on."""
        from pyspark.sql import functions as F

        if self.usecase.sources[name].kind == "reference" and name in self.reference_arrivals:
            # newest first: the first snapshot dated on or before the row's day that had arrived by its time
            picked = F.lit(None).cast("date")
            for snapshot, arrived in sorted(self.reference_arrivals[name].items()):
                usable = F.col(self.day_column) >= F.lit(snapshot)
                if arrived is not None:
                    usable = usable & (F.col(self.prediction_time_column) >= F.lit(arrived))
                picked = F.when(usable, F.lit(snapshot)).otherwise(picked)
            return df.withColumn(ALIGN_COLUMN, picked)
        if self.usecase.sources[name].kind == "reference":
            # a literal day -> snapshot map (a few hundred entries at most): no join, no extra Spark stage
            pairs = [
                F.lit(value) for day, snapshot in self.day_maps[name].items() for value in (day, snapshot)
            ]
            mapping = F.create_map(*pairs) if pairs else F.create_map().cast("map<date,date>")
            return df.withColumn(ALIGN_COLUMN, mapping[F.col(self.day_column)].cast("date"))
        return df.withColumn(ALIGN_COLUMN, F.col(self.day_column))


# --------------------------------------------------------------------------------------------------- checks


def _fail(transform: str, param: str, problem: str) -> TransformError:
    return TransformError(f"features.transforms: transform {transform!r}, param {param!r}: {problem}")


def _str_list(transform: str, param: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(transform, param, f"expected a non-empty list of column names, got {value!r}")
    return value


def _columns_exist(
    transform: str, param: str, names: list[str], df: DataFrame, where: str = "the frame"
) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise _fail(transform, param, f"column(s) {missing} not in {where}; available: {sorted(df.columns)}")


def _new_column(transform: str, param: str, name: Any, df: DataFrame) -> str:
    if not isinstance(name, str) or not name:
        raise _fail(transform, param, f"expected a column name, got {name!r}")
    if name in df.columns:
        raise _fail(transform, param, f"output column {name!r} already exists; choose another name")
    return name


def _check_days(days: Any, usecase: UseCase, transform: str = "past_rate") -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise _fail(transform, "days", f"expected a whole number of days >= 1, got {days!r}")
    needed = days + usecase.time.lookback_needed_days
    if needed > usecase.features.lookback_days:
        raise _fail(
            transform,
            "days",
            f"{days} days before the prediction time reach {needed} days before an event's date (with "
            f"time.prediction_time and time.outcome.label_delay), more than features.lookback_days "
            f"({usecase.features.lookback_days}); raise lookback_days to at least {needed}",
        )


def _max_age_seconds(value: Any) -> int:
    try:
        return parse_duration(value, "max_age")
    except ValueError as exc:
        raise _fail("asof_join", "max_age", str(exc)) from None


def _asof_days_back(usecase: UseCase, max_age: Any) -> int:
    """How many days before an event's date the oldest observation an as-of join may use can lie: local dates
    from (prediction time - max_age) to the prediction time, plus an hour for a daylight-saving change."""
    prediction = usecase.time.prediction_time
    age_minutes = _max_age_seconds(max_age) // 60 + 60
    if prediction.per_event:  # the earliest prediction: max_lead before the local day's start
        return -(-(prediction.max_lead_seconds // 60 + age_minutes) // 1440)
    return prediction.days_before - (prediction.minutes_after_midnight - age_minutes) // 1440


def _check_max_age(value: Any, usecase: UseCase) -> None:
    needed = _asof_days_back(usecase, value)
    if needed > usecase.features.lookback_days:
        raise _fail(
            "asof_join",
            "max_age",
            f"{value} before the prediction time reaches {needed} days before an event's date, more than "
            f"features.lookback_days ({usecase.features.lookback_days}); raise lookback_days to at least {needed}",
        )


# --------------------------------------------------------------------------------------------------- transforms


def calendar(
    df: DataFrame,
    ctx: TransformContext,
    *,
    timestamp: str,
    hour_column: str | None = None,
    timezone: str | None = None,
    hour_output: str = "event_hour",
) -> DataFrame:
    """Calendar features: ``hour_output`` (from ``hour_column`` if given, else the hour of ``timestamp``),
    ``day_of_week`` (1 = Monday ... 7 = Sunday) and ``month`` (kept when the frame already has one).
    ``timestamp`` is UTC; ``timezone`` (an IANA name, default ``time.timezone``) is the local time the calendar
    is read in."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from pyspark.sql import functions as F

    timezone = timezone or ctx.usecase.time.timezone

    _columns_exist("calendar", "timestamp", [timestamp], df)
    if hour_column is not None:
        _columns_exist("calendar", "hour_column", [hour_column], df)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(
            "calendar",
            "timezone",
            f"unknown time zone {timezone!r}; use an IANA name such as 'UTC' or 'America/New_York'",
        ) from None
    local = F.col(timestamp) if timezone == "UTC" else F.from_utc_timestamp(F.col(timestamp), timezone)
    hour = F.col(hour_column) if hour_column else F.hour(local)
    df = df.withColumn(_new_column("calendar", "hour_output", hour_output, df), hour.cast("double"))
    df = df.withColumn("day_of_week", ((F.dayofweek(local) + 5) % 7 + 1).cast("double"))
    if "month" not in df.columns:
        df = df.withColumn("month", F.month(local).cast("double"))
    return df


def _join_right(
    ctx: TransformContext, transform: str, source: str, keys: list[str], columns: Any, df: DataFrame
) -> tuple[DataFrame, list[str], list[str]]:
    """The rows of ``source`` to join, deduplicated on (align date, keys): the row with the smallest values
    wins, so a join never duplicates primary rows. Returns them with the key aliases and the output names."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = _str_list(transform, "keys", keys)
    if not isinstance(columns, dict) or not columns:
        raise _fail(transform, "columns", f"expected a mapping source_column: output_column, got {columns!r}")
    right = ctx.source_rows(source)
    _columns_exist(transform, "keys", keys, df)
    _columns_exist(transform, "keys", keys, right, where=f"source {source!r}")
    _columns_exist(transform, "columns", list(columns), right, where=f"source {source!r}")
    outputs = [_new_column(transform, "columns", out, df) for out in columns.values()]
    if len(set(outputs)) != len(outputs):
        raise _fail(transform, "columns", f"output names must be unique, got {outputs}")
    key_columns = [f"_key_{i}" for i in range(len(keys))]
    arrived = F.lit(None).cast("timestamp")
    if ctx.usecase.sources[source].kind == "events" and ARRIVED_AT in right.columns:
        # a row of the same day joins only if it had arrived by that day's prediction time
        pairs = [F.lit(v) for day, at in ctx.prediction_times.items() for v in (day, at)]
        cutoff = (F.create_map(*pairs) if pairs else F.create_map().cast("map<date,timestamp>"))[
            F.col(ALIGN_COLUMN)
        ]
        right = right.where(F.col(ARRIVED_AT).isNull() | (F.col(ARRIVED_AT) <= cutoff))
        arrived = F.col(ARRIVED_AT)
    right = right.select(
        F.col(ALIGN_COLUMN).alias("_right_align"),
        *[F.col(k).alias(alias) for k, alias in zip(keys, key_columns, strict=True)],
        arrived.alias(RIGHT_ARRIVED),
        *[F.col(src).alias(out) for src, out in columns.items()],
    ).dropna(subset=key_columns)
    if ctx.usecase.time.prediction_time.per_event:
        return right, key_columns, outputs  # each primary row checks arrivals by its own time, then picks
    first = Window.partitionBy("_right_align", *key_columns).orderBy(
        *[F.col(o).asc_nulls_last() for o in outputs]
    )
    right = right.withColumn("_rank", F.row_number().over(first)).where(F.col("_rank") == 1).drop("_rank")
    return right, key_columns, outputs


def join_source(
    df: DataFrame, ctx: TransformContext, *, source: str, keys: list[str], columns: dict[str, str]
) -> DataFrame:
    """Left join columns of another source on ``keys``: an events source from the same day's partition, a
    reference source from the newest snapshot dated on or before the row's day that had arrived by its prediction
    time (an events source: only rows that had arrived by then). ``columns`` maps source
    column -> output column. The source side is deduplicated on the keys first (deterministically: the row with
    the smallest values wins), so the join never duplicates primary rows."""
    from pyspark.sql import functions as F

    right, key_columns, outputs = _join_right(ctx, "join_source", source, keys, columns, df)
    condition = F.col(ALIGN_COLUMN) == F.col("_right_align")
    for key, alias in zip(keys, key_columns, strict=True):
        condition = condition & (F.col(key) == F.col(alias))
    if not ctx.usecase.time.prediction_time.per_event:
        joined = ctx.align(df, source).join(right, on=condition, how="left")
        return joined.select(*df.columns, *outputs)
    # per-event prediction times: a row joins what had arrived by its own time; of several matches the row
    # with the smallest values wins, as above
    from pyspark.sql import Window

    condition = condition & (
        F.col(RIGHT_ARRIVED).isNull() | (F.col(RIGHT_ARRIVED) <= F.col(ctx.prediction_time_column))
    )
    row_id = "_primary_row"
    left = ctx.align(df, source).withColumn(row_id, F.monotonically_increasing_id())
    first = Window.partitionBy(row_id).orderBy(*[F.col(o).asc_nulls_last() for o in outputs])
    joined = left.join(right, on=condition, how="left").withColumn("_rank", F.row_number().over(first))
    return joined.where(F.col("_rank") == 1).select(*df.columns, *outputs)


def _outcome_stream(df: DataFrame, ctx: TransformContext, keys: list[str], value: str = "long") -> DataFrame:
    """The known outcomes among the frame's rows: keys, the second each became known (``_t``) and the label as
    ``_pos`` (``value``: long for a 0/1 label counted as positives, double for a value averaged)."""
    from pyspark.sql import functions as F

    return df.where(F.col(ctx.label_column).isNotNull() & F.col(ctx.known_at_column).isNotNull()).select(
        *keys,
        F.unix_timestamp(F.col(ctx.known_at_column)).alias("_t"),
        F.col(ctx.label_column).cast(value).alias("_pos"),
    )


def _past_counts(outcomes: DataFrame, queries: DataFrame, keys: list[str], days: int) -> DataFrame:
    """For every query row (keys, ``_t`` in unix seconds, other columns kept): ``_h_n`` outcomes and ``_h_pos``
    positives with the same keys that became known in [_t - days x 24 h, _t - 1 s] (0 or NULL without any: callers
    treat both as none). One window per key over both streams: the batch transform and the online snapshot count
    with this same function.

    Integer labels are counted with running totals: each query asks two probes, at ``_t`` and at ``_t - days``,
    for the outcomes known strictly before them (a running sum ordered by time, probes before outcomes of the same
    second), and the window's count is their difference: linear in the rows. Spark's sliding range frame re-adds
    its whole frame whenever it moves (every row), which grows with rows x rows per window: a year of 1M flights
    spent minutes there. Real-valued labels (``past_mean`` of a regression) keep the sliding frame, whose sums
    are not subject to the cancellation of a difference of running totals."""

    if dict(outcomes.dtypes)["_pos"] in ("bigint", "int"):
        return _past_counts_running(outcomes, queries, keys, days)
    return _past_counts_sliding(outcomes, queries, keys, days)


def _past_counts_running(outcomes: DataFrame, queries: DataFrame, keys: list[str], days: int) -> DataFrame:
    """:func:`_past_counts` with running totals (exact for integer labels)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    carried = [c for c in queries.columns if c not in (*keys, "_t")]
    pos_type = dict(outcomes.dtypes)["_pos"]
    # outcomes of one key known in the same second count together (a day's outcome file makes many): the
    # window then sorts one row per key and second, not one per outcome
    stream = outcomes.groupBy(*keys, "_t").agg(
        F.count(F.lit(1)).alias("_n"), F.sum(F.col("_pos").cast("long")).alias("_pos")
    )
    stream = stream.select(*keys, F.col("_t").alias("_x"), F.lit(1).alias("_order"), "_n", "_pos")
    # one id per query before it splits into its two probes (the end of its window: +, the start: -)
    bounds = F.array(
        F.struct(F.col("_t").alias("_x"), F.lit(1).alias("_sign")),
        F.struct((F.col("_t") - F.lit(days * 86400)).alias("_x"), F.lit(-1).alias("_sign")),
    )
    probes = queries.withColumn("_qid", F.monotonically_increasing_id()).select(
        *keys, "_t", *carried, "_qid", F.explode(bounds).alias("_bound")
    )
    probes = probes.select(
        *keys,
        "_t",
        *carried,
        "_qid",
        F.col("_bound._x").alias("_x"),
        F.col("_bound._sign").alias("_sign"),
        F.lit(0).alias("_order"),
        F.lit(0).cast("long").alias("_n"),
        F.lit(0).cast("long").alias("_pos"),
    )
    before = Window.partitionBy(*keys).orderBy("_x", "_order").rowsBetween(Window.unboundedPreceding, 0)
    totals = (
        stream.unionByName(probes, allowMissingColumns=True)
        .select(
            *keys,
            "_t",
            *carried,
            "_qid",
            "_sign",
            "_order",
            F.sum("_n").over(before).alias("_cum_n"),
            F.sum("_pos").over(before).alias("_cum_pos"),
        )
        .where(F.col("_order") == 0)
    )
    return (
        totals.groupBy("_qid", *keys, "_t", *carried)
        .agg(
            F.sum(F.col("_sign") * F.col("_cum_n")).alias("_h_n"),
            F.sum(F.col("_sign") * F.col("_cum_pos")).cast(pos_type).alias("_h_pos"),
        )
        .drop("_qid")
    )


def _past_counts_sliding(outcomes: DataFrame, queries: DataFrame, keys: list[str], days: int) -> DataFrame:
    """:func:`_past_counts` with a sliding range frame."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    carried = [c for c in queries.columns if c not in (*keys, "_t")]
    stream = outcomes.select(*keys, "_t", F.lit(1).alias("_n"), "_pos", F.lit(False).alias("_query"))
    asked = queries.select(
        *keys,
        "_t",
        F.lit(0).alias("_n"),
        F.lit(0).cast(dict(outcomes.dtypes)["_pos"]).alias("_pos"),
        F.lit(True).alias("_query"),
        *carried,
    )
    window = Window.partitionBy(*keys).orderBy("_t").rangeBetween(-days * 86400, -1)
    return (
        stream.unionByName(asked, allowMissingColumns=True)
        .select(
            *keys,
            "_t",
            "_query",
            *carried,
            F.sum("_n").over(window).alias("_h_n"),
            F.sum("_pos").over(window).alias("_h_pos"),
        )
        .where(F.col("_query"))
        .drop("_query")
    )


def past_rate(df: DataFrame, ctx: TransformContext, *, keys: list[str], days: int, output: str) -> DataFrame:
    """Share of positive labels among the outcomes with the same ``keys`` that became known in the ``days`` x 24
    hours strictly before the row's prediction time (an outcome known at or after it is not counted: no
    look-ahead). NULL without such outcomes."""

    return _past_outcomes(df, ctx, "past_rate", keys, days, output, None, "long")


def past_mean(
    df: DataFrame,
    ctx: TransformContext,
    *,
    keys: list[str],
    days: int,
    output: str,
    count_output: str | None = None,
) -> DataFrame:
    """Mean label (a regression's value; a classification's share of positives) of the outcomes with the same
    ``keys`` that became known in the ``days`` x 24 hours strictly before the row's prediction time, NULL without
    such outcomes; and, given ``count_output``, how many there were (0 without)."""
    return _past_outcomes(df, ctx, "past_mean", keys, days, output, count_output, "double")


def _past_outcomes(
    df: DataFrame,
    ctx: TransformContext,
    transform: str,
    keys: list[str],
    days: int,
    output: str,
    count_output: str | None,
    value: str,
) -> DataFrame:
    """``past_rate`` and ``past_mean``: the mean of the known outcomes in the window (and their count)."""
    from pyspark.sql import functions as F

    keys = _str_list(transform, "keys", keys)
    _check_days(days, ctx.usecase, transform)
    _columns_exist(transform, "keys", keys, df)
    output = _new_column(transform, "output", output, df)
    counted = [] if count_output is None else [_new_column(transform, "count_output", count_output, df)]
    prediction = ctx.prediction_time_column
    rows = ctx.rows_with(df, [*keys, prediction, ctx.label_column, ctx.known_at_column])
    queries = (
        rows.select(*keys, F.col(prediction))
        .distinct()
        .select(*keys, F.unix_timestamp(F.col(prediction)).alias("_t"))
    )
    history = _past_counts(_outcome_stream(rows, ctx, keys, value), queries, keys, days).select(
        *keys,
        F.timestamp_seconds(F.col("_t")).alias(prediction),
        F.when(F.col("_h_n") > 0, F.col("_h_pos") / F.col("_h_n")).cast("double").alias(output),
        *[F.coalesce(F.col("_h_n"), F.lit(0)).cast("double").alias(name) for name in counted],
    )
    # one row per (keys, prediction time): far smaller than the frame, so broadcast it instead of shuffling df
    joined = df.join(F.broadcast(history), on=[*keys, prediction], how="left")
    return joined.fillna(0.0, subset=counted) if counted else joined


def _asof_observations(
    df: DataFrame, ctx: TransformContext, source: str, keys: list[str], columns: Any, time: str | None
) -> tuple[DataFrame, list[str], list[str]]:
    """Observations of ``source``: key aliases, ``_obs_t`` (unix seconds), ``_arr_t`` (when the row arrived, unix
    seconds; NULL when not recorded) and the output columns."""
    from pyspark.sql import functions as F

    keys = _str_list("asof_join", "keys", keys)
    if not isinstance(columns, dict) or not columns:
        raise _fail(
            "asof_join", "columns", f"expected a mapping source_column: output_column, got {columns!r}"
        )
    time = time or ctx.usecase.sources[source].event_time
    if not time:
        raise _fail(
            "asof_join", "time", f"name the timestamp column of source {source!r} (or set its event_time)"
        )
    right = ctx.source_rows(source)
    _columns_exist("asof_join", "keys", keys, df)
    _columns_exist("asof_join", "keys", keys, right, where=f"source {source!r}")
    _columns_exist("asof_join", "time", [time], right, where=f"source {source!r}")
    _columns_exist("asof_join", "columns", list(columns), right, where=f"source {source!r}")
    outputs = [_new_column("asof_join", "columns", out, df) for out in columns.values()]
    if len(set(outputs)) != len(outputs):
        raise _fail("asof_join", "columns", f"output names must be unique, got {outputs}")
    key_columns = [f"_key_{i}" for i in range(len(keys))]
    arrived = F.col(ARRIVED_AT) if ARRIVED_AT in right.columns else F.lit(None).cast("timestamp")
    observations = right.select(
        *[F.col(k).alias(alias) for k, alias in zip(keys, key_columns, strict=True)],
        F.unix_timestamp(F.col(time)).alias("_obs_t"),
        F.unix_timestamp(arrived).alias("_arr_t"),
        *[F.col(src).alias(out) for src, out in columns.items()],
    ).dropna(subset=[*key_columns, "_obs_t"])
    return observations, key_columns, outputs


def _asof_latest(
    observations: DataFrame,
    queries: DataFrame,
    keys: list[str],
    key_columns: list[str],
    outputs: list[str],
    max_age_seconds: int,
) -> DataFrame:
    """For every query row (keys, ``_query_t``, other columns kept): the last observation with the same keys in
    [_query_t - max_age, _query_t] that had arrived by ``_query_t``, ties broken by the smallest values; queries
    without one are dropped. The batch transform and the online snapshot pick with this same function."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    carried = [c for c in queries.columns if c not in (*keys, "_query_t")]
    condition = (
        (F.col("_obs_t") <= F.col("_query_t"))
        & (F.col("_obs_t") >= F.col("_query_t") - max_age_seconds)
        & (F.col("_arr_t").isNull() | (F.col("_arr_t") <= F.col("_query_t")))
    )
    for key, alias in zip(keys, key_columns, strict=True):
        condition = condition & (F.col(key) == F.col(alias))
    latest = Window.partitionBy(*keys, "_query_t").orderBy(
        F.col("_obs_t").desc(), *[F.col(o).asc_nulls_last() for o in outputs]
    )
    return (
        queries.join(observations, on=condition, how="inner")
        .withColumn("_rank", F.row_number().over(latest))
        .where(F.col("_rank") == 1)
        .select(*keys, "_query_t", *carried, "_obs_t", *outputs)
    )


def asof_join(
    df: DataFrame,
    ctx: TransformContext,
    *,
    source: str,
    keys: list[str],
    columns: dict[str, str],
    time: str | None = None,
    max_age: str = "24h",
) -> DataFrame:
    """Columns of the last observation of a time-series source with the same ``keys`` taken at or before the
    row's prediction time and at most ``max_age`` (e.g. 3h) before it; NULL when there is none. ``time`` is the
    source's timestamp column (default: its ``event_time``); ``columns`` maps source column -> output column.
    Ties at the same time are broken deterministically (smallest values first)."""
    from pyspark.sql import functions as F

    max_age_seconds = _max_age_seconds(max_age)
    observations, key_columns, outputs = _asof_observations(df, ctx, source, keys, columns, time)
    prediction = ctx.prediction_time_column
    queries = (
        ctx.rows_with(df, [*keys, prediction])
        .select(*keys, prediction)
        .distinct()
        .withColumn("_query_t", F.unix_timestamp(F.col(prediction)))
    )
    picked = _asof_latest(observations, queries, keys, key_columns, outputs, max_age_seconds).select(
        *keys, prediction, *outputs
    )
    return df.join(F.broadcast(picked), on=[*keys, prediction], how="left")


# --------------------------------------------------------------------------------------------------- online snapshot
#
# A transform that reads other rows (another source, past outcomes) also publishes, per prediction time, the
# lookup a live request needs: one row per key with the values the transform would join (see pipelines.features.online,
# which applies them to request records). ``times`` holds one row per day served: ctx.day_column and the
# day's prediction time. Each builder returns (day, key, value, observed_at): key and value as JSON objects.


def _lookup_rows(keys: list[str], values: list[Column], observed_at: Column | None = None) -> list[Column]:
    from pyspark.sql import functions as F

    return [
        F.to_json(F.struct(*[F.col(k) for k in keys])).alias("key"),
        F.to_json(F.struct(*values)).alias("value"),
        (observed_at if observed_at is not None else F.lit(None).cast("timestamp")).alias("observed_at"),
    ]


def join_source_lookup(
    df: DataFrame,
    ctx: TransformContext,
    times: DataFrame,
    *,
    source: str,
    keys: list[str],
    columns: dict[str, str],
) -> DataFrame:
    """The deduplicated rows of ``source`` that serve each day (its partition or reference snapshot)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    right, key_columns, outputs = _join_right(ctx, "join_source", source, keys, columns, df)
    aligned = ctx.align(times.select(ctx.day_column, ctx.prediction_time_column), source)
    joined = aligned.join(right, on=F.col(ALIGN_COLUMN) == F.col("_right_align"), how="inner")
    if ctx.usecase.time.prediction_time.per_event:  # as the batch join: arrived by the time, smallest values
        arrived = F.col(RIGHT_ARRIVED)
        joined = joined.where(arrived.isNull() | (arrived <= F.col(ctx.prediction_time_column)))
        first = Window.partitionBy(ctx.day_column, *key_columns).orderBy(
            *[F.col(o).asc_nulls_last() for o in outputs]
        )
        joined = joined.withColumn("_rank", F.row_number().over(first)).where(F.col("_rank") == 1)
    renamed = joined.select(
        ctx.day_column,
        *[F.col(alias).alias(key) for key, alias in zip(keys, key_columns, strict=True)],
        *outputs,
    )
    return renamed.select(ctx.day_column, *_lookup_rows(keys, [F.col(o) for o in outputs]))


def asof_join_lookup(
    df: DataFrame,
    ctx: TransformContext,
    times: DataFrame,
    *,
    source: str,
    keys: list[str],
    columns: dict[str, str],
    time: str | None = None,
    max_age: str = "24h",
) -> DataFrame:
    """Per key of ``source``, the last observation within ``max_age`` of each day's prediction time, with the
    time it was observed (a request later than the prediction time checks the age again)."""
    from pyspark.sql import functions as F

    max_age_seconds = _max_age_seconds(max_age)
    observations, key_columns, outputs = _asof_observations(df, ctx, source, keys, columns, time)
    key_values = observations.select(
        *[F.col(alias).alias(key) for key, alias in zip(keys, key_columns, strict=True)]
    ).distinct()
    queries = key_values.crossJoin(
        times.select(ctx.day_column, F.unix_timestamp(F.col(ctx.prediction_time_column)).alias("_query_t"))
    )
    picked = _asof_latest(observations, queries, keys, key_columns, outputs, max_age_seconds)
    return picked.select(
        ctx.day_column,
        *_lookup_rows(keys, [F.col(o) for o in outputs], F.timestamp_seconds(F.col("_obs_t"))),
    )


def past_rate_lookup(
    df: DataFrame, ctx: TransformContext, times: DataFrame, *, keys: list[str], days: int, output: str
) -> DataFrame:
    """Per key with outcomes, how many became known in the ``days`` before each day's prediction time and how
    many of them were positive (the rate is positives / n)."""
    return _past_lookup(df, ctx, times, "past_rate", keys, days, "long", "positives")


def past_mean_lookup(
    df: DataFrame,
    ctx: TransformContext,
    times: DataFrame,
    *,
    keys: list[str],
    days: int,
    output: str,
    count_output: str | None = None,
) -> DataFrame:
    """Per key with outcomes, how many became known in the ``days`` before each day's prediction time and the
    sum of their labels (the mean is sum / n)."""
    return _past_lookup(df, ctx, times, "past_mean", keys, days, "double", "sum")


def _past_lookup(
    df: DataFrame,
    ctx: TransformContext,
    times: DataFrame,
    transform: str,
    keys: list[str],
    days: int,
    value: str,
    total: str,
) -> DataFrame:
    """Per key with outcomes and day served: ``n`` outcomes known in the window before the day's prediction time
    and ``total``, the sum of their labels as ``value`` (long or double)."""
    from pyspark.sql import functions as F

    keys = _str_list(transform, "keys", keys)
    outcomes = _outcome_stream(df, ctx, keys, value)
    queries = (
        outcomes.select(*keys)
        .distinct()
        .crossJoin(
            times.select(ctx.day_column, F.unix_timestamp(F.col(ctx.prediction_time_column)).alias("_t"))
        )
    )
    counts = _past_counts(outcomes, queries, keys, days).where(F.col("_h_n") > 0)
    values = [F.col("_h_n").cast("long").alias("n"), F.col("_h_pos").cast(value).alias(total)]
    return counts.select(ctx.day_column, *_lookup_rows(keys, values))


# A transform without a lookup here uses only the request record's own columns (calendar).
LOOKUPS: dict[str, Callable[..., DataFrame]] = {
    "join_source": join_source_lookup,
    "asof_join": asof_join_lookup,
    "past_rate": past_rate_lookup,
    "past_mean": past_mean_lookup,
}


TRANSFORMS: dict[str, Callable[..., DataFrame]] = {
    "calendar": calendar,
    "join_source": join_source,
    "past_rate": past_rate,
    "past_mean": past_mean,
    "asof_join": asof_join,
}


# --------------------------------------------------------------------------------------------------- config


def check_transforms(usecase: UseCase) -> None:
    """Check names and params of ``features.transforms`` without Spark; raise :class:`TransformError`."""
    for index, spec in enumerate(usecase.features.transforms):
        if spec.name not in TRANSFORMS:
            raise TransformError(
                f"features.transforms[{index}]: unknown transform {spec.name!r}; valid choices: {sorted(TRANSFORMS)}"
            )
        signature = inspect.signature(TRANSFORMS[spec.name])
        accepted = {n: p for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        for param in spec.params:
            if param not in accepted:
                raise _fail(spec.name, param, f"unknown param; valid params: {sorted(accepted)}")
        for name, param in accepted.items():
            if param.default is inspect.Parameter.empty and name not in spec.params:
                raise _fail(spec.name, name, f"required param is missing; params: {sorted(accepted)}")
        if "keys" in spec.params:
            _str_list(spec.name, "keys", spec.params["keys"])
        if spec.name in ("past_rate", "past_mean"):
            _check_days(spec.params["days"], usecase, spec.name)
        if spec.name == "asof_join" and "max_age" in spec.params:
            _check_max_age(spec.params["max_age"], usecase)
        if spec.name in ("join_source", "asof_join"):
            source = spec.params["source"]
            others = sorted(set(usecase.sources) - {usecase.features.primary_source, usecase.outcome_source})
            if source == usecase.outcome_source:
                raise _fail(
                    spec.name,
                    "source",
                    f"{source!r} carries the outcome (time.outcome.source), which is not known at prediction time; "
                    "use past_rate for outcomes known before it",
                )
            if source not in others:
                raise _fail(
                    spec.name, "source", f"{source!r} is not a source to join; valid choices: {others}"
                )
            if spec.name == "asof_join" and usecase.sources[source].kind != "events":
                raise _fail(
                    spec.name, "source", f"{source!r} is a reference source; join it with join_source"
                )


def joined_sources(features: FeatureSpec) -> list[str]:
    """Sources other than the primary one that the transforms read, in order of first use."""
    found: list[str] = []
    for spec in features.transforms:
        source = spec.params.get("source") if spec.name in ("join_source", "asof_join") else None
        if isinstance(source, str) and source not in found:
            found.append(source)
    return found


def source_dates(usecase: UseCase, source: str, day: date) -> list[date]:
    """Partition dates of events source ``source`` that the features of ``day``'s events read: the same day for
    ``join_source``; for ``asof_join`` the days from the oldest observation ``max_age`` allows up to the
    prediction day."""
    from datetime import timedelta

    prediction = usecase.time.prediction_time
    found: set[date] = set()
    for spec in usecase.features.transforms:
        if spec.params.get("source") != source:
            continue
        if spec.name == "join_source":
            found.add(day)
        elif spec.name == "asof_join":
            days_back = _asof_days_back(usecase, spec.params.get("max_age", "24h"))
            nearest = 0 if prediction.per_event else prediction.days_before
            found.update(day - timedelta(days=k) for k in range(nearest, days_back + 1))
    return sorted(found)


def apply_transforms_with_lookups(
    df: DataFrame, ctx: TransformContext, times: DataFrame | None
) -> tuple[DataFrame, DataFrame | None]:
    """Apply the use case's transforms in order and, given ``times`` (day column, prediction time: the days
    served), the online snapshot rows of those days: day, ``lookup``, ``key``, ``value``, ``observed_at``. Each
    lookup is built from the frame as its transform sees it; transforms keep every row and never change a column,
    so a lookup whose keys are columns of the input frame reads that frame instead (the same rows, without the
    joins of the transforms before it)."""
    from dataclasses import replace

    from pyspark.sql import functions as F

    check_transforms(ctx.usecase)
    lookups = []
    base = df
    ctx = replace(ctx, base_frame=base)
    for index, spec in enumerate(ctx.usecase.features.transforms):
        if times is not None and spec.name in LOOKUPS:
            rows_of = base if set(spec.params.get("keys", [])) <= set(base.columns) else df
            rows = LOOKUPS[spec.name](rows_of, ctx, times, **spec.params)
            name = F.lit(lookup_name(index, spec.name)).alias("lookup")
            lookups.append(rows.select(ctx.day_column, name, "key", "value", "observed_at"))
        df = TRANSFORMS[spec.name](df, ctx, **spec.params)
    if times is None or not lookups:
        return df, None
    union = lookups[0]
    for rows in lookups[1:]:
        union = union.unionByName(rows)
    return df, union
