"""S3 faults injected at the network boundary (tests/_fault_proxy.py between the lake and a real moto server):
500s, 503 SlowDown, hung requests, connections dropped mid-request or mid-response. A partition write, a read
and the landing -> raw ingest either finish despite a transient fault or fail leaving the lake exactly at its
previous state or exactly at the new one (never a partial partition), and the retry (the lake's own, or the same
call again as Airflow's task retry) ends with exactly one committed copy of the rows. See docs/reliability.md,
"S3 faults"."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pandas as pd
import pytest
from _fault_proxy import FaultProxy
from _ingest_fixtures import DAY1, USECASE, csv_bytes, flights_rows

from pipelines.cli import run_step
from pipelines.context import StepFailed
from pipelines.ingest.inbox import land_file, pending_files
from pipelines.lake import Lake, commit_with_retry, content_hash, open_lake, raw_table

TABLE = "raw/uc/events"
DAY, OTHER = "2013-01-01", "2013-01-02"


@pytest.fixture(scope="module")
def fault_proxy(moto_server: str) -> Iterator[FaultProxy]:
    """One proxy process for the module, in front of the session's moto server."""
    with FaultProxy(moto_server) as faults:
        yield faults


@pytest.fixture
def proxy(
    fault_proxy: FaultProxy, new_bucket, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> Iterator[FaultProxy]:
    """A fresh bucket; the lake (delta-rs, pyarrow and boto3) reaches it only through the fault proxy."""
    fault_proxy.reset()
    for key, value in {
        "AWS_ENDPOINT_URL": fault_proxy.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_TIMEOUT": "2s",  # delta-rs (object_store) per-request timeout: a hang fails in 2 s, not 30
        "AWS_RETRY_MODE": "standard",  # boto3: 3 attempts, short backoff
        "AWS_MAX_ATTEMPTS": "3",
        "MLOPS_LAKE_URI": f"s3://{new_bucket('faults')}/lake",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLOPS_MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
    }.items():
        monkeypatch.setenv(key, value)
    # object_store retries a failed request 10 times with a growing backoff (about 15 s for a permanent fault);
    # 3 retries keep each permanent fault short and still absorb every transient one tried here
    options = Lake.storage_options
    monkeypatch.setattr(Lake, "storage_options", lambda lake: {**(options(lake) or {}), "max_retries": "3"})
    yield fault_proxy
    fault_proxy.reset()


def _rows(day: str, ids: range) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": pd.array(list(ids), dtype="Int64"), "value": [i / 7 for i in ids], "date": day}
    )


def _content(lake: Lake) -> tuple[int | None, dict[str, list[int]]]:
    """The table's version and its ids by date, read through the Delta log."""
    rows = lake.read(TABLE).to_pydict()
    by_date: dict[str, list[int]] = {}
    for day, ident in zip(rows["date"], rows["id"], strict=True):
        by_date.setdefault(day, []).append(ident)
    return lake.version(TABLE), {day: sorted(ids) for day, ids in sorted(by_date.items())}


OLD = {DAY: list(range(0, 5)), OTHER: list(range(50, 53))}
NEW_IDS = range(100, 107)
NEW = {DAY: list(NEW_IDS), OTHER: OLD[OTHER]}


def _table_at_version_0(lake: Lake) -> None:
    lake.write_partitions(
        TABLE, pd.concat([_rows(DAY, range(0, 5)), _rows(OTHER, range(50, 53))]), read_version=None
    )
    assert _content(lake) == (0, OLD)


def _rewrite_day(lake: Lake):
    """The step's write: rebuild DAY from a fresh snapshot and commit it (the lake's conflict retry included)."""
    return commit_with_retry(lake, TABLE, lambda snapshot: _rows(DAY, NEW_IDS), dates=[DAY])


def _assert_once(lake: Lake) -> None:
    """The new rows are committed exactly once, the other partition untouched, the facts valid."""
    version, content = _content(lake)
    assert content == NEW, "after the retry the partition must hold the new rows exactly once"
    partition = lake.partitions(TABLE)[DAY]
    assert partition.rows == len(NEW_IDS)
    assert partition.data_hash == content_hash(lake.read(TABLE, [DAY])), "the facts of the last commit hold"


# ------------------------------------------------------------------------------------------------ partition write

