"""Features of request records from the online feature snapshot: the one function batch scoring and a live
service use to turn events into the model's input frame.

The features step publishes, beside ``features/<usecase>``, the Delta table ``features_online/<usecase>``: for
every event date E it builds, the lookups a request at E's prediction time P joins, computed by the same Spark
code as the batch features (pipelines.features.transforms): per transform that reads other rows, one row per key with its
values (the reference row of a ``join_source``, the last observation of an ``asof_join`` with the time it was
observed, the outcome counts of a ``past_rate`` known before P). Row-local transforms (``calendar``) need no
lookup. :func:`feature_columns_of` applies them to request records (rows shaped like the primary source),
column by column; a test checks that it reproduces the Spark features of the events of a day.

A request at time ``at`` uses the snapshot of :func:`snapshot_day_for` (the newest prediction time P at or before
``at``) and gets the features a prediction at P had, whatever the hour: as-of values are fresh when observed within
``max_age`` before P (not before ``at``), past rates are those of P, and the features' prediction time is P. So every
input is the one training and batch scoring computed for a prediction at P: an as-of input is NULL only where
training would also have had NULL (dropping values older than ``max_age`` at ``at`` made the weather of a flight
NULL 21 hours of 24 with a daily snapshot, a pattern no model was trained on).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import PREDICTION_TIME, UseCase, parse_duration
from pipelines.context import StepFailed
from pipelines.features.model_inputs import SMALL_BATCH, model_input_columns
from pipelines.features.model_inputs import nulls_as_none as _nulls_as_none
from pipelines.lake import ARRIVED_AT, DATE, Lake, online_table, raw_table

if TYPE_CHECKING:
    import numpy as np
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
    # per lookup, tables derived from it once and reused by every request (see _join_source, _past_rate)
    derived: dict[str, dict[Any, Any]] = field(default_factory=dict, compare=False, repr=False)


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
    from zoneinfo import ZoneInfo

    import pandas as pd

    at = at if isinstance(at, datetime) else pd.Timestamp(at)
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    local = at.astimezone(ZoneInfo(usecase.time.timezone)).date()
    first = local + timedelta(days=usecase.time.prediction_time.day_offset + 1)
    for back in range(3):
        day = first - timedelta(days=back)
        if usecase.time.prediction_time_of(day) <= at:
            return day
    raise AssertionError(f"no prediction time at or before {at}")  # pragma: no cover - one of 3 days is


# --------------------------------------------------------------------------------------------------- records
# Features are computed column by column (a dict of arrays, one per column): one request record costs a few
# lookups, not a DataFrame's per-column bookkeeping; batch scoring makes one DataFrame of the result.

Columns = dict[str, Any]  # column name -> numpy array, or a tz-aware DatetimeIndex for a timestamp column


Records = Any  # a DataFrame, a list of dicts, or request_columns' result (typed columns, taken as they are)


def request_columns(usecase: UseCase, records: Records) -> Columns:
    """The columns of the primary source from ``records``, typed as configured (timestamps as UTC
    DatetimeIndex). A missing required column is an error naming it; a missing optional one is NULL; other
    columns are ignored. A dict is taken as typed columns already (pipelines.serving.schema.ColumnChecker)."""
    import numpy as np
    import pandas as pd

    if isinstance(records, dict):
        return dict(records)

    source = usecase.features.primary_source
    spec = usecase.sources[source]
    is_frame = isinstance(records, pd.DataFrame)
    present = set(records.columns) if is_frame else set().union(*records) if records else set()
    missing = [name for name, column in spec.columns.items() if column.required and name not in present]
    if missing:
        raise ValueError(
            f"records lack the required column(s) {missing} of source {source!r} (sources.{source}.columns)"
        )
    out: Columns = {}
    for name, column in spec.columns.items():
        if is_frame:
            values = records[name] if name in present else pd.Series([None] * len(records), dtype=object)
        else:
            values = [record.get(name) for record in records]
        if column.type == "timestamp":
            out[name] = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
        elif column.type in ("int", "float"):
            out[name] = _numeric_array(pd.to_numeric(values))
        elif is_frame:
            out[name] = values.to_numpy()
        else:
            out[name] = values if isinstance(values, np.ndarray) else _object_array(values)
    return out


def _numeric_array(values: Any) -> Any:
    """A numpy array of numbers (a nullable pandas column's NULLs as NaN)."""
    import numpy as np
    import pandas as pd

    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
            return (
                values.to_numpy(dtype="float64", na_value=np.nan)
                if values.isna().any()
                else values.to_numpy(dtype=values.dtype.numpy_dtype)
            )
        return values.to_numpy()
    return np.asarray(values)


def _object_array(values: list[Any]) -> Any:
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def read_records(lake: Lake, usecase: UseCase, days: list[str], version: int | None = None) -> pd.DataFrame:
    """The events of ``days`` as request records: the primary source's rows at raw table ``version``, typed as
    configured, with their ``date``."""
    from pipelines.features.raw_reads import read_source

    source = usecase.features.primary_source
    snapshot = lake.snapshot(raw_table(usecase.name, source), version, facts=False, dates=days)
    frame = read_source(lake, usecase, source, snapshot, days, "_record_day").to_pandas()
    frame = frame.drop(columns=[ARRIVED_AT])  # a record holds the event's own columns
    frame[DATE] = frame.pop("_record_day").astype(str)
    return frame


def _key_tuples(data: Columns, keys: list[str]) -> list[tuple[Any, ...]]:
    """One tuple of key values per row, a NULL as None (as the snapshot's keys are written)."""
    return list(zip(*(_nulls_as_none(data[key]).tolist() for key in keys), strict=True))


# --------------------------------------------------------------------------------------------------- transforms
# The pandas side of each transform of pipelines.features.transforms, applied to request columns with the snapshot's
# lookups. A lookup's outputs are lists (None for NULL); pandas types them when a frame is made.


def _calendar(
    data: Columns,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    derived: dict[Any, Any],
    *,
    timestamp: str,
    hour_column: str | None = None,
    timezone: str | None = None,
    hour_output: str = "event_hour",
) -> None:
    import numpy as np

    hour, day_of_week, month = local_calendar(data[timestamp], timezone or usecase.time.timezone)
    data[hour_output] = np.asarray(data[hour_column], dtype="float64") if hour_column else hour
    data["day_of_week"] = day_of_week
    if "month" not in data:
        data["month"] = month


_TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def local_calendar(times: Any, timezone: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hour, ISO day of week 1-7, month) of UTC ``times`` in ``timezone``, as float64 arrays (NaN for NaT).

    A small batch without NaT goes through ``datetime.fromtimestamp`` row by row (10 us for one row against
    330 us through pandas' tz_convert and field accessors); both give the same integers."""
    from zoneinfo import ZoneInfo

    import numpy as np
    import pandas as pd

    if not isinstance(times, pd.DatetimeIndex):
        times = pd.DatetimeIndex(times)
    if len(times) <= SMALL_BATCH and times.tz is not None and not times.hasnans:
        zone, per_second = ZoneInfo(timezone), _TICKS_PER_SECOND[times.unit]
        local = [datetime.fromtimestamp(t // per_second, zone) for t in times.asi8.tolist()]
        return (
            np.array([t.hour for t in local], dtype="float64"),
            np.array([t.isoweekday() for t in local], dtype="float64"),
            np.array([t.month for t in local], dtype="float64"),
        )
    local = times.tz_convert(timezone)
    return (
        local.hour.to_numpy(dtype="float64"),
        (local.dayofweek + 1).to_numpy(dtype="float64"),
        local.month.to_numpy(dtype="float64"),
    )


def _set_outputs(data: Columns, outputs: list[str], per_row: list[tuple[Any, ...]]) -> None:
    """Store per-row tuples of output values as one list per output column."""
    transposed = list(zip(*per_row, strict=True)) if per_row else [() for _ in outputs]
    for output, values in zip(outputs, transposed, strict=True):
        data[output] = list(values)


def _join_source(
    data: Columns,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    derived: dict[Any, Any],
    *,
    source: str,
    keys: list[str],
    columns: dict[str, str],
) -> None:
    outputs = tuple(columns.values())
    table = derived.get(outputs)
    if table is None:  # key -> the output values, made once per snapshot
        table = derived[outputs] = {
            key: tuple(item[0].get(o) for o in outputs) for key, item in lookup.items()
        }
    tuples = _key_tuples(data, keys)
    _set_outputs(data, list(outputs), list(map(table.get, tuples, itertools.repeat((None,) * len(outputs)))))


def _asof_join(
    data: Columns,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    derived: dict[Any, Any],
    *,
    source: str,
    keys: list[str],
    columns: dict[str, str],
    time: str | None = None,
    max_age: str = "24h",
) -> None:
    """The last observation per key if it was taken within ``max_age`` before ``at``, the snapshot's prediction
    time (the window training used), else NULLs; the fresh values are tabled once per snapshot."""
    outputs = tuple(columns.values())
    table = derived.get(outputs)
    if table is None:
        oldest = at - timedelta(seconds=parse_duration(max_age, "max_age"))
        table = derived[outputs] = {
            key: tuple(values.get(o) for o in outputs)
            for key, (values, observed) in lookup.items()
            if observed is not None and oldest <= observed <= at
        }
    tuples = _key_tuples(data, keys)
    _set_outputs(data, list(outputs), list(map(table.get, tuples, itertools.repeat((None,) * len(outputs)))))


def _past_rate(
    data: Columns,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    derived: dict[Any, Any],
    *,
    keys: list[str],
    days: int,
    output: str,
) -> None:
    rates = derived.get("rates")
    if rates is None:  # key -> positives / n (no outcomes: NULL, as Spark gives), made once per snapshot
        rates = derived["rates"] = {
            key: counts["positives"] / counts["n"] if counts.get("n") else None
            for key, (counts, _) in lookup.items()
        }
    data[output] = list(map(rates.get, _key_tuples(data, keys)))


def _past_mean(
    data: Columns,
    usecase: UseCase,
    lookup: Mapping[tuple[Any, ...], Any],
    at: pd.Timestamp,
    derived: dict[Any, Any],
    *,
    keys: list[str],
    days: int,
    output: str,
    count_output: str | None = None,
) -> None:
    means = derived.get("means")
    if means is None:  # key -> (sum / n, n), made once per snapshot; a key without outcomes: (NULL, 0)
        means = derived["means"] = {
            key: (counts["sum"] / counts["n"], float(counts["n"])) for key, (counts, _) in lookup.items()
        }
    found = list(map(means.get, _key_tuples(data, keys), itertools.repeat((None, 0.0))))
    data[output] = [mean for mean, _ in found]
    if count_output is not None:
        data[count_output] = [n for _, n in found]


ONLINE_TRANSFORMS: dict[str, Callable[..., None]] = {
    "calendar": _calendar,
    "join_source": _join_source,
    "asof_join": _asof_join,
    "past_rate": _past_rate,
    "past_mean": _past_mean,
}
# the transforms whose values come from a lookup of the snapshot (the others read the record only)
LOOKUP_TRANSFORMS = frozenset({"join_source", "asof_join", "past_rate", "past_mean"})


def feature_columns_of(
    usecase: UseCase,
    records: Records,
    snapshot: OnlineSnapshot,
    at: Any = None,
) -> Columns:
    """The records' columns (primary source, typed) with their prediction time and every feature output,
    computed from ``snapshot`` as of its prediction time P: a request at ``at`` (default P; at or after P, the
    snapshot being the one of :func:`snapshot_day_for`) gets exactly the features batch scoring and training
    computed for a prediction at P, and its ``prediction_time`` column is P. The one function batch scoring and
    the service compute features with."""
    import numpy as np
    import pandas as pd

    made = snapshot.prediction_time
    made = made.tz_localize("UTC") if made.tzinfo is None else made.tz_convert("UTC")
    if at is not None:
        at = pd.Timestamp(at)
        at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
        if at < made:
            raise ValueError(
                f"the snapshot of {snapshot.day} was made at {made}, after the request time {at}; "
                "use the snapshot of snapshot_day_for(at)"
            )
    columns = request_columns(usecase, records)
    rows = len(next(iter(columns.values())))
    columns[PREDICTION_TIME] = pd.DatetimeIndex(
        np.full(rows, made.tz_localize(None).to_datetime64()), tz="UTC"
    )
    for index, spec in enumerate(usecase.features.transforms):
        if spec.name not in ONLINE_TRANSFORMS:
            raise ValueError(
                f"transform {spec.name!r} has no online implementation in pipelines.features.online"
            )
        name = lookup_name(index, spec.name)
        derived = snapshot.derived.setdefault(name, {})
        ONLINE_TRANSFORMS[spec.name](
            columns, usecase, snapshot.lookups.get(name, {}), made, derived, **spec.params
        )
    return columns


def feature_frame(
    usecase: UseCase,
    records: Records,
    snapshot: OnlineSnapshot,
    at: Any = None,
) -> pd.DataFrame:
    """:func:`feature_columns_of` as a DataFrame (batch scoring's form)."""
    import pandas as pd

    return pd.DataFrame(feature_columns_of(usecase, records, snapshot, at))


def model_input_frame(
    usecase: UseCase,
    records: Records,
    snapshot: OnlineSnapshot,
    at: Any = None,
) -> pd.DataFrame:
    """The model's input frame for ``records``: :func:`feature_frame`'s feature columns in model order
    (pipelines.features.model_inputs.model_input_columns, the function every model is fed through)."""
    import pandas as pd

    columns = feature_columns_of(usecase, records, snapshot, at)
    return pd.DataFrame(model_input_columns(usecase, columns, f"snapshot of {snapshot.day}"))
