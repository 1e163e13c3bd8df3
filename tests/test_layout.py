"""The layering rules of docs/architecture.md, read from the source (AST only: nothing is imported, so this runs in
well under a second).

Every import counts, at module level and inside functions (a function-level import is still a dependency; it only
runs later). Each failure names the file and line, the import, and what to do instead.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
STEPS = "pipelines.steps"
# modules of pipelines/ that may name step modules: the command line runs them, the registry lists them
STEP_RUNNERS = {"pipelines.cli", "pipelines.steps"}
AIRFLOW = ("airflow", "mlops_airflow", "mlops_cli")
# what a DAG file may import besides the standard library: Airflow itself, the plugin's wiring, and the use case
# models (a DAG file is one DAG per use case, built from its config)
DAG_IMPORTS = ("airflow", "mlops_airflow", "pipelines.config")
MAX_LINES = 600
# files over MAX_LINES lines, each with the reason it is still one file; a new long file fails until it is split or
# listed here with its reason, and an entry whose file got short (or moved) fails until it is removed
LONG_FILES = {
    "pipelines/config/__init__.py": "the use case and profile models with their validators: one pydantic schema",
    "pipelines/steps/features.py": "the features step: planning, Spark reads, labels and commits of one table",
    "pipelines/lake/__init__.py": "Storage, Lake and the partition facts: one Delta transaction model",
    "pipelines/steps/gate.py": "the gate's checks (absolute, change, slices, fairness) and the decision record",
    "pipelines/evaluation/report.py": "the evaluation report's HTML: one template of sections",
    "pipelines/steps/ingest.py": "parsing, typing, quarantine and the raw commit of landed files",
    "pipelines/serving/app.py": "the REST service's routes, limits, compressed bodies and Open Inference Protocol codecs",
    "pipelines/features/transforms.py": "the transforms library: one function per transform, the registry and the "
    "point-in-time lookups",
    "pipelines/modeling/model_ops.py": "mlops models (list, show, promote, rollback, history) over one record of "
    "alias moves",
    "pipelines/usecase_checks.py": "the static checks of a use case file, one function per rule, reported together",
    "pipelines/modeling/__init__.py": "the model families: fitting, decision thresholds and logging of each",
    "pipelines/ingest/expectations.py": "the Great Expectations suite built from the use case and the fail-closed "
    "typing that double-checks it",
    "pipelines/steps/train.py": "the train step: candidates, the validation refit and their MLflow runs",
    "pipelines/evaluation/explain.py": "the report's explanations: SHAP, permutation importance, cohorts, "
    "counterfactuals",
    "pipelines/backtest.py": "the backtest: one replay of the year per retraining policy and their comparison",
}


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted: the longest prefix that is a module of the tree when it is one
    text: str  # the statement as written

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.text})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


PIPELINES_MODULES = {module_name(p): p for p in python_files(PIPELINES)}


def _known(name: str) -> str:
    """``name``, or its longest prefix that is a module of pipelines/ (an attribute import names its module)."""
    probe = name
    while probe and probe not in PIPELINES_MODULES:
        probe = probe.rpartition(".")[0]
    return probe or name


def imports(path: Path) -> list[Import]:
    """Every import in ``path``, module- and function-level, resolved to dotted modules (``from pipelines import
    modeling`` imports ``pipelines.modeling``; relative imports resolved from the file's package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        text = ast.unparse(node) if isinstance(node, ast.Import | ast.ImportFrom) else ""
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, me, _known(a.name), text) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in PIPELINES_MODULES else _known(base)
                found.append(Import(path, node.lineno, me, target, text))
    return list(dict.fromkeys(found))  # one per statement and target