DATA_FILE = rf"/lake/{TABLE}/date={DAY}/part-.*\.parquet$"
COMMIT = rf"/lake/{TABLE}/_delta_log/0+1\.json$"  # the log entry of version 1: the rewrite's commit


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        # a data file's PUT
        ({"action": "500", "path": DATA_FILE, "method": "PUT", "times": 2}, "committed"),
        ({"action": "drop_request", "path": DATA_FILE, "method": "PUT"}, "committed"),
        ({"action": "hang", "path": DATA_FILE, "method": "PUT"}, "committed"),
        ({"action": "500", "path": DATA_FILE, "method": "PUT", "times": None}, "failed"),
        # the commit: the PUT of _delta_log/<version>.json (If-None-Match: *)
        ({"action": "500", "path": COMMIT, "method": "PUT"}, "committed"),
        ({"action": "503", "path": COMMIT, "method": "PUT", "times": 3}, "committed"),
        ({"action": "drop_request", "path": COMMIT, "method": "PUT"}, "committed"),
        ({"action": "hang", "path": COMMIT, "method": "PUT"}, "failed"),  # never reaches the server
        (
            {"action": "hang", "path": COMMIT, "method": "PUT", "forward": True},
            "failed",
        ),  # applied, then hangs
        ({"action": "503", "path": COMMIT, "method": "PUT", "times": None}, "failed"),
    ],
    ids=lambda value: (
        "-".join(
            str(part)
            for part in (
                "data" if value.get("path") == DATA_FILE else "commit",
                value.get("action"),
                "permanent" if value.get("times", 1) is None else f"x{value.get('times', 1)}",
                "forwarded" if value.get("forward") else "",
            )
            if part
        )
        if isinstance(value, dict)
        else value
    ),
)
def test_a_partition_write_under_a_fault_is_all_or_nothing_and_its_retry_commits_once(
    proxy: FaultProxy, fault: dict, outcome: str
) -> None:
    lake = open_lake()
    _table_at_version_0(lake)
    proxy.add(**fault)
    try:
        _rewrite_day(lake)
        result = "committed"
    except Exception:  # the error object_store / delta-rs gives up with (OSError, DeltaError)
        result = "failed"
    assert proxy.faulted(), f"the fault never fired: {fault}"
    proxy.clear()
    # right after the fault: exactly the previous version, or exactly the new content (never a partial partition)
    version, content = _content(lake)
    assert content in (OLD, NEW), f"a partial partition is visible at version {version}: {content}"
    assert result == outcome, f"expected the write to be {outcome}, it {result}"
    if result == "failed":
        _rewrite_day(lake)  # the task's retry: the same call again
    _assert_once(lake)


def test_a_commit_whose_answer_was_lost_is_recognised_as_the_writers_own(proxy: FaultProxy) -> None:
    """The commit reached the server but its answer was lost: object_store retries the conditional PUT, the server
    refuses it (the version exists: this writer's own), and delta-rs reports a conflict. The lake finds its own
    commit (its write id in the commit info) and returns it, with its facts: no spurious conflict, no second
    commit, one copy of the rows."""
    lake = open_lake()
    _table_at_version_0(lake)
    proxy.add("drop_response", COMMIT, "PUT")
    conflicts = []
    commit = commit_with_retry(
        lake, TABLE, lambda snapshot: _rows(DAY, NEW_IDS), dates=[DAY], on_conflict=conflicts.append
    )
    assert [entry[2] for entry in proxy.requests("PUT", COMMIT)] == ["drop_response", "forwarded"]
    assert conflicts == [], "the writer's own commit was taken for another writer's"
    assert commit is not None and commit.version == 1 and lake.version(TABLE) == 1
    _assert_once(lake)


# ------------------------------------------------------------------------------------------------ reads

READ_FILE = rf"/lake/{TABLE}/date={DAY}/part-.*\.parquet$"
READ_LOG = rf"/lake/{TABLE}/_delta_log/0+\.json$"


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ({"action": "500", "path": READ_FILE, "method": "GET", "times": 2}, "rows"),
        (
            {"action": "drop_response", "path": READ_FILE, "method": "GET"},
            "rows",
        ),  # half the file, then closed
        ({"action": "500", "path": READ_LOG, "method": "GET", "times": 2}, "rows"),
        ({"action": "drop_response", "path": READ_LOG, "method": "GET"}, "rows"),
        ({"action": "500", "path": READ_FILE, "method": "GET", "times": None}, "error"),
        ({"action": "500", "path": READ_LOG, "method": "GET", "times": None}, "error"),
    ],
    ids=[
        "data-500-x2",
        "data-drop_response",
        "log-500-x2",
        "log-drop_response",
        "data-500-permanent",
        "log-500-permanent",
    ],
)
def test_a_read_under_a_fault_returns_the_right_rows_or_raises(
    proxy: FaultProxy, fault: dict, outcome: str
) -> None:
    lake = open_lake()
    _table_at_version_0(lake)
    proxy.add(**fault)
    try:
        _version, content = _content(lake)
        result = "rows"
    except Exception:
        result = "error"
    assert proxy.faulted(), f"the fault never fired: {fault}"
    assert result == outcome
    if result == "rows":
        assert content == OLD, "a read under a fault returned other rows than the table holds"
    proxy.clear()
    assert _content(lake) == (0, OLD)


# ------------------------------------------------------------------------------------------------ ingest

FLIGHTS, BAD = "flights_2013-01-01.csv", "weather_2013-01-01.csv"
RAW = raw_table(USECASE, "flights")


def _ingest() -> None:
    run_step(["ingest", "--usecase", USECASE, "--date", DAY1.isoformat()])


def _where(lake: Lake, name: str, day: date = DAY1) -> set[str]:
    """The zones that hold ``name`` of ``day``."""
    return {
        zone
        for zone in ("landing", "archive", "quarantine")
        if lake.storage.exists(f"{zone}/{USECASE}/{day}/{name}")
    }


