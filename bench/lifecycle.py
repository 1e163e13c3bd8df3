"""Lifecycle benchmark: the demo through Airflow versus the same steps called directly, in one run.

    .venv/bin/python bench/lifecycle.py [--months 12] [--output docs/benchmarks.md]

Runs, one after the other on this machine, each in a fresh process with its own state directory:
1. ``mlops demo --runner airflow``: every step as an Airflow task (dag.test with logical dates);
2. ``mlops demo --runner direct``: the same graphs, the same steps, no Airflow;
3. ``bench/floor.py``: the same year as a bare pandas + scikit-learn script (the floor the demo is compared to);
4. import and start-up costs in fresh processes (TensorFlow, Great Expectations, MLflow, Airflow, a SparkSession).
Reports wall times, the orchestration overhead ratio and where the time goes: per step, its fixed cost (interpreter
start, first imports, configuration, SparkSession, Great Expectations context, MLflow client; each step result's
``timings``) apart from its work, and the task's wall time as the runner saw it (through Airflow: the rest is
Airflow's per-task overhead); evaluate's own laps (its decision path) and the report's parts, mean and max per month.
Appends the results (with the command and the machine) to the output file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MLOPS = [sys.executable, "-m", "mlops_cli"]  # the mlops command of this tree

IMPORTS = {
    "tensorflow": "import tensorflow",
    "great_expectations": "import great_expectations",
    "mlflow": "import mlflow",
    "sklearn": "import sklearn.ensemble, sklearn.linear_model",
    "airflow (sdk + DagBag)": "import airflow.sdk; from airflow.dag_processing.dagbag import DagBag",
    "SparkSession start": (
        "from pipelines.config import load_profile; from pipelines.features.spark import get_spark; "
        "get_spark(load_profile()).range(1).count()"
    ),
}


def run_demo(runner: str, months: int, home: Path) -> dict:
    env = {**os.environ, "MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for key in list(env):
        if key.startswith("AIRFLOW"):
            env.pop(key)
    start = time.perf_counter()
    proc = subprocess.run(
        [*MLOPS, "demo", "--months", str(months), "--runner", runner],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"demo with runner {runner} failed (exit {proc.returncode})")
    summary = json.loads((home / "demo" / "summary.json").read_text())
    summary["process_wall_seconds"] = round(wall, 1)
    print(proc.stdout, flush=True)
    return summary


def run_floor(months: int) -> dict:
    """``bench/floor.py``: the same year as a plain pandas + scikit-learn script, in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "floor.py"), "--months", str(months)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"bench/floor.py failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def import_cost(label: str, code: str, home: Path) -> float:
    # a script file, not `python -c`: PySpark exits silently under -c (it takes it for a doctest run)
    script = home.parent / "import_cost.py"
    script.write_text(f"import time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)\n")
    env = {**os.environ, "MLOPS_HOME": str(home)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        return float("nan")
    return float(proc.stdout.strip().splitlines()[-1])


def run_rows(measured: dict[str, float], baseline: dict[str, float]) -> list[str]:
    """Table rows per DAG kind: summed run seconds of both and their ratio (measured / baseline)."""
    rows = []
    for kind in ("ingest", "features", "score", "train"):
        a, b = measured.get(kind, 0.0), baseline.get(kind, 0.0)
        rows.append(f"| {kind} runs, summed (s) | {a} | {b} | {a / b if b else float('nan'):.2f} |")
    return rows


def totals(summary: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for month in summary["months"]:
        for kind, seconds in month.get("run_seconds", {}).items():
            out[kind] = out.get(kind, 0.0) + seconds
    return {k: round(v, 1) for k, v in out.items()}


STEP_ORDER = [
    "ingest",
    "features",
    "score",
    "outcomes",
    "train",
    "evaluate",
    "gate",
    "register",
    "promote",
    "report",
]


def _stats(values: list[float]) -> str:
    """``mean / max`` of ``values`` (seconds), ``-`` for none."""
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.2f} / {max(values):.2f}" if values else "-"


def step_cost_rows(summary: dict) -> list[str]:
    """One Markdown row per step: mean / max per month of its total, fixed cost, work and task wall time, the
    runner's per-task overhead (task wall minus the step's own total) and its fixed parts (means)."""
    per_step: dict[str, list[dict]] = {}
    for month in summary["months"]:
        for step, timings in (month.get("step_timings") or {}).items():
            per_step.setdefault(step, []).append(timings)
    rows = []
    for step in sorted(per_step, key=lambda s: (STEP_ORDER + [s]).index(s)):
        found = per_step[step]
        overhead = [t["task_s"] - t["total_s"] for t in found if t.get("task_s") is not None]
        parts: dict[str, list[float]] = {}
        for t in found:
            for name, seconds in (t.get("fixed") or {}).items():
                parts.setdefault(name, []).append(seconds)
        fixed_parts = ", ".join(
            f"{name} {sum(v) / len(found):.2f}"
            for name, v in sorted(parts.items(), key=lambda kv: -sum(kv[1]))
        )
        rows.append(
            f"| {step} | {len(found)} | {_stats([t['total_s'] for t in found])} | "
            f"{_stats([t['fixed_s'] for t in found])} | {_stats([t['work_s'] for t in found])} | "
            f"{_stats([t.get('task_s') for t in found])} | {_stats(overhead)} | {fixed_parts or '-'} |"
        )
    return rows


def lap_rows(summary: dict, key: str) -> list[str]:
    """One Markdown row per lap of ``key`` (``evaluate_laps`` or ``report_laps``): months, mean / max seconds."""
    laps: dict[str, list[float]] = {}
    for month in summary["months"]:
        for name, seconds in (month.get(key) or {}).items():
            if seconds is not None:
                laps.setdefault(name, []).append(float(seconds))
    rows = [f"| {name} | {len(values)} | {_stats(values)} |" for name, values in laps.items()]
    months = [m for m in summary["months"] if m.get(key)]
    totals = [sum(v for v in (m.get(key) or {}).values() if v is not None) for m in months]
    if totals:
        rows.append(f"| **all laps** | {len(totals)} | {_stats(totals)} |")
    return rows


def run_overhead_rows(summary: dict) -> list[str]:
    """Per DAG kind, mean / max per month: the run's wall time, the summed wall time of its steps' tasks, and the
    rest (the orchestrator's: sensors, scheduling, the task API's start, XCom)."""
    graphs = {
        "ingest": ["ingest"],
        "features": ["features"],
        "score": ["score", "outcomes"],
        "train": ["train", "evaluate", "gate", "register", "promote", "report"],
    }
    rows = []
    for kind, steps in graphs.items():
        walls, tasks = [], []
        for month in summary["months"]:
            wall = (month.get("run_seconds") or {}).get(kind)
            timings = month.get("step_timings") or {}
            if wall is None or not any(s in timings for s in steps):
                continue
            walls.append(wall)
            tasks.append(sum((timings.get(s) or {}).get("task_s") or 0.0 for s in steps))
        rest = [w - t for w, t in zip(walls, tasks, strict=True)]
        rows.append(f"| {kind} | {_stats(walls)} | {_stats(tasks)} | {_stats(rest)} |")
    return rows


def cost_section(airflow: dict, direct: dict | None) -> list[str]:
    """Where each step's time goes, both runners, and evaluate's and the report's laps (Markdown)."""
    header = [
        "| step | runs | total (s) | fixed (s) | work (s) | task wall (s) | runner overhead (s) | fixed parts, mean (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines = [
        "",
        "Per step, mean / max per month (one run a month each): its own `timings` (fixed = interpreter start, "
        "first imports, configuration, SparkSession, Great Expectations context and suites, MLflow client; work = "
        "the rest), the task's wall time as its runner saw it, and the runner's overhead (task wall minus the "
        "step's own total; through Airflow that is the task runner, XCom and the task API).",
        "",
        "Through Airflow (`dag.test`, tasks in one process):",
        "",
        *header,
        *step_cost_rows(airflow),
        "",
        *(
            [
                "Direct calls (the same steps in one process, no Airflow):",
                "",
                *header,
                *step_cost_rows(direct),
                "",
            ]
            if direct
            else []
        ),
        "Each DAG run's wall time against its steps' tasks, mean / max per month (s): the rest is the "
        "orchestrator's (the arrival sensor, scheduling, the task API's start in the first run, XCom):",
        "",
        "| run | through Airflow: run wall | its tasks | rest |",
        "| --- | ---: | ---: | ---: |",
        *run_overhead_rows(airflow),
        "",
        *(
            ["| run | direct: run wall | its steps | rest |", "| --- | ---: | ---: | ---: |"]
            + run_overhead_rows(direct)
            + [""]
            if direct
            else []
        ),
        "Evaluate's own laps (its decision path), through Airflow, mean / max per month:",
        "",
        "| lap | months | mean / max (s) |",
        "| --- | ---: | ---: |",
        *lap_rows(airflow, "evaluate_laps"),
        "",
        "The report's parts (its own task after the gate), through Airflow, mean / max per month:",
        "",
        "| part | months | mean / max (s) |",
        "| --- | ---: | ---: |",
        *lap_rows(airflow, "report_laps"),
    ]
    return lines


def machine_line() -> str:
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )


