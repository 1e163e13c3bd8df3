"""The model inputs of captured requests, rebuilt from what the capture table keeps.

By default the service does not store each row's model inputs in ``captures/<usecase>`` (``serving.capture.
model_inputs``: storing them cost throughput and queue room, and dropped rows): a captured row keeps its request
fields (the record as sent, typed as the primary source declares), the snapshot day and the version of
``features_online/<usecase>`` it was answered with. Those determine its inputs: the service computes them with
:func:`pipelines.features.online.feature_columns_of` from the snapshot of that day at that table version, as of the
snapshot's prediction time (whatever the request's own time), then :func:`pipelines.features.model_inputs.
model_input_columns`. :func:`rebuild_model_inputs` runs the same two functions on the captured rows, reading each
(day, version) snapshot once, so the rebuilt inputs are the ones the model was fed, as long as that table version
can still be read (vacuum keeps 7 days of files by default).

``mlops capture inputs --usecase X [--from D] [--to D] [--output PATH]`` writes them (:func:`run_capture_inputs`).
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import UseCase
from pipelines.features.model_inputs import model_columns, model_input_columns
from pipelines.features.online import OnlineSnapshot, feature_columns_of, read_snapshots
from pipelines.lake import DATE, Lake, LakeError, captures_table, online_table

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# the captured columns that identify a row and what answered it, carried beside the rebuilt inputs
IDENTITY = (
    DATE,
    "request_id",
    "row",
    "received_at",
    "prediction_time",
    "alias",
    "model_version",
    "shadow",
    "snapshot_day",
    "snapshot_version",
    "score",
    "decision",
)


def request_frame(captured: pa.Table) -> pd.DataFrame:
    """The captured rows' request fields (the ``request`` struct's children) as a frame, one column a field."""
    import pyarrow as pa

    request = captured.column("request").combine_chunks()
    names = [request.type.field(i).name for i in range(request.type.num_fields)]
    return pa.Table.from_arrays(request.flatten(), names=names).to_pandas()


def _snapshot_key(day: Any, version: Any) -> tuple[str, int | None]:
    import pandas as pd

    return str(day), None if version is None or pd.isna(version) else int(version)


def rebuild_model_inputs(
    lake: Lake,
    usecase: UseCase,
    captured: pa.Table,
    snapshots: dict[tuple[str, int | None], OnlineSnapshot] | None = None,
) -> pd.DataFrame:
    """The model inputs of ``captured`` (rows of ``captures/<usecase>``), in its row order, beside the columns of
    :data:`IDENTITY` it has: per (snapshot day, snapshot version), the snapshot of that day read at that version of
    ``features_online/<usecase>`` and the service's feature code applied to the rows' request fields. Numeric
    inputs are float64 (NULL as NaN), categorical ones canonical strings or None, as the model got them.
    ``snapshots``: snapshots already read, by (day, version) (filled with the ones this reads)."""
    import numpy as np
    import pandas as pd

    snapshots = {} if snapshots is None else snapshots
    records = request_frame(captured)
    keys = [
        _snapshot_key(day, version)
        for day, version in zip(
            captured.column("snapshot_day").to_pylist(),
            captured.column("snapshot_version").to_pylist(),
            strict=True,
        )
    ]
    out: dict[str, np.ndarray] = {
        **{name: np.full(len(records), np.nan) for name in usecase.features.numeric},
        **{name: np.full(len(records), None, dtype=object) for name in usecase.features.categorical},
    }
    groups: dict[tuple[str, int | None], list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    for (day, version), rows in groups.items():
        snapshot = snapshots.get((day, version))
        if snapshot is None:
            try:
                snapshot = read_snapshots(lake, usecase, [day], version).get(day)
            except LakeError as exc:
                raise LakeError(
                    f"the captured rows of {day} were answered from version {version} of "
                    f"{lake.table_uri(online_table(usecase.name))}, which cannot be read any more ({exc}); "
                    "their model inputs cannot be rebuilt (capture them with serving.capture.model_inputs: true "
                    "or keep the versions longer before vacuum)"
                ) from None
            if snapshot is None:
                raise LakeError(
                    f"version {version} of {lake.table_uri(online_table(usecase.name))} has no snapshot of {day}, "
                    "yet captured rows say they were answered from it"
                )
            snapshots[(day, version)] = snapshot
        part = records.iloc[rows].reset_index(drop=True)
        # as of the snapshot's prediction time, as the service computes them whatever the request's time
        features = feature_columns_of(usecase, part, snapshot)
        made = model_input_columns(usecase, features, f"captured rows of {day} (snapshot version {version})")
        for name, values in made.items():
            out[name][rows] = values
    inputs = pd.DataFrame({name: out[name] for name in model_columns(usecase)})
    identity = [name for name in IDENTITY if name in captured.column_names]
    head = captured.select(identity).to_pandas() if identity else pd.DataFrame(index=inputs.index)
    return pd.concat([head, inputs], axis=1)


def read_captured(
    lake: Lake, usecase: UseCase, start: date | None = None, end: date | None = None
) -> pa.Table:
    """The captured rows of ``captures/<usecase>`` whose snapshot day is within [start, end] (either open)."""
    table = captures_table(usecase.name)
    days = [
        day
        for day in lake.partitions(table)
        if (start is None or day >= start.isoformat()) and (end is None or day <= end.isoformat())
    ]
    return lake.read(table, days)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mlops capture``'s subcommands."""
    sub = parser.add_subparsers(dest="capture_command", required=True)
    rebuilt = sub.add_parser(
        "inputs",
        help="rebuild the model inputs of captured requests from their request fields and snapshot version",
    )
    rebuilt.add_argument("--usecase", required=True, help="use case name (config/usecases/<name>.yaml)")
    rebuilt.add_argument(
        "--from",
        dest="start",
        type=date.fromisoformat,
        help="first snapshot day, YYYY-MM-DD (default: the first)",
    )
    rebuilt.add_argument(
        "--to", dest="end", type=date.fromisoformat, help="last snapshot day, YYYY-MM-DD (default: the last)"
    )
    rebuilt.add_argument(
        "--output",
        type=Path,
        help="write the rows (identity columns and model inputs) to this Parquet file; without it, only the "
        "summary is printed",
    )


