"""Great Expectations validation of landed files, and typing of validated values.

A source's expectation suite is built from its configuration (``config/usecases/<name>.yaml``):

- type: every non-null value must look like the configured type (``expect_column_values_to_match_regex`` on
  the value as delivered, so a wrong value such as ``"abc"`` in an int column is reported as it was written);
- ``required: true``: ``expect_column_values_to_not_be_null``;
- ``min``/``max`` (int and float columns): ``expect_column_values_to_be_between`` on a numeric copy;
- ``allowed``: ``expect_column_values_to_be_in_set``.

GX costs a few seconds to import and a fixed overhead per validation, so all files of one source are validated
in ONE batch: the files are concatenated with a file-id column and the failures (result format COMPLETE with
``unexpected_index_list``) are attributed back to the files. The outcome fails closed: a file passes only when
the overall ``success`` flag and every expectation result agree that nothing failed and every failure could be
attributed; anything else (an expectation that raised, a missing result, a count that does not add up) fails
every file of the batch.

Values arrive as strings (CSV, or Parquet cast to strings) with nulls as ``None``; :func:`to_typed` converts a
validated frame to the raw zone's types and double-checks that every value really parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.config import ColumnSpec, ConfigError, SourceSpec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# Extra columns of the validation batch (names no configured column uses).
FILE_ID = "__file_id"
ROW = "__row"
NUMBER_SUFFIX = "__number"

TYPE_PATTERNS: dict[str, str] = {
    "int": r"^[+-]?\d+(?:\.0*)?$",
    "float": r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$",
    "timestamp": r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$",
    "bool": r"^(?i:true|false|t|f|yes|no|y|n|1|0)$",
}
TYPE_EXAMPLES: dict[str, str] = {
    "int": "42",
    "float": "3.5",
    "timestamp": "2013-01-01T10:00:00Z",
    "bool": "true",
    "string": "text",
}
TRUE_TOKENS = {"true", "t", "yes", "y", "1"}
FALSE_TOKENS = {"false", "f", "no", "n", "0"}
SAMPLE_SIZE = 5


@dataclass
class FailedCheck:
    """One failed check of one file, as written to the quarantine report."""

    expectation_type: str
    column: str | None
    unexpected_count: int
    hint: str
    sample_unexpected_values: list[Any] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expectation_type": self.expectation_type,
            "column": self.column,
            "unexpected_count": self.unexpected_count,
            "sample_unexpected_values": self.sample_unexpected_values,
            "sample_rows": self.sample_rows,
            "hint": self.hint,
        }

    def short(self) -> str:
        """``expectation(column): N unexpected e.g. [...]`` for messages."""
        where = f"({self.column})" if self.column else ""
        sample = f" e.g. {self.sample_unexpected_values[:3]}" if self.sample_unexpected_values else ""
        return f"{self.expectation_type}{where}: {self.unexpected_count} unexpected{sample}"


@dataclass
class BatchOutcome:
    """Result of validating one source's files in one GX batch."""

    failures: dict[int, list[FailedCheck]]
    """file index -> failed checks; files without an entry passed."""
    success: bool
    expectations: int
    rows: int
    seconds: float


# --------------------------------------------------------------------------------------------------- suite


def numeric_column(column: str) -> str:
    return f"{column}{NUMBER_SUFFIX}"


def check_source_config(source_name: str, source: SourceSpec) -> None:
    """Reject settings the suite cannot express (min/max on a non-numeric column)."""
    for column, spec in source.columns.items():
        if (spec.min is not None or spec.max is not None) and spec.type not in {"int", "float"}:
            raise ConfigError(
                f"sources.{source_name}.columns.{column}: min/max apply to int and float columns only "
                f"(type is {spec.type}); remove them or change the type"
            )


