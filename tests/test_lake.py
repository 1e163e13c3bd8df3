"""The lake's Delta tables on both backends: a local folder and S3 (a real moto server over HTTP).

Commits, snapshot reads, time travel and partition facts; optimistic concurrency with two writer processes and a
reader process; a step process killed mid-write; and processes that read S3 (or the local disk) exiting cleanly.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pytest
from _lake_faults import delete_partitions

import pipelines.lake as lake_module
from pipelines.lake import (
    LATEST,
    CommitConflict,
    Lake,
    LakeError,
    StagedFiles,
    commit_with_retry,
    content_hash,
    features_table,
    online_table,
    predictions_table,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE = "raw/uc/flights"


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        return Lake(str(tmp_path / "lake"))
    return Lake(request.getfixturevalue("s3_lake"))


def _rows(day: str, n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.array(range(offset, offset + n), dtype="Int64"),
            "value": [float(i) / 3 for i in range(n)],
            "name": pd.array([f"n{i}" if i % 4 else None for i in range(n)], dtype="string"),
            "at": pd.to_datetime([f"2013-01-01 0{i % 10}:00" for i in range(n)], utc=True),
            "date": day,
        }
    )


def _s3_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


# --------------------------------------------------------------------------------------------------- basics


def test_commits_snapshots_time_travel_and_facts(lake: Lake) -> None:
    snapshot = lake.snapshot(TABLE)
    assert snapshot.version is None and snapshot.partitions == {} and not snapshot
    with pytest.raises(LakeError, match="no such table"):
        lake.read(TABLE)

    first = lake.write_partitions(
        TABLE,
        pd.concat([_rows("2013-01-01", 5), _rows("2013-01-02", 3)]),
        read_version=None,
        facts={"2013-01-01": {"source": "flights"}},
    )
    assert (first.version, first.dates, first.rows) == (0, ["2013-01-01", "2013-01-02"], 8)
    assert first.partition_uris()[0] == f"{lake.uri}/{TABLE}/date=2013-01-01"
    partitions = lake.partitions(TABLE)
    assert {d: p.rows for d, p in partitions.items()} == {"2013-01-01": 5, "2013-01-02": 3}
    one = partitions["2013-01-01"]
    assert one.facts["source"] == "flights" and one.facts["rows"] == 5 and one.facts["version"] == 0
    read = lake.read(TABLE, ["2013-01-01"])
    assert read.num_rows == 5 and set(read.column("date").to_pylist()) == {"2013-01-01"}
    assert one.data_hash == content_hash(read) == content_hash(_rows("2013-01-01", 5))
    assert str(read.schema.field("at").type) == "timestamp[us, tz=UTC]"
    assert read.column("name").null_count == 2

    # rewriting one partition with the same rows: a new version, new files, the same content hash
    second = lake.write_partitions(TABLE, _rows("2013-01-01", 5), read_version=first.version)
    again = lake.partitions(TABLE)["2013-01-01"]
    assert second.version == 1 and again.files != one.files and again.data_hash == one.data_hash
    assert lake.partitions(TABLE)["2013-01-02"].files == partitions["2013-01-02"].files  # untouched

    # other rows, and the old ones by time travel
    lake.write_partitions(TABLE, _rows("2013-01-01", 2, offset=10), read_version=second.version)
    assert lake.read_frame(TABLE, ["2013-01-01"])["id"].tolist() == [10, 11]
    assert lake.read_frame(TABLE, ["2013-01-01"], version=0)["id"].tolist() == [0, 1, 2, 3, 4]
    assert lake.partitions(TABLE, version=0)["2013-01-01"].rows == 5
    assert [h["version"] for h in lake.history(TABLE)] == [2, 1, 0]

    # a new column is added to the table; older partitions read it as null
    lake.write_partitions(TABLE, _rows("2013-01-03", 2).assign(extra=1.5), read_version=LATEST)
    frame = lake.read_frame(TABLE, ["2013-01-02", "2013-01-03"])
    assert frame.groupby("date")["extra"].count().to_dict() == {"2013-01-02": 0, "2013-01-03": 2}
    with pytest.raises(LakeError, match=r"no column\(s\) \['nope'\]"):
        lake.read(TABLE, columns=["nope"])
    with pytest.raises(LakeError, match="the table has no version 99|cannot be loaded"):
        lake.read(TABLE, version=99)
    assert delete_partitions(lake, TABLE, ["2013-01-03"]) == 4
    assert sorted(lake.partitions(TABLE)) == ["2013-01-01", "2013-01-02"]


def test_a_date_written_empty_keeps_its_facts_until_rows_arrive(lake: Lake) -> None:
    """``empty_dates``: a writer that built a date and found no rows (labels whose outcomes have not arrived)
    records it, so it can tell it from a date it never built; the same commit removes the date's old rows, and a
    later write with rows replaces the record."""
    empty = _rows("2013-01-01", 0)
    created = lake.write_partitions(
        TABLE, empty, read_version=None, facts={"2013-01-01": {"k": 1}}, empty_dates=["2013-01-01"]
    )
    snapshot = lake.snapshot(TABLE)
    assert created.version == 0 and created.dates == [] and snapshot.partitions == {}
    assert snapshot.empty["2013-01-01"]["k"] == 1 and snapshot.empty["2013-01-01"]["rows"] == 0
    with_rows = lake.write_partitions(
        TABLE, _rows("2013-01-01", 3), read_version=0, facts={"2013-01-01": {"k": 2}}
    )
    snapshot = lake.snapshot(TABLE)
    assert snapshot.partitions["2013-01-01"].facts["k"] == 2 and snapshot.empty == {}
    lake.write_partitions(
        TABLE,
        _rows("2013-01-02", 2),
        read_version=with_rows.version,
        facts={"2013-01-01": {"k": 3}},
        empty_dates=["2013-01-01", "2013-01-02"],  # a date with rows is not empty
    )
    snapshot = lake.snapshot(TABLE)
    assert sorted(snapshot.partitions) == ["2013-01-02"] and snapshot.empty["2013-01-01"]["k"] == 3
    assert lake.read(TABLE).num_rows == 2


def test_facts_of_a_partition_rewritten_without_them_are_not_trusted(lake: Lake) -> None:
    """Facts name the files they describe: a partition rewritten by a writer that recorded none (here a plain
    delta-rs write, as another tool would do) has no facts, so a stale hash is never used."""
    from deltalake import write_deltalake

    lake.write_partitions(TABLE, _rows("2013-01-01", 5), read_version=None, facts={"2013-01-01": {"k": 1}})
    assert lake.partitions(TABLE)["2013-01-01"].facts["k"] == 1
    handle = lake.open_table(TABLE)
    write_deltalake(
        handle,
        pa.Table.from_pandas(_rows("2013-01-01", 7), preserve_index=False),
        mode="overwrite",
        predicate="date = '2013-01-01'",
    )
    partition = lake.partitions(TABLE)["2013-01-01"]
    assert partition.rows == 7 and partition.facts == {} and partition.data_hash is None
    assert partition.content_id.startswith("files:")


def test_a_stale_writer_gets_a_conflict_naming_table_partition_and_winner(lake: Lake) -> None:
    base = lake.write_partitions(TABLE, _rows("2013-01-01", 5), read_version=None)
    lake.write_partitions(TABLE, _rows("2013-01-01", 4), read_version=base.version)  # version 1 wins
    with pytest.raises(CommitConflict) as caught:
        lake.write_partitions(TABLE, _rows("2013-01-01", 3), read_version=base.version)
    conflict = caught.value
    assert conflict.winning_version == 1 and conflict.dates == ["2013-01-01"]
    assert f"{lake.uri}/{TABLE}: partition(s) date=2013-01-01" in str(conflict)
    assert "table version 1" in str(conflict) and "read version 0" in str(conflict)
    assert lake.partitions(TABLE)["2013-01-01"].rows == 4  # the loser changed nothing
    # a stale writer of another partition does not conflict
    other = lake.write_partitions(TABLE, _rows("2013-01-02", 2), read_version=base.version)
    assert other.version == 2
    # a writer that saw no table conflicts with one that created it meanwhile
    with pytest.raises(CommitConflict):
        lake.write_partitions(TABLE, _rows("2013-01-03", 2), read_version=None)

    # commit_with_retry rebuilds from the fresh snapshot: the build sees what the winner committed
    seen: list[int | None] = []

    def build(snapshot):
        seen.append(snapshot.version)
        if len(seen) == 1:  # another writer commits between this build's read and its commit
            lake.write_partitions(TABLE, _rows("2013-01-01", 1), read_version=LATEST)
        return _rows("2013-01-01", 6)

    conflicts: list[CommitConflict] = []
    commit = commit_with_retry(lake, TABLE, build, on_conflict=conflicts.append)
    assert commit is not None and len(conflicts) == 1 and seen == [2, 3] and commit.version == 4
    assert lake.partitions(TABLE)["2013-01-01"].rows == 6


def _stage(lake: Lake, table: str, frame: pd.DataFrame) -> StagedFiles:
    """Write ``frame``'s rows as an executor does: one Parquet file per date (without the date column) in a
    staging folder under the table."""
    import pyarrow.parquet as pq

    staging = lake.staging_folder(table)
    assert staging is not None
    for day, rows in frame.groupby("date"):
        folder = Path(staging[1]) / f"date={day}"
        folder.mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pandas(rows.drop(columns="date"), preserve_index=False), folder / "part-0.parquet"
        )
    staged = lake.staged_files(table, staging, list(frame.columns))
    # moved where a write of rows puts its files (vacuum treats them alike); the staging folder is gone
    assert all(path.startswith(f"date={day}/") for day, paths in staged.files.items() for path in paths)
    assert not Path(staging[1]).exists()
    return staged


def test_staged_files_commit_as_rows_do(tmp_path: Path) -> None:
    """Files written under the table (by Spark's executors) commit through write_partitions with the guarantees of
    a write of rows: one commit of the dates (old files replaced, empty dates recorded), the same rows and
    content hashes read back, the write id in the commit info, and a conflict for a stale writer."""
    lake = Lake(str(tmp_path / "lake"))
    rows = pd.concat([_rows("2013-01-01", 5), _rows("2013-01-02", 3)])
    by_rows = lake.write_partitions("t/rows", rows, read_version=None, facts={"2013-01-01": {"k": 1}})
    staged = lake.write_partitions(
        "t/staged", _stage(lake, "t/staged", rows), read_version=None, facts={"2013-01-01": {"k": 1}}
    )
    assert (staged.version, staged.dates, staged.rows) == (0, by_rows.dates, by_rows.rows)
    order = [("date", "ascending"), ("id", "ascending")]
    assert lake.read("t/staged").sort_by(order).equals(lake.read("t/rows").sort_by(order))
    for day, partition in lake.partitions("t/rows").items():
        other = lake.partitions("t/staged")[day]
        assert (other.rows, other.data_hash, other.facts.get("k")) == (
            partition.rows,
            partition.data_hash,
            partition.facts.get("k"),
        )
    entry = lake.history("t/staged")[0]
    assert entry["mlops.write_id"] and entry["mlops.partitions"] == '["2013-01-01", "2013-01-02"]'

    # a rewrite of one date with an empty one: the other date's files stay, the empty date keeps its facts
    second = lake.write_partitions(
        "t/staged",
        _stage(lake, "t/staged", _rows("2013-01-01", 2, offset=10)),
        read_version=0,
        facts={"2013-01-02": {"k": 2}},
        empty_dates=["2013-01-02"],
    )
    snapshot = lake.snapshot("t/staged")
    assert second.version == 1 and sorted(snapshot.partitions) == ["2013-01-01"]
    assert snapshot.empty["2013-01-02"]["k"] == 2
    assert lake.read_frame("t/staged")["id"].tolist() == [10, 11]

    # a stale writer of the same date conflicts and changes nothing; of another date it does not
    late = _stage(lake, "t/staged", _rows("2013-01-01", 4))
    with pytest.raises(CommitConflict) as caught:
        lake.write_partitions("t/staged", late, read_version=0)
    assert caught.value.winning_version == 1 and lake.read("t/staged").num_rows == 2
    other = lake.write_partitions(
        "t/staged", _stage(lake, "t/staged", _rows("2013-01-03", 1)), read_version=1
    )
    assert other.version == 2 and lake.read("t/staged").num_rows == 3


# --------------------------------------------------------------------------------------------------- processes


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_writer_processes_and_a_reader_never_mix_a_partition(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two processes overwrite the same partition in lock-step rounds from the same snapshot while a third
    reads it: exactly one commit wins each round, the loser is told (or retries from a fresh snapshot), and
    the reader never fails nor sees a mixed, partial or missing partition."""
    import _lake_workers as workers

    uri = str(tmp_path / "lake") if backend == "local" else request.getfixturevalue("s3_lake")
    env = _s3_env()
    Lake(uri).write_partitions(workers.TABLE, workers.rows("seed", -1), read_version=None)
    rounds = {"local": 12, "s3": 6}[backend]
    spawn = multiprocessing.get_context("spawn")
    out, stop = spawn.Queue(), spawn.Event()
    read = spawn.Process(target=workers.reader, args=(uri, env, stop, out))
    read.start()
    outcomes = []
    for retry in (False, True):
        barrier = spawn.Barrier(2)
        writers = [
            spawn.Process(target=workers.writer, args=(uri, env, name, rounds, retry, barrier, out))
            for name in ("A", "B")
        ]
        for process in writers:
            process.start()
        for process in writers:
            process.join(timeout=600)
            assert process.exitcode == 0, f"writer exited with {process.exitcode}"
        outcomes.append([out.get(timeout=30) for _ in range(2 * rounds)])
    stop.set()
    reads = out.get(timeout=120)
    read.join(timeout=60)

    lake = Lake(uri)
    for retry, results in zip((False, True), outcomes, strict=True):
        for round_ in range(rounds):
            pair = [r for r in results if r["round"] == round_]
            assert sorted(r["won"] for r in pair) == [False, True], (retry, round_, pair)
            assert pair[0]["read_version"] == pair[1]["read_version"], "both wrote from the same snapshot"
            winner, loser = sorted(pair, key=lambda r: not r["won"])
            assert loser["winning_version"] >= winner["version"]
            assert f"{workers.TABLE}: partition(s) date={workers.DAY}" in loser["message"]
            if retry:
                assert loser["retried_version"] > winner["version"]
    assert reads["error_count"] == 0, reads["errors"]
    assert reads["mixed"] == [], reads["mixed"]
    assert reads["reads"] > 0
    # the last round's retrier wrote last: its rows are the partition, and the facts describe them
    final = lake.read(workers.TABLE, [workers.DAY])
    last = [r for r in outcomes[1] if r["round"] == rounds - 1 and not r["won"]][0]
    assert set(final.column("writer").to_pylist()) == {last["writer"]} and final.num_rows == workers.ROWS
    assert lake.partitions(workers.TABLE)[workers.DAY].data_hash == content_hash(final)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_processes_reading_the_lake_exit_cleanly(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A process that read data through delta-rs's own filesystem aborted at exit in most runs here
    ("terminate called without an active exception", exit 134); the lake reads through pyarrow's filesystems.
    Step processes (`mlops lake read`; 16 on S3, 8 locally: the abort came in most runs, so a handful of
    processes shows it) read a table and must all exit 0 with the right answer."""
    uri = str(tmp_path / "lake") if backend == "local" else request.getfixturevalue("s3_lake")
    lake = Lake(uri)
    lake.write_partitions(
        TABLE, pd.concat([_rows("2013-01-01", 50), _rows("2013-01-02", 7)]), read_version=None
    )
    expected = content_hash(lake.read(TABLE, ["2013-01-02"]))
    env = {**os.environ, "MLOPS_LAKE_URI": uri}
    command = [sys.executable, "-m", "pipelines", "lake", "read", TABLE, "--date", "2013-01-02"]

    def one(_: int) -> tuple[int, str, str]:
        proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr[-500:]

    runs = {"s3": 16, "local": 8}[backend]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, range(runs)))
    failures = [(code, err) for code, _, err in results if code != 0]
    assert failures == [], f"{len(failures)} of {runs} runs failed: {failures[:3]}"
    import json

    answers = {json.loads(out.strip().splitlines()[-1])["content_hash"] for _, out, _ in results}
    assert answers == {expected}


# --------------------------------------------------------------------------------------------------- kill -9

# rows of the partition being written when the kill comes: locally the write must last long enough for the test
# to freeze the process between its data files and its commit; on S3 the held upload makes any size work
BIG_ROWS = {"local": 300_000, "s3": 20_000}


def _kill_when_writing_locally(proc: subprocess.Popen, lake: Lake, day: str) -> bool:
    """Freeze the score process the moment its first data file appears in the partition's folder, and kill
    it there; True when no new table version had been committed by then (a kill mid-write)."""
    folder = Path(lake.table_uri(predictions_table("flight_delay"))) / f"date={day}"
    log = Path(lake.table_uri(predictions_table("flight_delay"))) / "_delta_log"
    commits_before = {p.name for p in log.glob("*.json")}
    while proc.poll() is None:
        if folder.is_dir() and any(folder.iterdir()):
            os.kill(proc.pid, signal.SIGSTOP)
            committed = {p.name for p in log.glob("*.json")} - commits_before
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return not committed
        time.sleep(0.0005)
    raise AssertionError(f"the score process ended (exit {proc.returncode}) before writing (see its log)")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_step_killed_mid_write_leaves_the_previous_version_and_its_retry_is_identical(
    backend: str, serve_env, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`score` is SIGKILLed while it writes a large predictions partition: the table stays at its previous
    version, readable, without a trace of the killed write; the retry commits exactly what an uninterrupted
    run commits (same rows, same content hash)."""
    from _holding_proxy import HoldingProxy
    from _serve_fixtures import ServeEnv, produce_day, write_features

    from pipelines.cli import run_step

    env = serve_env
    if backend == "s3":
        env = ServeEnv(lake=Lake(request.getfixturevalue("s3_lake")), usecase=serve_env.usecase, tmp=tmp_path)
    produce_day(env, date(2013, 3, 1), gate_passed=True)
    run_step(["register", "--usecase", "flight_delay", "--date", "2013-03-01"])
    run_step(["promote", "--usecase", "flight_delay", "--date", "2013-03-01"])
    first = date(2013, 3, 5)
    write_features(env, [first], rows=30)
    run_step(["score", "--usecase", "flight_delay", "--date", first.isoformat()])
    table = predictions_table("flight_delay")
    before = env.lake.version(table)
    previous = content_hash(env.lake.read(table))

    killed_mid_write = False
    day = first
    for _attempt in range(3):  # locally the kill must land between data files and commit: retried if late
        day += timedelta(days=1)
        write_features(env, [day], rows=BIG_ROWS[backend])
        command = [
            sys.executable,
            "-m",
            "pipelines",
            "score",
            "--usecase",
            "flight_delay",
            "--date",
            day.isoformat(),
        ]
        if backend == "local":
            with (tmp_path / f"score-{day}.log").open("w") as log:
                proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
                killed_mid_write = _kill_when_writing_locally(proc, env.lake, day.isoformat())
        else:

            def data_upload(method: str, path: str, day=day) -> bool:
                # object_store percent-encodes the partition folder's "="
                return method in ("PUT", "POST") and f"/predictions/flight_delay/date={day}/" in unquote(path)

            log_path = tmp_path / f"score-{day}.log"
            with (
                HoldingProxy(os.environ["AWS_ENDPOINT_URL"], data_upload) as proxy,
                log_path.open("w") as log,
            ):
                proc = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "AWS_ENDPOINT_URL": proxy.url},
                )
                while not proxy.held.wait(timeout=0.2):
                    assert proc.poll() is None, (
                        f"score ended before uploading: {log_path.read_text()[-3000:]}"
                    )
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                killed_mid_write = True
        if killed_mid_write:
            break
        delete_partitions(env.lake, table, [day.isoformat()])  # the kill came after the commit: try again
        before, previous = env.lake.version(table), content_hash(env.lake.read(table))
    assert killed_mid_write, "three kills all came after the commit"
    assert proc.returncode == -signal.SIGKILL

    # the previous version is what readers see, without a trace of the killed write
    assert env.lake.version(table) == before
    assert day.isoformat() not in env.lake.partitions(table)
    assert content_hash(env.lake.read(table)) == previous
    if backend == "local":
        orphans = list((Path(env.lake.table_uri(table)) / f"date={day}").iterdir())
        assert orphans, "the killed writer left its uncommitted data file (vacuum removes it later)"

    # the retry: the same step again, then the same rows from an uninterrupted run in a fresh lake
    retry = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    retried = env.lake.read(table, [day.isoformat()])
    assert retried.num_rows == BIG_ROWS[backend]

    reference = Lake(str(tmp_path / "reference-lake"))
    monkeypatch.setenv("MLOPS_LAKE_URI", reference.uri)
    reference_env = ServeEnv(lake=reference, usecase=env.usecase, tmp=tmp_path)
    write_features(reference_env, [day], rows=BIG_ROWS[backend])
    run_step(["score", "--usecase", "flight_delay", "--date", day.isoformat()])
    expected = reference.read(table, [day.isoformat()])
    lineage = "snapshot_version"  # the snapshot table's version differs between the two lakes, by design
    assert content_hash(retried.drop_columns([lineage])) == content_hash(expected.drop_columns([lineage]))
    assert set(retried.column(lineage).to_pylist()) == {env.lake.version(online_table("flight_delay"))}
    assert env.lake.partitions(table)[day.isoformat()].data_hash == content_hash(retried)
    assert (
        env.lake.read_frame(features_table("flight_delay"), [day.isoformat()]).shape[0] == BIG_ROWS[backend]
    )


