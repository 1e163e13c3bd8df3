"""Features of request records from the online feature snapshot: the one function batch scoring and a live
service use to turn events into the model's input frame.

The features step publishes, beside ``features/<usecase>``, the Delta table ``features_online/<usecase>``: for
every event date E it builds, the lookups a request at E's prediction time P joins, computed by the same Spark
code as the batch features (pipelines.transforms): per transform that reads other rows, one row per key with its
values (the reference row of a ``join_source``, the last observation of an ``asof_join`` with the time it was
observed, the outcome counts of a ``past_rate`` known before P). Row-local transforms (``calendar``) need no
lookup. :func:`feature_frame` applies them to request records (rows shaped like the primary source) in pandas;
a test checks that it reproduces the Spark features of the events of a day.

A request at time ``at`` uses the snapshot of :func:`snapshot_day_for` (the newest prediction time at or before
``at``); as-of values older than ``max_age`` at ``at`` are dropped, past rates are those of the snapshot's
prediction time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import PREDICTION_TIME, UseCase, parse_duration
from pipelines.context import StepFailed
from pipelines.lake import DATE, Lake, online_table, raw_table

if TYPE_CHECKING:
    import pandas as pd

SNAPSHOT_HEADER = "_day"  # the row every served date has, even when all its lookups are empty


@dataclass(frozen=True)
class OnlineSnapshot:
    """The lookups serving one event date: ``lookups[name][key tuple] = (values, observed_at)``."""

    day: str
    prediction_time: pd.Timestamp
    version: int | None
    lookups: Mapping[str, Mapping[tuple[Any, ...], tuple[dict[str, Any], pd.Timestamp | None]]] = field(
        default_factory=dict
    )


def lookup_name(index: int, name: str) -> str:
    """The name of transform ``index`` (its position in features.transforms) in the online snapshot."""
    return f"{index}:{name}"


def _lookup_keys(usecase: UseCase) -> dict[str, list[str]]:
    """Key columns of every lookup the use case's transforms publish, by lookup name."""
    return {
        lookup_name(index, spec.name): list(spec.params["keys"])
        for index, spec in enumerate(usecase.features.transforms)
        if spec.name in LOOKUP_TRANSFORMS
    }


def read_snapshots(
    lake: Lake, usecase: UseCase, days: list[str], version: int | None = None
) -> dict[str, OnlineSnapshot]:
    """The online snapshots of ``days`` from one version of ``features_online/<usecase>``; a day without one
    is missing from the result."""
    import pandas as pd

    table = lake.read(online_table(usecase.name), days, None, version)
    rows = table.to_pandas()
    keys_of = _lookup_keys(usecase)
    found: dict[str, OnlineSnapshot] = {}
    for day, part in rows.groupby(DATE, sort=True):
        header = part[part["lookup"] == SNAPSHOT_HEADER]
        if header.empty:
            raise StepFailed(
                f"{lake.table_uri(online_table(usecase.name))} (version {version}), date {day}: no "
                f"{SNAPSHOT_HEADER!r} row, so not written by the features step; rebuild the features of {day} "
                f"(python -m pipelines features --usecase {usecase.name} --date {day} --start {day} --rebuild)"
            )
        lookups: dict[str, dict[tuple[Any, ...], tuple[dict[str, Any], Any]]] = {}
        for name, key, value, observed in part.loc[
            part["lookup"] != SNAPSHOT_HEADER, ["lookup", "key", "value", "observed_at"]
        ].itertuples(index=False):
            if name not in keys_of:
                raise StepFailed(
                    f"{lake.table_uri(online_table(usecase.name))} (version {version}), date {day}: lookup "
                    f"{name!r} is not one of this use case's transforms ({sorted(keys_of)}); rebuild the "
                    f"features of {day} with the current config (python -m pipelines features --usecase "
                    f"{usecase.name} --date {day} --start {day} --rebuild)"
                )
            parsed = json.loads(key)
            lookups.setdefault(name, {})[tuple(parsed.get(k) for k in keys_of[name])] = (
                json.loads(value),
                None if pd.isna(observed) else pd.Timestamp(observed),
            )
        found[str(day)] = OnlineSnapshot(
            day=str(day),
            prediction_time=pd.Timestamp(header["prediction_time"].iloc[0]),
            version=version,
            lookups=lookups,
        )
    return found