def build_suite(source_name: str, source: SourceSpec) -> Any:
    """The GX expectation suite of one source, built from its column specs."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    check_source_config(source_name, source)
    suite = gx.ExpectationSuite(name=f"{source_name}_landed")
    for column, spec in source.columns.items():
        suite.add_expectation(gxe.ExpectColumnToExist(column=column))
        if spec.type in TYPE_PATTERNS:
            suite.add_expectation(
                gxe.ExpectColumnValuesToMatchRegex(column=column, regex=TYPE_PATTERNS[spec.type])
            )
        if spec.required:
            suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
        if spec.min is not None or spec.max is not None:
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeBetween(
                    column=numeric_column(column), min_value=spec.min, max_value=spec.max
                )
            )
        if spec.allowed is not None:
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(spec.allowed))
            )
    return suite


def batch_frame(frames: list[pd.DataFrame], source: SourceSpec) -> pd.DataFrame:
    """Concatenate the files' string frames into one validation batch.

    Each input frame holds the configured columns as strings (``None`` for null) and a ``__row`` column (line or
    row number in its file); the batch adds ``__file_id`` (position in ``frames``) and a numeric copy of every
    column that has min/max.
    """
    import pandas as pd

    parts = []
    for file_id, frame in enumerate(frames):
        # a column missing here is left missing: its expectations then fail the whole batch (fail closed)
        part = frame[[c for c in [*source.columns, ROW] if c in frame.columns]].copy()
        part.insert(0, FILE_ID, file_id)
        parts.append(part)
    batch = pd.concat(parts, ignore_index=True)
    for column, spec in source.columns.items():
        if (spec.min is not None or spec.max is not None) and column in batch.columns:
            batch[numeric_column(column)] = pd.to_numeric(batch[column], errors="coerce").astype("float64")
    return batch


_GX_CONTEXT: Any = None
# config hash of a source's columns -> (suite, batch definition): built once per process, as the context
_GX_SOURCES: dict[str, tuple[Any, Any]] = {}
_GX_LOCK = threading.Lock()


def _gx_context() -> Any:
    """The process's in-memory GX context (no files, data docs, progress bars or analytics), made current.

    Building a context, a suite and a pandas data source costs a fixed few tenths of a second per call: they are
    made once per process and reused by every batch (an Airflow ``dag.test`` runs all tasks in one process). GX
    resolves a suite that belongs to no context through the *current* one, and another library may have made
    its own context current since: make ours current again before each use."""
    global _GX_CONTEXT
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.data_context.context_factory import project_manager

    if _GX_CONTEXT is None:
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        )
        _GX_CONTEXT = gx.get_context(mode="ephemeral", project_config=config)
    project_manager.set_project(_GX_CONTEXT)
    return _GX_CONTEXT


def source_key(source_name: str, source: SourceSpec) -> str:
    """Hash of what the suite is built from (the source's name and columns): a changed column or expectation
    gives another key, so a cached suite never outlives its config."""
    text = json.dumps([source_name, source.model_dump(mode="json", include={"columns"})], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _gx_source(source_name: str, source: SourceSpec) -> tuple[Any, Any]:
    """The (suite, whole-dataframe batch definition) of one source's config, cached per process."""
    from pipelines.timings import fixed_cost

    key = source_key(source_name, source)
    with _GX_LOCK, fixed_cost("gx_context"):  # GX's import, context and suite: once per process and config
        context = _gx_context()  # first: GX binds new suites to the current context
        if key not in _GX_SOURCES:
            suite = build_suite(source_name, source)  # ConfigError: nothing is cached
            asset = context.data_sources.add_pandas(f"landed_{source_name}_{key}").add_dataframe_asset(
                source_name
            )
            _GX_SOURCES[key] = (suite, asset.add_batch_definition_whole_dataframe("all_files"))
        return _GX_SOURCES[key]


def hint_for(expectation_type: str, column: str | None, spec: ColumnSpec | None, source_name: str) -> str:
    """What the user should do about a failed expectation."""
    where = f"sources.{source_name}.columns.{column}"
    if spec is None:
        return f"the validation itself failed; check the file and {where} in the use case config"
    if expectation_type == "expect_column_values_to_match_regex":
        return (
            f"column '{column}' must hold {spec.type} values (like {TYPE_EXAMPLES[spec.type]}): fix the values, "
            f"add the placeholder to null_values, or change {where}.type"
        )
    if expectation_type == "expect_column_values_to_not_be_null":
        return f"column '{column}' is required: fill in the missing values, or set {where}.required: false"
    if expectation_type == "expect_column_values_to_be_between":
        return (
            f"values of '{column}' must lie in [{spec.min}, {spec.max}]: fix the values, or widen "
            f"{where}.min/max"
        )
    if expectation_type == "expect_column_values_to_be_in_set":
        return f"'{column}' must be one of {spec.allowed}: fix the values, or extend {where}.allowed"
    if expectation_type == "expect_column_to_exist":
        return f"column '{column}' is missing: deliver it, or remove {where} from the config"
    return f"see {where} in the use case config"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, float) else str(value)