def airflow_only_section(months: int, airflow: dict, floor: dict) -> str:
    """The demo through Airflow against the bare floor, run one after the other (``--airflow-only``)."""
    floor_ratio = airflow["process_wall_seconds"] / floor["process_wall_seconds"]
    runs = totals(airflow)
    promotions = [m["month"] for m in airflow["months"] if m.get("promoted_version")]
    lines = [
        f"\n## The demo against the bare floor, {months} months ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n",
        f"Command: `.venv/bin/python bench/lifecycle.py --months {months} --airflow-only`  ",
        f"Machine: {machine_line()}\n",
        "| measure | seconds |",
        "| --- | ---: |",
        f"| `mlops demo` through Airflow, process wall | {airflow['process_wall_seconds']} |",
        *(
            f"| {kind} runs, summed | {runs.get(kind, 0.0)} |"
            for kind in ("ingest", "features", "score", "train")
        ),
        f"| the bare floor (`bench/floor.py`), process wall | {floor['process_wall_seconds']} |",
        "",
        f"The demo through Airflow takes **{floor_ratio:.1f}x** the bare floor (target: at most 8x). The floor's "
        f"ROC AUC on each next month: { ({m['month']: m['roc_auc'] for m in floor['months']}) }. Promotions in "
        f"{promotions}.",
    ]
    return "\n".join(lines + cost_section(airflow, None)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--summaries",
        type=Path,
        help="also keep both demos' summary.json (with each step's timings) in this folder",
    )
    parser.add_argument(
        "--airflow-only",
        action="store_true",
        help="only the demo through Airflow and the bare floor (their ratio), not the direct runner's demo",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="run in this folder and keep it (the demos' lakes, MLflow stores and logs) instead of a temporary one",
    )
    args = parser.parse_args()

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.nullcontext(str(args.keep))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="bench-") as tmp
    ):
        airflow = run_demo("airflow", args.months, Path(tmp) / "airflow")
        direct = None if args.airflow_only else run_demo("direct", args.months, Path(tmp) / "direct")
        if args.summaries:
            args.summaries.mkdir(parents=True, exist_ok=True)
            for name, summary in (("airflow", airflow), ("direct", direct)):
                if summary is not None:
                    (args.summaries / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
        floor = run_floor(args.months)
        if args.airflow_only:
            text = airflow_only_section(args.months, airflow, floor)
            print(text)
            with args.output.open("a") as handle:
                handle.write(text)
            return 0
        imports = {
            label: round(import_cost(label, code, Path(tmp) / "imports"), 1)
            for label, code in IMPORTS.items()
        }

    ratio = airflow["process_wall_seconds"] / direct["process_wall_seconds"]
    airflow_runs, direct_runs = totals(airflow), totals(direct)
    promotions = [m["month"] for m in airflow["months"] if m.get("promoted_version")]
    rejections = [m["month"] for m in airflow["months"] if m.get("gate_passed") is False]
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    lines = [
        f"\n## Lifecycle, {args.months} months ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n",
        f"Command: `.venv/bin/python bench/lifecycle.py --months {args.months}`  ",
        f"Machine: {machine}\n",
        "| measure | through Airflow | direct calls | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| whole replay, process wall time (s) | {airflow['process_wall_seconds']} | "
        f"{direct['process_wall_seconds']} | {ratio:.2f} |",
    ]
    lines += run_rows(airflow_runs, direct_runs)
    floor_ratio = airflow["process_wall_seconds"] / floor["process_wall_seconds"]
    floor_auc = {m["month"]: m["roc_auc"] for m in floor["months"]}
    lines += [
        "",
        f"The bare floor (`bench/floor.py`: the same months as one pandas + scikit-learn script, point-in-time "
        f"rates and weather, one gradient-boosted model a month): {floor['process_wall_seconds']} s; the demo "
        f"through Airflow takes **{floor_ratio:.1f}x** it (target: at most 8x). The floor's ROC AUC on each next "
        f"month: {floor_auc}.",
    ]
    lines += [
        "",
        f"Orchestration overhead: Airflow adds {100 * (ratio - 1):.0f}% over the direct calls "
        f"(target: at most 20%). Promotions in {promotions}; rejected candidates in {rejections}.\n",
        "Where the time goes (direct runner, summed per step, seconds): "
        + ", ".join(f"{k} {v}" for k, v in sorted(direct.get("step_seconds", {}).items())),
        "",
        "One-off costs in a fresh process (seconds): " + ", ".join(f"{k} {v}" for k, v in imports.items()),
        "",
        "Airflow's own cost is the difference between the two columns: the metadata database set-up and the "
        "in-process task API start (once per process), then scheduling bookkeeping and XCom per task.",
    ]
    lines += cost_section(airflow, direct)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.output.exists():
        args.output.write_text(
            "# Benchmarks\n\nNumbers from `bench/`, newest last. Ratios come from one run.\n"
        )
    with args.output.open("a") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
