"""pipelines.features.model_inputs: training (the Spark-built features table) and scoring/serving (raw request values) give
models the same inputs, also for categorical features that are numbers or booleans."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from _model_fixtures import FAST_CANDIDATES, fast_usecase, synthetic_day

from pipelines import modeling
from pipelines.config import UseCase, load_profile
from pipelines.context import StepFailed
from pipelines.features.model_inputs import (
    SMALL_BATCH,
    canonical_strings,
    declared_types,
    model_input_columns,
    model_inputs,
    spark_double,
)

# categoricals that are not strings in the source: an int column, a bool column and a float column
INT_CAT, BOOL_CAT, FLOAT_CAT = "hour", "red_eye", "gate_band"


def mixed_usecase() -> UseCase:
    """flight_delay with the int source column ``hour``, a bool and a float source column as categoricals."""
    body = fast_usecase([c for c in FAST_CANDIDATES if c.family != "keras_mlp"]).model_dump()
    columns = body["sources"]["flights"]["columns"]
    columns[BOOL_CAT] = {"type": "bool"}
    columns[FLOAT_CAT] = {"type": "float"}
    body["features"]["categorical"] = [*body["features"]["categorical"], INT_CAT, BOOL_CAT, FLOAT_CAT]
    return UseCase.model_validate(body)


def raw_rows(usecase: UseCase, rows: int, seed: int = 0) -> pd.DataFrame:
    """Feature rows as a request brings them: the int, bool and float categoricals as numpy numbers (with NULLs:
    a nullable int column is float64 in pandas), a label that depends on them."""
    rng = np.random.default_rng(seed)
    frame = synthetic_day(
        usecase.model_copy(update={"features": _strings_only(usecase)}), date(2013, 1, 5), rows
    )
    hour = rng.integers(0, 24, rows).astype("float64")
    hour[rng.random(rows) < 0.05] = np.nan
    red_eye = rng.random(rows) < 0.3
    band = rng.choice([0.1, 3.0, 2.5, 1e7, 1e-4], rows)
    frame[INT_CAT], frame[BOOL_CAT], frame[FLOAT_CAT] = hour, red_eye, band
    logit = np.where(red_eye, 1.5, -0.5) + np.where(np.nan_to_num(hour) > 18, 1.0, -0.3) + (band == 3.0)
    frame[usecase.target.column] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame


def _strings_only(usecase: UseCase):
    features = usecase.features
    strings = [c for c in features.categorical if c not in (INT_CAT, BOOL_CAT, FLOAT_CAT)]
    return features.model_copy(update={"categorical": strings})


@pytest.fixture(scope="module")
def spark():
    from pipelines.features.spark import get_spark

    return get_spark(load_profile())


def spark_features(spark, usecase: UseCase, raw: pd.DataFrame) -> pd.DataFrame:
    """``raw`` as the features table holds it: categoricals cast by Spark (``F.col(c).cast("string")``, as
    pipelines.steps.features._select_output writes them), from the source types (int column as long, with NULLs)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    categorical = usecase.features.categorical
    table = pa.table(
        {
            "_row": pa.array(np.arange(len(raw))),
            **{c: pa.array(raw[c].to_numpy(dtype=object), pa.string()) for c in ("carrier", "origin")},
            INT_CAT: pa.array(raw[INT_CAT].astype("Int64").to_numpy(dtype=object, na_value=None), pa.int64()),
            BOOL_CAT: pa.array(raw[BOOL_CAT].to_numpy(), pa.bool_()),
            FLOAT_CAT: pa.array(raw[FLOAT_CAT].to_numpy(), pa.float64()),
        }
    )
    cast = spark.createDataFrame(table).select(
        "_row", *[F.col(c).cast("string").alias(c) for c in categorical]
    )
    strings = cast.toArrow().to_pandas().sort_values("_row").reset_index(drop=True)
    frame = raw.copy()
    for column in categorical:
        frame[column] = strings[column].to_numpy(dtype=object)
    return frame


