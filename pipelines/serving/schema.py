"""What a scoring request may contain, from the use case config: one field per column of the primary source
(``sources.<primary>.columns``), typed as configured, required where the column is, within ``min``/``max``,
one of ``allowed``; no other field. A request that breaks a rule gets 422 naming the field."""

from __future__ import annotations

import keyword
from datetime import UTC, datetime
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
