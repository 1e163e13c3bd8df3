"""`mlops land --usecase U PATH...`: any use case's files into the landing zone, on a local lake and on S3 (moto
server over HTTP); a file spanning several dates is split by event date, bad input lands nothing."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from mlops_cli.cli import main
from mlops_cli.demo_data import DemoData
from pipelines.cli import run_step
from pipelines.config import load_usecase
from pipelines.ingest.inbox import landing_key
from pipelines.lake import UNRECORDED_ARRIVAL, Lake, raw_table

UC = "flight_delay"
DAYS = [date(2013, 1, 2), date(2013, 1, 3), date(2013, 1, 4)]


@pytest.fixture(scope="module")
def demo() -> DemoData:
    return DemoData.load(load_usecase(UC))


def _one_file_for_days(
    demo: DemoData, folder: Path, name: str = "flights_q1.csv"
) -> tuple[Path, pd.DataFrame]:
    """The schedules of DAYS as one CSV file, as a user would download it."""
    frames = [pd.read_csv(io.BytesIO(demo.schedule_files(d)[f"flights_{d}.csv"]), dtype=str) for d in DAYS]
    every = pd.concat(frames, ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(every.to_csv(index=False))
    return path, every


def _landed(lake: Lake) -> list[str]:
    return [k for k in lake.storage.list(f"landing/{UC}") if not k.endswith(".json")]


def _land_and_ingest(lake: Lake, demo: DemoData, tmp_path: Path, capsys) -> None:
    path, every = _one_file_for_days(demo, tmp_path / "incoming")
    weather = tmp_path / "incoming" / "weather_2013-01-03.csv"
    weather.write_bytes(demo.weather_files(DAYS[1])[f"weather_{DAYS[1]}.csv"])

    assert main(["land", "--usecase", UC, str(path.parent)]) == 0
    printed = capsys.readouterr().out.split()
    expected = sorted(
        [landing_key(UC, d, "flights_q1.csv") for d in DAYS] + [landing_key(UC, DAYS[1], weather.name)]
    )
    assert _landed(lake) == expected
    assert sorted(printed) == sorted(lake.storage.uri(k) for k in expected)
    for day in DAYS:
        landed = pd.read_csv(
            io.BytesIO(lake.storage.read_bytes(landing_key(UC, day, "flights_q1.csv"))), dtype=str
        )
        same_day = every[every["day"] == str(day.day)].reset_index(drop=True)
        pd.testing.assert_frame_equal(landed, same_day)

    # what landed is what ingest expects: the day's rows commit, nothing is quarantined
    result = run_step(["ingest", "--usecase", UC, "--date", DAYS[1].isoformat()])
    assert not result.get("failed") and result["files_quarantined"] == 0, result
    flights = lake.partitions(raw_table(UC, "flights"))
    assert flights[DAYS[1].isoformat()].rows == int((every["day"] == "3").sum())


def test_land_splits_a_file_by_event_date_and_ingest_commits_it(
    mlops_env: Path, demo, tmp_path, capsys
) -> None:
    _land_and_ingest(Lake(str(mlops_env / "lake")), demo, tmp_path, capsys)


def test_land_on_s3(s3_lake: str, demo, tmp_path, capsys) -> None:
    from pipelines.lake import open_lake

    _land_and_ingest(open_lake(s3_lake), demo, tmp_path, capsys)


def test_reference_file_needs_a_date_and_bad_files_land_nothing(
    mlops_env: Path, demo, tmp_path, capsys
) -> None:
    lake = Lake(str(mlops_env / "lake"))
    planes = tmp_path / "planes_2013.csv"
    planes.write_bytes(demo.schedule_files(date(2013, 1, 1))["planes_2013-01-01.csv"])
    flights, _ = _one_file_for_days(demo, tmp_path / "in")

    assert main(["land", "--usecase", UC, str(flights), str(planes)]) == 2
    err = capsys.readouterr().err
    assert "planes_2013.csv: source 'planes' is a reference source" in err and "--date YYYY-MM-DD" in err
    assert _landed(lake) == [], "nothing lands when one file is refused"

    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    assert main(["land", "--usecase", UC, str(stray)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt: the name matches no source" in err and "flights_*.csv" in err

    broken = tmp_path / "bad" / "flights_bad.csv"
    broken.parent.mkdir()
    frame = pd.read_csv(flights, dtype=str)
    frame.loc[5, "time_hour"] = "yesterday"
    broken.write_text(frame.to_csv(index=False))
    assert main(["land", "--usecase", UC, str(broken)]) == 2
    err = capsys.readouterr().err
    assert "1 row(s) (data rows [6]...) have no parseable 'time_hour'" in err and "--date" in err
    assert _landed(lake) == []

    assert main(["land", "--usecase", UC, "--date", "2013-01-01", str(planes)]) == 0
    assert _landed(lake) == [landing_key(UC, date(2013, 1, 1), "planes_2013.csv")]
    assert lake.storage.read_bytes(_landed(lake)[0]) == planes.read_bytes(), "a whole file lands unchanged"


def test_a_backfill_says_when_its_files_arrived(mlops_env: Path, demo, tmp_path, capsys) -> None:
    """`--arrived-at TIME` records the files' arrival (a time without an offset is read in the use case's time
    zone); `--arrived-at declared` marks history whose arrival is unknown, and ingest then leaves the rows'
    arrival NULL (they count from their declared times); anything else is refused before a file lands."""
    lake = Lake(str(mlops_env / "lake"))
    path, _ = _one_file_for_days(demo, tmp_path / "in")

    assert main(["land", "--usecase", UC, "--arrived-at", "2013-01-01T12:00", str(path)]) == 0
    noon_in_new_york = datetime(2013, 1, 1, 17, 0, tzinfo=UTC)
    assert [lake.storage.read_with_arrival(k)[1] for k in _landed(lake)] == [noon_in_new_york] * len(DAYS)

    assert main(["land", "--usecase", UC, "--arrived-at", "declared", str(path)]) == 0
    assert [lake.storage.read_with_arrival(k)[1] for k in _landed(lake)] == [UNRECORDED_ARRIVAL] * len(DAYS)
    run_step(["ingest", "--usecase", UC, "--date", DAYS[-1].isoformat()])
    flights = lake.read_frame(raw_table(UC, "flights"))
    assert len(flights) > 0 and flights["_arrived_at"].isna().all()

    capsys.readouterr()
    assert main(["land", "--usecase", UC, "--arrived-at", "yesterday", str(path)]) == 2
    assert "--arrived-at 'yesterday': expected an ISO time" in capsys.readouterr().err
    assert _landed(lake) == []


def test_a_date_only_event_time_is_the_local_day_in_a_zone_west_of_utc(
    mlops_env: Path, tmp_path, capsys
) -> None:
    """appointment_no_show runs in São Paulo (UTC-3): an appointment given as a bare date lands under that date
    and is committed as its local midnight (03:00 UTC), not as UTC midnight, which is the evening before there."""
    lake = Lake(str(mlops_env / "lake"))
    usecase = load_usecase("appointment_no_show")
    rows = pd.DataFrame(
        {
            "appointment_id": [1, 2],
            "patient_id": [10, 11],
            "clinic": ["north", "south"],
            "specialty": ["cardiology", "dermatology"],
            "gender": ["F", "M"],
            "age_band": ["30-49", "70+"],
            "lead_days": [3, 10],
            "sms_reminder": [1, 0],
            "scheduled_at": ["2024-01-05", "2024-01-06"],
        }
    )
    path = tmp_path / "appointments_week.csv"
    rows.to_csv(path, index=False)

    assert main(["land", "--usecase", usecase.name, str(path)]) == 0
    landed = [k for k in lake.storage.list(f"landing/{usecase.name}")]
    assert landed == [landing_key(usecase.name, date(2024, 1, d), path.name) for d in (5, 6)]
    result = run_step(["ingest", "--usecase", usecase.name, "--date", "2024-01-05"])
    assert result["files_quarantined"] == 0 and result["rows_committed"] == 2, result
    committed = lake.read_frame(raw_table(usecase.name, "appointments")).sort_values("appointment_id")
    assert committed["scheduled_at"].tolist() == [
        pd.Timestamp("2024-01-05T03:00:00Z"),
        pd.Timestamp("2024-01-06T03:00:00Z"),
    ]
    assert committed["date"].tolist() == ["2024-01-05", "2024-01-06"]
