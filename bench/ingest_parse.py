"""CSV parsing in ingest: a month of the demo's landing files parsed, validated and typed, Python rows against Arrow.

    .venv/bin/python bench/ingest_parse.py [--month 1] [--repeat 3]

Builds the files the demo lands for one month (``mlops demo``'s deliveries, the truncated schedule included), then
times, in this process and with Great Expectations already imported and its suites built (warm: fixed costs are
not this benchmark's subject), the parse of every file, the GX validation of each source's batch and the typing of
the valid files, first as Python rows (``csv`` module, pandas conversion), then through ``pyarrow.csv`` with the
declared schema. Checks that both give the same typed frames and the same quarantine checks, and prints one JSON
line with the best of ``--repeat`` runs of each and the ratio.

Before and after across commits (the tree measured is the one on PYTHONPATH)::

    PYTHONPATH=<old tree>:<old tree>/plugins .venv/bin/python bench/ingest_parse.py --only python --save /tmp/old.pkl
    PYTHONPATH=<new tree>:<new tree>/plugins .venv/bin/python bench/ingest_parse.py --compare /tmp/old.pkl
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if "PYTHONPATH" not in os.environ:  # PYTHONPATH names the tree to measure (another commit's, for "before")
    sys.path[:0] = [str(REPO), str(REPO / "plugins")]


def month_files(usecase, month: int) -> list:
    """The demo's deliveries of ``month`` (the first batch's, with the truncated schedule)."""
    from mlops_cli.demo_data import CORRUPT_FILE, DemoData, _month_days, files_to_land, truncate_mid_row
    from pipelines.ingest.inbox import match_source

    data = DemoData.load(usecase)
    files = []
    for item in files_to_land(data, _month_days(month), month == 1, usecase.time.timezone):
        content = item.content
        if (item.name.split("_")[0], item.day) == CORRUPT_FILE:
            content = truncate_mid_row(content)
        files.append((item.day, item.name, content, match_source(usecase, item.name)))
    return files


def type_files_before(batch: list, source_name: str, source, timezone: str) -> None:
    """The typing of ingest's step 2 before ``type_files`` (commit 48d1e81), for a "before" measure."""
    from pipelines.ingest.expectations import to_typed_many
    from pipelines.steps.ingest import check_event_dates

    for file in batch:
        if file.rejected:
            file.frame = None
    valid = [file for file in batch if not file.rejected]
    typed = to_typed_many([f.frame for f in valid], source, source_name, timezone)
    for file, (frame, problems) in zip(valid, typed, strict=True):
        file.typed = frame
        for problem in problems:
            file.reject(problem)
        if not file.rejected and source.event_time:
            check_event_dates(file, source_name, source.event_time, timezone)


def ingest_files(usecase, files: list, arrow: bool) -> tuple[dict[str, float], list]:
    """Parse, validate and type ``files`` as ingest does (steps 1 and 2 of its run); seconds per part."""
    from pipelines.ingest.expectations import validate_batch
    from pipelines.steps import ingest

    laps = {"parse": 0.0, "validate": 0.0, "type": 0.0}
    delivered = [
        ingest.DeliveredFile(key=name, name=name, day=day, data=data, arrived_at=None, source=source)
        for day, name, data, source in files
    ]
    options = {"arrow": arrow} if "arrow" in inspect.signature(ingest.parse_file).parameters else {}
    start = time.perf_counter()
    for file in delivered:
        ingest.parse_file(file, file.source, usecase.sources[file.source], **options)
    laps["parse"] = time.perf_counter() - start
    for source_name, source in usecase.sources.items():
        batch = [f for f in delivered if f.source == source_name and f.frame is not None]
        if not batch:
            continue
        start = time.perf_counter()
        outcome = validate_batch(source_name, source, [f.frame for f in batch])
        laps["validate"] += time.perf_counter() - start
        for index, checks in outcome.failures.items():
            batch[index].checks.extend(checks)
        start = time.perf_counter()
        if hasattr(ingest, "type_files"):
            ingest.type_files(batch, source_name, source, usecase.time.timezone)
        else:  # the code before type_files: ingest's step 2 as it was
            type_files_before(batch, source_name, source, usecase.time.timezone)
        laps["type"] += time.perf_counter() - start
    return laps, delivered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--month", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=["python", "arrow"],
        help="one path only (python: the tree on PYTHONPATH as it parses)",
    )
    parser.add_argument(
        "--save", type=Path, help="pickle the typed frames and checks here (to --compare later)"
    )
    parser.add_argument(
        "--compare", type=Path, help="assert the typed frames and checks equal those saved here"
    )
    args = parser.parse_args()
    import pickle

    import pandas as pd

    from pipelines.config import load_usecase

    usecase = load_usecase("flight_delay")
    files = month_files(usecase, args.month)
    paths = [
        (name, arrow) for name, arrow in (("python", False), ("arrow", True)) if args.only in (None, name)
    ]
    ingest_files(usecase, files, arrow=paths[0][1])  # warm: imports, GX context and suites
    best: dict[str, dict[str, float]] = {}
    outputs: dict[str, list] = {}
    for _ in range(args.repeat):
        for name, arrow in paths:
            laps, delivered = ingest_files(usecase, files, arrow)
            laps["total"] = sum(laps.values())
            best[name] = {k: min(v, best.get(name, {}).get(k, v)) for k, v in laps.items()}
            outputs[name] = [(f.name, [c.to_dict() for c in f.checks], f.typed) for f in delivered]

    def same(a: list, b: list) -> None:
        for (name, checks, typed), (_, other_checks, other_typed) in zip(a, b, strict=True):
            assert checks == other_checks, name
            assert (typed is None) == (other_typed is None), name
            if typed is not None:
                pd.testing.assert_frame_equal(typed, other_typed)

    if len(outputs) == 2:
        same(outputs["python"], outputs["arrow"])
    last = outputs[paths[-1][0]]
    if args.compare:
        same(pickle.loads(args.compare.read_bytes()), last)
    if args.save:
        args.save.write_bytes(pickle.dumps(last))
    out = {
        "month": f"{date(2013, args.month, 1):%Y-%m}",
        "files": len(files),
        "bytes": sum(len(f[2]) for f in files),
        "quarantined": [name for name, checks, _ in last if checks],
        **{f"{name}_s": {k: round(v, 3) for k, v in laps.items()} for name, laps in best.items()},
        "same_typed_frames_and_checks": len(outputs) == 2 or bool(args.compare),
    }
    if len(best) == 2:
        out["ratio_total"] = round(best["python"]["total"] / best["arrow"]["total"], 2)
        out["ratio_parse_and_type"] = round(
            (best["python"]["parse"] + best["python"]["type"])
            / (best["arrow"]["parse"] + best["arrow"]["type"]),
            2,
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
