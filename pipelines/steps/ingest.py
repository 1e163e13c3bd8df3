"""Ingest landed files: validate with Great Expectations, commit typed raw partitions, quarantine the rest.

Lake keys (``<uc>`` is the use case, ``<day>`` the landing date folder)::

    landing/<uc>/<day>/<file>            inbox: files wait here (see pipelines.ingest.inbox)
    raw/<uc>/<source>/                   Delta table: typed rows of all valid files, partitioned by event date
    archive/<uc>/<day>/<file>            files committed to raw (copied first, deleted from landing last)
    quarantine/<uc>/<day>/<file>         rejected files, with <file>.report.json and <file>.report.html
                                         (a later file of the same name and other content: <day>/<sha256[:12]>/<file>)

The date folder is the date of the events in the file (the local date of the source's ``event_time``; a file
with rows of another date is quarantined with those dates, never committed under the wrong one). Every landed file
with a date folder on or before ``--date`` plus ``time.prediction_time.days_before`` (``TimeSpec.ingested_through``) is processed: on day D the
schedule of the events predicted that evening is already there. A file belongs to the source whose
``file_pattern`` matches its name. Files are parsed strictly (encoding, CSV shape, Parquet footer, columns,
min_rows; a CSV by ``pyarrow.csv`` where Arrow reads it as the strict row-by-row parse would, else row by row, which
names the faulty line), then all files of one source are validated in one GX batch (pipelines.ingest.expectations) and typed
with the declared schema (Arrow's strict casts where they give pandas' values, see ``to_typed_many``). A file with
any failure goes to quarantine as a whole; the others are committed. The raw partition of (source, day) is rebuilt
from all valid files of that day (the new ones and the archived files the committed partition names in its
``_source_file`` column; a re-delivered name replaces the archived file), so reruns give the same partition. All
partitions of one source are one Delta commit, made from the snapshot the companions were read from; a concurrent
commit to the same partitions makes the step rebuild them from the new snapshot. The step fails (exit 1) after
committing the good files when any file was quarantined.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pipelines.config import SourceSpec, UseCase
from pipelines.context import StepContext, StepFailed, progress
from pipelines.ingest.inbox import _landed_files, archive_key, match_source, quarantine_key
from pipelines.lake import (
    ARRIVED_AT,
    DATE,
    UNRECORDED_ARRIVAL,
    Commit,
    CommitConflict,
    Lake,
    LakeError,
    Snapshot,
    commit_with_retry,
    raw_table,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from pipelines.ingest.expectations import FailedCheck

SOURCE_FILE = "_source_file"  # lineage column of the raw tables: the landed file each row came from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ingest step takes only --usecase and --date."""


# --------------------------------------------------------------------------------------------------- parsing


@dataclass
class DeliveredFile:
    """One file being ingested: a new landing or an archived file of the same (source, day)."""

    key: str
    name: str
    day: date
    data: bytes
    arrived_at: datetime | None  # None: not recorded (a backfill landed with --arrived-at declared)
    from_archive: bool = False
    source: str | None = None
    frame: pd.DataFrame | None = None  # configured columns as strings (None = null) + expectations.ROW
    table: pa.Table | None = (
        None  # the same strings as Arrow read them (a CSV parsed by pyarrow.csv), for typing
    )
    typed: pd.DataFrame | None = None
    rows: int = 0
    checks: list[FailedCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)  # in the file, not declared in the config

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def rejected(self) -> bool:
        return bool(self.checks)

    def reject(self, check: FailedCheck) -> None:
        self.checks.append(check)
        self.frame = None
        self.table = None


def count_data_lines(data: bytes) -> int:
    """Rows of a file that cannot be parsed: Parquet footer row count, else non-blank lines minus a header."""
    if data[:4] == b"PAR1":
        try:
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(io.BytesIO(data)).metadata.num_rows)
        except Exception:  # noqa: BLE001 - a broken footer: fall back to counting lines
            pass
    lines = [line for line in data.splitlines() if line.strip()]
    return max(len(lines) - 1, 0)


def _file_check(
    kind: str,
    hint: str,
    count: int = 1,
    values: list[Any] | None = None,
    rows: list[int] | None = None,
    column: str | None = None,
) -> FailedCheck:
    from pipelines.ingest.expectations import FailedCheck

    return FailedCheck(kind, column, count, hint, values or [], rows or [])


