"""Land any use case's files in the lake's landing zone: ``mlops land --usecase U PATH... [--date D]``.

Each file (a directory stands for the files in it) must match one source's ``file_pattern``. It lands under
``landing/<usecase>/<date>/<name>``, one atomic write per object (rename on a local lake, a single PUT on S3), so
the arrival sensor never sees a partial file:

- with ``--date``, every file lands whole under that date (the way to land a reference snapshot);
- without it, an events source's rows are dated by their ``event_time`` in ``time.timezone``, as ingest checks
  them: a file whose rows share one date lands whole under it; a file that spans several dates is split into one
  file of the same name per date (same header and values, in the original row order).

A file's arrival is recorded with it (the local file's modification time, or S3's ``LastModified``): features
use a row only once it had arrived. A backfill of files that came earlier gives their time with
``--arrived-at TIME``; history whose arrival is unknown lands with ``--arrived-at declared``, and its rows count
from their declared times (the use case's ``time`` section).

Every file is checked before anything lands: an unmatched name, a reference source without ``--date``, or rows
whose event time is missing or does not parse refuse the whole command with the file, the field and the fix.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import ConfigError, SourceSpec, UseCase

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.lake import Lake


class LandingError(ConfigError):
    """A file cannot be landed as given; the message names the file and the fix."""


@dataclass(frozen=True)
class Landing:
    """One object to write: its date folder, name and bytes, and where it came from."""

    day: date
    name: str
    data: bytes
    origin: Path
    rows: int | None = None


def expand_paths(paths: list[Path]) -> list[Path]:
    """The files named, a directory standing for its files (not hidden, sorted, not recursive)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise LandingError(f"{path}: no such file or directory")
    if not files:
        raise LandingError(f"no files to land in {[str(p) for p in paths]}")
    return files


def _read_all_columns(data: bytes, source: SourceSpec, origin: Path) -> pd.DataFrame:
    """Every column of the file as text (CSV) or as stored (Parquet)."""
    import pandas as pd

    try:
        if source.format == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding=source.encoding)
    except Exception as exc:  # any parse error of a user's file
        raise LandingError(f"{origin}: cannot be read as {source.format}: {exc}") from None


def event_dates(frame: pd.DataFrame, source: SourceSpec, usecase: UseCase, origin: Path) -> pd.Series:
    """Each row's event date: the local date (``time.timezone``) of the source's ``event_time``, parsed like
    ingest parses it. Raises :class:`LandingError` naming rows whose event time is missing or unparseable."""
    import pandas as pd

    from pipelines.ingest.expectations import convert_column

    column = source.event_time
    assert column is not None
    if column not in frame.columns:
        raise LandingError(
            f"{origin}: has no column {column!r} (the event_time of its source); columns: {sorted(frame.columns)}"
        )
    values = frame[column]
    if not pd.api.types.is_datetime64_any_dtype(values):
        text = values.astype("string")
        values = convert_column(text.mask(text.isin(source.null_values)), "timestamp", usecase.time.timezone)
    elif values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    missing = values.isna()
    if bool(missing.any()):
        rows = [int(i) + 1 for i in frame.index[missing][:5]]
        raise LandingError(
            f"{origin}: {int(missing.sum())} row(s) (data rows {rows}...) have no parseable {column!r}, so their "
            f"date is unknown: fix the values, or land the file under one date with --date"
        )
    return values.dt.tz_convert(usecase.time.timezone).dt.date


def _encode(frame: pd.DataFrame, source: SourceSpec) -> bytes:
    if source.format == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    return frame.to_csv(index=False).encode(source.encoding)


def plan_landing(usecase: UseCase, paths: list[Path], day: date | None = None) -> list[Landing]:
    """What ``mlops land`` will write for ``paths``, every file checked first (see the module docstring)."""
    from pipelines.ingest.inbox import match_source

    planned: list[Landing] = []
    for path in expand_paths(paths):
        source_name = match_source(usecase, path.name)
        if source_name is None:
            patterns = {name: spec.file_pattern for name, spec in usecase.sources.items()}
            raise LandingError(
                f"{path}: the name matches no source of use case {usecase.name!r}; rename the file to match one "
                f"of sources.<source>.file_pattern: {patterns}"
            )
        source = usecase.sources[source_name]
        data = path.read_bytes()
        if day is not None:
            planned.append(Landing(day, path.name, data, path))
            continue
        if source.kind == "reference" or source.event_time is None:
            raise LandingError(
                f"{path}: source {source_name!r} is a {source.kind} source without event_time, so the file has "
                "no date of its own: give the date it holds (e.g. the snapshot date) with --date YYYY-MM-DD"
            )
        frame = _read_all_columns(data, source, path)
        dates = event_dates(frame, source, usecase, path)
        found = sorted(set(dates))
        if len(found) == 1:
            planned.append(Landing(found[0], path.name, data, path, len(frame)))
            continue
        for when in found:
            part = frame[(dates == when).to_numpy()]
            planned.append(Landing(when, path.name, _encode(part, source), path, len(part)))
    clashes = _clashes(planned)
    if clashes:
        raise LandingError(
            f"two files would land under the same name and date: {clashes}; land them separately or rename one"
        )
    return planned


def _clashes(planned: list[Landing]) -> list[str]:
    seen: dict[tuple[date, str], Path] = {}
    clashes = []
    for item in planned:
        key = (item.day, item.name)
        if key in seen and seen[key] != item.origin:
            clashes.append(f"{item.day}/{item.name} from {seen[key]} and {item.origin}")
        seen[key] = item.origin
    return clashes


def parse_arrival(text: str | None, timezone: str) -> datetime | None:
    """``mlops land --arrived-at``: an ISO time (an offset, or else read in ``timezone``) as an aware datetime;
    ``declared`` for history whose arrival is unknown (:data:`pipelines.lake.UNRECORDED_ARRIVAL`)."""
    from zoneinfo import ZoneInfo

    from pipelines.lake import UNRECORDED_ARRIVAL

    if text is None:
        return None
    if text == "declared":
        return UNRECORDED_ARRIVAL
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise LandingError(
            f"--arrived-at {text!r}: expected an ISO time such as 2024-01-02T06:00 or 2024-01-02T06:00+00:00, "
            "or 'declared' for history whose arrival is unknown"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(timezone))


def land_paths(
    lake: Lake,
    usecase: UseCase,
    paths: list[Path],
    day: date | None = None,
    arrived_at: datetime | None = None,
) -> list[str]:
    """Check every file, then write each planned object atomically into the landing zone; return the URIs. The
    files arrive now, or at ``arrived_at`` (a backfill)."""
    from pipelines.ingest.inbox import land_file

    planned = plan_landing(usecase, paths, day)
    return [land_file(lake, usecase.name, item.day, item.name, item.data, arrived_at) for item in planned]