def _exception(item: Any) -> tuple[bool, str | None]:
    """Whether an expectation result raised inside GX, and the message. ``exception_info`` is either one
    ``{raised_exception, exception_message, ...}`` dict or such dicts keyed by metric."""
    info = item.exception_info or {}
    entries = [info, *(v for v in info.values() if isinstance(v, dict))]
    raised = [e for e in entries if e.get("raised_exception")]
    return bool(raised), (raised[0].get("exception_message") if raised else None)


def _passed(result: Any, expectations: int) -> bool:
    """Whether a validation result shows nothing to report: one result per expectation, each a success that
    raised nothing, and overall success (anything else goes through the COMPLETE run and its checks)."""
    if not result.success or len(result.results) != expectations:
        return False
    return all(item.success and not _exception(item)[0] for item in result.results)


COMPLETE_FORMAT = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [FILE_ID, ROW],
    "include_unexpected_rows": False,
}


def _complete_failures(gx_batch: Any, suite: Any, summary: Any) -> Any:
    """``summary`` with each failed expectation's result replaced by its COMPLETE result (validated again as a
    suite of the failed expectations only: one or two of dozens, so a bad batch costs little more than a good
    one). When the summary's results do not line up with the suite's expectations, the whole suite is validated
    with COMPLETE instead, and :func:`validate_batch` judges that result as before."""
    import great_expectations as gx

    configs = suite.expectation_configurations
    lined_up = len(summary.results) == len(configs) and all(
        item.expectation_config.type == config.type
        and item.expectation_config.kwargs.get("column") == config.kwargs.get("column")
        for item, config in zip(summary.results, configs, strict=False)
    )
    if not lined_up:
        return gx_batch.validate(suite, result_format=COMPLETE_FORMAT)
    failed = [i for i, item in enumerate(summary.results) if not item.success or _exception(item)[0]]
    if not failed:  # overall failure without a failed expectation: validate_batch rejects the batch
        return summary
    rerun = gx.ExpectationSuite(name=f"{suite.name}_failed", expectations=[configs[i] for i in failed])
    details = gx_batch.validate(rerun, result_format=COMPLETE_FORMAT)
    if len(details.results) != len(failed):
        return gx_batch.validate(suite, result_format=COMPLETE_FORMAT)
    for i, item in zip(failed, details.results, strict=True):
        summary.results[i] = item
    return summary


