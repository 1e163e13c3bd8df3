"""Static checks of a use case file, before anything runs: ``mlops validate [USECASE]``.

Everything that can be known from the YAML alone is checked here, and every problem is reported at once with its
file, field and fix: the schema (types, required fields, time zones, label kinds), the transforms' names and
params, that every column a transform, the features, the slices or the drift monitor names exists in the sources
or is made by an earlier transform, that no transform output clashes with another column, and that the
schedules parse. Leakage: no model input is the label, a column known only with the outcome (the label's source
column, any column of a separate outcome source, a column marked ``known_with_outcome``) or a column a transform
makes from one. Contradictions between fields: the score schedule must fire at the prediction time, the gate's
bootstrap must fit in memory, a gate needs a change check (unless ``gate.allow_absolute_only``), and candidate
params must be ones the estimator takes. Each step runs these checks first (``pipelines.cli.run_step``), so a
typo fails the first task with this list instead of a Spark error in the middle of the features step.

No Spark and no lake access (scikit-learn is imported, for its estimators' signatures): cheap enough for the
CLI and for tests of every shipped use case.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.config import (
    OUTCOME_KNOWN_AT,
    PREDICTION_TIME,
    ConfigError,
    UseCase,
    _read_yaml,
    config_dir,
    list_usecases,
    usecase_path,
)

DOCS = "docs/configuration.md"
SCHEDULE_FIELDS = ("ingest", "score", "train_monthly", "train_nightly", "maintenance")
# Airflow's schedule presets (a cron expression or one of these)
PRESETS = {
    "@once",
    "@continuous",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@annually",
}

# the presets as cron expressions (None: not a time of day)
PRESET_CRONS: dict[str, str | None] = {
    "@once": None,
    "@continuous": None,
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# gate.significance.resamples: the bootstrap draws its resamples once per evaluation as int32 counts, resamples x
# clusters (14 days: 56 KB per 1,000 resamples), or resamples x rows when it resamples rows (cluster_by: []: 0.04
# GiB per 1,000 resamples and 10,000 rows); per-row weights are expanded in bounded chunks (significance.py), so the
# peak no longer grows with the resamples, but the row-mode draws and every interval's work do.
GIB_PER_1000_RESAMPLES_10K_ROWS = 1000 * 10_000 * 4 / 2**30
MAX_RESAMPLES = 5000


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a use case file: where (file and field), what, and how to fix it."""

    file: str
    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}\n    fix: {self.fix}"


