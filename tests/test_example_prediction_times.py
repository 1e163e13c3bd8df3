"""The two example use cases with a prediction time per event, as their users would declare it.

- ``flight_arrival_delay`` predicted two hours before each departure (``prediction_time: {lead: 2h}``), on the
  demo's files landed at the times they would arrive (schedule the day before at noon, weather through the day,
  outcomes the next morning) and a second planes table landing mid-morning, through the real ingest and features
  steps: weather, plane and past-delay features are each what had arrived by that flight's own time.
- ``appointment_no_show`` predicted when each appointment is booked (``prediction_time: {column: booked_at}``):
  each appointment's clinic no-show rate counts the outcomes known by its booking.

The expected values are computed here in plain pandas, from the raw tables the lake holds (with their recorded
arrivals), independently of the Spark code.
"""

from __future__ import annotations

import importlib.util
import os
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import yaml
from _features_fixtures import typed

from pipelines.config import UseCase, load_usecase
from pipelines.features.model_inputs import model_inputs
from pipelines.lake import ARRIVED_AT, LATEST, Lake, features_table, predictions_table, raw_table
from pipelines.modeling.tracking import load_model, model_name, predict_proba

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parent.parent


def _declare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, change: dict) -> UseCase:
    """The example use case ``name`` with ``change`` applied to its time section, in a temporary config
    folder (loaded as any use case is); the score schedule left to default from the prediction time."""
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    (config / "platform.yaml").write_text((REPO / "config" / "platform.yaml").read_text())
    declared = yaml.safe_load((REPO / "config" / "usecases" / f"{name}.yaml").read_text())
    declared["time"]["prediction_time"] = change["prediction_time"]
    declared["schedules"].pop("score", None)
    for source, columns in change.get("columns", {}).items():
        declared["sources"][source]["columns"].update(columns)
    if "lookback_days" in change:
        declared["features"]["lookback_days"] = change["lookback_days"]
    (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(declared, sort_keys=False))
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(config))
    return load_usecase(name)