def validate_batch(source_name: str, source: SourceSpec, frames: list[pd.DataFrame]) -> BatchOutcome:
    """Validate all files of one source in one GX batch and attribute failures to files (fail closed).

    ``frames`` are string frames as described in :func:`batch_frame`. Sample values are reported as delivered
    (for min/max the string value, not its numeric copy).
    """
    started = time.perf_counter()
    if not frames:
        return BatchOutcome({}, True, 0, 0, 0.0)
    batch = batch_frame(frames, source)
    suite, definition = _gx_source(source_name, source)
    gx_batch = definition.get_batch(batch_parameters={"dataframe": batch})
    # SUMMARY first: a passing batch (the usual case) needs no row lists. Only a batch with a failure gets
    # COMPLETE results (unexpected_index_list names every failing row) for its failed expectations.
    result = gx_batch.validate(suite, result_format={"result_format": "SUMMARY"})
    if not _passed(result, len(suite.expectations)):
        result = _complete_failures(gx_batch, suite, result)
    by_name = {numeric_column(c): c for c in source.columns} | {c: c for c in source.columns}
    failures: dict[int, list[FailedCheck]] = {}
    all_files = range(len(frames))

    def fail(file_ids: Any, check: FailedCheck) -> None:
        for file_id in file_ids:
            failures.setdefault(int(file_id), []).append(check)

    expected = len(suite.expectations)
    if len(result.results) != expected:
        fail(
            all_files,
            FailedCheck(
                "gx_result_incomplete",
                None,
                len(batch),
                f"GX returned {len(result.results)} results for {expected} expectations: "
                "the batch is rejected as a precaution; rerun, and report a bug if it repeats",
            ),
        )
    any_failed = False
    for item in result.results:
        config = item.expectation_config
        kind = config.type
        frame_column = config.kwargs.get("column")
        column = by_name.get(frame_column, frame_column)
        spec = source.columns.get(column) if column else None
        raised, message = _exception(item)
        if item.success and not raised:
            continue
        any_failed = True
        details = item.result or {}
        index_list = details.get("unexpected_index_list")
        count = details.get("unexpected_count")
        if raised or index_list is None or count is None or len(index_list) != count or count == 0:
            fail(
                all_files,
                FailedCheck(
                    kind,
                    column,
                    int(count or 0),
                    f"GX gave no rows to attribute this failure to ({message or 'no unexpected rows listed'}), "
                    f"so every file of the batch is rejected. {hint_for(kind, column, spec, source_name)}",
                ),
            )
            continue
        per_file: dict[int, list[dict[str, Any]]] = {}
        for entry in index_list:
            per_file.setdefault(int(entry[FILE_ID]), []).append(entry)
        for file_id, entries in per_file.items():
            frame = frames[file_id]
            rows = [int(e[ROW]) for e in entries]
            raw = frame.set_index(ROW)[column] if column in frame.columns else None
            values: list[Any] = []
            for row in rows:
                value = (
                    _jsonable(raw.loc[row]) if raw is not None else _jsonable(entries[0].get(frame_column))
                )
                if value not in values:
                    values.append(value)
                if len(values) >= SAMPLE_SIZE:
                    break
            fail(
                [file_id],
                FailedCheck(
                    kind,
                    column,
                    len(entries),
                    hint_for(kind, column, spec, source_name),
                    values,
                    rows[:SAMPLE_SIZE],
                ),
            )
    if not result.success and not any_failed:
        fail(
            all_files,
            FailedCheck(
                "gx_validation_failed",
                None,
                len(batch),
                "GX reported failure without a failed expectation: the batch is rejected as a "
                "precaution; rerun, and report a bug if it repeats",
            ),
        )
    return BatchOutcome(
        failures=failures,
        success=bool(result.success) and not failures,
        expectations=expected,
        rows=len(batch),
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------------- typing


def _to_int(values: pd.Series) -> pd.Series:
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce", dtype_backend="numpy_nullable")
    integral = numbers.isna() | (numbers == numbers.round())
    # a whole number outside int64 (pandas reads it as UInt64 or Float64) would wrap to -2**63 in the cast below
    # and be committed silently: it does not parse as an int, so it is null here and reported (found by fuzzing)
    fits = numbers.isna() | ((numbers >= -(2**63)) & (numbers < 2**63))
    return numbers.where((integral & fits).fillna(False).astype(bool)).astype("Int64")


def _to_bool(values: pd.Series) -> pd.Series:
    import pandas as pd

    lowered = values.astype("string").str.lower()
    mapped = lowered.map(
        lambda v: True if v in TRUE_TOKENS else False if v in FALSE_TOKENS else None, na_action="ignore"
    )
    return pd.Series(pd.array(mapped.tolist(), dtype="boolean"), index=values.index)


_DATE_ONLY = r"\d{4}-\d{2}-\d{2}"
_WITH_OFFSET = r"[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_NAIVE = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"


def convert_column(values: pd.Series, column_type: str, timezone: str = "UTC") -> pd.Series:
    """Convert string values (``None`` for null) to the raw zone's dtype; unparseable values become null.

    A timestamp with an offset (or ``Z``) is that instant; one without is read as UTC; a date alone is the start
    of that day in ``timezone`` (the use case's ``time.timezone``): read as UTC midnight, a date in a zone west of
    UTC would fall on the day before."""
    import pandas as pd

    if column_type == "int":
        return _to_int(values)
    if column_type == "float":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if column_type == "timestamp":
        parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce").astype(
            "datetime64[ns, UTC]"
        )
        if timezone != "UTC":
            text = values.astype("string")
            dates = text.str.fullmatch(_DATE_ONLY).fillna(False).astype(bool)
            if dates.any():
                midnight = pd.to_datetime(text[dates], format="%Y-%m-%d", errors="coerce")
                parsed[dates] = midnight.dt.tz_localize(
                    timezone, ambiguous="NaT", nonexistent="shift_forward"
                )
        return parsed
    if column_type == "bool":
        return _to_bool(values)
    return values.astype("string")


