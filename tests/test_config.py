"""Configuration: the shipped files validate; bad files fail with the file, the field and what is expected."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from pipelines.config import ConfigError, list_usecases, load_profile, load_usecase

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_shipped_usecases_and_profiles_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "flight_delay" in list_usecases()
    usecase = load_usecase("flight_delay")
    assert usecase.target.threshold == 15
    assert {c.family for c in usecase.candidates} >= {
        "logistic_regression",
        "hist_gradient_boosting",
        "keras_mlp",
    }
    assert usecase.slices == ["carrier", "origin"]
    for name in ("local", "s3"):
        profile = load_profile(name)
        assert profile.lake_uri
    monkeypatch.setenv("MLOPS_TASK_RUNTIME", "subprocess")
    assert load_profile().task_runtime == "subprocess"


@pytest.fixture
def config_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", target)
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(target))
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        ("threshold: 15", "threshold: fifteen", "target.threshold", "valid number"),
        ("holdout_days: 14", "holdout_days: 200", "split", "holdout_days must be smaller"),
        ("family: keras_mlp", "family: xgboost", "candidates.2.family", "keras_mlp"),
        ("primary_source: flights", "primary_source: trains", "<top level>", "not one of the sources"),
        (
            "    min_slice_rows: 300",
            "    min_slice_rows: 300\n    typo_field: 1",
            "gate.robustness.typo_field",
            "Extra inputs",
        ),
        (  # a file written before gate.robustness: its slice bounds under gate.fairness are refused with the move
            "  robustness:",
            "  fairness:",
            "gate",
            "rename gate.fairness to gate.robustness",
        ),
        # label kinds: each field needs its kind, and the kind must fit the outcome column's type
        ("  threshold: 15\n", "", "target", "target.kind 'above_threshold' needs target.threshold"),
        (
            "  kind: above_threshold",
            "  kind: boolean",
            "target",
            "target.threshold does not apply to target.kind 'boolean'; remove it, or set target.kind: above_threshold",
        ),
        (
            "  source_column: arr_delay",
            "  source_column: carrier",
            "<top level>",
            "target.kind 'above_threshold' does not fit target.source_column 'carrier', a string column of source "
            "'outcomes'; use kind: positive_values with positive_values:",
        ),
        (
            "  kind: above_threshold\n  threshold: 15",
            "  kind: positive_values\n  positive_values: [YES]",
            "<top level>",
            "target.positive_values [True] are not float values",
        ),
        (  # a capture share outside [0, 1]: the field, the range and the way to turn capture off
            "\nsources:",
            "\nserving:\n  capture:\n    sample: 1.5\nsources:",
            "serving.capture.sample",
            "serving.capture.sample is 1.5: a share of requests between 0 (capture none) and 1 (capture all)",
        ),
    ],
)
def test_bad_usecase_names_file_field_and_expectation(config_copy: Path, old, new, field, expected) -> None:
    path = config_copy / "usecases" / "flight_delay.yaml"
    _edit(path, old, new)
    with pytest.raises(ConfigError) as info:
        load_usecase("flight_delay")
    message = str(info.value)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert expected in message


def test_bad_yaml_and_unknown_profile(config_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (config_copy / "usecases" / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_usecase("broken")
    with pytest.raises(ConfigError, match="no such use case 'nope'"):
        load_usecase("nope")
    monkeypatch.setenv("MLOPS_PROFILE", "prod")
    with pytest.raises(ConfigError, match="profile 'prod'"):
        load_profile()


def test_docker_settings_overrides_and_errors(config_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docker section: a bad value named by file and field; defaults; environment overrides."""
    path = config_copy / "platform.yaml"
    _edit(path, "      auto_remove: success", "      auto_remove: sometimes")
    with pytest.raises(ConfigError) as info:
        load_profile("stack")
    assert str(path) in str(info.value)
    assert "field 'profiles.stack.docker.auto_remove'" in str(info.value)
    _edit(path, "      auto_remove: sometimes", "      auto_remove: success")
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(REPO_ROOT / "config"))
    profile = load_profile("local")
    assert profile.docker.image_for("spark") == "mlops-spark:dev" and profile.docker.gpus is False
    monkeypatch.setenv("MLOPS_IMAGE_TAG", "1.2.3")
    monkeypatch.setenv("MLOPS_DOCKER_GPUS", "true")
    monkeypatch.setenv("MLOPS_DOCKER_NETWORK", "host")
    profile = load_profile("local")
    assert profile.docker.image_for("train") == "mlops-train:1.2.3"
    assert profile.docker.gpus is True and profile.docker.network_mode == "host"
    with pytest.raises(ConfigError, match="no image for task kind 'serve'"):
        profile.docker.image_for("serve")


def test_pipelines_never_import_airflow() -> None:
    """Steps run in-process, as subprocesses or in containers without Airflow: pipelines/ must not import it."""
    offenders = []
    for path in sorted((REPO_ROOT / "pipelines").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(REPO_ROOT)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in {"airflow", "mlops_airflow"}
            ]
    assert offenders == []


def test_train_dag_window_param_is_bounded_by_what_train_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The train DAG's Param window_days refuses exactly the windows train refuses: shorter than the holdout,
    the validation window (several candidates or a chosen threshold) and one training day."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import ParamValidationError

    from pipelines.cli import main

    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    dags = DagBag(dag_folder=str(REPO_ROOT / "dags" / "train.py")).dags
    monkeypatch.setenv("MLOPS_LAKE_URI", str(tmp_path / "lake"))
    for name in list_usecases():
        usecase = load_usecase(name)
        validation = usecase.decision.validation_days if usecase.uses_validation_window else 0
        shortest = usecase.min_window_days
        assert shortest == usecase.split.holdout_days + validation + 1
        param = dags[f"{name}_train"].params.get_param("window_days")
        assert param.resolve(shortest) == shortest
        with pytest.raises(ParamValidationError):
            param.resolve(shortest - 1)
        argv = ["train", "--usecase", name, "--date", "2013-04-01", "--window-days"]
        assert main([*argv, str(shortest - 1)]) == 1
        assert f"--window-days {shortest - 1} must be larger than" in capsys.readouterr().out
        main([*argv, str(shortest)])  # accepted: fails later, on the empty lake
        out = capsys.readouterr().out
        assert "must be larger than" not in out and "no committed feature partitions" in out, out