def _raw_sources(lake: Lake) -> list[str]:
    """The landed file of each committed raw row (none when nothing was committed)."""
    if lake.version(RAW) is None:
        return []
    return lake.read(RAW, [DAY1.isoformat()], columns=["_source_file"]).column("_source_file").to_pylist()


def _assert_consistent(lake: Lake, rows: int) -> None:
    """Nothing lost, nothing twice: the good file is in landing (to do) or its rows are in raw, exactly once;
    a committed file leaves landing only once archived; the bad file is in landing or quarantine, never in raw."""
    sources = _raw_sources(lake)
    assert sources in ([], [FLIGHTS] * rows), (
        f"raw holds {len(sources)} rows of {set(sources)}, not 0 or {rows}"
    )
    flights = _where(lake, FLIGHTS)
    assert flights & {"landing", "archive"}, "the good file is lost: neither in landing nor archived"
    assert "quarantine" not in flights
    if "landing" not in flights:
        assert sources, "the file left landing but its rows are not in raw"
    if "archive" in flights:
        assert sources, "the file is archived but its rows are not in raw"
    bad = _where(lake, BAD)
    assert bad & {"landing", "quarantine"} and "archive" not in bad, f"the bad file is in {bad}"
    if "quarantine" in bad and "landing" not in bad:
        assert lake.storage.exists(f"quarantine/{USECASE}/{DAY1}/{BAD}.report.json")


def _assert_done(lake: Lake, rows: int) -> None:
    assert pending_files(lake, USECASE) == []
    assert _where(lake, FLIGHTS) == {"archive"} and _where(lake, BAD) == {"quarantine"}
    assert _raw_sources(lake) == [FLIGHTS] * rows
    partition = lake.partitions(RAW)[DAY1.isoformat()]
    assert partition.data_hash == content_hash(lake.read(RAW, [DAY1.isoformat()]))


RAW_DATA = rf"/lake/raw/{USECASE}/flights/date=.*\.parquet$"
RAW_COMMIT = rf"/lake/raw/{USECASE}/flights/_delta_log/\d+\.json$"
ARCHIVE = rf"/archive/{USECASE}/{DAY1}/{FLIGHTS}$"
LANDING_DELETE = r"\?delete"  # boto3's DeleteObjects (POST /<bucket>?delete)
QUARANTINE = rf"/quarantine/{USECASE}/{DAY1}/{BAD}$"
LANDING_READ = rf"/landing/{USECASE}/{DAY1}/{FLIGHTS}$"


@pytest.mark.parametrize(
    "faults",
    [
        # transient: the first run finishes the job
        [
            {"action": "503", "path": LANDING_READ, "method": "GET"},
            {"action": "500", "path": RAW_DATA, "method": "PUT", "times": 2},
            {"action": "drop_response", "path": RAW_COMMIT, "method": "PUT"},
            {"action": "503", "path": ARCHIVE, "method": "PUT", "times": 2},
            {"action": "drop_request", "path": LANDING_DELETE, "method": "POST"},
            {"action": "500", "path": QUARANTINE, "method": "PUT"},
        ],
        # permanent, at each stage: the run fails, the rerun finishes the job
        [{"action": "hang", "path": RAW_COMMIT, "method": "PUT", "forward": True}],
        [{"action": "500", "path": ARCHIVE, "method": "PUT", "times": None}],
        [{"action": "503", "path": LANDING_DELETE, "method": "POST", "times": None}],
        [{"action": "500", "path": QUARANTINE, "method": "PUT", "times": None}],
    ],
    ids=[
        "transient-everywhere",
        "raw-commit-applied-then-hangs",
        "archive-copy-500-permanent",
        "landing-delete-503-permanent",
        "quarantine-copy-500-permanent",
    ],
)
def test_ingest_under_a_fault_keeps_landing_raw_and_quarantine_consistent_and_the_rerun_finishes(
    proxy: FaultProxy, faults: list[dict]
) -> None:
    lake = open_lake()
    rows = 20
    land_file(lake, USECASE, DAY1, FLIGHTS, csv_bytes(flights_rows(DAY1, rows)))
    land_file(lake, USECASE, DAY1, BAD, b"origin,year\nEWR,2013\n")  # missing columns: quarantined
    for fault in faults:
        proxy.add(**fault)
    transient = all(fault.get("times", 1) is not None and not fault.get("forward") for fault in faults)
    with pytest.raises(Exception) as first:
        _ingest()
    assert {entry[2] for entry in proxy.faulted()} == {fault["action"] for fault in faults}, proxy.faulted()
    proxy.clear()
    if transient:  # the faults are absorbed: the run ends as without them (the bad file quarantined)
        assert isinstance(first.value, StepFailed)
        assert first.value.result["files_committed"] == 1 and first.value.result["rows_committed"] == rows
    else:
        assert not isinstance(first.value, StepFailed), "the fault must fail the run, not pass for bad input"
        _assert_consistent(lake, rows)
        with pytest.raises(StepFailed):  # the task's retry: the bad file is quarantined, the rest committed
            _ingest()
    _assert_done(lake, rows)