def _generator():
    """examples/generate_appointments.py, the documented generator of the appointment_no_show data."""
    spec = importlib.util.spec_from_file_location(
        "generate_appointments", REPO / "examples" / "generate_appointments.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raw(lake: Lake, usecase: UseCase, source: str) -> pd.DataFrame:
    frame = lake.read_frame(raw_table(usecase.name, source))
    frame[ARRIVED_AT] = pd.to_datetime(frame[ARRIVED_AT], utc=True)
    return frame


def _past_mean(
    history: pd.DataFrame, key: str, value: object, at: pd.Timestamp, days: int
) -> tuple[float, int]:
    """Mean label and count of the outcomes of ``key == value`` known in [at - days, at)."""
    rows = history[
        (history[key] == value)
        & history["label"].notna()
        & (history["known_at"] >= at - timedelta(days=days))
        & (history["known_at"] < at)
    ]
    return (float(rows["label"].mean()) if len(rows) else np.nan), len(rows)


def test_flights_predicted_two_hours_before_departure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlops_env: Path
) -> None:
    """Each flight's features are what had arrived two hours before it: the last weather observation at its
    origin within 3 hours that had landed by then, the planes table that had landed by then (a new one lands at
    09:00 on Jan 6: morning flights keep the old seats, later ones get the new), and its carrier's mean arrival
    delay over the outcomes known in the 7 days before. The day's last prediction time (22:00 local) is when
    the score runs."""
    from mlops_cli.demo_data import DemoData
    from pipelines.cli import run_step
    from pipelines.ingest.inbox import land_file

    usecase = _declare(tmp_path, monkeypatch, "flight_arrival_delay", {"prediction_time": {"lead": "2h"}})
    assert usecase.schedules.score == "0 22 * * *", "the day's last prediction time, 2 hours before midnight"
    zone = ZoneInfo(usecase.time.timezone)
    lake = Lake(os.environ["MLOPS_LAKE_URI"])
    data = DemoData.load(usecase)
    first, days = date(2013, 1, 1), 9
    for offset in range(days):
        for item in data.day_deliveries(first + timedelta(days=offset), usecase.time.timezone):
            land_file(lake, usecase.name, item.day, item.name, item.content, item.arrived_at)
    new_planes_at = datetime(2013, 1, 6, 9, 0, tzinfo=zone)
    planes = data.planes.copy()
    planes["seats"] = (pd.to_numeric(planes["seats"], errors="coerce") + 1).astype("Int64").astype(str)
    land_file(
        lake,
        usecase.name,
        date(2013, 1, 6),
        "planes_2013-01-06.csv",
        planes.to_csv(index=False).encode(),
        new_planes_at,
    )
    last = first + timedelta(days=days - 1)
    run_step(["ingest", "--usecase", usecase.name, "--date", last.isoformat()])
    run_step(["features", "--usecase", usecase.name, "--date", last.isoformat()])

    built = lake.read_frame(features_table(usecase.name), [d.isoformat() for d in (date(2013, 1, 6), last)])
    built["prediction_time"] = pd.to_datetime(built["prediction_time"], utc=True)
    built["time_hour"] = pd.to_datetime(built["time_hour"], utc=True)
    assert (built["time_hour"] - built["prediction_time"] == timedelta(hours=2)).all()
    assert built["prediction_time"].nunique() > 10, "a time per departure hour, not one per day"

    weather = _raw(lake, usecase, "weather")
    weather["time_hour"] = pd.to_datetime(weather["time_hour"], utc=True)
    flights, outcomes = _raw(lake, usecase, "flights"), _raw(lake, usecase, "outcomes")
    flights["time_hour"] = pd.to_datetime(flights["time_hour"], utc=True)
    keys = usecase.time.outcome.keys
    history = flights.merge(
        outcomes[[*keys, "arr_delay", ARRIVED_AT]].rename(columns={ARRIVED_AT: "outcome_arrived"}), on=keys
    )
    history["label"] = pd.to_numeric(history["arr_delay"])
    declared = history["time_hour"] + timedelta(seconds=usecase.time.outcome.delay_seconds)
    history["known_at"] = pd.concat([declared, history["outcome_arrived"], history[ARRIVED_AT]], axis=1).max(
        axis=1
    )
    old_seats = dict(
        zip(data.planes["tailnum"], pd.to_numeric(data.planes["seats"], errors="coerce"), strict=True)
    )

    built = built.merge(flights[[*keys, "tailnum"]], on=keys, validate="one_to_one")
    sample = built.sample(n=min(250, len(built)), random_state=3)
    checked = {"weather": 0, "new planes": 0, "old planes": 0, "past": 0}
    for row in sample.itertuples():
        at = row.prediction_time
        seen = weather[
            (weather["origin"] == row.origin)
            & (weather["time_hour"] <= at)
            & (weather["time_hour"] >= at - timedelta(hours=3))
            & (weather[ARRIVED_AT] <= at)
        ].sort_values(["time_hour", "temp"], ascending=[False, True])
        want_temp = float(seen["temp"].iloc[0]) if len(seen) else np.nan
        assert np.isclose(row.wx_temp, want_temp, equal_nan=True), (row.flight, at, row.wx_temp, want_temp)
        checked["weather"] += int(len(seen) > 0)
        if isinstance(row.tailnum, str) and row.tailnum in old_seats and not np.isnan(old_seats[row.tailnum]):
            new = at >= new_planes_at
            want_seats = old_seats[row.tailnum] + (1 if new else 0)
            assert row.plane_seats == want_seats, (row.tailnum, at, row.plane_seats, want_seats)
            checked["new planes" if new else "old planes"] += 1
        mean, count = _past_mean(history, "carrier", row.carrier, at, 7)
        assert np.isclose(row.carrier_mean_delay_7d, mean, equal_nan=True), (row.carrier, at)
        assert row.carrier_outcomes_7d == count
        checked["past"] += int(count > 0)
    assert min(checked.values()) > 10, checked

    # the score run after the day's last prediction time scores each flight with its own features, late
    version = _register_ridge(usecase, lake, trained_on=date(2013, 1, 6))
    result = run_step(["score", "--usecase", usecase.name, "--date", last.isoformat()])
    assert result["model_version"] == version
    predictions = lake.read_frame(predictions_table(usecase.name))
    assert "2013-01-09" in set(predictions["date"]) and min(predictions["date"]) >= "2013-01-06"
    scored = lake.read_frame(features_table(usecase.name), sorted(set(predictions["date"])))
    merged = predictions.merge(scored, on=keys, suffixes=("", "_features"), validate="one_to_one")
    assert len(merged) == len(predictions) == len(scored)
    assert (merged["prediction_time"] == merged["prediction_time_features"]).all()
    model = load_model(f"models:/{model_name(usecase)}/{version}")
    want = predict_proba(model, model_inputs(usecase, merged, "test"))
    assert np.allclose(merged["prediction"].to_numpy(), want), "the features the model saw are the table's"
    assert merged["scored_late"].all(), "scored after each flight's own prediction time: late, and said so"
    assert result["rows_late"] == len(predictions) and result["late"] == sorted(set(predictions["date"]))