def _check_columns(file: DeliveredFile, present: list[str], source_name: str, source: SourceSpec) -> bool:
    missing = [c for c in source.columns if c not in present]
    duplicated = sorted({c for c in present if present.count(c) > 1})
    extra = [c for c in present if c not in source.columns]
    if duplicated:
        file.reject(
            _file_check(
                "columns_unique",
                f"the header repeats column(s) {duplicated}: each column may appear once; fix the producer",
                len(duplicated),
                duplicated,
            )
        )
    if missing:
        file.reject(
            _file_check(
                "columns_present",
                f"missing column(s) {missing} (the file has {present}): deliver them, or remove them from "
                f"sources.{source_name}.columns in the use case config",
                len(missing),
                missing,
            )
        )
    if extra:
        file.dropped_columns = extra
        file.notes.append(f"extra column(s) not in the config were dropped: {extra}")
    return not (missing or duplicated)


def _check_min_rows(file: DeliveredFile, source: SourceSpec) -> bool:
    if file.rows < source.min_rows:
        file.reject(
            _file_check(
                "file_not_empty",
                f"the file has {file.rows} data row(s); at least min_rows={source.min_rows} are needed: re-deliver "
                "the complete file",
                1,
                [file.rows],
            )
        )
        return False
    return True


def check_event_dates(file: DeliveredFile, source_name: str, column: str, timezone: str) -> None:
    """Reject ``file`` when any row's event date (the local date of ``column`` in ``timezone``) is not the
    landing date: a misfiled file would move events and their labels to another day, so the whole file is
    quarantined with the dates found, never committed under the wrong date."""
    from pipelines.ingest.expectations import ROW, SAMPLE_SIZE

    assert file.typed is not None
    local_dates = file.typed[column].dt.tz_convert(timezone).dt.date
    wrong = local_dates.notna() & (local_dates != file.day)
    if not wrong.any():
        return
    found = sorted({d.isoformat() for d in local_dates[wrong]})
    rows = []
    if file.frame is not None and ROW in file.frame:
        rows = [int(r) for r in file.frame[ROW].to_numpy()[wrong.to_numpy()][:SAMPLE_SIZE]]
    file.reject(
        _file_check(
            "event_date_matches_landing_date",
            f"{int(wrong.sum())} row(s) have event dates {found[:SAMPLE_SIZE]} ({column} in {timezone}), not the "
            f"landing date {file.day.isoformat()}: land the file under landing/<usecase>/<event date>/ (split it "
            f"by date if it spans several), or fix sources.{source_name}.event_time",
            int(wrong.sum()),
            found[:SAMPLE_SIZE],
            rows,
            column,
        )
    )


def _parse_csv(file: DeliveredFile, source_name: str, source: SourceSpec, arrow: bool = True) -> None:
    """Decode the file, then parse it with Arrow (``arrow``) where Arrow gives what the row-by-row parse gives,
    else row by row (see :func:`_parse_csv_arrow`)."""
    if not file.data:
        file.reject(
            _file_check("file_not_empty", "the file is empty (0 bytes): re-deliver the complete file")
        )
        return
    try:
        text = file.data.decode(source.encoding)
    except UnicodeDecodeError as exc:
        file.rows = count_data_lines(file.data)
        line = file.data[: exc.start].count(b"\n") + 1
        file.reject(
            _file_check(
                "file_decodes",
                f"unknown encoding: the bytes at line {line} are not valid {source.encoding}: re-export the file as "
                f"{source.encoding}, or set sources.{source_name}.encoding to the file's encoding",
                1,
                [repr(file.data[max(exc.start - 8, 0) : exc.end + 8])],
                [line],
            )
        )
        return
    except LookupError:
        file.rows = count_data_lines(file.data)
        file.reject(
            _file_check(
                "file_decodes",
                f"sources.{source_name}.encoding {source.encoding!r} is not a "
                "known codec: fix the use case config",
            )
        )
        return
    if arrow and _parse_csv_arrow(file, text, source_name, source):
        return
    _parse_csv_rows(file, text, source_name, source)


# csv.reader's limit on one field (characters): a longer field is an error there, so such a file takes that path
_CSV_FIELD_LIMIT = csv.field_size_limit()