def request_forms(usecase: UseCase, raw: pd.DataFrame) -> dict[str, dict[str, object]]:
    """The same rows as a request may bring them to model_input_columns."""
    numeric = {c: raw[c].to_numpy() for c in usecase.features.numeric}
    strings = {c: raw[c].to_numpy(dtype=object) for c in ("carrier", "origin")}
    hour = raw[INT_CAT].to_numpy()
    python_hour = [None if np.isnan(v) else int(v) for v in hour.tolist()]
    return {
        "frame (int column read as float64 with NaN)": raw,
        "nullable pandas dtypes": {
            **numeric,
            **strings,
            INT_CAT: raw[INT_CAT].astype("Int64"),
            BOOL_CAT: raw[BOOL_CAT].astype("boolean"),
            FLOAT_CAT: raw[FLOAT_CAT],
        },
        "python values (JSON records)": {
            **numeric,
            **strings,
            INT_CAT: python_hour,
            BOOL_CAT: [bool(v) for v in raw[BOOL_CAT]],
            FLOAT_CAT: [float(v) for v in raw[FLOAT_CAT]],
        },
        "numpy scalars in object arrays": {
            **numeric,
            **strings,
            INT_CAT: np.array([None if v is None else np.int64(v) for v in python_hour], dtype=object),
            BOOL_CAT: np.array([np.bool_(v) for v in raw[BOOL_CAT]], dtype=object),
            FLOAT_CAT: np.array([np.float64(v) for v in raw[FLOAT_CAT]], dtype=object),
        },
    }


def assert_same_inputs(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], form: str) -> None:
    assert list(got) == list(expected), form
    for column, values in expected.items():
        if values.dtype == object:
            assert got[column].dtype == object, (form, column)
            assert got[column].tolist() == values.tolist(), (form, column)
        else:
            np.testing.assert_array_equal(got[column], values, err_msg=f"{form}: {column}")


@pytest.mark.spark
def test_spark_cast_strings_and_request_values_give_the_same_inputs_and_scores(spark) -> None:
    usecase = mixed_usecase()
    assert declared_types(usecase)[INT_CAT] == "int" and declared_types(usecase)[FLOAT_CAT] == "float"
    raw = raw_rows(usecase, 600)
    table = spark_features(spark, usecase, raw)
    assert set(table[BOOL_CAT]) == {"true", "false"} and "3.0" in set(table[FLOAT_CAT])
    assert set(table[INT_CAT].dropna()) == {str(h) for h in range(24)}

    expected = model_input_columns(usecase, table, "the features table")
    X = model_inputs(usecase, table, "the features table")
    y = table[usecase.target.column]
    fitted = [modeling.fit_candidate(spec, usecase, X, y, 3) for spec in usecase.candidates]
    encoder = modeling.TabularEncoder.fit(X, usecase.features.numeric, usecase.features.categorical)
    forms = request_forms(usecase, raw)
    for form, columns in forms.items():
        for rows in (
            slice(0, 7),
            slice(0, None),
        ):  # a few rows (per-value paths) and a batch (vectorized ones)
            if isinstance(columns, pd.DataFrame):
                part = columns.iloc[rows]
            else:
                part = {c: v[rows] for c, v in columns.items()}
            got = model_input_columns(usecase, part, form)
            want = {c: v[rows] for c, v in expected.items()}
            assert_same_inputs(got, want, form)
            for model in fitted:
                np.testing.assert_array_equal(
                    model.scores(pd.DataFrame(got)), model.scores(pd.DataFrame(want)), err_msg=form
                )
            np.testing.assert_array_equal(encoder.transform(got), encoder.transform(want), err_msg=form)
    # the model's scores of the whole request equal those of the training table's rows
    got = model_inputs(usecase, forms["python values (JSON records)"], "request")
    for model in fitted:
        np.testing.assert_array_equal(model.scores(got), model.scores(X))
    # the Keras encoder's vocabulary is the same whether fitted on the table's strings or on raw values
    raw_encoder = modeling.TabularEncoder.fit(
        pd.DataFrame(forms["numpy scalars in object arrays"]),
        usecase.features.numeric,
        usecase.features.categorical,
    )
    assert raw_encoder.vocabulary == encoder.vocabulary
    assert encoder.vocabulary[BOOL_CAT] == ["false", "true"] and "7" in encoder.vocabulary[INT_CAT]
    assert "3.0" in encoder.vocabulary[FLOAT_CAT] and "1.0E7" in encoder.vocabulary[FLOAT_CAT]