def test_unsupported_scheme_is_a_clear_error() -> None:
    with pytest.raises(LakeError, match="unsupported scheme"):
        Lake("gs://bucket/lake")


def test_only_the_landing_inbox_is_ever_listed() -> None:
    """Committed data is found through the Delta log only: a folder listing would see a killed writer's orphan
    files. The one listing in pipelines/ is the landing inbox (files as they arrive, before any commit)."""
    import re
    from importlib.util import find_spec

    listings = []
    # not lake reads: config.py globs config/usecases, lake.py implements Storage.list
    # landing.py reads the user's local files to land them, before they reach the lake
    exempt = {
        Path(find_spec(name).origin).resolve()
        for name in ("pipelines.config", "pipelines.lake", "pipelines.ingest.landing")
    }
    for path in sorted({p.resolve() for p in (REPO_ROOT / "pipelines").rglob("*.py")} - exempt):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\.(list|glob|rglob|iterdir|scandir|listdir)\(", line) and "def " not in line:
                listings.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    # the inbox, and the files of a model downloaded from the artifact store to a temporary folder, hashed to verify
    # it (never the lake)
    assert [line.split(": ", 1)[1] for line in listings] == [
        "for key in lake.storage.list(prefix):",
        'for path in root.rglob("*"):',
    ], listings
    source = (REPO_ROOT / "pipelines" / "ingest" / "inbox.py").read_text()
    inbox = source[source.index("def _landed_files(") :]
    assert 'prefix = f"landing/{usecase}/"' in inbox.split("def ", 2)[1], "the listing is of the inbox"


def test_a_snapshot_of_some_dates_reads_only_their_facts(tmp_path: Path) -> None:
    """``snapshot(dates=...)``: the partitions and the empty dates of those dates, with the facts a whole snapshot
    gives them, read from those dates' partitions of the facts table only (the others' facts files are gone here,
    and a whole snapshot, which reads them, fails)."""
    lake = Lake(str(tmp_path / "lake"))
    days = [f"2013-01-0{d}" for d in range(1, 7)]
    version: int | None = None
    for day in days[:5]:
        commit = lake.write_partitions(TABLE, _rows(day, 3), read_version=version, facts={day: {"k": day}})
        version = commit.version
    lake.write_partitions(
        TABLE, _rows(days[5], 0), read_version=version, facts={days[5]: {"k": "e"}}, empty_dates=[days[5]]
    )
    whole = lake.snapshot(TABLE)
    some = lake.snapshot(TABLE, dates=[days[1], days[5], "2014-01-01"])
    assert sorted(some.partitions) == [days[1]] and some.partitions[days[1]] == whole.partitions[days[1]]
    assert some.empty == {days[5]: whole.empty[days[5]]} and some.version == whole.version
    assert lake.snapshot(TABLE, dates=[]).partitions == {}

    facts_root = tmp_path / "lake" / "_meta" / "partitions" / TABLE
    for day in (days[0], days[2], days[3], days[4]):
        for path in (facts_root / f"date={day}").glob("*.parquet"):
            path.unlink()
    again = lake.snapshot(TABLE, dates=[days[1], days[5]])
    assert again.partitions[days[1]].facts["k"] == days[1] and again.empty[days[5]]["k"] == "e"
    lake_module._FACTS_READ.clear()  # this process read the whole snapshot above: read it from the files again
    with pytest.raises(OSError):
        lake.snapshot(TABLE)


def test_facts_read_once_per_version_are_new_for_a_new_version_or_a_recreated_table(tmp_path: Path) -> None:
    """A facts table version is read once per process (the backtest reads the same snapshot every day), and
    only that version: a commit, or a table deleted and recreated at the same path with the same version
    numbers, is read afresh; what a caller changes in the facts it got is not what the next reader gets."""
    lake = Lake(str(tmp_path / "lake"))
    first = lake.write_partitions(
        TABLE, _rows("2013-01-01", 2), read_version=None, facts={"2013-01-01": {"k": ["a"]}}
    )
    seen = lake.snapshot(TABLE).partitions["2013-01-01"].facts
    seen["k"].append("changed by a caller")
    assert lake.snapshot(TABLE).partitions["2013-01-01"].facts["k"] == ["a"]
    lake.write_partitions(
        TABLE, _rows("2013-01-01", 3), read_version=first.version, facts={"2013-01-01": {"k": ["b"]}}
    )
    assert lake.snapshot(TABLE).partitions["2013-01-01"].facts["k"] == ["b"]
    shutil.rmtree(tmp_path / "lake")
    recreated = Lake(str(tmp_path / "lake"))
    recreated.write_partitions(
        TABLE, _rows("2013-01-01", 2), read_version=None, facts={"2013-01-01": {"k": ["c"]}}
    )
    recreated.write_partitions(
        TABLE, _rows("2013-01-01", 3), read_version=0, facts={"2013-01-01": {"k": ["d"]}}
    )
    assert recreated.snapshot(TABLE).partitions["2013-01-01"].facts["k"] == ["d"]


def test_maintenance_leaves_a_checkpoint_at_the_latest_version(tmp_path: Path) -> None:
    """After maintenance a reader loads a table from a checkpoint at its latest version, not by replaying the
    commits since the last checkpoint delta-rs wrote on its own (every 100): the log replay of the nightly does
    not grow with the table's age. A dry run writes nothing."""
    import json
    from types import SimpleNamespace

    from pipelines.steps.maintain import maintain_table

    lake = Lake(str(tmp_path / "lake"))
    version: int | None = None
    for day in range(1, 6):
        version = lake.write_partitions(TABLE, _rows(f"2013-01-0{day}", 2), read_version=version).version
    ctx = SimpleNamespace(lake=lake)
    log = tmp_path / "lake" / TABLE / "_delta_log"
    assert maintain_table(ctx, TABLE, set(), 168, dry_run=True)["checkpoint"] is None
    assert not (log / "_last_checkpoint").exists()
    assert maintain_table(ctx, TABLE, set(), 168, dry_run=False)["checkpoint"] == version
    assert json.loads((log / "_last_checkpoint").read_text())["version"] == version
    assert lake.snapshot(TABLE).version == version and lake.read(TABLE).num_rows == 10
    again = maintain_table(ctx, TABLE, set(), 168, dry_run=False)
    assert again["checkpoint"] is None, "nothing committed since: no new checkpoint"


def test_an_emptied_inbox_folder_is_removed_so_listing_the_inbox_does_not_walk_history(
    tmp_path: Path,
) -> None:
    """A local lake behaves as S3 does (a folder is only a key prefix): deleting a day's last landed file removes
    the day's folder, so the ingest's one listing walks what waits, not a folder per day of history."""
    lake = Lake(str(tmp_path / "lake"))
    for day in ("2013-01-01", "2013-01-02"):
        for name in ("a.csv", "b.csv"):
            lake.storage.write_bytes(f"landing/uc/{day}/{name}", b"x")
    lake.storage.delete(["landing/uc/2013-01-01/a.csv"])
    assert (tmp_path / "lake" / "landing" / "uc" / "2013-01-01").is_dir()
    lake.storage.delete(["landing/uc/2013-01-01/b.csv"])
    assert not (tmp_path / "lake" / "landing" / "uc" / "2013-01-01").exists()
    assert lake.storage.list("landing/uc/") == ["landing/uc/2013-01-02/a.csv", "landing/uc/2013-01-02/b.csv"]
    lake.storage.delete(["landing/uc/2013-01-02/a.csv", "landing/uc/2013-01-02/b.csv"])
    assert lake.storage.list("landing/uc/") == [] and (tmp_path / "lake").is_dir()
    lake.storage.write_bytes("landing/uc/2013-01-03/c.csv", b"y")  # the folders are made again
    assert lake.storage.read_bytes("landing/uc/2013-01-03/c.csv") == b"y"