def _arrow_reads_as_rows(text: str) -> bool:
    """Whether ``pyarrow.csv`` reads ``text`` exactly as :func:`_parse_csv_rows` would, line numbers included: no
    quote character (Arrow's quoting is more lenient than ``csv.reader(strict=True)``), no blank line (skipped with
    its line number counted), no line break but ``\\n`` and ``\\r\\n``, no NUL (an error for ``csv``) and a header
    line with distinct names. Anything else, and any file Arrow rejects, takes the row-by-row path, which names the
    line and the fault."""
    if not text or '"' in text or "\x00" in text or text[0] in "\r\n":
        return False
    if text.count("\r") != text.count("\r\n"):
        return False
    return "\n\n" not in text and "\n\r\n" not in text


def _parse_csv_arrow(file: DeliveredFile, text: str, source_name: str, source: SourceSpec) -> bool:
    """Parse ``text`` with ``pyarrow.csv`` (every column as a string, the source's ``null_values`` as null), then
    check it as :func:`_parse_csv_rows` does. Returns False, touching nothing, where Arrow cannot promise the same
    result (see :func:`_arrow_reads_as_rows`) or rejects the file (a ragged or truncated row): that path then
    parses it and writes the same report as ever."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from pipelines.ingest.expectations import ROW

    text = text.removeprefix("\ufeff")
    if not _arrow_reads_as_rows(text):
        return False
    end = text.find("\n")
    if end < 0:
        return False  # a header alone: nothing for Arrow to read
    header = text[:end].removesuffix("\r").split(",")
    if len(set(header)) != len(header):
        return False
    body = text[end + 1 :].encode("utf-8")
    try:
        table = pacsv.read_csv(
            pa.BufferReader(body),
            read_options=pacsv.ReadOptions(
                column_names=header, use_threads=False, block_size=max(len(body), 1 << 16) + 1
            ),
            parse_options=pacsv.ParseOptions(
                quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                null_values=list(source.null_values),
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    for name in header if len(body) > _CSV_FIELD_LIMIT else []:  # a shorter file has no longer field
        longest = pc.max(pc.utf8_length(table.column(name))).as_py()
        if longest is not None and longest > _CSV_FIELD_LIMIT:
            return False
    file.rows = table.num_rows
    if not _check_columns(file, header, source_name, source) or not _check_min_rows(file, source):
        return True
    table = table.select(list(source.columns))
    frame = table.to_pandas()
    frame[ROW] = list(range(2, table.num_rows + 2))  # header on line 1, one line per row
    file.frame = frame
    file.table = table
    return True


def _parse_csv_rows(file: DeliveredFile, text: str, source_name: str, source: SourceSpec) -> None:
    """Parse ``text`` row by row with ``csv.reader(strict=True)``: the path that names the line of a malformed
    file, and the reference :func:`_parse_csv_arrow` is tested against."""
    import pandas as pd

    from pipelines.ingest.expectations import ROW

    records: list[list[str]] = []
    lines: list[int] = []
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    try:
        for record in reader:
            if record:  # blank lines are skipped
                records.append(record)
                lines.append(reader.line_num)
    except csv.Error as exc:
        file.rows = count_data_lines(file.data)
        file.reject(
            _file_check(
                "file_well_formed",
                f"not valid CSV at line {reader.line_num} ({exc}): the file "
                "looks truncated or corrupt; re-deliver the complete file",
                1,
                [],
                [reader.line_num],
            )
        )
        return
    if not records:
        file.reject(
            _file_check("file_not_empty", "the file has no header and no rows: re-deliver the complete file")
        )
        return
    header, body, body_lines = records[0], records[1:], lines[1:]
    file.rows = len(body)
    ragged = [(line, len(rec)) for rec, line in zip(body, body_lines, strict=True) if len(rec) != len(header)]
    if ragged:
        file.reject(
            _file_check(
                "file_well_formed",
                f"line {ragged[0][0]} has {ragged[0][1]} field(s) but the header has {len(header)}: the file looks "
                "truncated or corrupt; re-deliver the complete file",
                len(ragged),
                [f"{n} fields" for _, n in ragged[:5]],
                [line for line, _ in ragged[:5]],
            )
        )
        return
    if not _check_columns(file, header, source_name, source) or not _check_min_rows(file, source):
        return
    frame = pd.DataFrame(body, columns=header, dtype=object)
    frame = frame[list(source.columns)]
    frame = frame.where(~frame.isin(list(source.null_values)), None)
    frame[ROW] = body_lines
    file.frame = frame.reset_index(drop=True)


def _parse_parquet(file: DeliveredFile, source_name: str, source: SourceSpec) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.ingest.expectations import ROW

    if not file.data:
        file.reject(
            _file_check("file_not_empty", "the file is empty (0 bytes): re-deliver the complete file")
        )
        return
    try:
        table = pq.read_table(io.BytesIO(file.data))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for broken files
        file.rows = count_data_lines(file.data)
        file.reject(
            _file_check(
                "file_well_formed",
                f"not a readable Parquet file ({exc}): the file looks "
                "truncated or corrupt; re-deliver the complete file",
            )
        )
        return
    file.rows = table.num_rows
    if not _check_columns(file, table.column_names, source_name, source) or not _check_min_rows(file, source):
        return
    columns: dict[str, Any] = {}
    for column, spec in source.columns.items():
        try:
            as_text = pc.cast(table[column], pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            file.reject(
                _file_check(
                    "column_type",
                    f"column '{column}' has Parquet type {table.schema.field(column).type}, which "
                    f"cannot be read as {spec.type}: fix the producer or sources.{source_name}.columns.{column}.type",
                    1,
                    [str(table.schema.field(column).type)],
                    column=column,
                )
            )
            return
        columns[column] = as_text.to_pandas().astype(object).where(lambda s: s.notna(), None)
    frame = pd.DataFrame(columns)  # Parquet has real nulls: null_values apply to CSV only
    frame[ROW] = range(1, len(frame) + 1)
    file.frame = frame


def parse_file(file: DeliveredFile, source_name: str, source: SourceSpec, arrow: bool = True) -> None:
    """Fill ``file.frame`` (strings) and ``file.rows``, or add the parse failure to ``file.checks``. A CSV is
    parsed by ``pyarrow.csv`` where that gives the same frame (``arrow=False``: row by row, the reference)."""
    if source.format == "parquet":
        _parse_parquet(file, source_name, source)
    else:
        _parse_csv(file, source_name, source, arrow)


def type_files(batch: list[DeliveredFile], source_name: str, source: SourceSpec, timezone: str) -> None:
    """Type the files of one source's validated batch that passed (``file.typed``), all at once (Arrow's casts
    for the files Arrow parsed, see :func:`pipelines.ingest.expectations.to_typed_many`), reject a file with a value that
    did not parse, then check each typed file's event dates against its landing date."""
    from pipelines.ingest.expectations import to_typed_many

    for file in batch:
        if file.rejected:
            file.frame = None
            file.table = None
    valid = [file for file in batch if not file.rejected]
    tables = [f.table for f in valid]
    typed = to_typed_many([f.frame for f in valid], source, source_name, timezone, tables)
    for file, (frame, problems) in zip(valid, typed, strict=True):
        file.typed = frame
        file.table = None  # typed: the strings are no longer needed
        for problem in problems:
            file.reject(problem)
    if source.event_time:
        for file in _maybe_misdated([f for f in valid if not f.rejected], source.event_time, timezone):
            check_event_dates(file, source_name, source.event_time, timezone)