def _is(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def _is_step(module: str) -> bool:
    return module.startswith(STEPS + ".")


PIPELINES_IMPORTS = [i for p in PIPELINES_MODULES.values() for i in imports(p)]


def test_pipelines_never_imports_airflow() -> None:
    wrong = [
        f"{i.where()}: pipelines/ runs without Airflow (in a container, from the command line); move the code "
        f"that needs {i.target} to plugins/mlops_airflow/ and pass what it computes in as plain values"
        for i in PIPELINES_IMPORTS
        if any(_is(i.target, name) for name in AIRFLOW)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_step_imports_another_step() -> None:
    wrong = [
        f"{i.where()}: step {i.module} imports step {i.target}; move what both need into a module of pipelines/ "
        "named for its job (as pipelines/modeling/training_window.py, results.py, inbox.py) and import it from both"
        for i in PIPELINES_IMPORTS
        if _is_step(i.module) and (_is_step(i.target) or i.target == STEPS) and i.target != i.module
    ]
    assert not wrong, "\n".join(wrong)


def test_no_pipelines_module_imports_a_step() -> None:
    wrong = [
        f"{i.where()}: {i.module} imports the step {i.target}; a step is an entry point (read inputs, call "
        "pipelines/, write a result): move the function into a shared module of pipelines/ and import that from "
        "both (only pipelines/cli.py and the registry pipelines/steps/__init__.py name steps)"
        for i in PIPELINES_IMPORTS
        if not _is_step(i.module) and i.module not in STEP_RUNNERS and _is_step(i.target)
    ]
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_in_pipelines() -> None:
    """A package imports only downward (docs/architecture.md); a circle means two modules each need the other,
    so one of the shared names belongs in a third module (or in the lower of the two)."""
    edges: dict[str, set[str]] = {}
    for i in PIPELINES_IMPORTS:
        # a package's __init__ is imported with each of its modules: only a real module-to-module edge counts
        if i.target in PIPELINES_MODULES and i.target != i.module and not _is(i.module, i.target):
            edges.setdefault(i.module, set()).add(i.target)
    messages = []
    for cycle in _cycles(edges):
        members = set(cycle)
        links = [
            i.where()
            for i in PIPELINES_IMPORTS
            if i.module in members
            and i.target in members
            and i.target != i.module
            and not _is(i.module, i.target)
        ]
        messages.append(
            f"import cycle among {cycle}:\n  "
            + "\n  ".join(links)
            + "\n  fix: move the names one side takes from the other into the lower module (or a new one named "
            "for its job), so the imports go one way"
        )
    assert not messages, "\n".join(messages)


def test_no_import_cycle_between_packages_of_pipelines() -> None:
    """The same one-way rule a level up: the top-level parts of pipelines/ (a subpackage such as serving/ or
    steps/ counts as one, a module at the top as itself) import each other in one direction only."""

    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for i in PIPELINES_IMPORTS:
        if i.target in PIPELINES_MODULES and i.target.count(".") >= 1 and part(i.module) != part(i.target):
            edges.setdefault(part(i.module), set()).add(part(i.target))
    messages = []
    for cycle in _cycles(edges):
        members = set(cycle)
        links = sorted(
            {
                i.where()
                for i in PIPELINES_IMPORTS
                if part(i.module) in members
                and i.target in PIPELINES_MODULES
                and part(i.target) in members
                and part(i.module) != part(i.target)
            }
        )
        messages.append(
            f"the packages {cycle} import each other:\n  "
            + "\n  ".join(links)
            + "\n  fix: the lower package must not import the higher one; move the shared names down"
        )
    assert not messages, "\n".join(messages)


def test_dags_import_only_airflow_the_plugin_and_config() -> None:
    wrong = []
    for path in python_files(ROOT / "dags"):
        for i in imports(path):
            top = i.target.partition(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if not any(_is(i.target, allowed) for allowed in DAG_IMPORTS):
                wrong.append(
                    f"{i.where()}: a DAG file is wiring only (Airflow, mlops_airflow, pipelines.config); build "
                    f"what needs {i.target} in plugins/mlops_airflow/ (wiring.py, operators.py) and import that"
                )
    assert not wrong, "\n".join(wrong)


def test_long_files_are_listed_with_a_reason() -> None:
    sources = [*python_files(PIPELINES), *python_files(ROOT / "plugins"), *python_files(ROOT / "dags")]
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in sources}
    new = [
        f"{name}: {n} lines (over {MAX_LINES}); split it by concern, or add it to LONG_FILES in tests/test_layout.py "
        "with the reason it stays one file"
        for name, n in sorted(lines.items())
        if n > MAX_LINES and name not in LONG_FILES
    ]
    stale = [
        f"{name}: listed in LONG_FILES but {'gone' if name not in lines else f'{lines[name]} lines'}; remove the "
        "entry from tests/test_layout.py"
        for name in sorted(LONG_FILES)
        if lines.get(name, 0) <= MAX_LINES
    ]
    assert not new + stale, "\n".join(new + stale)


def test_the_checks_see_function_level_imports() -> None:
    """The resolver itself: a function-level ``from pipelines import X`` and a relative import are resolved."""
    found = {(i.module, i.target) for i in PIPELINES_IMPORTS}
    assert (
        "pipelines.steps.train",
        "pipelines.modeling",
    ) in found  # `from pipelines import modeling` in run()
    assert any(_is_step(m) and t == "pipelines.context" for m, t in found)
