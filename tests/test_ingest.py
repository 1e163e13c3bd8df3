"""The ingest step on real files, real Great Expectations, a real local lake and a real S3 (moto) server."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main, run_step
from pipelines.config import load_usecase
from pipelines.context import StepFailed
from pipelines.ingest.expectations import ROW, validate_batch
from pipelines.ingest.inbox import land_file, pending_files
from pipelines.lake import Lake, open_lake, raw_table
from tests._ingest_fixtures import (
    DAY1,
    DAY2,
    USECASE,
    csv_bytes,
    flights_rows,
    parquet_bytes,
    planes_rows,
    planes_table,
    weather_rows,
    write_parquet_config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def ingest(day: date) -> dict:
    return run_step(["ingest", "--usecase", USECASE, "--date", day.isoformat()])


def ingest_failing(day: date) -> StepFailed:
    with pytest.raises(StepFailed) as caught:
        ingest(day)
    return caught.value


def raw_arrow(lake: Lake, source: str, day: date):
    """The committed rows of one raw partition, read through the Delta log (without the date column)."""
    assert day.isoformat() in lake.partitions(raw_table(USECASE, source)), f"no raw partition {source} {day}"
    return lake.read(raw_table(USECASE, source), [day.isoformat()]).drop_columns(["date"])


def raw(lake: Lake, source: str, day: date) -> pd.DataFrame:
    return raw_arrow(lake, source, day).to_pandas()


def facts(lake: Lake, source: str, day: date) -> dict:
    """The partition's facts as ingest recorded them (with its row count, files and table version)."""
    partition = lake.partitions(raw_table(USECASE, source))[day.isoformat()]
    assert partition.facts, f"no facts recorded for raw {source} {day}"
    return {**partition.facts, "files": partition.files}


def assert_counts_add_up(result: dict) -> None:
    assert result["rows_landed"] == result["rows_committed"] + result["rows_quarantined"]
    assert result["files_landed"] == result["files_committed"] + result["files_quarantined"]


# --------------------------------------------------------------------------------------------------- inbox


def test_land_file_and_pending_files(mlops_env: Path) -> None:
    lake = open_lake()
    uri = land_file(lake, USECASE, DAY2, "flights_b.csv", b"x\n1\n")
    assert uri == lake.storage.uri(f"landing/{USECASE}/2013-01-02/flights_b.csv")
    assert Path(uri).read_bytes() == b"x\n1\n"
    land_file(lake, USECASE, DAY1, "weather_a.csv", b"x\n1\n")
    land_file(lake, USECASE, date(2013, 1, 3), "flights_c.csv", b"x\n1\n")
    lake.storage.write_bytes(f"landing/{USECASE}/not-a-date/flights_x.csv", b"x\n")  # ignored
    lake.storage.write_bytes(f"landing/{USECASE}2/2013-01-01/flights_x.csv", b"x\n")  # other use case

    assert pending_files(lake, USECASE, DAY2) == [
        f"landing/{USECASE}/2013-01-01/weather_a.csv",
        f"landing/{USECASE}/2013-01-02/flights_b.csv",
    ]
    assert len(pending_files(lake, USECASE)) == 3
    assert pending_files(lake, USECASE, date(2012, 12, 31)) == []
    with pytest.raises(ValueError, match="plain name"):
        land_file(lake, USECASE, DAY1, "sub/flights.csv", b"")


def test_nothing_to_ingest_returns_zeros(mlops_env: Path) -> None:
    result = ingest(DAY1)
    assert result["files_landed"] == 0 and result["rows_landed"] == 0 and result["raw_partitions"] == []


# --------------------------------------------------------------------------------------------------- happy path


