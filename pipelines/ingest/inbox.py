"""The landing inbox: where delivered files wait for ingest, and which source a file belongs to.

``landing/<uc>/<day>/<file>`` holds a file until ingest commits it (copied to ``archive/<uc>/<day>/<file>``) or
rejects it (``quarantine/<uc>/<day>/<file>``). :func:`land_file` writes one file atomically (what ``mlops land``
and the replay driver call), :func:`pending_files` lists what waits (the arrival sensor's one listing, without
Great Expectations), and :func:`match_source` names the source whose ``file_pattern`` a file name matches.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from fnmatch import fnmatchcase

from pipelines.config import UseCase
from pipelines.lake import Lake

_DAY_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def landing_key(usecase: str, day: date, name: str) -> str:
    return f"landing/{usecase}/{day.isoformat()}/{name}"


def archive_key(usecase: str, day: date, name: str) -> str:
    return f"archive/{usecase}/{day.isoformat()}/{name}"


def quarantine_key(usecase: str, day: date, name: str) -> str:
    return f"quarantine/{usecase}/{day.isoformat()}/{name}"


def _check_file_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.endswith(".report.json"):
        raise ValueError(f"file name {name!r}: expected a plain name such as flights_2013-01-05.csv")


def _landed_files(lake: Lake, usecase: str) -> tuple[list[tuple[date, str, str]], list[str]]:
    """(day, name, key) of files directly under ``landing/<usecase>/<yyyy-mm-dd>/``, and keys that are not.

    The inbox is the one place the lake is listed: committed data is found through the Delta log only."""
    found: list[tuple[date, str, str]] = []
    ignored: list[str] = []
    prefix = f"landing/{usecase}/"
    for key in lake.storage.list(prefix):
        parts = key[len(prefix) :].split("/")
        if len(parts) != 2 or not _DAY_FOLDER.match(parts[0]):
            ignored.append(key)
            continue
        try:
            found.append((date.fromisoformat(parts[0]), parts[1], key))
        except ValueError:
            ignored.append(key)
    return sorted(found), ignored


def pending_files(lake: Lake, usecase: str, up_to: date | None = None) -> list[str]:
    """Landing keys waiting to be ingested with a date folder on or before ``up_to`` (all when None), sorted.

    Cheap and GX-free: one listing of ``landing/<usecase>/``. Keys outside ``<yyyy-mm-dd>/<file>`` are ignored.
    """
    found, _ = _landed_files(lake, usecase)
    return sorted(key for day, _, key in found if up_to is None or day <= up_to)


def land_file(
    lake: Lake, usecase: str, day: date, name: str, data: bytes, arrived_at: datetime | None = None
) -> str:
    """Write ``data`` atomically into the landing inbox as ``landing/<usecase>/<day>/<name>``; return its URI.
    The file's arrival is the time of this write, or ``arrived_at`` for a backfill of files that arrived
    earlier."""
    _check_file_name(name)
    key = landing_key(usecase, day, name)
    lake.storage.write_bytes(key, data, arrived_at)
    return lake.storage.uri(key)


def match_source(usecase: UseCase, name: str) -> str | None:
    """The first source (config order) whose ``file_pattern`` matches ``name``, or None."""
    for source_name, source in usecase.sources.items():
        if fnmatchcase(name, source.file_pattern):
            return source_name
    return None
