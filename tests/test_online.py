"""pipelines.features.online without Spark: which snapshot serves a request time, request records, late requests.

That the online function reproduces the Spark features of a day is tested where Spark builds them
(test_features.py for the flights, test_point_in_time.py on random parcels)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_usecase
from pipelines.features.online import (
    LOOKUP_TRANSFORMS,
    ONLINE_TRANSFORMS,
    OnlineSnapshot,
    feature_frame,
    model_input_frame,
    snapshot_day_for,
)
from pipelines.features.transforms import LOOKUPS, TRANSFORMS

NEW_YORK = "America/New_York"


def new_york(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=NEW_YORK).tz_convert("UTC")


@pytest.fixture(scope="module")
def usecase():
    return load_usecase("flight_delay")


def flight(**changes) -> dict:
    record = {
        "year": 2013,
        "month": 3,
        "day": 5,
        "sched_dep_time": 905,
        "sched_arr_time": 1210,
        "carrier": "UA",
        "flight": 1545,
        "tailnum": "N14228",
        "origin": "EWR",
        "dest": "IAH",
        "distance": 1400.0,
        "hour": 9,
        "minute": 5,
        "time_hour": "2013-03-05T14:00:00Z",
    }
    return {**record, **changes}


def snapshot(at: pd.Timestamp) -> OnlineSnapshot:
    """Lookups as the features step publishes them for flight_delay (transform index: name)."""
    return OnlineSnapshot(
        day="2013-03-05",
        prediction_time=at,
        version=3,
        lookups={
            "1:asof_join": {("EWR",): ({"wx_temp": 41.0, "wx_visib": 10.0}, at - pd.Timedelta(hours=1))},
            "2:join_source": {("N14228",): ({"plane_year": 1999, "plane_seats": 149}, None)},
            "3:past_rate": {("EWR", "IAH"): ({"n": 8, "positives": 2}, None)},
            "4:past_rate": {("UA",): ({"n": 40, "positives": 10}, None)},
        },
    )


def test_every_transform_has_a_spark_lookup_and_a_pandas_side() -> None:
    assert set(ONLINE_TRANSFORMS) == set(TRANSFORMS), (
        "pipelines.features.online lacks the pandas side of a transform"
    )
    assert set(LOOKUPS) == set(LOOKUP_TRANSFORMS), (
        "pipelines.features.transforms.LOOKUPS and pipelines.features.online disagree"
    )


def test_a_request_uses_the_newest_snapshot_made_at_or_before_it(usecase) -> None:
    # flights of March 5 are predicted at 18:00 New York time on March 4
    assert snapshot_day_for(usecase, new_york("2013-03-04 17:59")) == date(2013, 3, 4)
    assert snapshot_day_for(usecase, new_york("2013-03-04 18:00")) == date(2013, 3, 5)
    assert snapshot_day_for(usecase, new_york("2013-03-05 09:00")) == date(2013, 3, 5)
    # across the change to summer time (March 10, 2013 in New York)
    assert snapshot_day_for(usecase, new_york("2013-03-10 17:59")) == date(2013, 3, 10)
    assert snapshot_day_for(usecase, new_york("2013-03-10 18:00")) == date(2013, 3, 11)


def test_features_of_a_request_from_the_snapshot(usecase) -> None:
    at = new_york("2013-03-04 18:00")
    frame = feature_frame(
        usecase, [flight(), flight(carrier="AA", flight=1, origin="JFK", tailnum=None)], snapshot(at)
    )
    first, second = frame.iloc[0], frame.iloc[1]
    assert first["prediction_time"] == at
    assert first["dep_hour"] == 9 and first["day_of_week"] == 2 and first["month"] == 3  # a Tuesday
    assert first["wx_temp"] == 41.0 and first["plane_year"] == 1999
    assert first["route_delay_rate_28d"] == 0.25 and first["carrier_delay_rate_7d"] == 0.25
    assert pd.isna(first["origin_delay_rate_1d"]), "no outcomes for the key: NULL, as Spark gives"
    assert pd.isna(second[["wx_temp", "plane_year", "carrier_delay_rate_7d"]]).all()
    inputs = model_input_frame(usecase, [flight()], snapshot(at))
    assert inputs.dtypes[usecase.features.numeric].eq(np.float64).all()
    assert np.isnan(inputs.loc[0, "origin_delay_rate_1d"])


def test_a_request_at_any_hour_gets_the_features_of_the_snapshots_prediction_time(usecase) -> None:
    """max_age counts back from the snapshot's prediction time, as training's features do, not from the
    request: the weather observed at 17:00 for an 18:00 prediction is every later request's weather (it was
    NULL for requests after 20:00 before); an observation older than max_age at 18:00 is NULL at every hour."""
    at = new_york("2013-03-04 18:00")
    expected = feature_frame(usecase, [flight()], snapshot(at))
    for hours in (0, 2, 2.02, 6, 12, 16, 23.9):
        later = feature_frame(usecase, [flight()], snapshot(at), at=at + pd.Timedelta(hours=hours))
        pd.testing.assert_frame_equal(later, expected)
    assert expected.loc[0, "wx_temp"] == 41.0 and expected.loc[0, "prediction_time"] == at
    assert expected.loc[0, "route_delay_rate_28d"] == 0.25, "past rates are those of the snapshot's time"
    old = snapshot(at)
    old.lookups["1:asof_join"][("EWR",)] = ({"wx_temp": 41.0}, at - pd.Timedelta(hours=3, minutes=1))
    assert pd.isna(feature_frame(usecase, [flight()], old, at=at).loc[0, "wx_temp"]), "3 h 1 min before P"
    with pytest.raises(ValueError, match="after the request time"):
        feature_frame(usecase, [flight()], snapshot(at), at=at - pd.Timedelta(minutes=1))


def test_request_records_are_the_primary_source_columns_only(usecase) -> None:
    at = new_york("2013-03-04 18:00")
    injected = feature_frame(usecase, [flight(wx_temp=-99.0, route_delay_rate_28d=1.0)], snapshot(at))
    assert injected.loc[0, "wx_temp"] == 41.0 and injected.loc[0, "route_delay_rate_28d"] == 0.25
    record = flight()
    del record["origin"]
    with pytest.raises(ValueError, match=r"required column\(s\) \['origin'\] of source 'flights'"):
        feature_frame(usecase, [record], snapshot(at))


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/London", "Australia/Lord_Howe", "UTC"])
@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_the_calendar_of_a_small_batch_equals_pandas(zone: str, unit: str) -> None:
    """local_calendar's per-row path (small batches, the service's single records) gives pandas' hour, ISO day
    of week and month: every hour of a year, so every DST change of the zone is crossed (Lord Howe's is 30 min),
    at seconds before and after each full hour."""
    from pipelines.features.online import SMALL_BATCH, local_calendar

    hours = pd.date_range("2013-01-01", "2014-01-01", freq="h", tz="UTC").as_unit(unit)
    times = hours.append([hours - pd.Timedelta(seconds=1), hours + pd.Timedelta(minutes=30)]).sort_values()
    pandas_side = local_calendar(times, zone)  # larger than SMALL_BATCH: the pandas path
    assert len(times) > SMALL_BATCH
    for start in range(0, len(times), SMALL_BATCH):
        chunk = times[start : start + SMALL_BATCH]
        small = local_calendar(chunk, zone)
        for got, expected in zip(small, pandas_side, strict=True):
            np.testing.assert_array_equal(got, expected[start : start + SMALL_BATCH])
    # a NaT takes the pandas path: NaN, not an error
    with_missing = local_calendar(pd.DatetimeIndex([hours[0], pd.NaT]), zone)
    assert np.isnan(with_missing[0][1]) and not np.isnan(with_missing[0][0])


def test_nulls_are_found_alike_in_small_and_large_batches() -> None:
    """_nulls_as_none's per-value path (small batches) finds the NULLs pandas finds in a large one."""
    from pipelines.features.online import SMALL_BATCH, _nulls_as_none

    values = [
        "JFK",
        None,
        float("nan"),
        np.nan,
        pd.NA,
        pd.NaT,
        np.datetime64("NaT"),
        3,
        2.5,
        "",
        pd.Timestamp(0),
    ]
    large = _nulls_as_none(values * (SMALL_BATCH // len(values) + 1)).tolist()
    small = _nulls_as_none(values).tolist()
    assert len(values) <= SMALL_BATCH < len(large)
    assert (
        small
        == large[: len(values)]
        == ["JFK", None, None, None, None, None, None, 3, 2.5, "", pd.Timestamp(0)]
    )
