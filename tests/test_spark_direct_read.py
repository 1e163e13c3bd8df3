"""Spark's executors read a raw Delta snapshot's Parquet files themselves (file list and partition values from the
log) or receive the rows as Arrow through the driver, chosen by size: the features, online snapshot and labels
are the same either way, and the labels taken from the features' labelled frame are those of their own build."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from _features_fixtures import nycflights, rows_of_day, write_raw, write_raw_arrived

from pipelines.config import load_profile, load_usecase
from pipelines.context import StepContext
from pipelines.features.spark import get_spark
from pipelines.lake import (
    Lake,
    StagedFiles,
    content_hash,
    features_table,
    labels_table,
    online_table,
    raw_table,
)
from pipelines.steps import features

pytestmark = pytest.mark.spark

DAYS = [date(2013, 1, d) for d in range(1, 9)]


@pytest.fixture
def lake(mlops_env: Path) -> Lake:
    get_spark(load_profile())
    return Lake(str(mlops_env / "lake"))


def _land(lake: Lake) -> None:
    """Eight January days; the first three without recorded arrivals (older files lack the arrival column the
    table gained later), the rest arrived the morning after; one planes snapshot."""
    usecase = load_usecase("flight_delay")
    flights, weather = nycflights("flights"), nycflights("weather")
    for index, day in enumerate(DAYS):
        for source, frame in (("flights", flights), ("outcomes", flights), ("weather", weather)):
            rows = rows_of_day(frame, day)
            if index < 3:
                write_raw(lake, usecase, source, day, rows)
            else:
                arrived = datetime(day.year, day.month, day.day, 11, tzinfo=UTC) + timedelta(days=1)
                write_raw_arrived(lake, usecase, source, day, rows, arrived)
    write_raw(lake, usecase, "planes", DAYS[0], nycflights("planes", None))


def _build(lake: Lake, threshold: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[pa.Table], int]:
    """Features, online snapshot and labels of DAYS[1:] with ``spark_direct_read_bytes`` and
    ``spark_direct_write_bytes`` at ``threshold``, and how many
    source frames Spark read from Parquet directly."""
    usecase = load_usecase("flight_delay")
    profile = load_profile().model_copy(
        update={"spark_direct_read_bytes": threshold, "spark_direct_write_bytes": threshold}
    )
    ctx = StepContext(usecase=usecase, day=DAYS[-1], profile=profile, lake=lake)
    direct = []
    original = features._read_parquet

    def counted(*args, **kwargs):
        direct.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(features, "_read_parquet", counted)
    sources = ["flights", "outcomes", "weather", "planes"]
    raw = {s: lake.snapshot(raw_table(usecase.name, s)) for s in sources}
    partitions = {s: snap.partitions for s, snap in raw.items()}
    end = DAYS[-1].isoformat()
    plans = features.plan_days(usecase, partitions, DAYS[1].isoformat(), end)
    label_plans = features.plan_labels(usecase, partitions, DAYS[1].isoformat(), end)
    built = features.build_days(ctx, raw, plans, label_plans)
    # outputs are chosen by size as inputs are: threshold 0, the executors write them
    assert isinstance(built.rows, StagedFiles) == (threshold == 0)
    assert isinstance(built.snapshot_rows, StagedFiles) == (threshold == 0)
    labels = features.build_labels(ctx, raw, label_plans)
    # the labels taken from the features' labelled frame (one label join) are those of their own build
    assert built.labels is not None, "the same days and outcome partitions: the labels share the frame"
    keys = ["date", "year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
    shared = _committed(lake, labels_table(usecase.name), built.labels, keys, labels)
    assert shared.equals(labels), "the labels from the features' frame differ from their own build"
    rows = _committed(lake, features_table(usecase.name), built.rows, keys)
    snapshot = _committed(lake, online_table(usecase.name), built.snapshot_rows, features.SNAPSHOT_COLUMNS)
    return [rows, snapshot, labels], len(direct)


def _committed(
    lake: Lake, table: str, rows: pa.Table | StagedFiles, keys: list[str], like: pa.Table | None = None
) -> pa.Table:
    """``rows`` as Arrow; files the executors wrote (threshold 0) are committed and read back through the log,
    sorted as the Arrow path sorts them (by ``keys``, then every column)."""
    if not isinstance(rows, StagedFiles):
        return rows
    commit = lake.write_partitions(table, rows, read_version=lake.version(table))
    assert commit.rows > 0 and all(len(paths) == 1 for paths in rows.files.values()), "one file per date"
    read = lake.read(table, commit.dates).select(list(rows.columns))
    order = [*keys, *[c for c in read.column_names if c not in keys]]
    read = read.sort_by([(name, "ascending") for name in order])
    return read if like is None else read.cast(like.schema)


def test_direct_parquet_reads_and_arrow_hand_off_build_the_same_rows(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    _land(lake)

    through_arrow, direct_arrow = _build(lake, 2**62, monkeypatch)
    read_directly, direct_reads = _build(lake, 0, monkeypatch)

    assert direct_arrow == 0, "above every input's size: all of them go through Arrow"
    # features: flights, outcomes, weather, planes; labels: flights, outcomes
    assert direct_reads == 6, "threshold 0: every source is read from its Parquet files"
    names = ["features", "online snapshot", "labels"]
    for name, arrow_rows, direct_rows in zip(names, through_arrow, read_directly, strict=True):
        assert arrow_rows.num_rows > 0, name
        assert arrow_rows.schema.equals(direct_rows.schema), name
        assert arrow_rows.equals(direct_rows), f"{name}: the two reads give other rows"
    assert read_directly[0].num_rows == sum(len(rows_of_day(nycflights("flights"), d)) for d in DAYS[1:])


def test_direct_read_plan_lists_the_logged_files_of_the_dates_with_their_partition(lake: Lake) -> None:
    _land(lake)
    usecase = load_usecase("flight_delay")
    snapshot = lake.snapshot(raw_table(usecase.name, "weather"))
    expected = {"temp": pa.float64(), "time_hour": pa.timestamp("us", tz="UTC")}
    wanted = [d.isoformat() for d in DAYS[2:4]]

    plan = features.direct_read_plan(lake, snapshot, wanted, expected)

    assert plan is not None
    assert sorted(set(plan.dates)) == wanted
    assert sorted(Path(p).name for p in plan.paths) == sorted(
        Path(f).name for d in wanted for f in snapshot.partitions[d].files
    )
    assert all(Path(p).is_file() for p in plan.paths)
    assert plan.size_bytes == sum(Path(p).stat().st_size for p in plan.paths)
    # a column stored with another type than configured: the Arrow reader casts it (or names it), not Spark
    assert features.direct_read_plan(lake, snapshot, wanted, {"temp": pa.string()}) is None


def test_an_s3_lake_keeps_the_arrow_hand_off(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    _land(lake)
    snapshot = lake.snapshot(raw_table("flight_delay", "weather"))
    monkeypatch.setattr(lake, "is_s3", True)
    assert features.direct_read_plan(lake, snapshot, [DAYS[0].isoformat()], {}) is None


def test_the_step_commits_executor_written_outputs_with_their_facts(lake: Lake) -> None:
    """With ``spark_direct_write_bytes=0`` the step's features, online snapshot and labels are written by the
    executors and committed as staged files: every day once, its facts (rows, content hash of what reads back,
    fingerprint), and a second run finds them up to date."""
    import argparse

    _land(lake)
    usecase = load_usecase("flight_delay")
    profile = load_profile().model_copy(update={"spark_direct_write_bytes": 0})
    ctx = StepContext(usecase=usecase, day=DAYS[-1], profile=profile, lake=lake)
    args = argparse.Namespace(start=DAYS[1], rebuild=False)

    result = features.run(ctx, args)

    days = [d.isoformat() for d in DAYS[1:]]
    assert result["built"] == days and result["labels_built"] == days
    flights = sum(len(rows_of_day(nycflights("flights"), d)) for d in DAYS[1:])
    assert result["rows"] == flights == lake.read(features_table(usecase.name)).num_rows
    for table in (features_table(usecase.name), online_table(usecase.name), labels_table(usecase.name)):
        snapshot = lake.snapshot(table)
        assert sorted(snapshot.partitions) == days, table
        for day, partition in snapshot.partitions.items():
            assert len(partition.files) == 1 and partition.files[0].startswith(f"date={day}/"), table
            assert partition.facts["inputs_fingerprint"] and partition.data_hash, table
            assert partition.data_hash == content_hash(lake.read(table, [day])), table
    again = features.run(ctx, args)
    assert again["built"] == [] and again["labels_built"] == []
