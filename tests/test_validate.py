"""`mlops validate`: every shipped use case passes, and each kind of mistake is reported with file, field and fix,
all at once, before anything runs (a step refuses the file with the same list)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from pipelines.config import REPO_ROOT, usecase_path

SHIPPED = sorted(p.stem for p in (REPO_ROOT / "config" / "usecases").glob("*.yaml"))


def _config_dir(tmp_path: Path, monkeypatch, edit) -> Path:
    """A config dir with the platform file and flight_delay.yaml changed by ``edit(data)``."""
    target = tmp_path / "config"
    (target / "usecases").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "config" / "platform.yaml", target / "platform.yaml")
    data = yaml.safe_load(usecase_path("flight_delay").read_text())
    edit(data)
    path = target / "usecases" / "flight_delay.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(target))
    return path


def _transform(data: dict, name: str, index: int = 0) -> dict:
    return [t for t in data["features"]["transforms"] if t["name"] == name][index]


def test_every_shipped_usecase_validates(capsys) -> None:
    assert SHIPPED, "no use case files in config/usecases"
    assert main(["validate"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert f"{name}.yaml: OK" in out


def test_static_mistakes_are_all_reported_with_field_and_fix(tmp_path, monkeypatch, capsys) -> None:
    def edit(data: dict) -> None:
        _transform(data, "past_rate")["params"]["keys"] = ["origin", "dset"]
        weather = _transform(data, "asof_join")["params"]["columns"]
        weather["humidity"] = weather.pop("humid")
        _transform(data, "calendar")["params"]["timezone"] = "America/New_Yrok"
        data["features"]["numeric"].append("wx_tmp")
        data["slices"] = ["carier"]
        data["schedules"] = {"score": "0 18 * *"}
        data["drift"] = {"features": ["dest"]}

    path = _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate", "flight_delay"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: 7 problem(s)" in out, out
    expected = [
        ("features.transforms[3].params.keys: column(s) ['dset'] not in the primary frame", "use one of"),
        ("features.transforms[1].params.columns: column(s) ['humidity'] not in source 'weather'", "'humid'"),
        ("features.transforms[0].params.timezone: unknown time zone 'America/New_Yrok'", "IANA name"),
        ("features.numeric: column(s) ['wx_tmp'] not in the primary frame", "'wx_temp'"),
        ("slices: column(s) ['carier'] not in the primary frame", "'carrier'"),
        ("schedules.score: '0 18 * *' is neither a cron expression nor an Airflow preset", "'0 18 * * *'"),
        ("drift.features: column(s) ['dest'] are not model inputs", "features.numeric"),
    ]
    for problem, fix in expected:
        assert problem in out, f"missing: {problem}\n{out}"
        line = out[out.index(problem) :].split("\n")
        assert line[1].strip().startswith("fix:") and fix in line[1], (problem, line[:2])


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (
            lambda d: d["time"].update(timezone="Europe/Pariss"),
            "time.timezone",
            "unknown time zone 'Europe/Pariss'",
        ),
        (
            lambda d: d["sources"]["flights"]["columns"].update(date={"type": "string"}),
            "sources.flights.columns",
            "column name(s) ['date'] are reserved",
        ),
        (
            lambda d: d["target"].update(source_column="arr_dealy"),
            "<top level>",
            "target.source_column 'arr_dealy' is not a column of the outcome source 'outcomes'",
        ),
        (
            lambda d: d["target"].update(kind="boolean", threshold=None),
            "<top level>",
            "target.kind 'boolean' does not fit target.source_column 'arr_delay'",
        ),
    ],
    ids=["timezone", "reserved-date-column", "label-column", "label-kind"],
)
def test_schema_mistakes_name_the_field(tmp_path, monkeypatch, capsys, edit, field, message) -> None:
    path = _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: " in out and f"- {field}: " in out and message in out, out
    assert "fix: " in out


def test_a_step_refuses_a_use_case_with_static_problems_before_reading_data(
    tmp_path, monkeypatch, capsys
) -> None:
    def edit(data: dict) -> None:
        data["slices"] = ["carier"]

    _config_dir(tmp_path, monkeypatch, edit)
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    assert main(["features", "--usecase", "flight_delay", "--date", "2013-01-02"]) == 2
    err = capsys.readouterr().err
    assert "CONFIG ERROR" in err and "slices: column(s) ['carier'] not in the primary frame" in err, err
    assert not (tmp_path / "lake").exists(), "nothing may be read or written before the config is valid"


def _regression(data: dict) -> None:
    data["target"] = {"column": "arr_delay_minutes", "source_column": "arr_delay", "kind": "regression"}
    data["features"]["transforms"] = [t for t in data["features"]["transforms"] if t["name"] != "past_rate"]
    data["features"]["numeric"] = [n for n in data["features"]["numeric"] if "rate" not in n]
    data["drift"] = {"features": ["distance"]}
    data["candidates"] = [{"name": "ridge", "family": "ridge"}]
    data["gate"] = {"absolute": {"mae": {"max": 60}}, "change": {"mae": {"min_delta": 0.1}}}
    data.pop("metrics")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["target"].update(missing_outcome="positive"),
            "target.missing_outcome must be drop for kind regression",
        ),
        (lambda d: d.update(metrics=["rmse", "roc_auc"]), "metrics: ['roc_auc'] are not regression metrics"),
        (
            lambda d: d["gate"].update(primary_metric="pr_auc"),
            "gate.primary_metric: ['pr_auc'] are not regression metrics",
        ),
        (
            lambda d: d.update(candidates=[{"name": "lr", "family": "logistic_regression"}]),
            "candidates ['lr (logistic_regression)'] are not regression families",
        ),
        (
            lambda d: d["features"]["transforms"].append(
                {"name": "past_rate", "params": {"keys": ["origin"], "days": 1, "output": "r"}}
            ),
            "past_rate counts positive labels, and a regression's label is a value",
        ),
    ],
    ids=["missing-outcome", "metrics", "primary-metric", "family", "past-rate"],
)
def test_regression_mistakes_are_named(tmp_path, monkeypatch, capsys, edit, message) -> None:
    def both(data: dict) -> None:
        _regression(data)
        edit(data)

    _config_dir(tmp_path, monkeypatch, both)
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert message in out, out


def test_a_regression_gets_regression_defaults(tmp_path, monkeypatch, capsys) -> None:
    from pipelines.config import load_usecase

    _config_dir(tmp_path, monkeypatch, _regression)
    assert main(["validate"]) == 0, capsys.readouterr().out
    usecase = load_usecase("flight_delay")
    assert usecase.task == "regression" and usecase.metrics == ["rmse", "mae", "r2"]
    assert usecase.gate.primary_metric == "rmse" and not usecase.decision_threshold_chosen


def test_a_classification_refuses_a_regression_family(tmp_path, monkeypatch, capsys) -> None:
    _config_dir(tmp_path, monkeypatch, lambda d: d["candidates"].append({"name": "r", "family": "ridge"}))
    assert main(["validate"]) == 1
    assert "candidates ['r (ridge)'] are not classification families" in capsys.readouterr().out


@pytest.mark.parametrize(
    "expression",
    [
        "0 18 * * *",
        "0 5 2-31 * *",
        "*/15 * * * mon-fri",
        "0 0 1 jan,jul *",
        "0-59/5 0,12 1-7 * 1-5",
        "0 0 * * 7",
        "0 18 * *",
        "61 * * * *",
        "0 24 * * *",
        "0 0 0 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "0 0 */0 * *",
        "a b c d e",
    ],
)
def test_cron_check_agrees_with_croniter(expression: str) -> None:
    """Steps check schedules in images without Airflow, so without croniter: the pure-Python check must agree
    with the parser Airflow uses."""
    from croniter import croniter

    from pipelines.usecase_checks import cron_problem

    assert (cron_problem(expression) is None) == croniter.is_valid(expression), cron_problem(expression)


# --------------------------------------------------------------------------------------------------- leakage


def _problems(out: str) -> dict[str, tuple[str, str]]:
    """``field -> (message, fix)`` of every problem `mlops validate` printed (the last one of a field)."""
    lines = out.splitlines()
    found = {}
    for index, line in enumerate(lines):
        if line.startswith("  - ") and ": " in line and index + 1 < len(lines):
            field, message = line[4:].split(": ", 1)
            found[field] = (message, lines[index + 1].strip().removeprefix("fix: "))
    return found


def _single_source_regression(data: dict) -> None:
    """The outcome in the schedule's own file (no outcome source): the label is flights.arr_delay, and the
    departure delay is known only with it."""
    flights = data["sources"]["flights"]["columns"]
    flights["arr_delay"] = {"type": "float"}
    flights["dep_delay"] = {"type": "float", "known_with_outcome": True}
    flights["dep_at"] = {"type": "timestamp", "known_with_outcome": True}
    data["time"]["outcome"] = {"label_delay": "6h"}
    _regression(data)


def test_the_label_and_what_is_known_only_with_it_are_refused_as_inputs(
    tmp_path, monkeypatch, capsys
) -> None:
    """As a new user did: a regression whose label column sits in the events file, listed as an input; a
    column marked known_with_outcome; a calendar feature made from one; the label itself."""

    def edit(data: dict) -> None:
        _single_source_regression(data)
        data["features"]["transforms"].append(
            {"name": "calendar", "params": {"timestamp": "dep_at", "hour_output": "actual_dep_hour"}}
        )
        data["features"]["numeric"] += ["arr_delay", "dep_delay", "actual_dep_hour"]
        data["features"]["categorical"].append("arr_delay_minutes")

    path = _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate", "flight_delay"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: " in out
    expected = [
        ("features.numeric: 'arr_delay' is known only with the outcome (the label's source column", "remove"),
        ("features.numeric: 'dep_delay' is known only with the outcome (marked known_with_outcome", "remove"),
        ("features.numeric: 'actual_dep_hour' is known only with the outcome (made from 'dep_at'", "remove"),
        ("features.categorical: 'arr_delay_minutes' is the label (target.column)", "never a model input"),
    ]
    for problem, fix in expected:
        assert problem in out, f"missing: {problem}\n{out}"
        following = out[out.index(problem) :].split("\n")[1]
        assert following.strip().startswith("fix:") and fix in following, (problem, following)


def test_columns_of_a_separate_outcome_source_are_refused_as_inputs(tmp_path, monkeypatch, capsys) -> None:
    def edit(data: dict) -> None:
        keys = data["time"]["outcome"]["keys"]
        data["features"]["transforms"].append(
            {
                "name": "join_source",
                "params": {"source": "outcomes", "keys": keys, "columns": {"dep_delay": "outcome_dep_delay"}},
            }
        )
        data["features"]["numeric"].append("outcome_dep_delay")

    _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate", "flight_delay"]) == 1
    out = capsys.readouterr().out
    message, fix = _problems(out)["features.numeric"]
    assert "'outcome_dep_delay' is known only with the outcome" in message, out
    assert "joins 'dep_delay', a column of the outcome source 'outcomes' (time.outcome.source)" in message
    assert "remove 'outcome_dep_delay' from features.numeric" in fix


def test_a_known_with_outcome_column_may_be_carried_but_not_input(tmp_path, monkeypatch, capsys) -> None:
    """Marking a column does not stop it being a source column, a slice or a key: only a model input."""

    def edit(data: dict) -> None:
        data["sources"]["flights"]["columns"]["tailnum"]["known_with_outcome"] = True  # joins planes by it

    _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate", "flight_delay"]) == 1  # plane_year and plane_seats are joined by tailnum
    out = capsys.readouterr().out
    assert (
        "'plane_year' is known only with the outcome (made from 'tailnum', marked known_with_outcome" in out
    )


def test_leakage_allowed_must_name_model_inputs(tmp_path, monkeypatch, capsys) -> None:
    _config_dir(tmp_path, monkeypatch, lambda d: d.update(leakage={"allowed": ["distance", "dest"]}))
    assert main(["validate"]) == 1
    message, fix = _problems(capsys.readouterr().out)["leakage.allowed"]
    assert "['dest'] are not model inputs" in message and "features.numeric" in fix


# --------------------------------------------------------------------------------------------------- contradictions


def test_the_four_config_contradictions_are_each_reported_with_file_field_and_fix(
    tmp_path, monkeypatch, capsys
) -> None:
    """A score schedule at 03:00 for an 18:00 prediction time, a gate with absolute bounds only, a resample
    count whose bootstrap does not fit in memory, and candidate params the estimators do not take: all at once,
    before anything reads data."""

    def edit(data: dict) -> None:
        data["schedules"]["score"] = "0 3 * * *"
        data["gate"].pop("change")
        data["gate"]["significance"] = {"resamples": 20000}
        data["candidates"][0]["params"]["max_iterr"] = 5
        data["candidates"][1]["params"]["categorical_features"] = [0]
        data["candidates"][2]["params"]["epoch"] = 3

    path = _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate", "flight_delay"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: 6 problem(s)" in out, out
    problems = _problems(out)
    expected = {
        "schedules.score": (
            "'0 3 * * *' fires at 03:00, but predictions are made at time.prediction_time.at 18:00",
            "set schedules.score: '0 18 * * *'",
        ),
        "gate.change": ("no change check, only absolute bounds", "allow_absolute_only: true"),
        "gate.significance.resamples": (
            "20000 resamples: resampling rows (cluster_by: []) the draws alone take 0.75 GiB per 10,000",
            "at most",
        ),
        "candidates[0].params.max_iterr": (
            "'max_iterr' is not a parameter of LogisticRegression (candidate 'logreg'",
            "did you mean 'max_iter'?",
        ),
        "candidates[1].params.categorical_features": (
            "set by the hist_gradient_boosting pipeline from features.categorical",
            "remove it",
        ),
        "candidates[2].params.epoch": ("not a parameter of keras_mlp", "'epochs'"),
    }
    for field, (message, fix) in expected.items():
        assert field in problems, f"missing {field}:\n{out}"
        assert message in problems[field][0] and fix in problems[field][1], (field, problems[field])

    # every step refuses the same file with the same list, before anything is read
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    assert main(["train", "--usecase", "flight_delay", "--date", "2013-04-01"]) == 2
    err = capsys.readouterr().err
    assert "candidates[0].params.max_iterr" in err and "schedules.score" in err, err
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize(
    ("score", "fires"),
    [
        ("@daily", "'@daily' fires at 00:00"),
        ("0 * * * *", "fires at minute '0' of hour '*'"),
        ("@once", "once a day"),
    ],
)
def test_a_score_schedule_that_is_not_the_prediction_time_is_refused(
    tmp_path, monkeypatch, capsys, score, fires
) -> None:
    _config_dir(tmp_path, monkeypatch, lambda d: d["schedules"].update(score=score))
    assert main(["validate"]) == 1
    message, fix = _problems(capsys.readouterr().out)["schedules.score"]
    assert fires in message and "'0 18 * * *'" in fix, (message, fix)


def test_the_score_schedule_defaults_to_the_prediction_time(tmp_path, monkeypatch, capsys) -> None:
    """Left out, schedules.score is the prediction time, so the defaults never contradict each other."""
    from pipelines.config import load_usecase

    def edit(data: dict) -> None:
        data["schedules"].pop("score")
        data["time"]["prediction_time"]["at"] = "17:30"

    _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate"]) == 0, capsys.readouterr().out
    assert load_usecase("flight_delay").schedules.score == "30 17 * * *"


def test_a_gate_may_allow_absolute_bounds_only_explicitly(tmp_path, monkeypatch, capsys) -> None:
    def edit(data: dict) -> None:
        data["gate"].pop("change")
        data["gate"]["allow_absolute_only"] = True

    _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate"]) == 0, capsys.readouterr().out


def test_every_shipped_candidate_param_is_taken_by_its_estimator() -> None:
    from pipelines.config import load_usecase
    from pipelines.modeling import _sklearn_pipeline, accepted_params

    for name in SHIPPED:
        usecase = load_usecase(name)
        for spec in usecase.candidates:
            assert set(spec.params) <= set(accepted_params(spec.family, usecase.task)), (name, spec)
            if spec.family != "keras_mlp":  # the estimator is built with them (no TypeError)
                _sklearn_pipeline(spec, usecase, 0)


def test_a_cluster_column_the_features_table_lacks_is_named_with_file_field_and_fix(
    tmp_path, monkeypatch, capsys
) -> None:
    """gate.significance.cluster_by must name columns the holdout rows carry (date, keys, model inputs, slices,
    sensitive attributes): an unknown one is a problem `mlops validate` names before anything reads data."""

    def edit(data: dict) -> None:
        data["gate"]["significance"] = {"cluster_by": ["date", "weather_station"]}

    path = _config_dir(tmp_path, monkeypatch, edit)
    assert main(["validate", "flight_delay"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: 1 problem(s)" in out, out
    message, fix = _problems(out)["gate.significance.cluster_by"]
    assert "['weather_station'] are not carried by the features table" in message
    assert "date" in fix and "origin" in fix and "[] to resample rows" in fix
