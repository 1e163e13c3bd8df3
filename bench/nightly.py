"""The nightly stays flat: ingest, features and score of one day with a month of history against a year of it.

    .venv/bin/python bench/nightly.py [--days 30,365] [--repeat 3] [--home DIR] [--output docs/benchmarks.md]
                                      [--profile DIR]

The nightly of day N (day of 2013, 1-based) is the one that predicts N's flights: it runs on the evening of N - 1,
when the files of that evening have landed (the schedule of N at noon, the weather of N - 1, the outcomes of N - 2
at 06:00, as the demo delivers them), as the daily DAGs run it (the direct runner, the same steps without
Airflow): ``<uc>_ingest``, ``<uc>_features``, then ``<uc>_score`` (score at 18:00, then outcomes), each step
timed apart.

History is built the cheap way the demo already uses and trusts: a batched replay through the real steps (the
demo's files, each landed with the time it would have arrived, ingested, featured and scored with ``--replay`` in
one batch; the batched and the day-by-day paths build the same rows, see mlops_cli/replay.py), with a
small champion registered after the first batch (a scikit-learn model fitted on the first weeks' features and
labels, tagged as trained on the batch's last day, so it scores everything after). A batch leaves one commit per
table where a day-by-day history leaves one a day, so the log of every table the nightly commits to is then
padded with empty commits (commit info only, naming no partition) to one a day, with the checkpoints delta-rs
writes every 100 commits: log replay costs what it would after N - 2 nightlies. The features step then runs once
more (nothing to build), as the night before's run would have left the lake. That state is copied aside for each
N. Then one untimed warm-up nightly (Spark, Great Expectations and MLflow start once per process) and,
``--repeat`` times, for each N: the lake is restored from its copy and N's nightly runs. Prints the best of the
repeats per step and day and the ratio of the last day's nightly to the first's; ``--output`` appends a Markdown
section (command, machine, table). ``--profile DIR`` writes a cProfile of each day's last repeat
(``DIR/day-<N>.prof``).

Target (issue 23, item 5): day 365 at most 1.3x day 30, "no listing, log replay, facts read or rebuild that grows
with history".
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
YEAR = 2013
STEPS = ("ingest", "features", "score", "outcomes")


def _day(n: int) -> date:
    return date(YEAR, 1, 1) + timedelta(days=n - 1)


def _environment(home: Path) -> None:
    """Everything under ``home``: lake, MLflow store and artifacts (never ./var)."""
    os.environ["MLOPS_HOME"] = str(home)
    for name in ("MLOPS_LAKE_URI", "MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_ARTIFACT_ROOT", "MLOPS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.setdefault("MLOPS_CODE_VERSION", "bench-nightly")
    os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for path in (REPO, REPO / "plugins"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def land(lake, usecase, deliveries) -> int:
    from pipelines.ingest.inbox import land_file

    for item in deliveries:
        land_file(lake, usecase.name, item.day, item.name, item.content, item.arrived_at)
    return len(deliveries)


def register_champion(lake, usecase, trained_on: date) -> int:
    """A small gradient-boosted model on the features and labels before ``trained_on``, registered as the
    champion with ``logical_date`` = ``trained_on`` (it scores the events predicted from then on)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from pipelines.config import load_profile
    from pipelines.features.model_inputs import model_inputs
    from pipelines.lake import DATE, features_table, labels_table
    from pipelines.modeling.tracking import CHAMPION_ALIAS, configure_mlflow, model_name, record_logged_digest

    configure_mlflow(load_profile(), usecase)
    keys = [k for k in usecase.features.keys if k != DATE]
    days = [d for d in lake.partitions(features_table(usecase.name)) if d < trained_on.isoformat()]
    features = lake.read_frame(features_table(usecase.name), days)
    labels = lake.read_frame(labels_table(usecase.name), days)
    frame = features.merge(labels, on=[*keys, DATE], how="inner")
    x = model_inputs(usecase, frame, "bench")
    y = frame[usecase.target.column].astype(int).to_numpy()
    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")
    )
    columns = ColumnTransformer(
        [
            ("num", "passthrough", usecase.features.numeric),
            ("cat", categorical, usecase.features.categorical),
        ],
        sparse_threshold=0,
    )
    model = make_pipeline(columns, HistGradientBoostingClassifier(max_iter=30, random_state=7)).fit(x, y)
    with mlflow.start_run(run_name=f"bench-champion@{trained_on}"):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(x.head(50), model.predict_proba(x.head(50))),
            pip_requirements=["scikit-learn"],
            skops_trusted_types=[
                "numpy.dtype",
                "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            ],
            metadata={"decision_threshold": 0.3, "decision_rule": "fixed"},
        )
        record_logged_digest(info)  # what the score step checks before it loads the champion
    name = model_name(usecase)
    version = mlflow.register_model(info.model_uri, name, tags={"logical_date": trained_on.isoformat()})
    MlflowClient().set_registered_model_alias(name, CHAMPION_ALIAS, str(version.version))
    return int(version.version)


