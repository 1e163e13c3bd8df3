"""What a scoring request may contain, from the use case config: one field per column of the primary source
(``sources.<primary>.columns``), typed as configured, required where the column is, within ``min``/``max``,
one of ``allowed``; no other field. A request that breaks a rule gets 422 naming the field."""

from __future__ import annotations

import keyword
import operator
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)

from pipelines.config import ColumnSpec, UseCase

_TYPES: dict[str, Any] = {
    "int": StrictInt,
    "float": StrictFloat,  # an int is a float too; a string is not
    "string": StrictStr,
    "bool": StrictBool,
    "timestamp": datetime,  # ISO 8601; without an offset it is UTC
}


INT64 = (-(2**63), 2**63 - 1)
# the timestamps pandas can hold (nanoseconds in int64): 1677-09-21 to 2262-04-11
FIRST_TIME, LAST_TIME = datetime(1678, 1, 1, tzinfo=UTC), datetime(2262, 1, 1, tzinfo=UTC)


def _within_pandas_range(value: datetime) -> datetime:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not FIRST_TIME <= aware < LAST_TIME:
        raise ValueError(f"a time between {FIRST_TIME:%Y-%m-%d} and {LAST_TIME:%Y-%m-%d} is expected")
    return value


Timestamp = Annotated[datetime, AfterValidator(_within_pandas_range)]


def _annotation(column: ColumnSpec) -> Any:
    if column.allowed is not None and column.type == "string":
        return Literal[tuple(column.allowed)]
    if column.type == "timestamp":
        return Timestamp
    bounds: dict[str, Any] = {}
    if column.type in ("int", "float"):
        low, high = INT64 if column.type == "int" else (None, None)
        bounds = {
            "ge": column.min if column.min is not None else low,
            "le": column.max if column.max is not None else high,
        }
        bounds = {k: (int(v) if column.type == "int" else v) for k, v in bounds.items() if v is not None}
    if column.type == "float":
        bounds["allow_inf_nan"] = False
    kind = _TYPES[column.type]
    return Annotated[kind, Field(**bounds)] if bounds else kind


