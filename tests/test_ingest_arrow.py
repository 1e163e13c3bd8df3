"""CSV parsed by Arrow with the declared schema gives what the row-by-row parse gives: the same string frames
for Great Expectations, the same typed frames for the raw zone, the same quarantine checks for a bad file."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from pipelines.config import ColumnSpec, SourceSpec, load_usecase
from pipelines.ingest.expectations import to_typed, to_typed_many, validate_batch
from pipelines.ingest.inbox import match_source
from pipelines.steps.ingest import DeliveredFile, parse_file, type_files
from tests._ingest_fixtures import DAY1, USECASE, csv_bytes, flights_rows


def _deliver(usecase, files: list[tuple[date, str, bytes]]) -> list[DeliveredFile]:
    return [
        DeliveredFile(
            key=name, name=name, day=day, data=data, arrived_at=None, source=match_source(usecase, name)
        )
        for day, name, data in files
    ]


def _ingest(usecase, files: list[tuple[date, str, bytes]], arrow: bool) -> list[DeliveredFile]:
    """Steps 1 and 2 of ingest (parse, validate each source's batch in GX, type), without a lake."""
    delivered = _deliver(usecase, files)
    for file in delivered:
        parse_file(file, file.source, usecase.sources[file.source], arrow=arrow)
    for name, source in usecase.sources.items():
        batch = [f for f in delivered if f.source == name and f.frame is not None]
        if batch:
            outcome = validate_batch(name, source, [f.frame for f in batch])
            for index, checks in outcome.failures.items():
                batch[index].checks.extend(checks)
            type_files(batch, name, source, usecase.time.timezone)
    return delivered


def _assert_same(old: list[DeliveredFile], new: list[DeliveredFile]) -> None:
    for before, after in zip(old, new, strict=True):
        assert [c.to_dict() for c in after.checks] == [c.to_dict() for c in before.checks], before.name
        assert (after.rows, after.notes, after.dropped_columns) == (
            before.rows,
            before.notes,
            before.dropped_columns,
        )
        assert (after.typed is None) == (before.typed is None), before.name
        if before.typed is not None:
            pd.testing.assert_frame_equal(after.typed, before.typed)


def test_the_demo_files_type_the_same_through_arrow_and_the_truncated_one_gets_the_same_report() -> None:
    """Three days of the demo's landing files (schedules, 3-hourly weather, outcomes, the planes table) and the
    schedule the demo truncates mid-row on purpose: Arrow parses the good ones (no fallback), the typed frames
    and the quarantine report equal those of the row-by-row parse."""
    from mlops_cli.demo_data import CORRUPT_FILE, DemoData, truncate_mid_row

    usecase = load_usecase(USECASE)
    data = DemoData.load(usecase)
    files = []
    for offset in range(3):
        day = CORRUPT_FILE[1] - timedelta(days=1) + timedelta(days=offset)
        for item in data.day_deliveries(day, usecase.time.timezone):
            content = item.content
            if (item.name.split("_")[0], item.day) == CORRUPT_FILE:
                content = truncate_mid_row(content)
            files.append((item.day, item.name, content))
    files += [
        (date(2013, 1, 1), name, content) for name, content in data.schedule_files(date(2013, 1, 1)).items()
    ]
    assert {match_source(usecase, name) for _, name, _ in files} == {
        "flights",
        "outcomes",
        "weather",
        "planes",
    }

    old = _ingest(usecase, files, arrow=False)
    parsed = _deliver(usecase, files)
    for file in parsed:
        parse_file(file, file.source, usecase.sources[file.source])
    by_arrow = {f.name for f in parsed if f.table is not None}
    quoted = {name for _, name, content in files if b'"' in content}  # quotes take the row-by-row path
    assert by_arrow == {f.name for f in parsed if not f.checks} - quoted and len(by_arrow) > 30
    new = _ingest(usecase, files, arrow=True)
    _assert_same(old, new)

    [truncated] = [f for f in new if f.checks]
    assert truncated.name == "flights_2013-01-15.csv" and truncated.typed is None
    [check] = truncated.checks
    assert check.expectation_type == "file_well_formed" and "looks truncated" in check.hint
    assert all(f.typed is not None and len(f.typed) == f.rows for f in new if not f.checks)


def _flights(**changes: tuple[int, str]) -> pd.DataFrame:
    frame = flights_rows(DAY1, 12)
    for column, (row, value) in changes.items():
        frame.loc[row, column] = value
    return frame


BAD_OR_ODD = {
    "wrong_type": csv_bytes(_flights(sched_dep_time=(3, "abc"), month=(4, "13"))),
    "truncated": csv_bytes(flights_rows(DAY1, 12))[:-25],
    "extra_field": csv_bytes(flights_rows(DAY1, 12)).replace(b"\n", b",x\n", 3)[::1],
    "missing_column": csv_bytes(flights_rows(DAY1, 12).drop(columns=["carrier"])),
    "duplicate_column": csv_bytes(flights_rows(DAY1, 12)).replace(b"month", b"year", 1),
    "header_only": csv_bytes(flights_rows(DAY1, 12).head(0)),
    "header_only_no_newline": csv_bytes(flights_rows(DAY1, 12).head(0)).rstrip(b"\n"),
    "blank_lines": csv_bytes(flights_rows(DAY1, 12)).replace(b"\n", b"\n\n", 4),
    "crlf": csv_bytes(flights_rows(DAY1, 12)).replace(b"\n", b"\r\n"),
    "lone_cr": csv_bytes(flights_rows(DAY1, 12)).replace(b"\n", b"\r", 2),
    "bom": b"\xef\xbb\xbf" + csv_bytes(flights_rows(DAY1, 12)),
    "quoted": csv_bytes(_flights(dest=(2, 'A"B'), tailnum=(3, "N1,2"))),
    "bad_quote": csv_bytes(flights_rows(DAY1, 12)).replace(b",UA,", b',U"A,', 1),
    "nul": csv_bytes(flights_rows(DAY1, 12)).replace(b",UA,", b",U\x00A,", 1),
    "no_final_newline": csv_bytes(flights_rows(DAY1, 12)).rstrip(b"\n"),
    "null_required": csv_bytes(_flights(carrier=(2, "NA"), tailnum=(5, ""))),
    "misfiled": csv_bytes(pd.concat([flights_rows(DAY1, 6), flights_rows(DAY1 + timedelta(days=1), 3)])),
    "whitespace_values": csv_bytes(_flights(flight=(2, " 15"), distance=(3, "1e3"))),
    "spaces_line": csv_bytes(flights_rows(DAY1, 12)) + b"   \n",
    "field_over_csv_limit": csv_bytes(_flights(dest=(2, "X" * 140_000))),
}


@pytest.mark.parametrize("kind", list(BAD_OR_ODD))
def test_a_bad_or_odd_file_gets_the_same_frame_rows_and_report_through_arrow(kind: str) -> None:
    """A file Arrow rejects or cannot read as the row-by-row parse does (ragged, quoted, blank lines, ...) falls
    back to that parse: every file, good or bad, ends with the same string frame, rows, typed frame and checks."""
    usecase = load_usecase(USECASE)
    files = [(DAY1, "flights_2013-01-01_a.csv", csv_bytes(flights_rows(DAY1, 12, skip=30)))]
    files.append((DAY1, "flights_2013-01-01_b.csv", BAD_OR_ODD[kind]))
    source = usecase.sources["flights"]
    for file, row_file in zip(_deliver(usecase, files), _deliver(usecase, files), strict=True):
        parse_file(file, "flights", source, arrow=True)
        parse_file(row_file, "flights", source, arrow=False)
        assert [c.to_dict() for c in file.checks] == [c.to_dict() for c in row_file.checks]
        assert file.rows == row_file.rows
        if row_file.frame is not None:
            pd.testing.assert_frame_equal(file.frame, row_file.frame)
    _assert_same(_ingest(usecase, files, arrow=False), _ingest(usecase, files, arrow=True))


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York"])
def test_arrow_typing_gives_what_pandas_typing_gives(timezone: str) -> None:
    """to_typed_many with the files' Arrow strings: each column Arrow converts (or hands back to pandas: long
    numbers, exponents, a leading +, mixed offsets, dates alone in a zone, bools) equals to_typed file by file,
    values, dtypes and parse failures."""
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
            "n": ["1", "-5", None],
            "x": ["1.5", "2", None],
            "t": ["2013-01-01T10:00:00Z", None, "2013-01-02T00:00:00-05:00"],
            "b": ["true", "N", None],
            "s": ["a", None, "c"],
        },
        {
            "n": ["007", "7", "12"],
            "x": ["10.357019999999999", "-.25", "3."],
            "t": ["2013-01-01T05:00:00+05", "2013-01-01T05:00:00.123456789Z", "2013-06-01T05:00+0130"],
            "b": ["1", "0", "no"],
            "s": ["", "b", "é"],
        },
        {"n": ["3"], "x": ["1234.5"], "t": ["2013-03-10T08:00:00Z"], "b": ["yes"], "s": ["z"]},
        {"n": [], "x": [], "t": [], "b": [], "s": []},
    ]
    odd = [
        {"n": ["+4", "42.0", "9007199254740993"], "x": ["1e3", "99999999999999999999", "x"]},
        {"t": ["2013-01-01 05:00", "2013-01-01", None]},  # naive: read as UTC; a date alone: local midnight
        {"t": ["2013-01-01 05:00", "2013-01-01T05:00:00Z", "2013-02-30T00:00:00Z"]},  # mixed, one impossible
        {"x": ["nan", "inf", "1.5"], "n": ["1", "abc", None]},
    ]
    for changes in [{}, *odd]:
        frames, tables = [], []
        for values in [*files[:1], {**files[1], **changes}, *files[2:]]:
            frame = pd.DataFrame(values, dtype=object).astype(object)
            frame = frame.where(frame.notna(), None)
            tables.append(
                pa.table({c: pa.array(frame[c].tolist(), type=pa.string()) for c in source.columns})
            )
            frame["__row"] = range(2, len(frame) + 2)
            frames.append(frame)
        together = to_typed_many(frames, source, "x", timezone, tables)
        for frame, (typed, problems) in zip(frames, together, strict=True):
            alone, alone_problems = to_typed(frame, source, "x", timezone)
            pd.testing.assert_frame_equal(typed, alone)
            assert [p.to_dict() for p in problems] == [p.to_dict() for p in alone_problems]
        one = to_typed_many(frames[1:2], source, "x", timezone, tables[1:2])  # a single file
        pd.testing.assert_frame_equal(one[0][0], together[1][0])