def _maybe_misdated(files: list[DeliveredFile], column: str, timezone: str) -> list[DeliveredFile]:
    """The typed ``files`` with a row whose event date (the local date of ``column``) may not be the landing date,
    found for all files at once; :func:`check_event_dates` then checks and reports each of them."""
    import numpy as np
    import pandas as pd

    if not files:
        return []
    stamps = pd.concat([f.typed[column] for f in files], ignore_index=True)  # type: ignore[index]
    local_days = stamps.dt.tz_convert(timezone).dt.tz_localize(None).dt.normalize().to_numpy()
    landing = np.repeat(
        np.array([np.datetime64(f.day.isoformat(), "ns") for f in files]), [len(f.typed) for f in files]
    )  # type: ignore[arg-type]
    wrong = ~np.isnat(local_days) & (local_days != landing)
    bounds = np.cumsum([0, *(len(f.typed) for f in files)])  # type: ignore[arg-type]
    return [f for i, f in enumerate(files) if wrong[bounds[i] : bounds[i + 1]].any()]


# --------------------------------------------------------------------------------------------------- reports


def _report(ctx: StepContext, file: DeliveredFile, patterns: dict[str, str]) -> dict[str, Any]:
    return {
        "file": file.name,
        "usecase": ctx.usecase.name,
        "landing_key": file.key,
        "landing_date": file.day.isoformat(),
        "arrived_at": file.arrived_at.isoformat() if file.arrived_at else "not recorded",
        "sha256": file.sha256,
        "bytes": len(file.data),
        "source": file.source,
        "expected_patterns": patterns if file.source is None else None,
        "rows": file.rows,
        "status": "quarantined",
        "failed_checks": [c.to_dict() for c in file.checks],
        "notes": file.notes,
    }