def pad_logs(lake_root: Path, commits: int) -> int:
    """Bring the log of every table that the nightly commits to each day (not the reference ``planes``) to
    ``commits`` versions with empty commits (commit info only, as a no-op write logs), creating a checkpoint at
    every hundredth version as delta-rs does after its own commits: the log a day-by-day history leaves (one
    commit a day per table) costs the same to replay. Returns the commits added."""
    import json

    from deltalake import DeltaTable

    added = 0
    for log in sorted(lake_root.rglob("_delta_log")):
        if "/planes" in log.parent.as_posix() or "/runs/" in log.as_posix():
            continue
        latest = max(int(p.name.split(".")[0]) for p in log.glob("*.json"))
        for version in range(latest + 1, commits):
            entry = {
                "commitInfo": {
                    "timestamp": int(time.time() * 1000),
                    "operation": "WRITE",
                    "operationParameters": {"mode": "Append"},
                    "engineInfo": "bench/nightly.py log padding",
                    "mlops.partitions": "[]",  # an empty commit writes no partition
                }
            }
            (log / f"{version:020d}.json").write_text(json.dumps(entry) + "\n")
            added += 1
            if version % 100 == 0:
                DeltaTable(str(log.parent)).create_checkpoint()
    return added


def build_history(home: Path, usecase, data, days: list[int], log: Path) -> dict[int, Path]:
    """Replay the history of each N of ``days`` in batches (days 1..N-1 in all); copy the lake aside before N's
    nightly. Returns N -> the copy."""
    from mlops_cli.demo_data import _local, files_to_land
    from mlops_cli.runners import DirectRunner
    from pipelines.config import load_profile
    from pipelines.lake import open_lake

    lake = open_lake(load_profile().lake_uri)
    runner = DirectRunner(usecase.name, log)
    timezone = usecase.time.timezone
    copies: dict[int, Path] = {}
    done = 0
    for n in days:
        batch = [_day(k) for k in range(done + 1, n - 1)]  # the nightly of N runs on N - 1's evening
        t0 = time.perf_counter()
        landed = land(lake, usecase, files_to_land(data, batch, done == 0, timezone))
        evening = _local(batch[-1], usecase.time.prediction_time.at, timezone)
        for kind in ("ingest", "features"):
            outcome = runner.run(kind, evening)
            if outcome.state != "success":
                raise SystemExit(f"history through {batch[-1]}: {kind} failed: {outcome.results}")
        if done == 0:
            version = register_champion(lake, usecase, batch[-1])
            print(f"  champion: version {version}, trained for {batch[-1]}", flush=True)
        outcome = runner.run("score", evening, {"replay": True})
        if outcome.state != "success":
            raise SystemExit(f"history through {batch[-1]}: score failed: {outcome.results}")
        padded = pad_logs(home / "lake", n - 2)
        # the features step after the padding, as the night before left it: nothing to build, its plan mark
        # names the tables' versions as they are now
        outcome = runner.run("features", evening)
        if outcome.state != "success" or outcome.result("features").get("built"):
            raise SystemExit(f"history through {batch[-1]}: features after padding: {outcome.results}")
        copies[n] = home / "snapshots" / f"day-{n:03d}"
        shutil.copytree(home / "lake", copies[n])
        print(
            f"  history days {done + 1}..{n - 2} ({batch[0]}..{batch[-1]}): {landed} files, "
            f"{time.perf_counter() - t0:.1f} s ({padded} empty log commits added)",
            flush=True,
        )
        done = n - 2
    return copies


