"""The model's inputs: the one function that train, evaluate, batch scoring and the REST service feed models with.

:func:`model_input_columns` turns a DataFrame or a dict of column arrays into the feature columns in model order
(``features.numeric`` then ``features.categorical``): numeric columns as float64 arrays (NULL as NaN), categorical
columns as object arrays of canonical strings or None.

The canonical string of a categorical value is what the Spark features build writes for it
(``F.col(name).cast("string")`` in pipelines.steps.features): training reads that table, while scoring and serving
see request values (ints, floats, booleans, numpy scalars, strings), and both must give the model the same input:

- a string stays as it is; None, NaN, NaT and pd.NA are None;
- a boolean is ``"true"`` / ``"false"``;
- an integer (Python int, numpy integer) is its decimal digits (``"3"``), and so is an integral float of a column
  declared ``type: int`` (a nullable int column read into pandas is float64);
- a float, or any number of a column declared ``type: float``, is written as Spark writes a double (Java's
  ``Double.toString``): ``"3.0"``, ``"0.1"``, ``"1.0E7"``, ``"1.0E-4"``, ``"Infinity"``.

A column's declared type comes from the use case: the primary source's columns, and the outputs of transforms that
take columns of another source (``join_source``, ``asof_join``: ``source`` + ``columns``). Other columns are
written by the value's own type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipelines.context import StepFailed

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipelines.config import UseCase

Columns = dict[str, Any]  # column name -> numpy array

SMALL_BATCH = 64  # up to this many rows, per-row Python beats pandas' per-call overhead


def model_columns(usecase: UseCase) -> list[str]:
    """Model inputs in order: numeric then categorical features."""
    return [*usecase.features.numeric, *usecase.features.categorical]


def model_input_columns(usecase: UseCase, columns: Mapping[str, Any], where: str) -> Columns:
    """The feature columns in model order: numeric as float64 arrays (NULL as NaN; a value that is not a number
    is an error naming the column), categorical as object arrays of canonical strings or None (module doc).
    ``columns`` is a DataFrame or a mapping of column name to values (pipelines.features.online.feature_columns_of's
    dict). ``where`` names the rows in error messages."""
    import numpy as np
    import pandas as pd

    missing = [c for c in model_columns(usecase) if c not in columns]
    if missing:
        raise StepFailed(
            f"{where}: feature columns {missing} are missing; rebuild the features with the current use case "
            f"config (features.numeric/categorical)"
        )
    out: Columns = {}
    for column in usecase.features.numeric:  # inline: the service calls this for every request
        values = columns[column]
        try:
            if isinstance(values, pd.Series):
                out[column] = values.astype("float64").to_numpy()
            else:
                out[column] = np.asarray(values, dtype="float64")
        except (TypeError, ValueError):
            out[column] = _numeric(values, column, where)
    declared: dict[str, str | None] | None = None
    for column in usecase.features.categorical:
        values = columns[column]
        text = _already_text(values)
        if text is None:
            if declared is None:  # only where a column holds other values than strings
                declared = declared_types(usecase)
            text = canonical_strings(values, declared.get(column))
        out[column] = text
    return out


def model_inputs(usecase: UseCase, frame: Mapping[str, Any], where: str) -> pd.DataFrame:
    """:func:`model_input_columns` as a DataFrame with a fresh RangeIndex (the frame a model fits or scores)."""
    import pandas as pd

    return pd.DataFrame(model_input_columns(usecase, frame, where))


def declared_types(usecase: UseCase) -> dict[str, str | None]:
    """The config type (int, float, string, bool, timestamp) of every column of the primary source and of every
    transform output taken from another source's column (``source`` + ``columns`` params); None where that
    source or column is not declared."""
    primary = usecase.sources[usecase.features.primary_source]
    types: dict[str, str | None] = {name: spec.type for name, spec in primary.columns.items()}
    for spec in usecase.features.transforms:
        params = spec.params
        columns, source = params.get("columns"), usecase.sources.get(str(params.get("source")))
        if isinstance(columns, Mapping) and source is not None:
            for taken, output in columns.items():
                column = source.columns.get(taken)
                types[str(output)] = column.type if column is not None else None
    return types


# --------------------------------------------------------------------------------------------------- numeric


def _numeric(values: Any, column: str, where: str) -> np.ndarray:
    """A numeric column numpy did not take as float64: its NULLs (pd.NA) as NaN, or an error naming it."""
    import pandas as pd

    items = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else _object_array(values)
    try:
        return pd.to_numeric(pd.Series(items), errors="raise").astype("float64").to_numpy()
    except (TypeError, ValueError) as exc:
        raise StepFailed(f"{where}: numeric feature {column!r} is not numeric ({exc})") from None


# --------------------------------------------------------------------------------------------------- categorical


def nulls_as_none(values: Any) -> np.ndarray:
    """``values`` as an object array with every NULL (None, NaN, NaT, pd.NA) as None (the array itself when it
    has none)."""
    import numpy as np
    import pandas as pd

    values = np.asarray(values, dtype=object)
    if len(values) <= SMALL_BATCH:  # a string (the usual key) is never NULL: no pandas call for it
        flags = [not isinstance(value, str) and bool(pd.isna(value)) for value in values.tolist()]
        missing = np.array(flags, dtype=bool) if any(flags) else None
    else:
        missing = pd.isna(values)
        missing = missing if missing.any() else None
    if missing is not None:
        values = values.copy()
        values[missing] = None
    return values


def _already_text(values: Any) -> np.ndarray | None:
    """The object array of ``values`` (NULLs as None) when every value is a string or NULL, else None: the
    request path's usual case, checked without formatting anything (the array itself when it has no NULL)."""
    import numpy as np

    if type(values) is not np.ndarray:
        import pandas as pd

        if not isinstance(values, pd.Series) or values.dtype != object:
            return None
        values = values.to_numpy()
    if values.dtype != object:
        return None
    if len(values) <= SMALL_BATCH:
        items = values.tolist()
        for value in items:
            if type(value) is not str and value is not None and not isinstance(value, str):
                return None
        return values  # strings and None
    import pandas as pd

    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "string" or kind == "empty":
        return nulls_as_none(values)
    return None