def render_report_html(report: dict[str, Any]) -> str:
    """A small self-contained HTML page for a quarantine report."""
    esc = html.escape
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{esc(str(value))}</td>"
            for value in (
                check["expectation_type"],
                check["column"] or "",
                check["unexpected_count"],
                json.dumps(check["sample_unexpected_values"], default=str),
                check["sample_rows"],
                check["hint"],
            )
        )
        + "</tr>"
        for check in report["failed_checks"]
    )
    notes = "".join(f"<li>{esc(note)}</li>" for note in report["notes"])
    facts = "".join(
        f"<tr><th>{esc(key)}</th><td>{esc(str(report[key]))}</td></tr>"
        for key in (
            "file",
            "usecase",
            "source",
            "landing_date",
            "arrived_at",
            "landing_key",
            "sha256",
            "bytes",
            "rows",
            "expected_patterns",
        )
        if report.get(key) is not None
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Quarantined: {esc(report["file"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#eee}}</style>
</head><body>
<h1>Quarantined: {esc(report["file"])}</h1>
<table>{facts}</table>
<h2>Failed checks ({len(report["failed_checks"])})</h2>
<table><tr><th>check</th><th>column</th><th>unexpected</th><th>sample values</th><th>sample rows/lines</th>
<th>how to fix</th></tr>
{rows}
</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""


def _quarantine(ctx: StepContext, file: DeliveredFile, patterns: dict[str, str]) -> dict[str, Any]:
    """Copy a rejected file and its reports to quarantine, then delete it from landing."""
    storage = ctx.lake.storage
    key = quarantine_key(ctx.usecase.name, file.day, file.name)
    if storage.exists(key) and storage.read_bytes(key) != file.data:
        # an earlier file of the same name was quarantined: its evidence stays, this one goes beside it
        key = quarantine_key(ctx.usecase.name, file.day, f"{file.sha256[:12]}/{file.name}")
    storage.write_bytes(key, file.data, file.arrived_at or UNRECORDED_ARRIVAL)
    report = _report(ctx, file, patterns)
    report_uri = ctx.lake.write_json(f"{key}.report.json", report)
    html_uri = ctx.lake.write_text(f"{key}.report.html", render_report_html(report))
    storage.delete([file.key])
    return {
        "file": file.name,
        "landing_date": file.day.isoformat(),
        "source": file.source,
        "rows": file.rows,
        "path": storage.uri(key),
        "report": report_uri,
        "report_html": html_uri,
        "failed_checks": [c.short() for c in file.checks],
    }


# --------------------------------------------------------------------------------------------------- arrivals


def arrival_report(usecase: UseCase, source_name: str, files: list[DeliveredFile]) -> dict[str, Any]:
    """How the committed files of one source arrived against what the use case declares (see
    pipelines.ingest.arrivals): files, rows, first and last arrival, lag and rows later than declared."""
    import pandas as pd

    from pipelines.ingest.arrivals import arrival_summary

    typed = [f for f in files if f.typed is not None]
    recorded = [f.arrived_at for f in files if f.arrived_at is not None]
    report: dict[str, Any] = {
        "files": len(files),
        "rows": sum(len(f.typed) for f in typed),
        "files_without_arrival": len(files) - len(recorded),
    }
    if recorded:
        report["first_arrival"] = min(recorded).isoformat()
        report["last_arrival"] = max(recorded).isoformat()
    if typed:
        rows = pd.concat([f.typed for f in typed], ignore_index=True)
        stamps = pd.to_datetime([f.arrived_at for f in typed], utc=True)  # None: NaT
        arrived = pd.Series(stamps.repeat([len(f.typed) for f in typed]))
        report.update(arrival_summary(usecase, source_name, rows, arrived))
    return report


# --------------------------------------------------------------------------------------------------- step


def _empty_result() -> dict[str, Any]:
    return {
        "files_landed": 0,
        "files_committed": 0,
        "files_quarantined": 0,
        "rows_landed": 0,
        "rows_committed": 0,
        "rows_quarantined": 0,
        "raw_partitions": [],
        "tables_written": {},
        "quarantined": [],
        "validation": {},
        "arrivals": {},
        "dropped_columns": {},
    }


def _load(lake: Lake, key: str, day: date, name: str, from_archive: bool = False) -> DeliveredFile:
    data, arrived_at = lake.storage.read_with_arrival(key)
    recorded = None if arrived_at == UNRECORDED_ARRIVAL else arrived_at
    return DeliveredFile(
        key=key, name=name, day=day, data=data, arrived_at=recorded, from_archive=from_archive
    )


def _committed_names(
    ctx: StepContext, table: str, snapshot: Snapshot, days: list[date]
) -> dict[date, list[str]]:
    """The file names each committed partition of ``days`` was built from (its ``_source_file`` values)."""
    present = [d.isoformat() for d in days if d.isoformat() in snapshot.partitions]
    if not present:
        return {}
    rows = ctx.lake.read(table, present, [SOURCE_FILE, DATE], snapshot.version).to_pydict()
    names: dict[date, set[str]] = {}
    for name, day in zip(rows[SOURCE_FILE], rows[DATE], strict=True):
        names.setdefault(date.fromisoformat(day), set()).add(name)
    return {day: sorted(found) for day, found in names.items()}


def _archived_companions(
    ctx: StepContext, source: str, days: dict[date, list[DeliveredFile]], snapshot: Snapshot
) -> list[DeliveredFile]:
    """The archived files the committed partitions of ``days`` were built from, except names delivered again,
    parsed and typed with the current config. StepFailed (nothing changed) when one is missing or broken."""
    from pipelines.ingest.expectations import to_typed_many

    spec = ctx.usecase.sources[source]
    table = raw_table(ctx.usecase.name, source)
    archived: list[DeliveredFile] = []
    broken: list[str] = []
    for day, names in sorted(_committed_names(ctx, table, snapshot, list(days)).items()):
        delivered = {f.name for f in days[day]}
        for name in names:
            if name in delivered:
                continue
            key = archive_key(ctx.usecase.name, day, name)
            try:
                file = _load(ctx.lake, key, day, name, from_archive=True)
            except LakeError:
                broken.append(f"{ctx.lake.storage.uri(key)}: missing, but {table} date={day} holds its rows")
                continue
            file.source = source
            parse_file(file, source, spec)
            if file.frame is not None:
                [(file.typed, problems)] = to_typed_many(
                    [file.frame], spec, source, ctx.usecase.time.timezone, [file.table]
                )
                file.checks.extend(problems)
            if file.rejected or file.typed is None:
                broken.append(f"{ctx.lake.storage.uri(key)}: {'; '.join(c.short() for c in file.checks)}")
            archived.append(file)
    if broken:
        raise StepFailed(
            "ingest: archived file(s) committed earlier are missing or no longer parse with the current config, so "
            "their raw partitions cannot be rebuilt (nothing was changed): "
            + " | ".join(broken)
            + ". Fix the use case config, or restore the archived files.",
        )
    return archived


@dataclass
class SourceCommit:
    """The rows of one source's partitions to commit (new files plus archived companions) and their facts."""

    rows: pd.DataFrame
    facts: dict[str, dict[str, Any]]
    files: dict[date, list[DeliveredFile]]


def _keep_first_arrivals(days: dict[date, list[DeliveredFile]], snapshot: Snapshot) -> None:
    """A file delivered again with the same bytes as the committed file of its name keeps the committed file's
    arrival: its rows were available since then, and a retried delivery must not change what features saw."""
    for day, files in days.items():
        partition = snapshot.partitions.get(day.isoformat())
        committed = (partition.facts.get("source_files") or []) if partition else []
        first = {(f.get("name"), f.get("sha256")): f.get("arrived_at") for f in committed}
        for file in files:
            earlier = first.get((file.name, file.sha256))
            if earlier is not None and file.arrived_at is not None:
                file.arrived_at = min(file.arrived_at, datetime.fromisoformat(earlier))


def prepare_source_commit(
    ctx: StepContext, source: str, days: dict[date, list[DeliveredFile]], snapshot: Snapshot
) -> SourceCommit:
    """Everything one source's commit writes, built from ``snapshot`` of its raw table: every valid file of each
    day (the new ones and the archived companions), typed, with ``_source_file`` and ``date``."""
    import pandas as pd

    companions = _archived_companions(ctx, source, days, snapshot)
    _keep_first_arrivals(days, snapshot)
    frames, facts, files_by_day = [], {}, {}
    for day, new in sorted(days.items()):
        files = sorted(new + [f for f in companions if f.day == day], key=lambda f: f.name)
        for file in files:
            if file.typed is None:
                raise RuntimeError(f"ingest: {file.key} was not typed before commit")  # a bug, not bad input
            typed = file.typed.copy()
            typed[SOURCE_FILE] = pd.Series([file.name] * len(typed), dtype="string")
            arrived = pd.Timestamp(file.arrived_at) if file.arrived_at else pd.NaT  # NaT: not recorded
            typed[ARRIVED_AT] = pd.Series(arrived, index=typed.index, dtype="datetime64[us, UTC]")
            typed[DATE] = day.isoformat()
            frames.append(typed)
        facts[day.isoformat()] = {
            "source": source,
            "landing_date": day.isoformat(),
            "source_files": [
                {
                    "name": f.name,
                    "sha256": f.sha256,
                    "rows": len(f.typed),
                    "arrived_at": f.arrived_at.isoformat() if f.arrived_at else None,
                }
                for f in files
            ],
        }
        files_by_day[day] = files
    return SourceCommit(pd.concat(frames, ignore_index=True), facts, files_by_day)


def _iso_days(days: dict[date, list[DeliveredFile]]) -> list[str]:
    return sorted(day.isoformat() for day in days)


def _commit_source(
    ctx: StepContext, source: str, days: dict[date, list[DeliveredFile]], first: tuple[Snapshot, SourceCommit]
) -> Commit:
    """One commit of the source's partitions; on a conflict the partitions are rebuilt from the new snapshot
    (the archived companions may have changed), up to COMMIT_ATTEMPTS times."""
    table = raw_table(ctx.usecase.name, source)

    def build(snapshot: Snapshot) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
        prepared = (
            first[1]
            if snapshot.version == first[0].version
            else prepare_source_commit(ctx, source, days, snapshot)
        )
        return prepared.rows, prepared.facts

    def retrying(conflict: CommitConflict) -> None:
        progress(f"ingest: {conflict}; rebuilding from the new snapshot")

    commit = commit_with_retry(
        ctx.lake,
        table,
        build,
        commit_info={"mlops.step": "ingest", "mlops.date": ctx.ds},
        on_conflict=retrying,
        dates=_iso_days(days),
    )
    assert commit is not None
    progress(
        f"ingest: committed {table} version {commit.version}: {commit.rows} rows in {len(commit.dates)} "
        f"partition(s) {commit.dates[0]}..{commit.dates[-1]}"
    )
    return commit


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Ingest every landed file dated on or before the last event date predicted on ctx.day (see the module
    docstring)."""
    from pipelines.ingest.expectations import validate_batch

    usecase = ctx.usecase
    storage = ctx.lake.storage
    found, ignored = _landed_files(ctx.lake, usecase.name)
    for key in ignored:
        ctx.log.warning("ingest: ignoring %s (expected landing/%s/<yyyy-mm-dd>/<file>)", key, usecase.name)
    through = usecase.time.ingested_through(ctx.day)
    landed = [_load(ctx.lake, key, day, name) for day, name, key in found if day <= through]
    result = _empty_result()
    if not landed:
        progress(f"ingest: nothing waiting in landing/{usecase.name}/ up to {through}")
        return result
    progress(f"ingest: {len(landed)} file(s) waiting in landing/{usecase.name}/ up to {through}")
    patterns = {name: source.file_pattern for name, source in usecase.sources.items()}

    # 1. match and parse
    groups: dict[tuple[str, date], list[DeliveredFile]] = {}
    for file in landed:
        file.source = match_source(usecase, file.name)
        if file.source is None:
            file.rows = count_data_lines(file.data)
            file.reject(
                _file_check(
                    "file_name_matches_source",
                    f"the name {file.name!r} matches no source pattern; expected one of {patterns}: rename the file "
                    "or add a source to the use case config",
                    1,
                    [file.name],
                )
            )
            continue
        parse_file(file, file.source, usecase.sources[file.source])
        groups.setdefault((file.source, file.day), []).append(file)

    # 2. validate each source's new files in one GX batch
    for source_name, source in usecase.sources.items():
        batch = [f for f in landed if f.source == source_name and f.frame is not None]
        if not batch:
            continue
        progress(f"ingest: validating {len(batch)} {source_name} file(s) with Great Expectations")
        outcome = validate_batch(source_name, source, [f.frame for f in batch])  # ConfigError: exit 2
        result["validation"][source_name] = {
            "files": len(batch),
            "rows": outcome.rows,
            "expectations": outcome.expectations,
            "seconds": round(outcome.seconds, 3),
            "success": outcome.success,
        }
        progress(
            f"ingest: validated {len(batch)} {source_name} file(s), {outcome.rows} rows, "
            f"{outcome.expectations} expectations in {outcome.seconds:.2f} s"
        )
        for index, checks in outcome.failures.items():
            batch[index].checks.extend(checks)
        type_files(batch, source_name, source, usecase.time.timezone)

    # 3. per source, the rows of every day to rebuild (new files plus the archived files already committed),
    #    prepared for all sources before anything is committed: a broken archive changes nothing
    by_source: dict[str, dict[date, list[DeliveredFile]]] = {}
    for (source_name, day), files in groups.items():
        accepted = [f for f in files if not f.rejected]
        if accepted:
            by_source.setdefault(source_name, {})[day] = accepted
    prepared = {}
    for source_name, days in by_source.items():
        # the partitions this commit rebuilds, and their facts, only: not the source's history
        snapshot = ctx.lake.snapshot(raw_table(usecase.name, source_name), dates=_iso_days(days))
        try:
            prepared[source_name] = (snapshot, prepare_source_commit(ctx, source_name, days, snapshot))
        except StepFailed as exc:
            raise StepFailed(str(exc), result) from None

    # 4. one commit per source, then archive its new files (copy first, delete from landing last)
    for source_name, days in by_source.items():
        report = arrival_report(usecase, source_name, [f for files in days.values() for f in files])
        result["arrivals"][source_name] = report
        if report.get("rows_later_than_declared"):
            progress(
                f"ingest: {source_name}: {report['rows_later_than_declared']} of {report['rows']} row(s) arrived "
                f"later than declared ({report['declared']}), up to {report['max_hours_later_than_declared']} h "
                "later; features use the recorded arrival"
            )
        commit = _commit_source(ctx, source_name, days, prepared[source_name])
        result["raw_partitions"].extend(commit.partition_uris())
        result["tables_written"][commit.table] = commit.version
        for day, files in sorted(days.items()):
            for file in files:
                storage.write_bytes(
                    archive_key(usecase.name, day, file.name),
                    file.data,
                    file.arrived_at or UNRECORDED_ARRIVAL,
                )
                storage.delete([file.key])

    # 5. quarantine the rejected files
    rejected = [f for f in landed if f.rejected]
    for file in rejected:
        result["quarantined"].append(_quarantine(ctx, file, patterns))

    committed = [f for f in landed if not f.rejected]
    for file in committed:
        if file.dropped_columns and file.source is not None:
            dropped = result["dropped_columns"].setdefault(file.source, [])
            dropped.extend(c for c in file.dropped_columns if c not in dropped)
    for source_name, columns in result["dropped_columns"].items():
        progress(
            f"ingest: {source_name}: column(s) {columns} of the files are not in sources.{source_name}.columns "
            "and were dropped; declare them to keep them"
        )
    result.update(
        files_landed=len(landed),
        files_committed=len(committed),
        files_quarantined=len(rejected),
        rows_landed=sum(f.rows for f in landed),
        rows_committed=sum(f.rows for f in committed),
        rows_quarantined=sum(f.rows for f in rejected),
    )
    if result["rows_landed"] != result["rows_committed"] + result["rows_quarantined"]:
        raise RuntimeError(f"ingest: row counts do not add up: {result}")  # a bug, not bad input
    progress(f"ingest: {len(committed)} file(s) committed, {len(rejected)} quarantined")
    if rejected:
        lines = [
            f"  - {q['file']} (landing {q['landing_date']}): {'; '.join(q['failed_checks'])} -> {q['path']} "
            f"(report {q['report_html']})"
            for q in result["quarantined"]
        ]
        raise StepFailed(
            f"ingest: {len(rejected)} of {len(landed)} file(s) quarantined; the other files were committed:\n"
            + "\n".join(lines),
            result,
        )
    return result