def test_two_days_are_committed_typed_archived_and_counted(mlops_env: Path) -> None:
    lake = open_lake()
    delivered = {
        (DAY1, "flights_2013-01-01.csv"): csv_bytes(flights_rows(DAY1, 20)),
        (DAY1, "weather_2013-01-01.csv"): csv_bytes(weather_rows(DAY1)),
        (DAY1, "planes_2013-01-01.csv"): csv_bytes(planes_rows()),
        (DAY1, "outcomes_2013-01-01.csv"): csv_bytes(flights_rows(DAY1, 20)),  # schedule columns dropped
        (DAY2, "flights_2013-01-02.csv"): csv_bytes(flights_rows(DAY2, 15)),
        (DAY2, "weather_2013-01-02.csv"): csv_bytes(weather_rows(DAY2, 4)),
    }
    for (day, name), data in delivered.items():
        land_file(lake, USECASE, day, name, data)
    # on January 2 the schedule of January 3 is predicted (the evening before), so it is ingested; January 4's not
    tomorrow = csv_bytes(flights_rows(date(2013, 1, 3), 10))
    land_file(lake, USECASE, date(2013, 1, 3), "flights_2013-01-03.csv", tomorrow)
    later = land_file(lake, USECASE, date(2013, 1, 4), "flights_2013-01-04.csv", b"not even csv")

    result = ingest(DAY2)

    assert result["files_landed"] == 7 and result["files_committed"] == 7 and result["files_quarantined"] == 0
    assert result["rows_landed"] == result["rows_committed"] == 20 + 6 + 5 + 20 + 15 + 4 + 10
    assert result["rows_quarantined"] == 0 and result["quarantined"] == []
    assert len(result["raw_partitions"]) == 7
    assert result["validation"]["flights"]["files"] == 3 and result["validation"]["flights"]["success"]
    # the later file is left for a later run; everything else left landing and sits in the archive
    assert pending_files(lake, USECASE) == [f"landing/{USECASE}/2013-01-04/flights_2013-01-04.csv"]
    assert Path(later).exists()
    for (day, name), data in delivered.items():
        assert lake.storage.read_bytes(f"archive/{USECASE}/{day.isoformat()}/{name}") == data

    usecase = load_usecase(USECASE)
    schema = raw_arrow(lake, "flights", DAY1).schema
    assert schema.names == [*usecase.sources["flights"].columns, "_source_file", "_arrived_at"]
    expected_types = {
        "year": "int64",
        "distance": "double",
        "carrier": "string",
        "tailnum": "string",
        "time_hour": "timestamp[us, tz=UTC]",
        "_source_file": "string",
        "_arrived_at": "timestamp[us, tz=UTC]",
    }
    for column, kind in expected_types.items():
        assert str(schema.field(column).type) == kind, column
    flights = raw(lake, "flights", DAY1)
    source = flights_rows(DAY1, 20)
    assert flights["_source_file"].unique().tolist() == ["flights_2013-01-01.csv"]
    assert flights["flight"].astype(int).tolist() == source["flight"].astype(int).tolist()
    assert flights["time_hour"].iloc[0] == pd.Timestamp(source["time_hour"].iloc[0])
    outcomes = raw(lake, "outcomes", DAY1)
    assert list(outcomes.columns) == [*usecase.sources["outcomes"].columns, "_source_file", "_arrived_at"]
    assert str(raw_arrow(lake, "outcomes", DAY1).schema.field("dep_time").type) == "int64"
    expected_delay = pd.to_numeric(source["arr_delay"].replace("NA", None))
    assert outcomes["arr_delay"].isna().sum() == (source["arr_delay"] == "NA").sum() > 0
    pd.testing.assert_series_equal(outcomes["arr_delay"], expected_delay, check_names=False)
    assert outcomes["dep_time"].isna().sum() == (source["dep_time"] == "NA").sum()

    planes_schema = raw_arrow(lake, "planes", DAY1).schema
    assert (
        str(planes_schema.field("seats").type) == "int64"
        and str(planes_schema.field("speed").type) == "double"
    )
    planes = raw(lake, "planes", DAY1)
    assert planes["speed"].isna().all()  # "NA" in the source file
    assert len(raw(lake, "weather", DAY2)) == 4 and len(raw(lake, "flights", DAY2)) == 15

    body = facts(lake, "flights", DAY1)
    data = delivered[(DAY1, "flights_2013-01-01.csv")]
    assert body["source"] == "flights" and body["rows"] == 20
    arrived = lake.storage.read_with_arrival(f"archive/{USECASE}/2013-01-01/flights_2013-01-01.csv")[1]
    assert body["source_files"] == [
        {
            "name": "flights_2013-01-01.csv",
            "sha256": hashlib.sha256(data).hexdigest(),
            "rows": 20,
            "arrived_at": arrived.isoformat(),
        }
    ]


def test_parquet_source_is_typed_like_csv(
    mlops_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_parquet_config(tmp_path / "config")))
    lake = open_lake()
    typed = planes_table()
    land_file(lake, USECASE, DAY1, "planes_2013-01-01.parquet", parquet_bytes(typed))
    result = ingest(DAY1)
    assert result["files_committed"] == 1 and result["rows_committed"] == 5
    schema = raw_arrow(lake, "planes", DAY1).schema
    assert str(schema.field("year").type) == "int64" and str(schema.field("engine").type) == "string"
    frame = raw(lake, "planes", DAY1)
    assert frame["seats"].tolist() == typed["seats"].tolist()
    assert frame["year"].tolist() == typed["year"].tolist() and frame["speed"].isna().all()
    assert frame["tailnum"].tolist() == typed["tailnum"].tolist()


# --------------------------------------------------------------------------------------------------- bad input


def _with_value(column: str, row: int, value: str) -> bytes:
    frame = flights_rows(DAY1, 20, skip=40)
    frame.loc[row, column] = value
    return csv_bytes(frame)