def _register_ridge(usecase: UseCase, lake: Lake, trained_on: date) -> int:
    """A ridge fitted on the labelled features built so far, logged and registered as a promoted candidate."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.config import CandidateSpec, load_profile
    from pipelines.lake import labels_table
    from pipelines.modeling import fit_candidate, input_example, log_fitted_model
    from pipelines.modeling.tracking import configure_mlflow

    configure_mlflow(load_profile(), usecase)
    keys = usecase.features.keys
    train = lake.read_frame(features_table(usecase.name)).merge(
        lake.read_frame(labels_table(usecase.name)), on=[*keys, "date"]
    )
    train = train[train["date"] < trained_on.isoformat()].dropna(subset=[usecase.target.column])
    x = model_inputs(usecase, train, "test")
    spec = CandidateSpec(name="ridge", family="ridge", params={"alpha": 1.0})
    fitted = fit_candidate(spec, usecase, x, train[usecase.target.column].to_numpy(), seed=1)
    with mlflow.start_run(tags={"usecase": usecase.name, "logical_date": trained_on.isoformat()}):
        info = log_fitted_model(fitted, input_example(x))
    version = mlflow.register_model(info.model_uri, model_name(usecase)).version
    client = MlflowClient()
    client.set_model_version_tag(model_name(usecase), version, "logical_date", trained_on.isoformat())
    client.set_registered_model_alias(model_name(usecase), "champion", version)
    return int(version)


def test_appointments_predicted_when_booked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlops_env: Path
) -> None:
    """Each appointment is predicted at its booking time (a column), up to 20 days ahead: its clinic's no-show
    rate counts the attendance records known in the 14 days before it was booked, not before the day."""
    from pipelines.cli import run_step

    generate = _generator().generate

    usecase = _declare(
        tmp_path,
        monkeypatch,
        "appointment_no_show",
        {
            "prediction_time": {"column": "booked_at", "max_lead": "21d"},
            "columns": {"appointments": {"booked_at": {"type": "timestamp", "required": True}}},
            "lookback_days": 36,  # 21 days of booking ahead + 14 days of rate + the 2-hour label delay
        },
    )
    assert usecase.time.prediction_time.column == "booked_at"
    lake = Lake(os.environ["MLOPS_LAKE_URI"])
    zone = ZoneInfo(usecase.time.timezone)
    generated = generate(date(2024, 1, 1), date(2024, 2, 20), seed=3)
    appointments = generated["appointments"]
    appointments["scheduled_at"] = pd.to_datetime(appointments["scheduled_at"], utc=True)
    appointments = appointments[appointments["lead_days"] <= 20].copy()
    rng = np.random.default_rng(3)
    appointments["booked_at"] = (
        appointments["scheduled_at"]
        - pd.to_timedelta(appointments["lead_days"], unit="D")
        - pd.to_timedelta(rng.integers(0, 6 * 60, len(appointments)), unit="min")
    )
    appointments[ARRIVED_AT] = appointments["booked_at"]  # the booking system sends it when booked
    attendance = generated["attendance"]
    attendance["scheduled_at"] = pd.to_datetime(attendance["scheduled_at"], utc=True)
    attendance = attendance[attendance["appointment_id"].isin(appointments["appointment_id"])].copy()
    attendance["no_show"] = attendance["no_show"].replace("", None)
    attendance[ARRIVED_AT] = attendance["scheduled_at"] + pd.to_timedelta(
        rng.integers(2 * 60, 40 * 60, len(attendance)), unit="min"
    )
    for source, frame in (("appointments", appointments), ("attendance", attendance)):
        spec = usecase.sources[source]
        local = frame["scheduled_at"].dt.tz_convert(zone).dt.date
        for day in sorted(set(local)):
            rows = typed(frame[local == day], spec, f"{source}_{day}.csv").assign(date=day.isoformat())
            lake.write_partitions(raw_table(usecase.name, source), rows, read_version=LATEST)

    run_step(["features", "--usecase", usecase.name, "--date", "2024-02-21"])

    built = lake.read_frame(features_table(usecase.name), ["2024-02-12", "2024-02-19", "2024-02-20"])
    built = built.merge(
        appointments[["appointment_id", "booked_at"]], on="appointment_id", validate="one_to_one"
    )
    assert (pd.to_datetime(built["prediction_time"], utc=True) == built["booked_at"]).all()
    history = appointments.merge(
        attendance[["appointment_id", "no_show", ARRIVED_AT]].rename(columns={ARRIVED_AT: "outcome_arrived"}),
        on="appointment_id",
    )
    history["label"] = history["no_show"].map({"YES": 1.0, "NO": 0.0})
    declared = history["scheduled_at"] + timedelta(hours=2)
    history["known_at"] = pd.concat([declared, history["outcome_arrived"], history[ARRIVED_AT]], axis=1).max(
        axis=1
    )
    differs_from_day = 0
    for row in built.sample(n=min(300, len(built)), random_state=5).itertuples():
        want, _ = _past_mean(history, "clinic", row.clinic, row.booked_at, 14)
        assert np.isclose(row.clinic_no_show_rate_14d, want, equal_nan=True), (
            row.appointment_id,
            row.booked_at,
        )
        day_start = pd.Timestamp(row.scheduled_at).tz_convert(zone).normalize().tz_convert("UTC")
        at_day, _ = _past_mean(history, "clinic", row.clinic, day_start, 14)
        differs_from_day += int(not np.isclose(want, at_day, equal_nan=True))
    assert differs_from_day > 100, "booked days ahead: the rate at booking is not the rate on the day"


def test_a_time_per_event_is_declared_one_way_and_not_served_with_daily_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlops_env: Path
) -> None:
    """The config takes one way of timing a prediction, names the field to fix otherwise, and the REST service
    refuses a use case whose events each have their own prediction time (its snapshot holds one time a day)."""
    from pipelines.config import ConfigError
    from pipelines.serving.service import ServeSettings, Service

    for change, message in (
        ({"lead": "2h", "at": "18:00"}, r"\['at'\] describe a daily prediction time"),
        ({"lead": "2h", "column": "time_hour"}, "not both"),
        ({"column": "time_hour"}, "column needs max_lead"),
        ({"column": "carrier", "max_lead": "1d"}, "must be a timestamp column of the primary source"),
        ({"lead": "soon"}, "expected a duration such as 90m"),
    ):
        with pytest.raises(ConfigError, match=message):
            _declare(
                tmp_path / str(len(message)), monkeypatch, "flight_arrival_delay", {"prediction_time": change}
            )
    usecase = _declare(tmp_path, monkeypatch, "flight_arrival_delay", {"prediction_time": {"lead": "26h"}})
    assert usecase.time.prediction_time.day_offset == 1 and usecase.schedules.score == "0 22 * * *"
    assert usecase.time.lookback_needed_days == 3, (
        "26 hours before the event's day, plus the 6-hour label delay"
    )
    with pytest.raises(ConfigError, match="serves a daily prediction time only"):
        Service(usecase, Lake(os.environ["MLOPS_LAKE_URI"]), ServeSettings())