def _typed_column(
    frame: pd.DataFrame,
    column: str,
    spec: ColumnSpec,
    source_name: str,
    timezone: str,
    converted: pd.Series | None = None,
) -> tuple[pd.Series, FailedCheck | None]:
    """One column of :func:`to_typed`: converted (or ``converted``, computed by the caller on the same values
    with the same index) and the check of its values that did not parse."""
    import pandas as pd

    raw = frame[column]
    detail = ""
    if converted is None:
        try:
            converted = convert_column(raw, spec.type, timezone)
        except (ValueError, TypeError, OverflowError) as exc:
            converted = pd.Series([pd.NA] * len(raw), index=raw.index)
            detail = str(exc)
    bad = raw.notna() if detail else raw.notna() & converted.isna()
    problem = None
    if bool(bad.any()):
        samples = list(dict.fromkeys(raw[bad].astype(str).tolist()))[:SAMPLE_SIZE]
        rows = frame.loc[bad, ROW].astype(int).tolist()[:SAMPLE_SIZE] if ROW in frame else []
        problem = FailedCheck(
            f"values_parse_as_{spec.type}",
            column,
            int(bad.sum()),
            f"column '{column}' must hold {spec.type} values (like {TYPE_EXAMPLES[spec.type]}) {detail}".strip()
            + f": fix the values or change sources.{source_name}.columns.{column}.type",
            samples,
            rows,
        )
    return converted.reset_index(drop=True), problem


def to_typed(
    frame: pd.DataFrame, source: SourceSpec, source_name: str, timezone: str = "UTC"
) -> tuple[pd.DataFrame, list[FailedCheck]]:
    """The configured columns, in config order, converted to their types (a date-only timestamp as the start of
    that day in ``timezone``, see :func:`convert_column`).

    Returns the typed frame and one :class:`FailedCheck` per column where a non-null value did not parse (GX
    should have caught it; this is the fail-closed double check).
    """
    import pandas as pd

    typed: dict[str, pd.Series] = {}
    problems: list[FailedCheck] = []
    for column, spec in source.columns.items():
        typed[column], problem = _typed_column(frame, column, spec, source_name, timezone)
        if problem is not None:
            problems.append(problem)
    return pd.DataFrame(typed), problems