def _truncated() -> bytes:
    data = csv_bytes(flights_rows(DAY1, 20, skip=40))
    return data[: data.rindex(b",", 0, len(data) - 30)]  # the last row is cut mid-row


def _latin1() -> bytes:
    frame = flights_rows(DAY1, 20, skip=40)
    frame.loc[5, "dest"] = "caf\xe9"
    return frame.to_csv(index=False).encode("latin-1")


BAD_FILES: dict[str, tuple[str, Callable[[], bytes], str, str | None, int]] = {
    # kind: (file name, content, failed check, column, rows counted)
    "missing_column": (
        "flights_2013-01-01_b.csv",
        lambda: csv_bytes(flights_rows(DAY1, 20, skip=40).drop(columns=["distance"])),
        "columns_present",
        None,
        20,
    ),
    "wrong_type": (
        "flights_2013-01-01_b.csv",
        lambda: _with_value("sched_dep_time", 3, "abc"),
        "expect_column_values_to_match_regex",
        "sched_dep_time",
        20,
    ),
    "null_required": (
        "flights_2013-01-01_b.csv",
        lambda: _with_value("carrier", 2, "NA"),
        "expect_column_values_to_not_be_null",
        "carrier",
        20,
    ),
    "out_of_range": (
        "flights_2013-01-01_b.csv",
        lambda: _with_value("month", 7, "13"),
        "expect_column_values_to_be_between",
        "month",
        20,
    ),
    "not_allowed": (
        "flights_2013-01-01_b.csv",
        lambda: _with_value("origin", 1, "BOS"),
        "expect_column_values_to_be_in_set",
        "origin",
        20,
    ),
    "misfiled_rows": (  # 5 flights of January 2 in a file landed for January 1: their labels would move a day
        "flights_2013-01-01_b.csv",
        lambda: csv_bytes(pd.concat([flights_rows(DAY1, 15, skip=40), flights_rows(DAY2, 5, skip=40)])),
        "event_date_matches_landing_date",
        "time_hour",
        20,
    ),
    "empty_file": ("flights_2013-01-01_b.csv", lambda: b"", "file_not_empty", None, 0),
    "header_only": (
        "flights_2013-01-01_b.csv",
        lambda: csv_bytes(flights_rows(DAY1).head(0)),
        "file_not_empty",
        None,
        0,
    ),
    "truncated": ("flights_2013-01-01_b.csv", _truncated, "file_well_formed", None, 20),
    "unknown_encoding": ("flights_2013-01-01_b.csv", _latin1, "file_decodes", None, 20),
    "unknown_name": (
        "passengers_2013-01-01.csv",
        lambda: csv_bytes(flights_rows(DAY1, 20, skip=40)),
        "file_name_matches_source",
        None,
        20,
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_goes_to_quarantine_and_good_file_commits(mlops_env: Path, kind: str) -> None:
    name, content, check, column, bad_rows = BAD_FILES[kind]
    lake = open_lake()
    good = csv_bytes(flights_rows(DAY1, 20))
    bad = content()
    land_file(lake, USECASE, DAY1, "flights_2013-01-01.csv", good)
    land_file(lake, USECASE, DAY1, name, bad)

    error = ingest_failing(DAY1)
    result = error.result

    quarantine_key = f"quarantine/{USECASE}/2013-01-01/{name}"
    quarantine_uri = lake.storage.uri(quarantine_key)
    message = str(error)
    assert name in message and check in message and quarantine_uri in message
    assert result["files_committed"] == 1 and result["files_quarantined"] == 1
    assert result["rows_committed"] == 20 and result["rows_quarantined"] == bad_rows
    assert_counts_add_up(result)
    [entry] = result["quarantined"]
    assert entry["file"] == name and entry["path"] == quarantine_uri
    assert any(item.startswith(check) for item in entry["failed_checks"])

    # the bad file is in quarantine, byte for byte, with both reports; landing is empty
    assert lake.storage.read_bytes(quarantine_key) == bad
    report = lake.read_json(f"{quarantine_key}.report.json")
    assert entry["report"] == lake.storage.uri(f"{quarantine_key}.report.json")
    assert report["file"] == name and report["sha256"] == hashlib.sha256(bad).hexdigest()
    assert report["rows"] == bad_rows
    failed = [c for c in report["failed_checks"] if c["expectation_type"] == check]
    assert (
        failed and failed[0]["column"] == column and failed[0]["hint"] and failed[0]["unexpected_count"] >= 1
    )
    if kind == "misfiled_rows":  # the report says which rows and which dates, and how to land them instead
        assert failed[0]["unexpected_count"] == 5 and failed[0]["sample_unexpected_values"] == ["2013-01-02"]
        assert "landing/<usecase>/<event date>/" in failed[0]["hint"]
    page = lake.storage.read_bytes(f"{quarantine_key}.report.html").decode()
    assert name in page and check in page
    assert pending_files(lake, USECASE) == []
    assert not lake.storage.exists(f"archive/{USECASE}/2013-01-01/{name}")

    # the raw zone holds the good file only
    flights = raw(lake, "flights", DAY1)
    assert flights["_source_file"].unique().tolist() == ["flights_2013-01-01.csv"] and len(flights) == 20
    assert [f["name"] for f in facts(lake, "flights", DAY1)["source_files"]] == ["flights_2013-01-01.csv"]


def test_a_second_bad_file_of_the_same_name_never_overwrites_the_first_ones_evidence(mlops_env: Path) -> None:
    """Two bad files of one name land one after the other: the first one's bytes and reports stay as they were,
    the second goes beside them under its content's digest."""
    name = "flights_2013-01-01.csv"
    lake = open_lake()
    first = csv_bytes(flights_rows(DAY1, 20)).replace(b"2013", b"20x3", 3)
    land_file(lake, USECASE, DAY1, name, first)
    ingest_failing(DAY1)
    key = f"quarantine/{USECASE}/2013-01-01/{name}"
    report = lake.read_json(f"{key}.report.json")

    second = csv_bytes(flights_rows(DAY1, 10)).replace(b"2013", b"20y3", 2)
    land_file(lake, USECASE, DAY1, name, second)
    [entry] = ingest_failing(DAY1).result["quarantined"]
    assert lake.storage.read_bytes(key) == first and lake.read_json(f"{key}.report.json") == report
    beside = f"quarantine/{USECASE}/2013-01-01/{hashlib.sha256(second).hexdigest()[:12]}/{name}"
    assert entry["path"] == lake.storage.uri(beside) and lake.storage.read_bytes(beside) == second
    assert lake.read_json(f"{beside}.report.json")["sha256"] == hashlib.sha256(second).hexdigest()


def test_quarantine_report_names_the_bad_values_and_lines(mlops_env: Path) -> None:
    lake = open_lake()
    frame = flights_rows(DAY1, 20)
    frame.loc[3, "sched_dep_time"] = "abc"
    frame.loc[[4, 9], "month"] = ["13", "14"]
    land_file(lake, USECASE, DAY1, "flights_x.csv", csv_bytes(frame))
    error = ingest_failing(DAY1)
    assert error.result["files_committed"] == 0 and error.result["raw_partitions"] == []
    assert lake.version(raw_table(USECASE, "flights")) is None
    report = lake.read_json(f"quarantine/{USECASE}/2013-01-01/flights_x.csv.report.json")
    checks = {(c["expectation_type"], c["column"]): c for c in report["failed_checks"]}
    wrong_type = checks[("expect_column_values_to_match_regex", "sched_dep_time")]
    assert wrong_type["sample_unexpected_values"] == ["abc"] and wrong_type["sample_rows"] == [
        5
    ]  # header = 1
    out_of_range = checks[("expect_column_values_to_be_between", "month")]
    assert out_of_range["unexpected_count"] == 2 and out_of_range["sample_unexpected_values"] == ["13", "14"]
    assert len(checks) == 2


@pytest.mark.parametrize("value", ["99999999999999999999999999", "9223372036854775808"])
def test_an_integer_beyond_int64_is_quarantined_not_wrapped(mlops_env: Path, value: str) -> None:
    """Found by tests/test_ingest_fuzz.py: ``flight`` (int, min 1, no max) passed GX with a 26-digit value, and the
    Int64 cast wrapped it to -2**63, which was committed. It does not parse as an int64: the file is quarantined."""
    lake = open_lake()
    frame = flights_rows(DAY1, 5)
    frame.loc[2, "flight"] = value
    land_file(lake, USECASE, DAY1, "flights_x.csv", csv_bytes(frame))
    land_file(lake, USECASE, DAY1, "flights_y.csv", csv_bytes(flights_rows(DAY1, 5, skip=10)))
    error = ingest_failing(DAY1)
    assert error.result["files_committed"] == 1 and error.result["files_quarantined"] == 1
    report = lake.read_json(f"quarantine/{USECASE}/2013-01-01/flights_x.csv.report.json")
    [check] = report["failed_checks"]
    assert (check["expectation_type"], check["column"]) == ("values_parse_as_int", "flight")
    assert check["sample_unexpected_values"] == [value] and check["sample_rows"] == [4]  # header = line 1
    assert set(raw(lake, "flights", DAY1)["_source_file"]) == {"flights_y.csv"}
    assert raw(lake, "flights", DAY1)["flight"].min() >= 1


def test_corrupt_parquet_goes_to_quarantine(
    mlops_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_parquet_config(tmp_path / "config")))
    lake = open_lake()
    valid = parquet_bytes(planes_table())
    land_file(lake, USECASE, DAY1, "planes_a.parquet", valid)
    land_file(lake, USECASE, DAY1, "planes_b.parquet", valid[: len(valid) // 2])
    error = ingest_failing(DAY1)
    assert "planes_b.parquet" in str(error) and "file_well_formed" in str(error)
    assert error.result["files_committed"] == 1 and error.result["files_quarantined"] == 1
    assert_counts_add_up(error.result)
    assert lake.storage.exists(f"quarantine/{USECASE}/2013-01-01/planes_b.parquet.report.html")
    assert raw(lake, "planes", DAY1)["_source_file"].unique().tolist() == ["planes_a.parquet"]


def test_gx_fails_closed_when_an_expectation_cannot_run() -> None:
    """A batch GX cannot evaluate fully is rejected as a whole; a good batch passes; failures hit one file."""
    source = load_usecase(USECASE).sources["weather"]

    def frame(day: date) -> pd.DataFrame:
        rows = weather_rows(day).replace("NA", None)
        rows[ROW] = range(2, len(rows) + 2)
        return rows

    good = validate_batch("weather", source, [frame(DAY1), frame(DAY2)])
    assert good.success and good.failures == {} and good.rows == 12

    bad = frame(DAY2)
    bad.loc[1, "humid"] = "250"
    one_bad = validate_batch("weather", source, [frame(DAY1), bad])
    assert not one_bad.success and list(one_bad.failures) == [1]

    # the frames lack a configured column: the expectations on it raise inside GX -> every file fails
    broken = validate_batch(
        "weather",
        source.model_copy(update={"columns": {**source.columns, "visibility_km": source.columns["visib"]}}),
        [frame(DAY1), frame(DAY2)],
    )
    assert not broken.success and sorted(broken.failures) == [0, 1]
    assert any(c.column == "visibility_km" for c in broken.failures[0])


def test_gx_suites_are_built_once_per_source_config_and_follow_its_changes() -> None:
    """The GX context, suite and data source are cached per process by the source's config hash: the same config
    reuses them, a changed expectation gets a new suite (and applies), and another GX context made current in
    between (GX resolves unbound suites through the current one) changes nothing."""
    import great_expectations as gx

    from pipelines.ingest import expectations

    source = load_usecase(USECASE).sources["weather"]
    rows = weather_rows(DAY1).replace("NA", None)
    rows[ROW] = range(2, len(rows) + 2)
    assert validate_batch("weather", source, [rows]).success
    cached = expectations._gx_source("weather", source)
    assert expectations._gx_source("weather", source.model_copy(deep=True)) is cached  # equal config: a hit

    narrow = source.model_copy(
        update={
            "columns": {**source.columns, "humid": source.columns["humid"].model_copy(update={"max": 50.0})}
        }
    )
    assert expectations.source_key("weather", narrow) != expectations.source_key("weather", source)
    gx.get_context(mode="ephemeral")  # another context becomes GX's current one
    outcome = validate_batch("weather", narrow, [rows])
    assert expectations._gx_source("weather", narrow) is not cached
    assert not outcome.success and list(outcome.failures) == [0]
    humid = [c for c in outcome.failures[0] if c.column == "humid"]
    assert [c.expectation_type for c in humid] == ["expect_column_values_to_be_between"]
    above = rows[pd.to_numeric(rows["humid"]) > 50]
    # the COMPLETE re-run names every failing row, as delivered
    assert humid[0].unexpected_count == len(above) > 0
    assert humid[0].sample_rows == above[ROW].astype(int).tolist()[:5]
    assert validate_batch("weather", source, [rows]).success  # the first config still has its own suite


def test_a_failing_batch_reports_what_a_complete_validation_of_the_whole_suite_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the failed expectations are validated again with COMPLETE results: the quarantine report is the
    same as from a COMPLETE validation of the whole suite (the previous way), rows and values included."""
    from pipelines.ingest import expectations

    source = load_usecase(USECASE).sources["weather"]
    frames = []
    for day in (DAY1, DAY2):
        rows = weather_rows(day).replace("NA", None)
        rows[ROW] = range(2, len(rows) + 2)
        frames.append(rows)
    frames[0].loc[3, "temp"] = "abc"
    frames[1].loc[[1, 4], "humid"] = ["250", "-3"]
    frames[1].loc[2, "time_hour"] = None

    def report() -> dict[int, list[dict]]:
        outcome = validate_batch("weather", source, frames)
        return {file: [c.to_dict() for c in checks] for file, checks in outcome.failures.items()}

    fast = report()
    monkeypatch.setattr(
        expectations,
        "_complete_failures",
        lambda batch, suite, summary: batch.validate(suite, result_format=expectations.COMPLETE_FORMAT),
    )
    assert fast == report()
    assert sorted(fast) == [0, 1]
    humid = next(c for c in fast[1] if c["column"] == "humid")
    assert humid["unexpected_count"] == 2 and humid["sample_unexpected_values"] == ["250", "-3"]
    assert humid["sample_rows"] == [3, 6]


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York"])
def test_typing_many_files_at_once_gives_what_typing_each_file_gives(
    timezone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """to_typed_many converts each column once for all files: typed frames (values and dtypes) and parse
    failures per file are those of to_typed file by file, also where a batch would parse differently (long
    numbers, date-only timestamps in a zone) or a file has values that do not parse."""
    from pipelines.config import ColumnSpec, SourceSpec
    from pipelines.ingest import expectations
    from pipelines.ingest.expectations import to_typed, to_typed_many

    source = SourceSpec(
        file_pattern="x_*.csv",
        columns={
            "n": ColumnSpec(type="int"),
            "x": ColumnSpec(type="float"),
            "t": ColumnSpec(type="timestamp"),
            "b": ColumnSpec(type="bool"),
            "s": ColumnSpec(type="string"),
        },
    )
    files = [
        {
            "n": ["1", "5.0", None],
            "x": ["1.5", "2", None],
            "t": ["2013-01-01T10:00:00Z", None, "2013-01-02"],
            "b": ["true", "N", None],
            "s": ["a", None, "c"],
        },
        {
            "n": ["9007199254740993", "7", "abc"],
            "x": ["99999999999999999999", "1e3", "x"],
            "t": ["2013-01-01 05:00", "2013-01-01T05:00:00+05:00", "soon"],
            "b": ["1", "maybe", "0"],
            "s": ["", "b", None],
        },
        {"n": ["3"], "x": ["12345678901234567"], "t": ["2013-03-10"], "b": ["yes"], "s": ["z"]},
        {"n": [], "x": [], "t": [], "b": [], "s": []},
    ]
    frames = []
    for values in files:
        frame = pd.DataFrame(values, dtype=object).astype(object)
        frame = frame.where(frame.notna(), None)
        frame[ROW] = range(2, len(frame) + 2)
        frames.append(frame)
    calls: list[str] = []
    convert = expectations.convert_column
    monkeypatch.setattr(expectations, "convert_column", lambda v, *a: calls.append(a[0]) or convert(v, *a))

    def check(frames: list[pd.DataFrame]) -> list[tuple[pd.DataFrame, list]]:
        calls.clear()
        together = to_typed_many(frames, source, "x", timezone)
        batched = len(calls)
        assert len(together) == len(frames)
        for frame, (typed, problems) in zip(frames, together, strict=True):
            alone, alone_problems = to_typed(frame, source, "x", timezone)
            pd.testing.assert_frame_equal(typed, alone)
            assert [p.to_dict() for p in problems] == [p.to_dict() for p in alone_problems]
        return together, batched

    together, _ = check(frames)
    assert {p.column for p in together[1][1]} == {"n", "x", "t", "b"}  # the bad values are reported
    assert together[0][1] == [] and together[2][1] == []
    # short numbers and no date-only value: every column converted once for all files, bad values included
    short = [f.copy() for f in frames[1:]]
    short[0]["n"] = ["12", "7", "abc"]
    short[0]["x"] = ["-0.25", "1e3", "x"]
    short[1]["x"] = ["1234.5"]
    short[1]["t"] = ["2013-03-10T08:00:00Z"]
    # no value without an offset beside values with one (pandas reads it in an earlier value's offset)
    short[0]["t"] = ["2013-01-01 05:00Z", "2013-01-01T05:00:00+05:00", "soon"]
    together, batched = check(short)
    assert batched == len(source.columns)
    assert {p.column for p in together[0][1]} == {"n", "x", "t", "b"}


# --------------------------------------------------------------------------------------------------- idempotence


def test_reruns_and_redeliveries_give_the_same_partition(mlops_env: Path) -> None:
    lake = open_lake()
    first = csv_bytes(flights_rows(DAY1, 20))
    second = csv_bytes(flights_rows(DAY1, 10, skip=100))
    land_file(lake, USECASE, DAY1, "flights_a.csv", first)
    ingest(DAY1)
    one_file = facts(lake, "flights", DAY1)
    table = raw_table(USECASE, "flights")

    # rerun with nothing new: nothing changes, not even the commit
    again = ingest(DAY1)
    assert again["files_landed"] == 0 and again["tables_written"] == {}
    assert facts(lake, "flights", DAY1) == one_file and lake.version(table) == 0

    # the same file delivered again: a new commit (new version, new files) with the same data
    land_file(lake, USECASE, DAY1, "flights_a.csv", first)
    redelivered = ingest(DAY1)
    assert redelivered["files_committed"] == 1 and redelivered["rows_committed"] == 20
    assert redelivered["tables_written"] == {table: 1}
    body = facts(lake, "flights", DAY1)
    assert body["data_hash"] == one_file["data_hash"] and body["files"] != one_file["files"]
    assert lake.read_frame(table, version=0).equals(lake.read_frame(table, version=1))  # time travel

    # a second file for the same day: the partition is rebuilt from the archived file plus the new one
    land_file(lake, USECASE, DAY1, "flights_b.csv", second)
    ingest(DAY1)
    both = facts(lake, "flights", DAY1)
    assert both["rows"] == 30 and [f["name"] for f in both["source_files"]] == [
        "flights_a.csv",
        "flights_b.csv",
    ]
    assert raw(lake, "flights", DAY1)["_source_file"].value_counts().to_dict() == {
        "flights_a.csv": 20,
        "flights_b.csv": 10,
    }

    # a file left in both landing and archive (crash between copy and delete) is processed again, same result
    land_file(lake, USECASE, DAY1, "flights_a.csv", first)
    result = ingest(DAY1)
    assert result["rows_landed"] == 20 and facts(lake, "flights", DAY1)["data_hash"] == both["data_hash"]


def test_a_missing_archived_file_stops_the_rebuild_and_changes_nothing(mlops_env: Path) -> None:
    """The committed partition names the files it was built from; rebuilding it without one would drop rows."""
    lake = open_lake()
    land_file(lake, USECASE, DAY1, "flights_a.csv", csv_bytes(flights_rows(DAY1, 20)))
    ingest(DAY1)
    lake.storage.delete([f"archive/{USECASE}/2013-01-01/flights_a.csv"])
    land_file(lake, USECASE, DAY1, "flights_b.csv", csv_bytes(flights_rows(DAY1, 10, skip=100)))
    error = ingest_failing(DAY1)
    assert "flights_a.csv: missing" in str(error) and "nothing was changed" in str(error)
    assert lake.version(raw_table(USECASE, "flights")) == 0
    assert pending_files(lake, USECASE) == [f"landing/{USECASE}/2013-01-01/flights_b.csv"]


# --------------------------------------------------------------------------------------------------- S3, CLI


def test_ingest_on_s3_served_by_moto(s3_lake: str) -> None:
    lake = open_lake()
    assert lake.uri == s3_lake
    before = datetime.now(UTC).replace(microsecond=0)
    land_file(lake, USECASE, DAY1, "flights_2013-01-01.csv", csv_bytes(flights_rows(DAY1, 20)))
    after = datetime.now(UTC)
    backfill = datetime(2012, 12, 31, 17, 0, tzinfo=UTC)
    land_file(lake, USECASE, DAY1, "planes_2013-01-01.csv", csv_bytes(planes_rows()), arrived_at=backfill)
    land_file(lake, USECASE, DAY1, "weather_2013-01-01.csv", b"origin,year\nEWR,2013\n")  # missing columns
    error = ingest_failing(DAY1)
    assert error.result["files_committed"] == 2 and error.result["files_quarantined"] == 1
    # S3's LastModified is the arrival, unless the lander gave one (kept as object metadata)
    arrived = raw(lake, "flights", DAY1)["_arrived_at"].unique()
    assert len(arrived) == 1 and before <= arrived[0] <= after
    assert raw(lake, "planes", DAY1)["_arrived_at"].unique().tolist() == [pd.Timestamp(backfill)]
    assert (
        lake.storage.read_with_arrival(f"archive/{USECASE}/2013-01-01/planes_2013-01-01.csv")[1] == backfill
    )
    assert sorted(error.result["raw_partitions"]) == [
        f"{s3_lake}/raw/{USECASE}/{source}/date=2013-01-01" for source in ("flights", "planes")
    ]
    assert len(raw(lake, "flights", DAY1)) == 20
    assert lake.storage.exists(f"archive/{USECASE}/2013-01-01/flights_2013-01-01.csv")
    assert lake.storage.exists(f"quarantine/{USECASE}/2013-01-01/weather_2013-01-01.csv.report.json")
    assert pending_files(lake, USECASE) == []


def test_cli_exits_1_on_quarantine_with_json_last_line(mlops_env: Path) -> None:
    lake = open_lake()
    land_file(lake, USECASE, DAY1, "flights_2013-01-01.csv", csv_bytes(flights_rows(DAY1, 20)))
    land_file(lake, USECASE, DAY1, "flights_bad.csv", _with_value("day", 0, "x"))
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "ingest", "--usecase", USECASE, "--date", "2013-01-01"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] is True and result["step"] == "ingest"
    assert result["files_committed"] == 1 and result["files_quarantined"] == 1
    assert "flights_bad.csv" in result["error"] and "expect_column_values_to_match_regex" in result["error"]
    assert "flights_bad.csv" in proc.stderr


# --------------------------------------------------------------------------------------------------- arrival


def test_each_row_keeps_when_its_file_arrived_through_commit_archive_and_quarantine(
    mlops_env: Path, capsys: pytest.CaptureFixture
) -> None:
    """A file's arrival (the local file's modification time, or the time a backfill gives) is recorded on every
    raw row it gave, in the partition's facts, on its archived copy and in a quarantine report; the step result
    says per source how many rows arrived later than declared (outcomes: event time + 6 h; schedule: its
    prediction time, 18:00 New York the evening before) and which undeclared columns it dropped."""
    lake = open_lake()
    evening = datetime(2012, 12, 31, 23, 0, tzinfo=UTC)  # 18:00 in New York: DAY1's prediction time
    schedule_at = evening - timedelta(hours=6)  # in time
    outcomes_at = datetime(2013, 1, 2, 20, 0, tzinfo=UTC)  # a day and a half after the flights
    outcomes = flights_rows(DAY1, 20).assign(extra_note="x")  # schedule columns and one more: dropped
    land_file(lake, USECASE, DAY1, "flights_2013-01-01.csv", csv_bytes(flights_rows(DAY1, 20)), schedule_at)
    land_file(lake, USECASE, DAY1, "outcomes_2013-01-01.csv", csv_bytes(outcomes), outcomes_at)
    land_file(lake, USECASE, DAY1, "weather_bad.csv", b"origin,year\nEWR,2013\n", evening)
    before = datetime.now(UTC).replace(microsecond=0)
    land_file(lake, USECASE, DAY1, "weather_2013-01-01.csv", csv_bytes(weather_rows(DAY1)))  # arrives now

    result = ingest_failing(DAY1).result

    assert raw(lake, "flights", DAY1)["_arrived_at"].unique().tolist() == [pd.Timestamp(schedule_at)]
    assert raw(lake, "outcomes", DAY1)["_arrived_at"].unique().tolist() == [pd.Timestamp(outcomes_at)]
    weather_arrival = raw(lake, "weather", DAY1)["_arrived_at"].unique()
    assert len(weather_arrival) == 1 and before <= weather_arrival[0] <= datetime.now(UTC)
    assert facts(lake, "outcomes", DAY1)["source_files"][0]["arrived_at"] == outcomes_at.isoformat()
    archived = f"archive/{USECASE}/2013-01-01/outcomes_2013-01-01.csv"
    assert lake.storage.read_with_arrival(archived)[1] == outcomes_at
    report = lake.read_json(f"quarantine/{USECASE}/2013-01-01/weather_bad.csv.report.json")
    assert report["arrived_at"] == evening.isoformat()
    assert lake.storage.read_with_arrival(f"quarantine/{USECASE}/2013-01-01/weather_bad.csv")[1] == evening

    arrivals = result["arrivals"]
    assert arrivals["flights"]["declared"] == "its prediction time"
    assert arrivals["flights"]["rows_later_than_declared"] == 0
    assert arrivals["outcomes"]["declared"] == "time_hour + 6h"
    departures = pd.to_datetime(outcomes["time_hour"], utc=True)
    late = departures + pd.Timedelta(hours=6) < pd.Timestamp(outcomes_at)
    assert arrivals["outcomes"]["rows_later_than_declared"] == int(late.sum()) == 20
    worst = (pd.Timestamp(outcomes_at) - departures.min() - pd.Timedelta(hours=6)).total_seconds() / 3600
    assert arrivals["outcomes"]["max_hours_later_than_declared"] == round(worst, 2)
    assert "declared" not in arrivals["weather"] and arrivals["weather"]["median_lag_hours"] > 0
    assert result["dropped_columns"]["outcomes"][-1] == "extra_note"
    assert "dep_delay" not in result["dropped_columns"]["outcomes"]

    # `mlops validate --against-lake` says the declared delay understates what the lake shows
    assert main(["validate", USECASE, "--against-lake"]) == 0
    printed = capsys.readouterr().out
    assert (
        "note (lake): outcomes: 20 of 20 row(s) (100%) arrived later than declared (time_hour + 6h)"
        in printed
    )
    hours = math.ceil(((pd.Timestamp(outcomes_at) - departures).dt.total_seconds() / 3600).quantile(0.95))
    assert f"label_delay 6h understates it: {hours}h covers 95% of the outcomes" in printed
    assert "note (lake): flights" not in printed, "the schedule arrived before its prediction time"

    # a rerun that rebuilds the partition from its archived file keeps the file's arrival
    land_file(lake, USECASE, DAY1, "outcomes_late.csv", csv_bytes(flights_rows(DAY1, 5, skip=30)))
    ingest(DAY1)
    rows = raw(lake, "outcomes", DAY1)
    kept = rows.loc[rows["_source_file"] == "outcomes_2013-01-01.csv", "_arrived_at"].unique().tolist()
    assert kept == [pd.Timestamp(outcomes_at)]