def run_capture_inputs(
    usecase_name: str, start: date | None, end: date | None, output: Path | None
) -> dict[str, Any]:
    """Rebuild the model inputs of the captured rows in [start, end] on the configured lake; write them to
    ``output`` (Parquet) when given; return a summary (rows, requests, snapshots read, days, output)."""
    from pipelines.config import load_profile, load_usecase
    from pipelines.lake import open_lake

    usecase = load_usecase(usecase_name)
    lake = open_lake(load_profile().lake_uri)
    if lake.version(captures_table(usecase.name)) is None:
        raise LakeError(f"{lake.table_uri(captures_table(usecase.name))}: nothing was captured yet")
    captured = read_captured(lake, usecase, start, end)
    snapshots: dict[tuple[str, int | None], OnlineSnapshot] = {}
    frame = rebuild_model_inputs(lake, usecase, captured, snapshots)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(output, index=False)
    return {
        "usecase": usecase.name,
        "rows": len(frame),
        "requests": int(frame["request_id"].nunique()) if "request_id" in frame else 0,
        "days": sorted(set(frame[DATE])) if DATE in frame else [],
        "snapshots": [f"{day}@{version}" for day, version in sorted(snapshots, key=str)],
        "model_inputs": model_columns(usecase),
        "output": None if output is None else str(output),
    }


def main(args: argparse.Namespace) -> int:
    """``mlops capture inputs``: print the summary as one JSON line."""
    summary = run_capture_inputs(args.usecase, args.start, args.end, args.output)
    print(json.dumps(summary, default=str))
    return 0