# Numbers of at most this many characters are below 2**53: pandas gives them the same value whether it parses a
# column of whole numbers (exactly, as integers) or a mixed one (through its float parser), so converting them
# once for many files gives what each file's own conversion gives. Longer ones are converted per file.
_BATCH_SAFE_CHARS = 15


def _batch_safe(values: pd.Series, column_type: str, timezone: str) -> bool:
    """Whether converting ``values`` (many files' values of one column) at once gives, for every value, what
    converting each file alone gives: conversions are elementwise but for the cases excluded here."""
    present = values.dropna()
    if column_type == "float":
        # a value with a decimal point or an exponent goes through pandas' float parser whatever its neighbours:
        # only long whole numbers (exact as integers in a column of integers) depend on the rest of the column
        text = present.astype(str)
        long = text[text.str.len() > _BATCH_SAFE_CHARS]
        return long.empty or bool(long.str.contains(r"[.eE]", regex=True).all())
    if column_type == "int":
        return present.empty or int(present.astype(str).str.len().max()) <= _BATCH_SAFE_CHARS
    if column_type == "timestamp":
        text = present.astype("string")
        # pandas reads a value without an offset in the offset of an earlier value of the column: mixing files
        # with and without offsets would move the latter's values
        aware = text.str.contains(_WITH_OFFSET, regex=True).fillna(False).astype(bool)
        if bool(aware.any()) and bool(text.str.fullmatch(_NAIVE).fillna(False).any()):
            return False
        if timezone != "UTC":
            # date-only values take another path (local midnight) that changes the column's dtype handling
            return not bool(text.str.fullmatch(_DATE_ONLY).fillna(False).any())
    return True


# Where Arrow's strict casts give what :func:`convert_column` gives (compared on the demo year and on random values):
# whole numbers and decimals without an exponent of at most ``_BATCH_SAFE_CHARS`` characters (pandas' float parser
# rounds some longer values and some exponent forms to a neighbouring float, Arrow's does not), and the ISO
# timestamps GX accepts. Values outside these patterns, and bool columns, are converted by pandas as before.
ARROW_PATTERNS: dict[str, str] = {
    "int": r"^[+-]?\d+$",
    "float": r"^[+-]?(?:\d+\.?\d*|\.\d+)$",
    "timestamp": TYPE_PATTERNS["timestamp"],
}