@pytest.mark.spark
def test_canonical_strings_are_what_spark_writes(spark) -> None:
    import pyarrow as pa
    from pyspark.sql import functions as F

    doubles = [
        3.0,
        0.1,
        -3.0,
        -0.0,
        0.0,
        2.5,
        100.0,
        123.456,
        1 / 3,
        0.30000000000000004,
        0.001,
        0.0015,
        1e-4,
    ]
    doubles += [
        1e-7,
        9999999.0,
        1e7,
        12345678.0,
        1234567.125,
        1e15,
        1e16,
        1e20,
        1e22,
        2.0**53,
        123456789012.0,
    ]
    doubles += [1.7976931348623157e308, float("inf"), float("-inf")]
    ints = [0, 3, -1, 2**40, -(2**62)]
    table = pa.table(
        {
            "i": pa.array(np.arange(len(doubles))),
            "d": pa.array(doubles, pa.float64()),
            "n": pa.array((ints * len(doubles))[: len(doubles)], pa.int64()),
            "b": pa.array([i % 2 == 0 for i in range(len(doubles))]),
        }
    )
    frame = spark.createDataFrame(table).select("i", *[F.col(c).cast("string").alias(c) for c in "dnb"])
    written = frame.toArrow().to_pandas().sort_values("i")
    assert [spark_double(v) for v in doubles] == written["d"].tolist()
    assert canonical_strings(np.array(doubles)).tolist() == written["d"].tolist()
    assert canonical_strings(table["n"].to_numpy()).tolist() == written["n"].tolist()
    assert canonical_strings(table["n"].to_numpy(), "float").tolist() == [
        spark_double(float(v)) for v in table["n"].to_pylist()
    ]
    assert canonical_strings(np.array(table["b"].to_pylist())).tolist() == written["b"].tolist()


def test_canonical_strings_of_mixed_values() -> None:
    values = [True, np.bool_(False), 3, np.int32(-4), 3.0, np.float32(2.5), "x", np.str_("y"), None, np.nan]
    values += [pd.NA, pd.NaT, np.datetime64("NaT")]
    expected = ["true", "false", "3", "-4", "3.0", "2.5", "x", "y", None, None, None, None, None]
    assert canonical_strings(values).tolist() == expected
    assert canonical_strings(values * 10).tolist() == expected * 10  # past SMALL_BATCH
    # an integral float is an integer only in a column declared int; any number of a float column is a double
    assert canonical_strings([3.0, 3.5, None], "int").tolist() == ["3", "3.5", None]
    assert canonical_strings(np.array([3.0, np.nan, 4.0]), "int").tolist() == ["3", None, "4"]
    assert canonical_strings(np.array([3, 4]), "float").tolist() == ["3.0", "4.0"]
    assert canonical_strings([3, True], "float").tolist() == ["3.0", "true"]


def test_strings_pass_through_without_a_copy() -> None:
    """The request path's usual case: an object array of strings is the model input itself."""
    usecase = fast_usecase()
    for rows in (3, SMALL_BATCH * 3):
        frame = synthetic_day(usecase, date(2013, 1, 5), rows).dropna(subset=["carrier", "origin"])
        columns = {c: frame[c].to_numpy() for c in usecase.features.numeric}
        carrier = frame["carrier"].to_numpy(dtype=object)
        columns |= {"carrier": carrier, "origin": frame["origin"].to_numpy(dtype=object)}
        assert model_input_columns(usecase, columns, "request")["carrier"] is carrier
        with_null = dict(columns, carrier=np.array([None, np.nan, *carrier[2:]], dtype=object))
        assert model_input_columns(usecase, with_null, "request")["carrier"].tolist()[:2] == [None, None]


def test_numeric_inputs_are_float64_and_a_word_is_an_error_naming_the_column() -> None:
    usecase = fast_usecase()
    frame = synthetic_day(usecase, date(2013, 1, 5), 4)
    columns = {c: frame[c] for c in usecase.features.categorical}
    columns |= {c: [1, None, pd.NA, 2.5] for c in usecase.features.numeric}
    got = model_input_columns(usecase, columns, "request")
    assert got["distance"].dtype == "float64" and np.isnan(got["distance"][1:3]).all()
    with pytest.raises(StepFailed, match="request: numeric feature 'distance' is not numeric"):
        model_input_columns(usecase, columns | {"distance": [1.0, "far", None, 2.0]}, "request")