def canonical_strings(values: Any, declared: str | None = None) -> np.ndarray:
    """``values`` as an object array of canonical strings or None (module doc); ``declared``: the column's
    config type, if any. Numpy integer and boolean arrays and integral floats of an int column are converted
    vectorized; other values one by one (each distinct value formatted once)."""
    import numpy as np
    import pandas as pd

    if isinstance(values, pd.Series | pd.Index):
        values = _pandas_values(values)
    elif not isinstance(values, np.ndarray):
        values = _object_array(list(values))
    kind = values.dtype.kind
    if kind == "b":
        return np.where(values, "true", "false").astype(object)
    if kind in "iu":
        if declared == "float":
            return canonical_strings(values.astype("float64"), declared)
        return values.astype(str).astype(object)
    if kind == "f":
        return _floats(values.astype("float64", copy=False), declared)
    if kind == "U":
        return values.astype(object)
    if kind != "O":
        values = values.astype(object)  # datetimes, bytes: one by one
    items = values.tolist()
    if all(type(value) is str for value in items):
        return values
    memo: dict[tuple[type, Any], str | None] = {}
    out = np.empty(len(items), dtype=object)
    for i, value in enumerate(items):
        if type(value) is str:
            out[i] = value
            continue
        try:
            key = (type(value), value)
            text = memo.get(key, _MISSING)
        except TypeError:  # an unhashable value
            key, text = None, _MISSING
        if text is _MISSING:
            text = canonical_string(value, declared)
            if key is not None:
                memo[key] = text
        out[i] = text
    return out


_MISSING: Any = object()


def canonical_string(value: Any, declared: str | None = None) -> str | None:
    """One value's canonical string (module doc), or None for NULL."""
    import numpy as np
    import pandas as pd

    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return spark_double(float(value)) if declared == "float" else str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return None
        if declared == "int" and number.is_integer():
            return str(int(number))
        return spark_double(number)
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # an array-like value: not NULL
        pass
    return str(value)


def spark_double(number: float) -> str:
    """``number`` as Spark writes a double cast to string (Java's ``Double.toString``): the shortest digits that
    read back as the same double, in decimal notation from 1e-3 up to 1e7 (``"3.0"``, ``"0.001"``), in
    scientific notation outside it (``"1.0E7"``, ``"1.0E-4"``), ``"NaN"``, ``"Infinity"``, ``"-0.0"``."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "-0.0" if math.copysign(1.0, number) < 0 else "0.0"
    text = repr(number)  # Python's shortest round-trip digits
    sign = "-" if text.startswith("-") else ""
    mantissa, _, exponent = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    stripped = digits.lstrip("0")
    point = len(whole) + int(exponent or 0) - (len(digits) - len(stripped))  # digits before the decimal point
    digits = stripped.rstrip("0")
    power = point - 1  # the exponent of scientific notation
    if -3 <= power < 7:
        if point <= 0:
            body = "0." + "0" * -point + digits
        elif point >= len(digits):
            body = digits + "0" * (point - len(digits)) + ".0"
        else:
            body = digits[:point] + "." + digits[point:]
    else:
        body = f"{digits[0]}.{digits[1:] or '0'}E{power}"
    return sign + body


def _floats(values: np.ndarray, declared: str | None) -> np.ndarray:
    """Canonical strings of a float64 array: integral values of an int column vectorized, others once per
    distinct value."""
    import numpy as np

    out = np.full(len(values), None, dtype=object)
    present = ~np.isnan(values)
    taken = values[present]
    if declared == "int" and np.isfinite(taken).all() and (taken == np.trunc(taken)).all():
        out[present] = taken.astype("int64").astype(str).astype(object)
        return out
    # distinct by bits, not by value: -0.0 and 0.0 are written apart, as Spark writes them
    distinct, positions = np.unique(taken.view("int64"), return_inverse=True)
    texts = np.array([canonical_string(v, declared) for v in distinct.view("float64").tolist()], dtype=object)
    out[present] = texts[positions]
    return out


def _pandas_values(values: pd.Series | pd.Index) -> np.ndarray:
    """A pandas column as numpy: a nullable extension column without NULLs in its numpy dtype (the vectorized
    paths), with NULLs as an object array (NULL as None)."""
    import pandas as pd

    dtype = values.dtype
    if isinstance(dtype, pd.api.extensions.ExtensionDtype):
        numpy_dtype = getattr(dtype, "numpy_dtype", None)
        if numpy_dtype is not None and numpy_dtype.kind in "biuf" and not values.hasnans:
            return values.to_numpy(dtype=numpy_dtype)
        return values.to_numpy(dtype=object, na_value=None)
    return values.to_numpy()


def _object_array(values: Any) -> np.ndarray:
    """``values`` as a 1-D object array, each item as it is (np.asarray would make [True, 3] the ints [1, 3])."""
    import numpy as np

    if isinstance(values, np.ndarray):
        return values.astype(object)
    values = list(values)
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
