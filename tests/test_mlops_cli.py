"""The ``mlops`` command's package (mlops_cli): the console script and ``python -m mlops_cli`` run it, the wheel
carries it, and the Airflow side (plugins/, imported by Airflow's plugin manager in every component, and dags/) never
imports it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_airflow_side_and_the_steps_never_import_the_command() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] == "mlops_cli"
        )
        for folder in ("plugins", "dags", "pipelines")
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_console_script_and_the_wheel_name_the_command_package() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    module, _, function = project["project"]["scripts"]["mlops"].partition(":")
    assert module.split(".")[0] == "mlops_cli" and callable(
        getattr(importlib.import_module(module), function)
    )
    assert "mlops_cli" in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "mlops_cli" in project["tool"]["ruff"]["lint"]["isort"]["known-first-party"]


def test_python_m_mlops_cli_is_the_mlops_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mlops_cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for command in ("demo", "land", "run", "ui", "backtest", "validate"):
        assert command in proc.stdout, (command, proc.stdout)
