"""The gate over 2013: each monthly decision with its intervals, and what the report costs per training run.

    .venv/bin/python bench/gate.py [--months 12] [--home DIR] [--output docs/benchmarks.md]

Replays the demo (``mlops demo --runner direct``: the same steps as the Airflow DAGs, without Airflow) in a fresh
state directory, unless ``--home`` names one where a replay already ran, then reads each training date's gate
decision and evaluate result from the lake: the candidate chosen (and on which window), its holdout metric, the
champion's, the paired difference with its interval, the verdict and the checks that failed; and the seconds
evaluate spent on each part (scoring, intervals and fairness, the infrastructure check, the explanations, the
report files). Appends a Markdown section (command and machine included) to the output file.

Row against cluster resampling: evaluate keeps each decision's holdout labels, the candidate's and the champion's
scores and each row's date (``holdout_scores.parquet`` beside its result), so the bench recomputes the paired
interval of the ROC AUC improvement both ways from those scores, with the same seed, resamples and confidence:
resampling rows (the former gate) and resampling days (``cluster_by: [date]``, the gate now), and the decision
each would give (the other checks as recorded). One replay gives both columns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pipelines.context import MANUAL_RUN, run_key, run_result_key

REPO = Path(__file__).resolve().parent.parent
MLOPS = [sys.executable, "-m", "mlops_cli"]  # the mlops command of this tree
REPORT_PARTS = (
    "intervals_and_fairness",
    "infrastructure_check",
    "permutation_importance",
    "shap",
    "error_analysis",
    "data_explorer",
    "counterfactuals",
    "report_files",
)


def _fmt(value: object, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def replay(home: Path, months: int) -> float:
    """Run the demo into ``home``; return its wall seconds."""
    env = {**os.environ, "MLOPS_HOME": str(home)}
    started = time.perf_counter()
    subprocess.run(
        [*MLOPS, "demo", "--months", str(months), "--runner", "direct"],
        check=True,
        env=env,
        cwd=REPO,
    )
    return time.perf_counter() - started


def decisions(home: Path) -> list[dict]:
    """One row per training date: the gate decision and the evaluate timings."""
    summary = json.loads((home / "demo" / "summary.json").read_text())
    lake = home / "lake"
    rows = []
    for month in summary["months"]:
        day = month.get("train_date")
        if not day:
            continue
        # results are keyed by run: the summary names the train run of each month
        run = month.get("train_run") or MANUAL_RUN
        gate_file = lake / run_result_key("flight_delay", day, "gate", run)
        evaluate_file = lake / run_result_key("flight_delay", day, "evaluate", run)
        if not gate_file.exists():
            rows.append({"date": day, "missing": True})
            continue
        gate = json.loads(gate_file.read_text())
        evaluation = json.loads(evaluate_file.read_text())
        change = next((c for c in gate["checks"] if c["kind"] == "change"), {})
        rows.append(
            {
                "date": day,
                "candidate": gate["candidate"],
                "selected_on": gate.get("selected_on"),
                "candidate_value": gate.get("candidate_value"),
                "champion_value": gate.get("champion_value"),
                "champion_version": gate.get("champion_version"),
                "difference": change.get("difference"),
                "interval": change.get("interval"),
                "change_skipped": change.get("skipped"),
                "run": run,
                "min_delta": change.get("threshold") or 0.0,
                "other_failed": [
                    c["name"] for c in gate["checks"] if not c["passed"] and c["kind"] != "change"
                ],
                "passed": gate["passed"],
                "failed": [c["name"] for c in gate["checks"] if not c["passed"]],
                "seconds": evaluation.get("seconds") or {},
                "infrastructure_seconds": (evaluation.get("infrastructure") or {}).get("seconds"),
            }
        )
    return rows


def resampled(home: Path, row: dict, confidence: float = 0.95, resamples: int = 1000) -> dict | None:
    """The paired ROC AUC interval of one decision recomputed from its stored holdout scores, resampling rows
    and resampling dates (same seed, resamples and confidence; the gate's own functions), and the decision each
    gives: the change check read by ``change_reading`` against the recorded min_delta, every other check as
    recorded. None without stored scores or without a champion."""
    import pyarrow.parquet as pq

    from pipelines.evaluation.significance import (
        CLEARS,
        change_reading,
        cluster_index,
        draw_resampling,
        paired_difference,
    )

    path = (
        home
        / "lake"
        / run_key("flight_delay", row["date"], "evaluate", row["run"])
        / "holdout_scores.parquet"
    )
    if row.get("missing") or row.get("change_skipped") or not path.exists():
        return None
    frame = pq.read_table(path).to_pandas()
    if "champion" not in frame.columns:
        return None
    y, a, b = (frame[c].to_numpy(dtype="float64") for c in ("label", "candidate", "champion"))
    seed = int((row.get("interval") or {}).get("seed") or 0)
    out: dict = {"days": int(frame["date"].nunique()), "rows": len(frame)}
    for kind, draws in (
        ("row", draw_resampling(len(y), resamples, seed)),
        ("cluster", draw_resampling(len(y), resamples, seed, cluster_index(frame, ["date"]), ["date"])),
    ):
        started = time.perf_counter()
        found = paired_difference(
            "roc_auc", y, a, b, resamples=resamples, confidence=confidence, seed=seed, resampling=draws
        )
        reading = change_reading(found["low"], found["high"], row["min_delta"])
        out[kind] = found | {
            "width": None if found["low"] is None else found["high"] - found["low"],
            "passed": not row["other_failed"] and reading == CLEARS,
            "seconds": time.perf_counter() - started,
        }
    return out


def render_intervals(home: Path, rows: list[dict]) -> list[str]:
    """The table of row against cluster (date) resampling, one line per decision with a champion."""
    lines = [
        "",
        "### Row against cluster (date) resampling of the same decisions",
        "",
        "The paired 95% interval of the ROC AUC improvement (1000 resamples, the decision's seed) recomputed from "
        "each decision's stored holdout scores: resampling rows (the former gate) and resampling whole days "
        "(the gate now: `gate.significance.cluster_by: [date]`, widened for few clusters by t(K-1)/z x "
        "sqrt(K/(K-1))). The decision under each reads the change check against min_delta with that interval "
        "and every other check as recorded.",
        "",
        "| training date | candidate ROC AUC | champion | difference | row interval | row width | cluster "
        "interval (days) | cluster width | decision (rows) | decision (days) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    shown = 0
    for row in rows:
        found = resampled(home, row)
        if found is None:
            continue
        shown += 1
        r, c = found["row"], found["cluster"]

        def bounds(x: dict) -> str:
            return f"[{_fmt(x['low'])}, {_fmt(x['high'])}]"

        lines.append(
            f"| {row['date']} | {_fmt(row['candidate_value'])} | v{row['champion_version']} "
            f"{_fmt(row['champion_value'])} | {_fmt(r['difference'])} | {bounds(r)} | {_fmt(r['width'])} | "
            f"{bounds(c)} ({found['days']}) | {_fmt(c['width'])} | {'promoted' if r['passed'] else 'rejected'} | "
            f"{'promoted' if c['passed'] else 'rejected'} |"
        )
    if not shown:
        lines.append("| (no decision against a champion with stored holdout scores) | | | | | | | | | |")
    return lines


def render(rows: list[dict], wall: float | None, months: int, command: str) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## The gate over 2013: decisions with their intervals, and the report's cost ({stamp})",
        "",
        f"Command: `{command}`. Machine: {machine}. Replay wall time: {_fmt(wall, 0)} s for {months} months.",
        "The candidate is chosen on the validation window; the change check passes only when the lower bound of "
        "the 95% paired cluster bootstrap interval (by date, 1000 resamples, seeded) of its ROC AUC improvement over the "
        "champion, on the same holdout rows, reaches min_delta 0.002.",
        "",
        "| training date | chosen (on) | holdout ROC AUC | champion | difference | 95% interval | decision | failed checks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("missing"):
            lines.append(f"| {row['date']} | no gate result (the train run failed) | | | | | | |")
            continue
        interval = row["interval"] or {}
        bounds = f"[{_fmt(interval.get('low'))}, {_fmt(interval.get('high'))}]" if interval else "-"
        champion = (
            "-"
            if row["champion_version"] is None
            else f"v{row['champion_version']} {_fmt(row['champion_value'])}"
        )
        lines.append(
            f"| {row['date']} | {row['candidate']} ({row['selected_on']}) | {_fmt(row['candidate_value'])} | "
            f"{champion} | {'first run' if row['change_skipped'] else _fmt(row['difference'])} | {bounds} | "
            f"{'promoted' if row['passed'] else 'rejected'} | {', '.join(row['failed']) or '-'} |"
        )
    timed = [r["seconds"] for r in rows if r.get("seconds")]
    promoted = sum(1 for r in rows if r.get("passed"))
    lines += ["", f"Promoted {promoted} of {len(rows)} training runs.", ""]
    if timed:
        lines += ["Seconds evaluate spent per training run (mean over the runs, this machine):", ""]
        lines += ["| part | mean s | max s |", "|---|---|---|"]
        parts = ["scoring", *REPORT_PARTS]
        for part in parts:
            values = [t.get(part, 0.0) for t in timed]
            lines.append(f"| {part} | {sum(values) / len(values):.1f} | {max(values):.1f} |")
        report = [sum(t.get(p, 0.0) for p in REPORT_PARTS) for t in timed]
        total = [sum(t.values()) for t in timed]
        lines.append(
            f"| **gate statistics and report (all but scoring)** | {sum(report) / len(report):.1f} | {max(report):.1f} |"
        )
        lines.append(f"| evaluate total | {sum(total) / len(total):.1f} | {max(total):.1f} |")
        checks = [r["infrastructure_seconds"] for r in rows if r.get("infrastructure_seconds") is not None]
        if checks:
            lines += [
                "",
                "`infrastructure_check` is what evaluate still waits for once the explanations are done: the fresh "
                "process that loads the candidate as the scorer does runs beside them, and took "
                f"{sum(checks) / len(checks):.1f} s on average (at most {max(checks):.1f} s; it imports TensorFlow "
                "when the chosen candidate is the Keras MLP).",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--home", type=Path, default=None, help="read a replay that already ran here")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    wall = None
    home = args.home
    if home is None or not (home / "demo" / "summary.json").exists():
        home = home or Path(tempfile.mkdtemp(prefix="bench-gate-"))
        wall = replay(home, args.months)
    command = f".venv/bin/python bench/gate.py --months {args.months}"
    rows = decisions(home)
    text = render(rows, wall, args.months, command)
    text += "\n".join(render_intervals(home, rows)) + "\n"
    print(text)
    with args.output.open("a") as out:
        out.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