def nightly(home: Path, usecase, data, n: int, copy: Path, log: Path, profile_dir: Path | None) -> dict:
    """Restore the lake as the nightly that predicts day N finds it (the evening of N - 1), land that evening's
    files and run the nightly; seconds per step."""
    from mlops_cli.demo_data import _local, files_to_land
    from mlops_cli.runners import DirectRunner
    from pipelines.config import load_profile
    from pipelines.lake import open_lake

    shutil.rmtree(home / "lake")
    shutil.copytree(copy, home / "lake")
    lake = open_lake(load_profile().lake_uri)
    day = _day(n - 1)
    land(lake, usecase, files_to_land(data, [day], False, usecase.time.timezone))
    runner = DirectRunner(usecase.name, log)
    evening = _local(day, usecase.time.prediction_time.at, usecase.time.timezone)
    profiler = cProfile.Profile() if profile_dir is not None else None
    for kind in ("ingest", "features", "score"):
        if profiler is not None:
            profiler.enable()
        outcome = runner.run(kind, evening, {"replay": False})
        if profiler is not None:
            profiler.disable()
        if outcome.state != "success":
            raise SystemExit(f"nightly of {day}: {kind} failed: {outcome.results}")
    if profiler is not None and profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile_dir / f"day-{n:03d}.prof"))
    seconds = dict(runner.step_seconds)
    seconds["total"] = sum(seconds.get(step, 0.0) for step in STEPS)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", default="30,365", help="days of 2013 (1-based) whose nightly is timed")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each nightly (the best counts)")
    parser.add_argument(
        "--home", type=Path, default=None, help="state folder (default: a fresh temporary one)"
    )
    parser.add_argument("--output", type=Path, default=None, help="append a Markdown section to this file")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfiles of the last repeat here")
    args = parser.parse_args()
    days = sorted({int(x) for x in args.days.split(",")})
    if days[0] < 3 or days[-1] > 365:
        raise SystemExit("--days: days of 2013 between 3 and 365")
    started = time.perf_counter()
    home = (args.home or Path(tempfile.mkdtemp(prefix="nightly-bench-"))).resolve()
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"--home {home}: not empty; give a fresh folder")
    home.mkdir(parents=True, exist_ok=True)
    _environment(home)
    from mlops_cli.demo_data import DemoData
    from pipelines.config import load_usecase

    usecase = load_usecase("flight_delay")
    data = DemoData.load(usecase)
    log = home / "steps.log"
    print(f"nightly bench: days {days}, {args.repeat} repeat(s); state in {home}", flush=True)
    copies = build_history(home, usecase, data, days, log)
    history_seconds = time.perf_counter() - started
    runs: dict[int, list[dict]] = {n: [] for n in days}
    warmup = nightly(home, usecase, data, days[0], copies[days[0]], log, None)
    print(f"  warm-up, day {days[0]}: total {warmup['total']:.2f} s (not counted)", flush=True)
    for repeat in range(args.repeat):
        for n in days:
            last = repeat == args.repeat - 1
            seconds = nightly(home, usecase, data, n, copies[n], log, args.profile if last else None)
            runs[n].append(seconds)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
            print(f"  repeat {repeat + 1}, day {n} ({_day(n)}): {shown}", flush=True)
    columns = [*STEPS, "total"]
    best = {n: {c: min(r.get(c, 0.0) for r in runs[n]) for c in columns} for n in days}
    first, last = days[0], days[-1]
    ratio = best[last]["total"] / best[first]["total"]
    header = (
        "| nightly of day (run the evening before) | history (days ingested) | "
        + " | ".join(f"{c} (s)" for c in columns)
        + " |"
    )
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for n in days:
        cells = " | ".join(f"{best[n][c]:.2f}" for c in columns)
        lines.append(f"| {n} ({_day(n)}) | {n - 2} | {cells} |")
    step_ratios = ", ".join(
        f"{c} {best[last][c] / best[first][c]:.2f}x" for c in columns if best[first][c] > 0
    )
    summary = (
        f"Nightly of day {last} / day {first}: **{ratio:.2f}x** (target at most 1.3x); per step: {step_ratios}. "
        f"Best of {args.repeat} per step; history built in {history_seconds:.0f} s, whole run "
        f"{time.perf_counter() - started:.0f} s."
    )
    print("\n".join(["", *lines, "", summary]), flush=True)
    if args.output is not None:
        shown, skip = [], False
        for arg in sys.argv[1:]:  # the state folder is this run's own: not part of the command to rerun
            if skip or arg.startswith("--home="):
                skip = False
                continue
            if arg == "--home":
                skip = True
                continue
            shown.append(arg)
        command = "python bench/nightly.py " + " ".join(shown)
        machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        section = [
            "",
            f"## Nightly: day {last} against day {first} ({date.today().isoformat()})",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine}",
            "",
            *lines,
            "",
            summary,
            "",
        ]
        with args.output.open("a") as handle:
            handle.write("\n".join(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