def snapshot_day_for(usecase: UseCase, at: Any) -> date:
    """The event date whose snapshot serves a request at ``at`` (UTC): the newest one whose prediction time is
    at or before ``at`` (its lookups are the newest known then)."""
    import pandas as pd

    at = pd.Timestamp(at)
    at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
    local = at.tz_convert(usecase.time.timezone).date()
    first = local + timedelta(days=usecase.time.prediction_time.days_before + 1)
    for back in range(3):
        day = first - timedelta(days=back)
        if pd.Timestamp(usecase.time.prediction_time_of(day)) <= at:
            return day
    raise AssertionError(f"no prediction time at or before {at}")  # pragma: no cover - one of 3 days is


# --------------------------------------------------------------------------------------------------- records


def request_frame(usecase: UseCase, records: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    """The columns of the primary source from ``records``, typed as configured (timestamps in UTC). A missing
    required column is an error naming it; a missing optional one is NULL; other columns are ignored."""
    import pandas as pd

    frame = pd.DataFrame(records) if not isinstance(records, pd.DataFrame) else records
    source = usecase.features.primary_source
    spec = usecase.sources[source]
    missing = [name for name, column in spec.columns.items() if column.required and name not in frame]
    if missing:
        raise ValueError(
            f"records lack the required column(s) {missing} of source {source!r} (sources.{source}.columns)"
        )
    out = pd.DataFrame(index=range(len(frame)))
    for name, column in spec.columns.items():
        values = frame[name].reset_index(drop=True) if name in frame else pd.Series([None] * len(frame))
        if column.type == "timestamp":
            values = pd.to_datetime(values, utc=True)
        elif column.type in ("int", "float"):
            values = pd.to_numeric(values)
        out[name] = values
    return out


def read_records(lake: Lake, usecase: UseCase, days: list[str], version: int | None = None) -> pd.DataFrame:
    """The events of ``days`` as request records: the primary source's rows at raw table ``version``, typed as
    configured, with their ``date``."""
    from pipelines.steps.features import read_source

    source = usecase.features.primary_source
    snapshot = lake.snapshot(raw_table(usecase.name, source), version, facts=False)
    frame = read_source(lake, usecase, source, snapshot, days, "_record_day").to_pandas()
    frame[DATE] = frame.pop("_record_day").astype(str)
    return frame


def _key_tuples(frame: pd.DataFrame, keys: list[str]) -> list[tuple[Any, ...]]:
    columns = [frame[k].astype(object).where(frame[k].notna(), None).tolist() for k in keys]
    return list(zip(*columns, strict=True))


def _lookup(snapshot: OnlineSnapshot, index: int, name: str) -> Mapping[tuple[Any, ...], Any]:
    return snapshot.lookups.get(lookup_name(index, name), {})


# --------------------------------------------------------------------------------------------------- transforms
# The pandas side of each transform of pipelines.transforms, applied to records with the snapshot's lookups.


def _calendar(
    frame: pd.DataFrame,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    *,
    timestamp: str,
    hour_column: str | None = None,
    timezone: str | None = None,
    hour_output: str = "dep_hour",
) -> None:
    import pandas as pd

    local = pd.to_datetime(frame[timestamp], utc=True).dt.tz_convert(timezone or usecase.time.timezone)
    hour = pd.to_numeric(frame[hour_column]) if hour_column else local.dt.hour
    frame[hour_output] = hour.astype("float64")
    frame["day_of_week"] = (local.dt.dayofweek + 1).astype("float64")
    if "month" not in frame:
        frame["month"] = local.dt.month.astype("float64")


def _join_source(
    frame: pd.DataFrame,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    *,
    source: str,
    keys: list[str],
    columns: dict[str, str],
) -> None:
    found = [lookup.get(key) for key in _key_tuples(frame, keys)]
    for output in columns.values():
        frame[output] = [None if item is None else item[0].get(output) for item in found]


def _asof_join(
    frame: pd.DataFrame,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    *,
    source: str,
    keys: list[str],
    columns: dict[str, str],
    time: str | None = None,
    max_age: str = "24h",
) -> None:
    import pandas as pd

    oldest = at - pd.Timedelta(seconds=parse_duration(max_age, "max_age"))
    found = []
    for key in _key_tuples(frame, keys):
        item = lookup.get(key)
        fresh = item is not None and item[1] is not None and oldest <= item[1] <= at
        found.append(item[0] if fresh else None)
    for output in columns.values():
        frame[output] = [None if values is None else values.get(output) for values in found]


def _past_rate(
    frame: pd.DataFrame,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    *,
    keys: list[str],
    days: int,
    output: str,
) -> None:
    rates = []
    for key in _key_tuples(frame, keys):
        item = lookup.get(key)
        counts = item[0] if item is not None else {}
        rates.append(counts["positives"] / counts["n"] if counts.get("n") else None)
    frame[output] = rates


ONLINE_TRANSFORMS: dict[str, Callable[..., None]] = {
    "calendar": _calendar,
    "join_source": _join_source,
    "asof_join": _asof_join,
    "past_rate": _past_rate,
}
# the transforms whose values come from a lookup of the snapshot (the others read the record only)
LOOKUP_TRANSFORMS = frozenset({"join_source", "asof_join", "past_rate"})


def feature_frame(
    usecase: UseCase,
    records: pd.DataFrame | list[dict[str, Any]],
    snapshot: OnlineSnapshot,
    at: Any = None,
) -> pd.DataFrame:
    """The records (primary-source columns, typed) with their prediction time and every feature output, computed
    from ``snapshot`` as of ``at`` (default: the snapshot's prediction time, as batch scoring uses it)."""
    import pandas as pd

    at = snapshot.prediction_time if at is None else pd.Timestamp(at)
    at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
    if at < snapshot.prediction_time:
        raise ValueError(
            f"the snapshot of {snapshot.day} was made at {snapshot.prediction_time}, after the request time {at}; "
            "use the snapshot of snapshot_day_for(at)"
        )
    frame = request_frame(usecase, records)
    frame[PREDICTION_TIME] = at
    for index, spec in enumerate(usecase.features.transforms):
        if spec.name not in ONLINE_TRANSFORMS:
            raise ValueError(f"transform {spec.name!r} has no online implementation in pipelines.online")
        ONLINE_TRANSFORMS[spec.name](frame, usecase, _lookup(snapshot, index, spec.name), at, **spec.params)
    return frame


def model_inputs(usecase: UseCase, frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The feature columns in model order: numeric as float64 (nulls as NaN), categorical as strings or None."""
    from pipelines.tracking import feature_columns

    columns = feature_columns(usecase)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StepFailed(
            f"{where}: feature columns {missing} are missing; rebuild the features with the current use case "
            f"config (features.numeric/categorical)"
        )
    inputs = frame[columns].copy()
    for column in usecase.features.numeric:
        try:
            inputs[column] = inputs[column].astype("float64")
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"{where}: numeric feature {column!r} is not numeric ({exc})") from None
    for column in usecase.features.categorical:
        inputs[column] = inputs[column].astype(object).where(inputs[column].notna(), None)
    return inputs


def model_input_frame(
    usecase: UseCase,
    records: pd.DataFrame | list[dict[str, Any]],
    snapshot: OnlineSnapshot,
    at: Any = None,
) -> pd.DataFrame:
    """The model's input frame for ``records``: :func:`feature_frame`'s feature columns in model order."""
    return model_inputs(usecase, feature_frame(usecase, records, snapshot, at), f"snapshot of {snapshot.day}")