def _field_name(name: str) -> str:
    """A Python name for column ``name`` (the JSON field keeps the column's name as its alias)."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    if not safe or safe[0].isdigit() or keyword.iskeyword(safe) or safe.startswith("model_"):
        safe = f"c_{safe}"
    return safe


def record_model(usecase: UseCase) -> type[BaseModel]:
    """The pydantic model of one request record of ``usecase`` (extra fields forbidden)."""
    source = usecase.features.primary_source
    fields: dict[str, Any] = {}
    for name, column in usecase.sources[source].columns.items():
        annotation = _annotation(column)
        if column.required:
            fields[_field_name(name)] = (annotation, Field(alias=name))
        else:
            fields[_field_name(name)] = (annotation | None, Field(default=None, alias=name))
    title = "".join(part.capitalize() for part in f"{usecase.name}_{source}_record".split("_"))
    return create_model(
        title,
        __config__=ConfigDict(extra="forbid", populate_by_name=False, title=title),
        __doc__=f"One {source!r} record of use case {usecase.name!r}: the columns known at prediction time "
        f"(sources.{source}.columns).",
        **fields,
    )


def _exactly_one(body: Any) -> Any:
    if (body.records is None) == (body.record is None):
        raise ValueError("give exactly one of `records` (a batch) and `record` (one record)")
    return body


def predict_request_model(usecase: UseCase, record: type[BaseModel]) -> type[BaseModel]:
    """The body of ``POST /v1/usecases/{usecase}/predict``: ``records`` (a batch) or ``record`` (one), and
    optionally ``at``, the time the prediction is made for (default: when the request arrives)."""
    title = "".join(part.capitalize() for part in f"{usecase.name}_predict_request".split("_"))
    return create_model(
        title,
        __config__=ConfigDict(extra="forbid", title=title),
        __validators__={"exactly_one": model_validator(mode="after")(_exactly_one)},
        records=(
            list[record] | None,  # type: ignore[valid-type]
            Field(default=None, min_length=1, description="a batch of records (or give `record`)"),
        ),
        record=(record | None, Field(default=None, description="one record (or give `records`)")),
        at=(
            Timestamp | None,
            Field(
                default=None,
                description="when the prediction is made (ISO 8601, UTC without an offset; default: when the "
                "request arrives). The features are those known then: the newest online snapshot made at or "
                "before it.",
            ),
        ),
    )


def request_rows(body: Any) -> list[dict[str, Any]]:
    """The records of a validated predict request as dicts keyed by column name."""
    items = body.records if body.records is not None else [body.record]
    return [item.model_dump(by_alias=True) for item in items]


def field_errors(errors: list[dict[str, Any]], prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """pydantic errors as FastAPI returns them (``loc``, ``msg``, ``type``), under ``prefix``."""
    out = []
    for error in errors:
        item = {
            "loc": [*prefix, *error.get("loc", ())],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        if "input" in error and isinstance(error["input"], str | int | float | bool | type(None)):
            item["input"] = error["input"]
        out.append(item)
    return out


# ISO 8601 with seconds, an optional fraction of up to 6 digits and an optional UTC offset: the timestamps the
# column checker parses itself (pydantic and pandas read them the same); any other form goes to pydantic
_ISO_TIME = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?"
)


class ColumnChecker:
    """Checks a batch of request records column by column (a few numpy operations per column, not one pydantic
    object per record) and returns them as typed columns (pipelines.features.online.request_columns' form).

    It accepts only what :func:`record_model` accepts, in the forms clients send (JSON numbers, strings, ISO 8601
    timestamps with seconds); for anything else :meth:`columns` returns None and the caller validates with the
    pydantic model, which names the field that broke a rule. A test holds the two to the same answers.
    """

    def __init__(self, usecase: UseCase) -> None:
        self.spec = usecase.sources[usecase.features.primary_source].columns

    def columns(self, records: Any) -> dict[str, Any] | None:
        """Typed columns of ``records`` (a non-empty list of dicts) when every record is valid, else None."""
        if type(records) is not list or not records or set(map(type, records)) != {dict}:
            return None
        names = list(self.spec)
        try:  # every record has every column (the usual case): one transposition in C
            rows = map(operator.itemgetter(*names), records)
            columns = list(zip(*rows, strict=True)) if len(names) > 1 else [list(rows)]
            present = len(records) * len(names)
        except KeyError:  # a column is absent from a record: NULL when optional
            columns, present = [], 0
            for name in names:
                values = [record.get(name, _ABSENT) for record in records]
                absent = values.count(_ABSENT)
                if absent and self.spec[name].required:
                    return None
                columns.append([None if v is _ABSENT else v for v in values] if absent else values)
                present += len(values) - absent
        if present != sum(map(len, records)):
            return None  # a key that is not a column
        return self._typed(dict(zip(names, columns, strict=True)))

    def columns_of(self, data: Any) -> dict[str, Any] | None:
        """Typed columns of ``data``, the records given column by column (column name -> its values, the same
        number of each; the form of the Open Inference Protocol's pandas codec and of MLflow's
        ``dataframe_split``) when every value is valid, else None. No record is made."""
        if type(data) is not dict or not data or not data.keys() <= self.spec.keys():
            return None
        if any(type(values) is not list for values in data.values()):
            return None
        lengths = set(map(len, data.values()))
        if len(lengths) != 1 or not (count := lengths.pop()):
            return None
        if any(column.required for name, column in self.spec.items() if name not in data):
            return None
        return self._typed({name: data.get(name) or [None] * count for name in self.spec})

    def _typed(self, columns: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for name, values in columns.items():
            typed = _checked(self.spec[name], values if type(values) is list else list(values))
            if typed is None:
                return None
            out[name] = typed
        return out


_ABSENT = object()
_NONE = type(None)


def _checked(column: ColumnSpec, values: list[Any]) -> Any:
    """``values`` as request_columns types them when each one is valid for ``column``, else None."""
    import numpy as np

    types = set(map(type, values))
    nulls = _NONE in types
    if nulls:
        if column.required:
            return None
        types.discard(_NONE)
    kind = column.type
    if kind == "int":
        if not types <= {int}:
            return None
        given = [v for v in values if v is not None] if nulls else values
        low = column.min if column.min is not None else INT64[0]
        high = column.max if column.max is not None else INT64[1]
        if given and not (min(given) >= low and max(given) <= high):
            return None
        if nulls:
            return np.array([np.nan if v is None else v for v in values], dtype="float64")
        return np.array(values, dtype="int64")
    if kind == "float":
        if not types <= {float, int}:
            return None
        try:
            array = np.array(
                [np.nan if v is None else v for v in values] if nulls else values, dtype="float64"
            )
        except OverflowError:
            return None  # an integer beyond a float's range
        present = array[np.array([v is not None for v in values])] if nulls else array
        if not np.isfinite(present).all():
            return None  # a NaN or infinity was sent (JSON has neither; pydantic names it)
        if column.min is not None and len(present) and present.min() < column.min:
            return None
        if column.max is not None and len(present) and present.max() > column.max:
            return None
        return array
    if kind == "string":
        if not types <= {str}:
            return None
        if column.allowed is not None and not set(values) <= {*column.allowed, None}:
            return None
    elif kind == "bool":
        if not types <= {bool}:
            return None
    elif kind == "timestamp":
        return _checked_times(values, types)
    else:
        return None
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _checked_times(values: list[Any], types: set[type]) -> Any:
    """ISO 8601 strings (or None) as a UTC DatetimeIndex; None when one is in another form or out of range. Each
    distinct string is parsed once (a batch's records share few times)."""
    import numpy as np
    import pandas as pd

    if not types <= {str}:
        return None
    nanoseconds: dict[Any, int] = {None: np.iinfo("int64").min}  # NaT
    for text in set(values):
        if text is None:
            continue
        if _ISO_TIME.fullmatch(text) is None:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None  # a day that does not exist (pydantic names it)
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        if not FIRST_TIME <= moment < LAST_TIME:
            return None
        nanoseconds[text] = (moment - EPOCH) // MICROSECOND * 1000
    stamps = np.fromiter((nanoseconds[v] for v in values), dtype="int64", count=len(values))
    return pd.DatetimeIndex(stamps.view("datetime64[ns]"), tz="UTC")


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
