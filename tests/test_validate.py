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
    data["gate"] = {"absolute": {"mae": {"max": 60}}}
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

    from pipelines.validate import cron_problem

    assert (cron_problem(expression) is None) == croniter.is_valid(expression), cron_problem(expression)