def arrow_convert(values: pa.ChunkedArray, column_type: str, timezone: str = "UTC") -> pd.Series | None:
    """``values`` (Arrow strings, null for null, as ``pyarrow.csv`` read them) converted to the raw zone's dtype
    with the same values and dtype as :func:`convert_column`, when every non-null value parses; None where Arrow
    cannot promise that (a value outside :data:`ARROW_PATTERNS`, a bool column, a date-only timestamp in a zone
    other than UTC, a value Arrow rejects): the caller then converts with pandas and reports what did not parse.
    A Series returned here has a RangeIndex and no value that failed to parse."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if column_type == "string":
        return pd.Series(pd.StringDtype().__from_arrow__(values), dtype="string")
    pattern = ARROW_PATTERNS.get(column_type)
    if pattern is None:
        return None
    present = values.drop_null()
    if len(present):
        if not pc.all(pc.match_substring_regex(present, pattern)).as_py():
            return None
        lengths = pc.utf8_length(present)
        if column_type in {"int", "float"} and pc.max(lengths).as_py() > _BATCH_SAFE_CHARS:
            return None
        if column_type == "timestamp" and timezone != "UTC" and pc.min(lengths).as_py() <= len("2013-01-01"):
            return None  # a date alone is local midnight (convert_column)
    try:
        if column_type == "int":
            return pd.Series(pd.Int64Dtype().__from_arrow__(pc.cast(values, pa.int64())), dtype="Int64")
        if column_type == "float":
            return pd.Series(pc.cast(values, pa.float64()).to_pandas(), dtype="float64").reset_index(
                drop=True
            )
        utc = pa.timestamp("ns", tz="UTC")
        try:
            stamps = pc.cast(values, utc)  # every value with an offset or Z
        except pa.ArrowInvalid:
            stamps = pc.cast(pc.cast(values, pa.timestamp("ns")), utc)  # none with one: read as UTC
        return pd.Series(stamps.to_pandas(), dtype="datetime64[ns, UTC]").reset_index(drop=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def to_typed_many(
    frames: list[pd.DataFrame],
    source: SourceSpec,
    source_name: str,
    timezone: str = "UTC",
    tables: list[pa.Table | None] | None = None,
) -> list[tuple[pd.DataFrame, list[FailedCheck]]]:
    """:func:`to_typed` of each frame, with the same results, converting each column once for all frames.

    pandas costs about a millisecond per column and call whatever the rows: the demo's month of 3-hourly weather
    files (248 files of 9 rows) paid more for typing file by file than for validating them. A column where
    converting at once could differ (see :func:`_batch_safe`), or where the conversion raises, is converted per
    file as before.

    ``tables`` (one per frame: the same values as Arrow strings, as ``pyarrow.csv`` read the file) lets Arrow
    convert a column with its strict casts (:func:`arrow_convert`) when every frame has its table; a column Arrow
    does not convert whole goes through pandas as above."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    arrow = tables is not None and len(frames) > 0 and all(t is not None for t in tables)
    if len(frames) < 2 and not arrow:
        return [to_typed(frame, source, source_name, timezone) for frame in frames]
    bounds = [0]
    for frame in frames:
        bounds.append(bounds[-1] + len(frame))
    whole: dict[str, pd.Series] = {}  # columns converted once for all frames (RangeIndex over the batch)
    own: list[dict[str, pd.Series]] = [{} for _ in frames]  # those frames' own conversions
    problems: list[list[FailedCheck]] = [[] for _ in frames]
    for column, spec in source.columns.items():
        if arrow:
            chunks = [chunk for table in tables for chunk in table.column(column).chunks]  # type: ignore[union-attr]
            converted = arrow_convert(pa.chunked_array(chunks, type=pa.string()), spec.type, timezone)
            if converted is not None:
                whole[column] = converted
                continue
        values = pd.concat([frame[column] for frame in frames], ignore_index=True)
        converted = None
        if _batch_safe(values, spec.type, timezone):
            try:
                converted = convert_column(values, spec.type, timezone)
            except (ValueError, TypeError, OverflowError):
                converted = None  # per file: each file gets its own message
        if converted is None:
            alone = set(range(len(frames)))  # every file converts its own column
        else:
            # the files with a value that did not parse; the others need no per-file check
            positions = np.flatnonzero((values.notna() & converted.isna()).to_numpy())
            alone = set(np.searchsorted(bounds, positions, side="right") - 1)
            whole[column] = converted.reset_index(drop=True)
        for index in sorted(alone):
            frame = frames[index]
            part = None if converted is None else converted.iloc[bounds[index] : bounds[index + 1]].copy()
            if part is not None:
                part.index = frame[column].index
            own[index][column], problem = _typed_column(frame, column, spec, source_name, timezone, part)
            if problem is not None:
                problems[index].append(problem)
    # one frame for the batch, sliced per file (a frame per file and column costs more than the conversions)
    batch = pd.DataFrame(whole) if whole else None
    typed: list[pd.DataFrame] = []
    for index in range(len(frames)):
        if batch is not None and len(whole) == len(source.columns) and not own[index]:
            typed.append(batch.iloc[bounds[index] : bounds[index + 1]].reset_index(drop=True))
            continue
        columns = {
            column: own[index][column]
            if column in own[index]
            else whole[column].iloc[bounds[index] : bounds[index + 1]].reset_index(drop=True)
            for column in source.columns
        }
        typed.append(pd.DataFrame(columns))
    return list(zip(typed, problems, strict=True))