class UseCaseInvalid(ConfigError):
    """A use case file has problems; the message lists them all."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(
            f"{problems[0].file}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _schema_problems(file: str, error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "<top level>"
        got = item.get("input")
        got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(Problem(file, field, message + got_text, f"correct the field; see {DOCS}"))
    return problems


class _Columns:
    """The columns of the primary frame as the transforms build it, with where each came from."""

    def __init__(self, usecase: UseCase, file: str) -> None:
        self.usecase, self.file = usecase, file
        primary = usecase.features.primary_source
        self.origin = {name: f"source {primary!r}" for name in usecase.sources[primary].columns}
        # column -> why its value is known only with the outcome (never a model input)
        self.leaks = {
            name: why
            for name in usecase.sources[primary].columns
            if (why := self.source_leak(primary, name)) is not None
        }
        self.problems: list[Problem] = []

    def source_leak(self, source: str, column: str) -> str | None:
        """Why ``column`` of ``source`` is known only with the outcome, or None when it is not."""
        usecase = self.usecase
        outcome = usecase.outcome_source
        if source == outcome and outcome != usecase.features.primary_source:
            return f"a column of the outcome source {outcome!r} (time.outcome.source)"
        if source == outcome and column == usecase.target.source_column:
            return "the label's source column (target.source_column)"
        spec = usecase.sources[source].columns.get(column) if source in usecase.sources else None
        if spec is not None and spec.known_with_outcome:
            return f"marked known_with_outcome in source {source!r}"
        return None

    def leak_from(self, names: Any) -> str | None:
        """Why a transform reading ``names`` makes columns known only with the outcome, or None."""
        names = [names] if isinstance(names, str) else list(names or [])
        for name in names:
            if isinstance(name, str) and name in self.leaks:
                return f"made from {name!r}, {self.leaks[name]}"
        return None

    def mark(self, names: list[str], why: str | None) -> None:
        if why is not None:
            for name in names:
                self.leaks.setdefault(name, why)

    def problem(self, field: str, message: str, fix: str) -> None:
        self.problems.append(Problem(self.file, field, message, fix))

    def need(self, field: str, names: Any, where: dict[str, Any] | None = None, what: str = "") -> None:
        """Each of ``names`` must be a column of the frame (or of ``where``, a source's columns)."""
        names = [names] if isinstance(names, str) else list(names or [])
        available = self.origin if where is None else where
        missing = [n for n in names if n not in available]
        if missing:
            self.problem(
                field,
                f"column(s) {missing} not in {what or 'the primary frame (source columns and transform outputs)'}",
                f"use one of {sorted(available)}"
                + (
                    ""
                    if where is not None
                    else ", or add a transform that makes it earlier in features.transforms"
                ),
            )

    def add(self, field: str, names: list[str]) -> None:
        for name in names:
            if name in self.origin:
                self.problem(
                    field,
                    f"output column {name!r} already exists ({self.origin[name]})",
                    "choose another output name",
                )
            elif name == self.usecase.target.column:
                self.problem(
                    field, f"output column {name!r} is the label (target.column)", "choose another name"
                )
            elif name in (PREDICTION_TIME, OUTCOME_KNOWN_AT, "date"):
                self.problem(field, f"output column {name!r} is reserved", "choose another output name")
            else:
                self.origin[name] = field


def _transform_columns(usecase: UseCase, file: str) -> _Columns:
    from pipelines.features.transforms import TRANSFORMS, TransformError, check_transforms

    columns = _Columns(usecase, file)
    try:
        check_transforms(usecase)
    except TransformError as exc:
        columns.problem("features.transforms", str(exc).removeprefix("features.transforms: "), f"see {DOCS}")
    for index, spec in enumerate(usecase.features.transforms):
        field = f"features.transforms[{index}]"
        if spec.name not in TRANSFORMS:
            continue
        if spec.name == "past_rate" and usecase.task == "regression":
            columns.problem(
                field,
                "past_rate counts positive labels, and a regression's label is a value",
                "use past_mean (the mean of the past labels, with count_output for how many) instead",
            )
        params = spec.params
        keys = params.get("keys")
        read = [
            *(keys if isinstance(keys, list) else [keys]),
            params.get("timestamp"),
            params.get("hour_column"),
        ]
        derived = columns.leak_from([n for n in read if n is not None])
        derived = None if derived is None else f"{derived} (by {field})"
        source = params.get("source")
        source_columns = (
            usecase.sources[source].columns if isinstance(source, str) and source in usecase.sources else None
        )
        if "keys" in params:
            columns.need(f"{field}.params.keys", params["keys"])
            if source_columns is not None:
                columns.need(f"{field}.params.keys", params["keys"], source_columns, f"source {source!r}")
        for param in ("timestamp", "hour_column"):
            if params.get(param) is not None:
                columns.need(f"{field}.params.{param}", params[param])
        if params.get("time") is not None and source_columns is not None:
            columns.need(f"{field}.params.time", params["time"], source_columns, f"source {source!r}")
        if spec.name == "calendar" and params.get("timezone") is not None:
            _check_zone(columns, f"{field}.params.timezone", params["timezone"])
        mapping = params.get("columns")
        if isinstance(mapping, dict):
            if source_columns is not None:
                columns.need(f"{field}.params.columns", list(mapping), source_columns, f"source {source!r}")
            columns.add(f"{field}.params.columns", [str(v) for v in mapping.values()])
            if isinstance(source, str) and source in usecase.sources:
                for column, output in mapping.items():
                    leak = columns.source_leak(source, str(column))
                    columns.mark([str(output)], None if leak is None else f"{field} joins {column!r}, {leak}")
            columns.mark([str(v) for v in mapping.values()], derived)
        for param in ("output", "hour_output", "count_output"):
            default = inspect.signature(TRANSFORMS[spec.name]).parameters.get(param)
            name = params.get(param, None if default is None else default.default)
            if isinstance(name, str):
                columns.add(f"{field}.params.{param}", [name])
                columns.mark([name], derived)
        if spec.name == "calendar":
            columns.add(field, ["day_of_week"])
            columns.mark(["day_of_week"], derived)
            if "month" not in columns.origin:
                columns.origin["month"] = field
                columns.mark(["month"], derived)
    return columns


def _check_zone(columns: _Columns, field: str, zone: Any) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        columns.problem(
            field, f"unknown time zone {zone!r}", "use an IANA name such as 'UTC' or 'Europe/Paris'"
        )


def _column_problems(usecase: UseCase, columns: _Columns) -> None:
    features = usecase.features
    for field, names in (
        ("features.keys", features.keys),
        ("features.numeric", features.numeric),
        ("features.categorical", features.categorical),
        ("slices", usecase.slices),
        ("sensitive_attributes", usecase.sensitive_attributes),
    ):
        columns.need(field, [n for n in names if n != usecase.target.column])
        if usecase.target.column in names:
            columns.problem(
                field,
                f"{usecase.target.column!r} is the label (target.column)",
                "remove it: the label is never a model input, key or slice",
            )
    both = sorted(set(features.numeric) & set(features.categorical))
    if both:
        columns.problem(
            "features.categorical",
            f"column(s) {both} are listed as numeric and categorical",
            "keep each column in one of the lists",
        )
    for field, names in (
        ("features.numeric", features.numeric),
        ("features.categorical", features.categorical),
    ):
        for name in names:
            if name in columns.leaks and name != usecase.target.column:
                columns.problem(
                    field,
                    f"{name!r} is known only with the outcome ({columns.leaks[name]}): as a model input it gives "
                    "the label away",
                    f"remove {name!r} from {field}; a value known at the prediction time belongs in the primary "
                    "source (or a source joined at the prediction time) without known_with_outcome",
                )
    inputs = {*features.numeric, *features.categorical}
    not_inputs = [n for n in usecase.leakage.allowed if n not in inputs]
    if not_inputs:
        columns.problem(
            "leakage.allowed",
            f"column(s) {not_inputs} are not model inputs",
            f"name columns of features.numeric or features.categorical: {sorted(inputs)}",
        )
    unknown = [n for n in usecase.drift.features if n not in inputs]
    if unknown:
        columns.problem(
            "drift.features",
            f"column(s) {unknown} are not model inputs",
            f"use columns of features.numeric or features.categorical: {sorted(inputs)}",
        )
    _gate_problems(usecase, columns)


def _gate_problems(usecase: UseCase, columns: _Columns) -> None:
    gate = usecase.gate
    if gate.fairness is not None and not usecase.sensitive_attributes:
        columns.problem(
            "gate.fairness",
            "fairness bounds are configured but sensitive_attributes is empty",
            "list the columns to assess fairness over in sensitive_attributes (e.g. [gender, age_band])",
        )
    if gate.fairness is not None:
        unknown = sorted(set(gate.fairness.attributes) - set(usecase.sensitive_attributes))
        if unknown:
            columns.problem(
                "gate.fairness.attributes",
                f"{unknown} are not sensitive_attributes",
                f"use names from sensitive_attributes: {usecase.sensitive_attributes}",
            )
    if gate.robustness is not None and not usecase.slices:
        columns.problem(
            "gate.robustness",
            "robustness bounds are configured but slices is empty",
            "list the columns to slice the holdout by in slices (e.g. [carrier])",
        )
    if not gate.change and not gate.allow_absolute_only:
        columns.problem(
            "gate.change",
            "the gate has no change check"
            + (
                ", only absolute bounds: a candidate worse than the champion replaces it whenever it meets them"
                if gate.absolute
                else " and no absolute bounds: it promotes nothing"
            ),
            f"add a change bound on the primary metric, e.g. change: {{{gate.primary_metric}: {{min_delta: 0.0}}}}"
            " (the candidate must beat the champion on the same holdout), or set gate.allow_absolute_only: true "
            "to accept absolute bounds alone",
        )
    carried = list(
        dict.fromkeys(
            [
                "date",
                *usecase.features.keys,
                *usecase.features.numeric,
                *usecase.features.categorical,
                *usecase.evaluated_columns,
            ]
        )
    )
    not_carried = [c for c in gate.significance.cluster_by if c not in carried]
    if not_carried:
        columns.problem(
            "gate.significance.cluster_by",
            f"column(s) {not_carried} are not carried by the features table, so the holdout rows cannot be "
            "grouped by them for the cluster bootstrap",
            f"use columns of {carried} (date: the events' local date; or add the column to slices so the "
            "features table carries it), or [] to resample rows",
        )
    resamples = gate.significance.resamples
    if resamples > MAX_RESAMPLES:
        gib = resamples / 1000 * GIB_PER_1000_RESAMPLES_10K_ROWS
        columns.problem(
            "gate.significance.resamples",
            f"{resamples} resamples: resampling rows (cluster_by: []) the draws alone take {gib:.2f} GiB per "
            "10,000 holdout rows (int32 resamples x rows), and every interval's work grows with the resamples",
            f"use at most {MAX_RESAMPLES} (the default 1000 gives stable 95% interval ends)",
        )


def _candidate_problems(usecase: UseCase, file: str) -> list[Problem]:
    """Each candidate's params must be ones its estimator takes (keras_mlp: its own params), and not one the
    pipeline sets from the use case, so a typo fails here and not in train after the data was read."""
    import difflib

    from pipelines.modeling import PIPELINE_PARAMS, accepted_params, estimator_class

    problems = []
    for index, spec in enumerate(usecase.candidates):
        accepted = accepted_params(spec.family, usecase.task)
        cls = estimator_class(spec.family, usecase.task)
        what = "keras_mlp" if cls is None else cls.__name__
        for name in spec.params:
            field = f"candidates[{index}].params.{name}"
            if name in PIPELINE_PARAMS.get(spec.family, {}):
                problems.append(
                    Problem(
                        file,
                        field,
                        f"{name!r} is set by the {spec.family} pipeline from "
                        f"{PIPELINE_PARAMS[spec.family][name]} (candidate {spec.name!r})",
                        f"remove it; change {PIPELINE_PARAMS[spec.family][name]} instead",
                    )
                )
            elif name not in accepted:
                close = difflib.get_close_matches(str(name), accepted, n=1)
                problems.append(
                    Problem(
                        file,
                        field,
                        f"{name!r} is not a parameter of {what} (candidate {spec.name!r}, family {spec.family})",
                        (f"did you mean {close[0]!r}? " if close else "") + f"use one of {accepted}",
                    )
                )
    return problems


CRON_FIELDS = (  # (name, lowest, highest, names) of the five fields of a cron expression
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {
            m: i + 1
            for i, m in enumerate(
                ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
            )
        },
    ),
    ("day of week", 0, 7, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
)


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a five-field cron expression (``*``, values, ranges, steps, lists, month and
    weekday names), or None when it is one. Pure Python: steps run in images without Airflow or croniter."""
    fields = expression.split()
    if len(fields) != 5:
        return f"has {len(fields)} field(s), not 5 (minute hour day-of-month month day-of-week)"

    def value(text: str, low: int, high: int, names: dict[str, int]) -> int | None:
        number = names.get(text.lower()) if not text.isdigit() else int(text)
        return number if number is not None and low <= number <= high else None

    for text, (name, low, high, names) in zip(fields, CRON_FIELDS, strict=True):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                return f"{name} field {text!r}: step {step!r} is not a positive number"
            if base == "*" or (base == "?" and name in ("day of month", "day of week")):
                continue
            start, _, end = base.partition("-")
            if value(start, low, high, names) is None or (end and value(end, low, high, names) is None):
                return f"{name} field {text!r}: {base!r} is not a value or range within {low}-{high}"
    return None


def _score_at_prediction_time(usecase: UseCase, file: str) -> Problem | None:
    """The score DAG must run at the prediction time: its cron (local time, the DAG's time zone) must fire once a
    day at ``time.prediction_time.at`` (days of month and week are free)."""
    value = usecase.schedules.score
    expression = PRESET_CRONS.get(value, value)
    if expression is None or cron_problem(expression) is not None:
        fires = f"{value!r} does not fire once a day"
    else:
        minute, hour = expression.split()[:2]
        at = usecase.time.prediction_time.minutes_after_midnight
        if minute.isdigit() and hour.isdigit() and int(hour) * 60 + int(minute) == at:
            return None
        fires = (
            f"{value!r} fires at {int(hour):02d}:{int(minute):02d}"
            if minute.isdigit() and hour.isdigit()
            else f"{value!r} fires at minute {minute!r} of hour {hour!r}"
        )
    prediction = usecase.time.prediction_time
    at_text = prediction.clock
    hours, minutes = at_text.split(":")
    if prediction.per_event:
        said = f"the day's last prediction time (time.prediction_time.lead/column) passes at {at_text}"
        change = "time.prediction_time"
    else:
        said = f"predictions are made at time.prediction_time.at {at_text}"
        change = "time.prediction_time.at"
    return Problem(
        file,
        "schedules.score",
        f"{fires}, but {said} ({usecase.time.timezone}): "
        "the score run would predict with features of another time than the model was trained and judged on",
        f"set schedules.score: '{int(minutes)} {int(hours)} * * *' (or leave it out: it defaults to the "
        f"prediction time), or change {change}",
    )


def _schedule_problems(usecase: UseCase, file: str) -> list[Problem]:
    problems = []
    for name in SCHEDULE_FIELDS:
        value = getattr(usecase.schedules, name)
        if value is None or value in PRESETS:
            continue
        why = cron_problem(value)
        if why is not None:
            problems.append(
                Problem(
                    file,
                    f"schedules.{name}",
                    f"{value!r} is neither a cron expression nor an Airflow preset: it {why}",
                    "use five cron fields such as '0 18 * * *' or a preset such as '@daily'",
                )
            )
    score = usecase.schedules.score
    if (
        score in PRESETS or cron_problem(score) is None
    ):  # a score schedule that parses: at the prediction time?
        problem = _score_at_prediction_time(usecase, file)
        if problem is not None:
            problems.append(problem)
    try:
        from datetime import date

        date.fromisoformat(usecase.schedules.start_date)
    except ValueError:
        problems.append(
            Problem(
                file,
                "schedules.start_date",
                f"{usecase.schedules.start_date!r} is not a date",
                "use YYYY-MM-DD",
            )
        )
    return problems


def check_usecase(usecase: UseCase, file: str) -> list[Problem]:
    """The static problems of a use case that passed the schema (empty when there are none)."""
    columns = _transform_columns(usecase, file)
    _column_problems(usecase, columns)
    return [*columns.problems, *_candidate_problems(usecase, file), *_schedule_problems(usecase, file)]


def validate_file(path: Path) -> tuple[UseCase | None, list[Problem]]:
    """Read and check one use case file: the use case (None when the schema fails) and every problem found."""
    file = str(path)
    try:
        raw = _read_yaml(path)
    except ConfigError as exc:
        return None, [Problem(file, "<file>", str(exc).removeprefix(f"{file}: "), "fix the YAML syntax")]
    if not isinstance(raw, dict):
        return None, [Problem(file, "<file>", "is not a mapping of fields", f"see {DOCS}")]
    if raw.get("name") is not None and raw.get("name") != path.stem:
        mismatch = Problem(
            file,
            "name",
            f"{raw.get('name')!r} differs from the file name {path.stem!r}",
            f"name the file {raw.get('name')}.yaml or set name: {path.stem}",
        )
    else:
        mismatch = None
    try:
        usecase = UseCase.model_validate(raw)
    except ValidationError as exc:
        return None, [*([mismatch] if mismatch else []), *_schema_problems(file, exc)]
    return usecase, [*([mismatch] if mismatch else []), *check_usecase(usecase, file)]


def require_valid(usecase: UseCase) -> None:
    """Raise :class:`UseCaseInvalid` listing every static problem of an already loaded use case."""
    problems = check_usecase(usecase, str(usecase_path(usecase.name)))
    if problems:
        raise UseCaseInvalid(problems)


def lake_notes(usecase: UseCase) -> list[str]:
    """What the configured lake shows against the use case's declared times: the sources whose committed rows
    arrived later than declared (see pipelines.ingest.arrivals). Empty when the lake holds nothing of the use case."""
    from pipelines.config import load_profile
    from pipelines.ingest.arrivals import arrival_summary, understated_delays
    from pipelines.lake import ARRIVED_AT, open_lake, raw_table

    lake = open_lake(load_profile().lake_uri)
    summaries = {}
    for source in dict.fromkeys([usecase.outcome_source, usecase.features.primary_source]):
        column = usecase.sources[source].event_time
        snapshot = lake.snapshot(raw_table(usecase.name, source), facts=False)
        if column is None or not snapshot or ARRIVED_AT not in snapshot.columns:
            continue
        rows = lake.read_frame(snapshot.table, None, [column, ARRIVED_AT], snapshot.version)
        summaries[source] = arrival_summary(usecase, source, rows, rows[ARRIVED_AT])
    return understated_delays(usecase, summaries)


def chance_floor_warnings(usecase: UseCase) -> list[str]:
    """ROC AUC floors below what chance gives (0.5: a floor under it accepts a model that ranks a group or a
    slice backwards): warnings, not problems (a deliberate choice stays possible), each with its field."""
    gate = usecase.gate
    floors: list[tuple[str, float | None]] = []
    if "roc_auc" in gate.absolute:
        floors.append(("gate.absolute.roc_auc.min", gate.absolute["roc_auc"].min))
    if gate.robustness is not None and gate.robustness.metric == "roc_auc":
        floors.append(("gate.robustness.min_value", gate.robustness.min_value))
    if gate.fairness is not None and gate.fairness.metric == "roc_auc":
        floors.append(("gate.fairness.min_value", gate.fairness.min_value))
        floors += [
            (f"gate.fairness.attributes.{a}.min_value", b.min_value)
            for a, b in gate.fairness.attributes.items()
        ]
    return [
        f"{field}: ROC AUC floor {value} is below chance (0.5): a model that ranks it backwards passes; "
        "fix: use at least 0.5 (the gate already judges small groups and slices on their intervals)"
        for field, value in floors
        if value is not None and value < 0.5
    ]


def run_validate(names: list[str] | None = None, against_lake: bool = False) -> int:
    """``mlops validate [USECASE...] [--against-lake]``: print every problem of the named use cases (default:
    all), and with ``against_lake`` what the lake shows against their declared delays (notes, not problems);
    exit code 1 when any has problems, else 0."""
    names = names or list_usecases()
    if not names:
        print(f"no use case files in {config_dir() / 'usecases'}")
        return 1
    failed = 0
    for name in names:
        path = usecase_path(name)
        if not path.is_file():
            print(f"{path}: no such use case file; known: {list_usecases()}")
            failed += 1
            continue
        usecase, problems = validate_file(path)
        if problems:
            failed += 1
            print(f"{path}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  - {problem.field}: {problem.message}\n    fix: {problem.fix}")
        else:
            print(f"{path}: OK")
        for warning in chance_floor_warnings(usecase) if usecase is not None else []:
            print(f"  - warning: {warning}")
        if against_lake and usecase is not None:
            notes = lake_notes(usecase)
            for note in notes:
                print(f"  - note (lake): {note}")
            if not notes:
                print("  - lake: no committed rows arrived later than declared")
    return 1 if failed else 0
