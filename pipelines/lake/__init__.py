"""The data lake: Delta Lake tables for data, plain objects for files as they arrived and for step records.

Layout (see docs/lake.md)::

    <lake>/landing/<usecase>/<yyyy-mm-dd>/<file>          files as they arrive               (objects)
    <lake>/archive/<usecase>/<yyyy-mm-dd>/<file>          files committed to raw             (objects)
    <lake>/quarantine/<usecase>/<yyyy-mm-dd>/<file>       rejected files + reports           (objects)
    <lake>/raw/<usecase>/<source>/                        validated, typed rows              (Delta, by date)
    <lake>/features/<usecase>/                            feature rows                       (Delta, by date)
    <lake>/features_online/<usecase>/                     online snapshot: lookups per key   (Delta, by date)
    <lake>/labels/<usecase>/                              labels: outcomes of the events     (Delta, by date)
    <lake>/predictions/<usecase>/                         batch scores                       (Delta, by date)
    <lake>/_meta/partitions/<table>/                      facts per partition of <table>     (Delta, by date)
    <lake>/_meta/plans/features/<usecase>.json            the features step's plan mark      (object)
    <lake>/_meta/extent/<table>.json                      first and last date a writer built (object)
    <lake>/runs/<usecase>/<step>/date=<yyyy-mm-dd>/run=<run>/  step results of one run (JSON)  (objects)
    <lake>/reports/<usecase>/...                          evaluation reports                 (objects)

Tables go through ``deltalake`` (delta-rs, no JVM): a step's write of one or more ``date`` partitions is one
commit (``mode="overwrite"`` with a ``date IN (...)`` predicate), made from the snapshot the step read, so a
concurrent writer of the same partitions makes the commit fail (:class:`CommitConflict`) instead of mixing
content. Readers go through the Delta log only, never by listing folders. Data files are read with pyarrow's own
filesystem (local or S3): reading through delta-rs's filesystem made processes abort at exit
("terminate called without an active exception") in most runs on this machine.

What a writer knows about a partition and the table does not (its content hash, the inputs it was built from)
is recorded in the partition's *facts*: a row per partition in a small side table, written right after the data
commit, valid only while the partition holds exactly the files it names (else the facts are treated as unknown).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from deltalake import DeltaTable

DATE = "date"  # the partition column of every lake table (ISO date string)
# When the file a raw row came from arrived in the landing zone (UTC): what availability is decided on
ARRIVED_AT = "_arrived_at"
ARRIVED_AT_METADATA = "arrived-at"  # S3 user metadata that carries a backfill's arrival time (ISO, UTC)
# The arrival of a backfilled file whose real arrival is unknown (``mlops land --arrived-at declared``): its rows
# get a NULL arrival and count from their declared times, as if they had arrived on time
UNRECORDED_ARRIVAL = datetime(1970, 1, 1, tzinfo=UTC)
FACTS_ZONE = "_meta/partitions"
# a table's first and last date partition, kept by its writer beside the Delta log: advisory (what a form proposes,
# read without opening Delta), never what a step decides on
EXTENT_ZONE = "_meta/extent"
LATEST = "latest"  # write_partitions(read_version=LATEST): a blind overwrite of whatever is committed
COMMIT_ATTEMPTS = 3  # a step that can redo its work tries this often before failing on conflicts


class LakeError(RuntimeError):
    """A lake operation failed; the message names the table or object URI."""


class CommitConflict(LakeError):
    """Another writer committed to the same partitions after this writer read the table (optimistic concurrency).

    ``winning_version`` is the table version that holds the other writer's content."""

    def __init__(
        self, table_uri: str, dates: list[str], read_version: int | None, winning_version: int | None
    ):
        self.table_uri = table_uri
        self.dates = dates
        self.read_version = read_version
        self.winning_version = winning_version
        shown = ", ".join(f"{DATE}={d}" for d in dates[:5]) + (" ..." if len(dates) > 5 else "")
        super().__init__(
            f"{table_uri}: partition(s) {shown} were committed by another writer (table version "
            f"{winning_version}) after this writer read version {read_version}; nothing of this write was "
            "committed. Rerun the step: it starts from the new snapshot."
        )


# --------------------------------------------------------------------------------------------------- storage


class Storage(ABC):
    """Byte-level operations on keys relative to the lake root (for files, reports and step records)."""

    root_uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, arrived_at: datetime | None = None) -> None:
        """Write one object atomically: readers see the old or the new content, never a part. ``arrived_at``
        (aware) records when the object arrived when that is not now (a backfill, a copy to the archive)."""

    @abstractmethod
    def read_with_arrival(self, key: str) -> tuple[bytes, datetime]:
        """The object's bytes and when it arrived (UTC): the ``arrived_at`` it was written with, else the time
        the storage last wrote it (a local file's modification time, S3 ``LastModified``)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{key}"

    def local_path(self, key: str) -> Path | None:
        """A local path for ``key`` when the storage is a local folder, else None."""
        return None


class LocalStorage(Storage):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(str(root).removeprefix("file://")).resolve()
        self.root_uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise LakeError(f"{self.uri(key)}: not found") from None

    def write_bytes(self, key: str, data: bytes, arrived_at: datetime | None = None) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_bytes(data)
                break
            except (
                FileNotFoundError
            ):  # a delete pruned the emptied folder meanwhile (see delete): make it again
                if attempt == 2:
                    raise
        if (
            arrived_at is not None
        ):  # the modification time is the arrival: set before the rename makes it visible
            stamp = _aware(arrived_at).timestamp()
            os.utime(tmp, ns=(int(stamp * 1e9), int(stamp * 1e9)))
        os.replace(tmp, path)

    def read_with_arrival(self, key: str) -> tuple[bytes, datetime]:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                modified = os.fstat(handle.fileno()).st_mtime_ns
                data = handle.read()
        except FileNotFoundError:
            raise LakeError(f"{self.uri(key)}: not found") from None
        return data, datetime.fromtimestamp(modified / 1e9, UTC)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, keys: list[str]) -> None:
        """Delete the files, then their folders left empty (a folder is only a key prefix, as on S3: an inbox
        emptied day after day leaves no folder per day of history for its listing to walk)."""
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.root and parent.is_relative_to(self.root):
                try:
                    parent.rmdir()  # only when empty
                except OSError:
                    break
                parent = parent.parent


def s3_settings(explicit: Mapping[str, str] | None = None) -> dict[str, str]:
    """S3 endpoint, region and credentials from the environment (filled from the Airflow connection by the task
    factory; never from files): ``AWS_ENDPOINT_URL`` (or ``MLOPS_S3_ENDPOINT_URL``), ``AWS_DEFAULT_REGION`` (or
    ``AWS_REGION``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``.

    ``explicit``: the same variables given directly (e.g. an Airflow connection's, mlops_airflow.operators.
    s3_environment), read before the environment, which is never changed; when they hold an access key, the
    key, secret and session token all come from them (never a token of the environment with their key)."""
    env: Mapping[str, str] = os.environ
    if explicit:
        from collections import ChainMap

        if explicit.get("AWS_ACCESS_KEY_ID"):
            keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
            env = {k: v for k, v in env.items() if k not in keys}
        env = ChainMap(dict(explicit), env)
    settings = {
        "endpoint_url": env.get("AWS_ENDPOINT_URL") or env.get("MLOPS_S3_ENDPOINT_URL") or "",
        "region": env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
        "access_key": env.get("AWS_ACCESS_KEY_ID") or "",
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY") or "",
        "session_token": env.get("AWS_SESSION_TOKEN") or "",
    }
    return {k: v for k, v in settings.items() if v}


class S3Storage(Storage):
    """S3 through boto3, with the endpoint, region and credentials of :func:`s3_settings` (of ``explicit``)."""

    def __init__(self, uri: str, explicit: Mapping[str, str] | None = None) -> None:
        import boto3

        rest = uri.removeprefix("s3://")
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        settings = s3_settings(explicit)
        # keys not set: boto3's own chain (environment, profile, role)
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.get("endpoint_url") or None,
            region_name=settings["region"],
            aws_access_key_id=settings.get("access_key"),
            aws_secret_access_key=settings.get("secret_key"),
            aws_session_token=settings.get("session_token"),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise LakeError(f"{self.uri(key)}: not found") from None

    def write_bytes(self, key: str, data: bytes, arrived_at: datetime | None = None) -> None:
        # LastModified cannot be set: a given arrival time travels as user metadata
        metadata = {} if arrived_at is None else {ARRIVED_AT_METADATA: _aware(arrived_at).isoformat()}
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata=metadata)

    def read_with_arrival(self, key: str) -> tuple[bytes, datetime]:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise LakeError(f"{self.uri(key)}: not found") from None
        given = (answer.get("Metadata") or {}).get(ARRIVED_AT_METADATA)
        arrived = datetime.fromisoformat(given) if given else answer["LastModified"]
        return answer["Body"].read(), _aware(arrived)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        strip = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                key = obj["Key"].removeprefix(strip)
                if not Path(key).name.startswith("."):
                    keys.append(key)
        return sorted(keys)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            if chunk:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in chunk]}
                )


def _aware(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is read as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def storage_for(uri: str, s3_env: Mapping[str, str] | None = None) -> Storage:
    if uri.startswith("s3://"):
        return S3Storage(uri, s3_env)
    if "://" in uri and not uri.startswith("file://"):
        raise LakeError(f"lake URI {uri!r}: unsupported scheme; use a local path or s3://bucket/prefix")
    return LocalStorage(uri)


# --------------------------------------------------------------------------------------------------- content


def content_hash(table: pa.Table | pd.DataFrame, exclude: tuple[str, ...] = (DATE,)) -> str:
    """Hash of a table's content: column names and the multiset of rows, independent of row order, file layout
    and Arrow string/large-string encoding; ``exclude`` columns (the partition column) are left out."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    names = sorted(n for n in table.column_names if n not in exclude)
    frame = _lake_types(table.select(names)).to_pandas()
    digest = hashlib.sha256(json.dumps(names).encode())
    if len(frame):
        rows = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
        digest.update(rows.tobytes())
    return digest.hexdigest()


def files_id(files: tuple[str, ...] | list[str]) -> str:
    """An identity of a partition's content when no content hash is known: its data files (unique per write)."""
    return "files:" + hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class PartitionInfo:
    """One ``date`` partition of a table version: its files and rows (from the Delta log) and the facts its
    writer recorded (empty when unknown, or stale because the partition was rewritten without them)."""

    table: str
    date: str
    rows: int
    files: tuple[str, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def data_hash(self) -> str | None:
        value = self.facts.get("data_hash")
        return str(value) if value else None

    @property
    def content_id(self) -> str:
        """The content hash, or the identity of the files when the facts are unknown (changes on any rewrite)."""
        return self.data_hash or files_id(self.files)


@dataclass(frozen=True)
class Snapshot:
    """One version of a table: ``version`` is None when the table does not exist yet."""

    table: str
    uri: str
    version: int | None
    partitions: dict[str, PartitionInfo]
    columns: tuple[str, ...] = ()
    # dates a writer committed as empty (no rows, e.g. a day whose outcomes have not arrived), with their facts
    empty: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class Commit:
    """What one write committed: the table, the new version and the partitions it replaced."""

    table: str
    uri: str
    version: int
    dates: list[str]
    rows: int

    def partition_uris(self) -> list[str]:
        return [f"{self.uri}/{DATE}={day}" for day in self.dates]


@dataclass(frozen=True)
class StagedFiles:
    """Parquet files a writer put under a local table's location (:meth:`Lake.staging_folder`) and has not
    committed: paths relative to the table's root by ``date``, each file the sorted rows of its date without the
    ``date`` column; ``columns``: the table's columns in order, ``date`` included. :meth:`Lake.write_partitions`
    commits them as it commits rows."""

    files: Mapping[str, tuple[str, ...]]
    columns: tuple[str, ...]


def table_key(zone: str, usecase: str, *sub: str) -> str:
    """The key of a lake table, e.g. ``raw/<usecase>/<source>`` or ``features/<usecase>``."""
    return "/".join([zone, usecase, *sub])


def raw_table(usecase: str, source: str) -> str:
    """The Delta table of a source's validated rows: ``raw/<usecase>/<source>``."""
    return table_key("raw", usecase, source)


def features_table(usecase: str) -> str:
    """The Delta table of a use case's point-in-time features: ``features/<usecase>``."""
    return table_key("features", usecase)


def online_table(usecase: str) -> str:
    """The Delta table of a use case's online feature snapshot, beside its features: ``features_online/<usecase>``
    (per served event date, the lookups a request at that date's prediction time joins)."""
    return table_key("features_online", usecase)


def labels_table(usecase: str) -> str:
    """The Delta table of a use case's labels: ``labels/<usecase>``, by event date, one row per event whose outcome
    arrived (the feature keys, the label and when it became known), joined to the features by key and date."""
    return table_key("labels", usecase)


def predictions_table(usecase: str) -> str:
    """The Delta table of a use case's batch scores: ``predictions/<usecase>``."""
    return table_key("predictions", usecase)


def captures_table(usecase: str) -> str:
    """The Delta table of the requests a scoring service answered: ``captures/<usecase>`` (the records, the
    predictions and the model and snapshot versions that made them; the model inputs only with
    serving.capture.model_inputs, else pipelines.serving.recapture rebuilds them), appended by the service in
    batches."""
    return table_key("captures", usecase)


def alias_moves_table(usecase: str) -> str:
    """The append-only Delta table of a use case's registry alias moves: ``registry/<usecase>/alias_moves``, one
    row per move of ``champion`` (the gate's promotions, manual promotes, forced promotes, rollbacks, approvals):
    from and to version, kind, who, why, the run and when (pipelines.modeling.model_ops). Partitioned by the move's UTC
    date; never vacuumed by maintenance."""
    return table_key("registry", usecase, "alias_moves")


def predictions_with_outcomes_table(usecase: str) -> str:
    """The Delta table of predictions joined with the outcomes that arrived later:
    ``predictions_with_outcomes/<usecase>``, the ground truth of live monitoring."""
    return table_key("predictions_with_outcomes", usecase)


def monitoring_table(usecase: str) -> str:
    """The Delta table of a use case's monitoring: ``monitoring/<usecase>``, by monitored date, one row per
    measured value (drift of an input, of the scores, live and estimated performance, the retraining asked)."""
    return table_key("monitoring", usecase)


class Lake:
    """Delta tables and plain objects on a local folder or S3 (one interface for both).

    ``s3_env``: S3 endpoint and credentials for this lake alone, as AWS_* variables (:func:`s3_settings`); by
    default the process environment's."""

    def __init__(self, uri: str, s3_env: Mapping[str, str] | None = None) -> None:
        self.s3_env = dict(s3_env or {})
        self.storage = storage_for(uri, self.s3_env)
        self.uri = self.storage.root_uri
        self.is_s3 = self.uri.startswith("s3://")

    # -- keys of plain objects
    @staticmethod
    def dated_key(zone: str, usecase: str, day: date | str, *sub: str) -> str:
        """``<zone>/<usecase>/<sub...>/date=<day>``: where step records and reports of a date live."""
        return "/".join([zone, usecase, *sub, f"date={_iso(day)}"])

    # -- small objects
    def read_json(self, key: str) -> Any:
        return json.loads(self.storage.read_bytes(key))

    def write_json(self, key: str, payload: Any) -> str:
        self.storage.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
        return self.storage.uri(key)

    def record_extent(self, table: str, dates: Iterable[str], version: int) -> None:
        """Widen ``table``'s recorded extent (first and last date, newest version) by the ``dates`` a commit of
        ``version`` wrote. Advisory: two writers racing may leave the older of their records."""
        days = sorted(map(str, dates))
        if not days:
            return
        key = f"{EXTENT_ZONE}/{table}.json"
        known = self.extent(table) or {}
        first = min(filter(None, (known.get("first"), days[0])))
        last = max(filter(None, (known.get("last"), days[-1])))
        version = max(version, int(known.get("version", -1)))
        self.write_json(key, {"first": first, "last": last, "version": version})

    def extent(self, table: str) -> dict[str, Any] | None:
        """``table``'s recorded extent (:meth:`record_extent`), or None when no writer recorded one."""
        key = f"{EXTENT_ZONE}/{table}.json"
        return self.read_json(key) if self.storage.exists(key) else None

    def write_text(self, key: str, text: str) -> str:
        self.storage.write_bytes(key, text.encode("utf-8"))
        return self.storage.uri(key)

    # -- Delta plumbing
    def table_uri(self, table: str) -> str:
        return self.storage.uri(table)

    def storage_options(self) -> dict[str, str] | None:
        """delta-rs storage options (S3 only; a local lake needs none)."""
        if not self.is_s3:
            return None
        settings = s3_settings(self.s3_env)
        options = {"AWS_REGION": settings["region"]}
        for name, option in (
            ("endpoint_url", "AWS_ENDPOINT_URL"),
            ("access_key", "AWS_ACCESS_KEY_ID"),
            ("secret_key", "AWS_SECRET_ACCESS_KEY"),
            ("session_token", "AWS_SESSION_TOKEN"),
        ):
            if settings.get(name):
                options[option] = settings[name]
        if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
        return options

    def _filesystem(self, table: str) -> Any:
        """A pyarrow filesystem rooted at the table (its data files are read through this, not delta-rs)."""
        import pyarrow.fs as pafs

        if not self.is_s3:
            return pafs.SubTreeFileSystem(self.table_uri(table), pafs.LocalFileSystem())
        settings = s3_settings(self.s3_env)
        endpoint = settings.get("endpoint_url", "")
        scheme = "http" if endpoint.startswith("http://") else "https"
        s3 = pafs.S3FileSystem(
            endpoint_override=endpoint.split("://", 1)[-1] or None,
            scheme=scheme,
            region=settings["region"],
            access_key=settings.get("access_key"),
            secret_key=settings.get("secret_key"),
            session_token=settings.get("session_token"),
        )
        return pafs.SubTreeFileSystem(self.table_uri(table).removeprefix("s3://"), s3)

    def open_table(self, table: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table at ``version`` (latest when None), or None when the table does not exist."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri = self.table_uri(table)
        try:
            return DeltaTable(uri, version=version, storage_options=self.storage_options())
        except TableNotFoundError:
            if version is None:
                return None
            raise LakeError(f"{uri}: the table has no version {version}") from None
        except Exception as exc:  # delta-rs raises plain errors for versions whose log was cleaned up
            if version is not None and self.open_table(table) is not None:
                raise LakeError(
                    f"{uri}: version {version} cannot be loaded ({exc}); its log or files were cleaned up (the "
                    "maintenance step keeps only versions that registered models name)"
                ) from exc
            raise

    def version(self, table: str) -> int | None:
        """The table's latest version, or None when it does not exist."""
        handle = self.open_table(table)
        return None if handle is None else int(handle.version())

    def snapshot(
        self,
        table: str,
        version: int | None = None,
        *,
        facts: bool = True,
        dates: Iterable[str] | None = None,
    ) -> Snapshot:
        """The partitions of one table version (latest when None) with their rows, files and facts.

        ``dates``: only the partitions (and empty dates) of these dates, whose facts alone are read (the facts
        table is partitioned by date: a step that needs a window of dates reads that window, not the history)."""
        uri = self.table_uri(table)
        handle = self.open_table(table, version)
        if handle is None:
            return Snapshot(table, uri, None, {})
        wanted = None if dates is None else {_iso(d) for d in dates}
        by_date = _files_by_date(handle)
        if wanted is not None:
            by_date = {day: files for day, files in by_date.items() if day in wanted}
        recorded = self._facts(table, None if wanted is None else sorted(wanted)) if facts else {}
        partitions: dict[str, PartitionInfo] = {}
        for day in sorted(by_date):
            files = tuple(sorted(path for path, _ in by_date[day]))
            counts = [count for _, count in by_date[day]]
            entry = recorded.get(day)
            valid = entry is not None and tuple(entry["files"]) == files
            fact_values = dict(entry["facts"]) if valid and entry else {}
            rows = sum(counts) if all(c >= 0 for c in counts) else int(fact_values.get("rows", -1))
            partitions[day] = PartitionInfo(table, day, rows, files, fact_values)
        empty = {
            day: dict(entry["facts"])
            for day, entry in recorded.items()
            if day not in by_date and not list(entry["files"])
        }
        return Snapshot(table, uri, int(handle.version()), partitions, _schema_names(handle), empty)

    def partitions(self, table: str, version: int | None = None) -> dict[str, PartitionInfo]:
        """``snapshot(table, version).partitions``: the table's partitions by ISO date, oldest first."""
        return self.snapshot(table, version).partitions

    def read(
        self,
        table: str,
        dates: list[str] | None = None,
        columns: list[str] | None = None,
        version: int | None = None,
    ) -> pa.Table:
        """Rows of ``dates`` (all when None) of one table version through the Delta log, with the ``date``
        column. LakeError when the table or a column does not exist."""
        handle = self.open_table(table, version)
        uri = self.table_uri(table)
        if handle is None:
            raise LakeError(f"{uri}: no such table (nothing was committed there yet)")
        available = _schema_names(handle)
        if columns is not None:
            missing = [c for c in columns if c not in available]
            if missing:
                raise LakeError(
                    f"{uri} (version {handle.version()}): no column(s) {missing}; the table has {list(available)}"
                )
        predicate = None if dates is None else [(DATE, "in", sorted(set(dates)) or ["<none>"])]
        dataset = handle.to_pyarrow_dataset(
            filesystem=self._filesystem(table), file_pruning_predicate=predicate
        )
        try:
            result = dataset.to_table(columns=columns)
        except OSError as exc:  # FileNotFoundError locally; S3 reports a missing object as an OSError
            text = str(exc)
            if not isinstance(exc, FileNotFoundError) and not any(
                marker in text for marker in ("does not exist", "NoSuchKey", "404", "NotFound")
            ):
                raise
            raise LakeError(
                f"{uri} (version {handle.version()}): a data file of this version is gone ({exc}); old versions "
                "last until vacuum removes their files (the maintenance step keeps versions models name)"
            ) from None
        if dates is not None and DATE in result.column_names:
            import pyarrow.compute as pc

            result = result.filter(pc.is_in(result[DATE], value_set=_string_array(sorted(set(dates)))))
        return result

    def read_frame(
        self,
        table: str,
        dates: list[str] | None = None,
        columns: list[str] | None = None,
        version: int | None = None,
    ) -> pd.DataFrame:
        """:meth:`read` as a pandas frame."""
        return self.read(table, dates, columns, version).to_pandas()

    def staging_folder(self, table: str) -> tuple[str, str] | None:
        """A new folder under a local table's location for files a writer commits with
        :meth:`write_partitions` (:class:`StagedFiles`, see :meth:`staged_files`): (path relative to the table's
        root, absolute path); None for an S3 lake."""
        if self.is_s3:
            return None
        relative = f"_staged/{uuid.uuid4().hex}"
        return relative, f"{self.table_uri(table).rstrip('/')}/{relative}"

    def staged_files(self, table: str, staging: tuple[str, str], columns: list[str]) -> StagedFiles:
        """The Parquet files a writer put in its :meth:`staging_folder` (``date=<day>/`` folders, as Spark's
        ``partitionBy`` writes them), moved into the table's own ``date=<day>/`` folders where a write of rows
        puts its files (so ``vacuum`` treats them alike), as :class:`StagedFiles` of a table with ``columns``.
        The folder is the writer's own and nothing reads it: listing it is not reading the lake."""
        import shutil

        folder = Path(staging[1])
        root = Path(self.table_uri(table))
        files: dict[str, list[str]] = {}
        for path in sorted(folder.glob(f"{DATE}=*/*.parquet")):
            day = path.parent.name.split("=", 1)[1]
            relative = f"{path.parent.name}/{staging[0].rsplit('/', 1)[-1]}-{path.name}"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            path.rename(root / relative)  # a new name (the staging folder's id): never replaces a file
            files.setdefault(day, []).append(relative)
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # another writer's staging folder may be there
            folder.parent.rmdir()
        return StagedFiles({day: tuple(paths) for day, paths in files.items()}, tuple(columns))

    def write_partitions(
        self,
        table: str,
        data: pa.Table | pd.DataFrame | StagedFiles,
        *,
        read_version: int | None | str,
        facts: Mapping[str, Mapping[str, Any]] | None = None,
        commit_info: Mapping[str, Any] | None = None,
        empty_dates: list[str] | None = None,
    ) -> Commit:
        """Replace the ``date`` partitions present in ``data`` in one commit, made from the snapshot at
        ``read_version`` (None: the table did not exist for this writer; :data:`LATEST`: whatever is committed
        when the write starts, a blind overwrite). Raises :class:`CommitConflict` when another
        writer committed to these partitions since. ``facts`` (date -> dict) are recorded beside each partition,
        with its row count and content hash. ``empty_dates`` (not in ``data``) are left without rows by the same
        commit, and their facts recorded too (:attr:`Snapshot.empty`), so a writer can tell a date it built
        empty from one it never built. ``data`` may be files already written under the table's location
        (:class:`StagedFiles`): they are committed as they are, with the same facts."""
        import pyarrow as pa
        import pyarrow.compute as pc
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError, SchemaMismatchError

        if isinstance(data, StagedFiles):
            return self._write_staged(
                table,
                data,
                read_version=read_version,
                facts=facts,
                commit_info=commit_info,
                empty_dates=empty_dates,
            )
        if not isinstance(data, pa.Table):
            data = pa.Table.from_pandas(data, preserve_index=False)
        if DATE not in data.column_names:
            raise ValueError(f"write_partitions({table!r}): the data has no {DATE!r} column")
        data = _lake_types(data.replace_schema_metadata(None))
        dates = sorted(set(map(str, pc.unique(data[DATE]).to_pylist())))
        empty = sorted(set(empty_dates or []) - set(dates))
        if not dates and not empty:
            raise ValueError(f"write_partitions({table!r}): no rows to write")
        uri = self.table_uri(table)
        predicate = f"{DATE} IN ({', '.join(_sql_string(d) for d in [*dates, *empty])})"
        per_date = _split_by_date(data, dates)
        write_id = uuid.uuid4().hex  # names this commit: one whose answer was lost is recognised as ours
        metadata = {
            "mlops.partitions": json.dumps(sorted([*dates, *empty])),
            "mlops.write_id": write_id,
            **{k: str(v) for k, v in (commit_info or {}).items()},
        }
        properties = CommitProperties(custom_metadata=metadata)
        if isinstance(read_version, int):
            handle = self.open_table(table, read_version)
        else:
            handle = self.open_table(table)
            if read_version == LATEST:
                read_version = None if handle is None else int(handle.version())
        if read_version is None and handle is not None:
            # the writer read nothing: another writer created the table meanwhile
            raise CommitConflict(uri, dates, None, int(handle.version()))
        try:
            if handle is None:
                write_deltalake(
                    uri,
                    data,
                    partition_by=[DATE],
                    mode="error",
                    storage_options=self.storage_options(),
                    commit_properties=properties,
                )
                handle = self.open_table(table)
                assert handle is not None
                version = int(handle.version())
                if version != 0:  # pragma: no cover - mode="error" refuses an existing table
                    raise CommitConflict(uri, dates, None, version)
            else:
                write_deltalake(
                    handle,
                    data,
                    mode="overwrite",
                    predicate=predicate,
                    schema_mode="merge",
                    commit_properties=properties,
                )
                version = int(handle.version())
        except CommitFailedError:
            own = self._own_commit(table, read_version, write_id)
            if own is None:
                raise CommitConflict(uri, dates, read_version, self.version(table)) from None
            handle, version = own
        except SchemaMismatchError as exc:
            raise LakeError(
                f"{uri}: the rows to write do not fit the table's schema ({exc}). New columns are added "
                "automatically; a changed column type needs the affected step rerun with a rebuild of every "
                "partition, or a new table"
            ) from None
        except Exception as exc:
            if "already exists" in str(exc).lower() and read_version is None:
                raise CommitConflict(uri, dates, None, self.version(table)) from None
            raise
        counts = {day: per_date[day].num_rows for day in dates}
        hashes = {day: content_hash(per_date[day]) for day in dates}
        self._facts_of_commit(table, handle, version, counts, hashes, empty, facts)
        return Commit(table, uri, version, dates, data.num_rows)

    def _facts_of_commit(
        self,
        table: str,
        handle: DeltaTable,
        version: int,
        counts: Mapping[str, int],
        hashes: Mapping[str, str],
        empty: list[str],
        facts: Mapping[str, Mapping[str, Any]] | None,
    ) -> None:
        """Record the facts of the partitions a commit at ``version`` wrote (``counts`` and ``hashes`` by date)
        and left ``empty``, with the files the log lists for them."""
        written = {day: tuple(sorted(p for p, _ in files)) for day, files in _files_by_date(handle).items()}
        rows = {}
        for day in counts:
            rows[day] = {
                **dict((facts or {}).get(day, {})),
                "rows": counts[day],
                "data_hash": hashes[day],
                "version": version,
            }
        for day in empty:
            rows[day] = {**dict((facts or {}).get(day, {})), "rows": 0, "version": version}
        recorded = {day: written[day] for day in counts if day in written}
        recorded |= {day: () for day in empty if day not in written}
        self._record_facts(table, version, recorded, rows)

    def _write_staged(
        self,
        table: str,
        staged: StagedFiles,
        *,
        read_version: int | None | str,
        facts: Mapping[str, Mapping[str, Any]] | None,
        commit_info: Mapping[str, Any] | None,
        empty_dates: list[str] | None,
    ) -> Commit:
        """:meth:`write_partitions` of files already under the table's location: one commit of their add actions
        (``mode="overwrite"`` of the dates, from the snapshot at ``read_version``, so a concurrent writer of the
        same partitions makes it fail as a write of rows does), with the same commit info and facts (each date's
        rows are read back for its content hash, as the rows a write of them would hash). A table whose columns
        differ gets the rows through the ordinary write (its schema rules: new columns merged)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from deltalake import CommitProperties, Schema
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction, create_table_with_add_actions

        if self.is_s3:
            raise LakeError(f"write_partitions({table!r}): staged files need a local lake")
        dates = sorted(day for day, paths in staged.files.items() if paths)
        empty = sorted(set(empty_dates or []) - set(dates))
        if not dates and not empty:
            raise ValueError(f"write_partitions({table!r}): no rows to write")
        uri = self.table_uri(table)
        root = Path(uri)
        actions, counts, hashes, types = [], {}, {}, {}
        for day in dates:
            parts = [pq.read_table(root / path) for path in staged.files[day]]
            rows = _lake_types(pa.concat_tables(parts, promote_options="permissive"))
            counts[day], hashes[day] = rows.num_rows, content_hash(rows)
            for item in rows.schema:
                types.setdefault(item.name, item.type)
            for path, part in zip(staged.files[day], parts, strict=True):
                stat = (root / path).stat()
                stats = json.dumps({"numRecords": part.num_rows})
                actions.append(
                    AddAction(path, stat.st_size, {DATE: day}, int(stat.st_mtime * 1000), True, stats)
                )
        fields = [pa.field(DATE, pa.string()) if n == DATE else pa.field(n, types[n]) for n in staged.columns]
        schema = pa.schema(fields)
        handle = (
            self.open_table(table)
            if not isinstance(read_version, int)
            else self.open_table(table, read_version)
        )
        if read_version == LATEST:
            read_version = None if handle is None else int(handle.version())
        if read_version is None and handle is not None:
            raise CommitConflict(uri, dates, None, int(handle.version()))
        if handle is not None and not _same_schema(pa.schema(handle.schema().to_arrow()), schema):
            parts = []
            for day in dates:
                for path in staged.files[day]:
                    part = pq.read_table(root / path)
                    parts.append(part.append_column(DATE, pa.array([day] * part.num_rows, pa.string())))
            rows = pa.concat_tables(parts, promote_options="permissive") if parts else schema.empty_table()
            return self.write_partitions(
                table,
                rows.select(list(staged.columns)),
                read_version=read_version,
                facts=facts,
                commit_info=commit_info,
                empty_dates=empty_dates,
            )
        write_id = uuid.uuid4().hex
        metadata = {
            "mlops.partitions": json.dumps(sorted([*dates, *empty])),
            "mlops.write_id": write_id,
            **{k: str(v) for k, v in (commit_info or {}).items()},
        }
        properties = CommitProperties(custom_metadata=metadata)
        try:
            if handle is None:
                create_table_with_add_actions(
                    uri,
                    Schema.from_arrow(schema),
                    actions,
                    mode="error",
                    partition_by=[DATE],
                    storage_options=self.storage_options(),
                    commit_properties=properties,
                )
            else:
                handle.create_write_transaction(
                    actions,
                    mode="overwrite",
                    schema=handle.schema(),
                    partition_by=[DATE],
                    partition_filters=[(DATE, "in", [*dates, *empty])],
                    commit_properties=properties,
                )
        except CommitFailedError:
            pass  # ours or another writer's: the log says which
        except Exception as exc:
            if "already exists" in str(exc).lower() and read_version is None:
                raise CommitConflict(uri, dates, None, self.version(table)) from None
            raise
        own = self._own_commit(table, -1 if read_version is None else read_version, write_id)
        if own is None:
            for paths in staged.files.values():  # never in any log: nobody else reads them
                for path in paths:
                    (root / path).unlink(missing_ok=True)
            raise CommitConflict(uri, dates, read_version, self.version(table))
        handle, version = own
        self._facts_of_commit(table, handle, version, counts, hashes, empty, facts)
        return Commit(table, uri, version, dates, sum(counts.values()))

    def _own_commit(
        self, table: str, read_version: int | None, write_id: str
    ) -> tuple[DeltaTable, int] | None:
        """The table at the version this writer's commit ``write_id`` made after ``read_version``, if one did. On
        S3 a commit whose answer was lost (a dropped connection, a timeout) is retried by object_store; the retry of
        the conditional PUT is refused because the first one took effect, and delta-rs reports a conflict with
        this writer's own commit (docs/reliability.md, S3 faults)."""
        latest = self.open_table(table)
        if latest is None or read_version is None:
            return None
        for entry in latest.history(max(int(latest.version()) - read_version, 1)):
            if entry.get("mlops.write_id") == write_id:
                version = int(entry["version"])
                handle = self.open_table(table, version)
                assert handle is not None
                return handle, version
        return None

    def append_rows(
        self,
        table: str,
        data: pa.Table | pd.DataFrame,
        *,
        commit_info: Mapping[str, Any] | None = None,
        handle: DeltaTable | None = None,
    ) -> DeltaTable:
        """Append ``data`` (with a ``date`` column) to ``table`` in one commit, creating it partitioned by date if
        needed; return the table's handle at the new version. Appends never conflict with each other (several
        writers may append), and nothing is replaced, so no partition facts are recorded: for logs such as
        captured requests. A writer that appends often passes the handle it got back (``handle``), which saves
        reading the table's log again (delta-rs brings a stale handle up to date when it commits).

        The commit never cleans up expired log entries (delta-rs would after a checkpoint, by
        ``delta.enableExpiredLogCleanup``): that deletes objects, which an appending writer may not be allowed to
        (the scoring service's S3 user, docker/minio/serve.json, has no delete), and a refused cleanup would fail
        a commit that already landed, so the writer would append its rows again. The maintenance step cleans the
        logs."""
        import pyarrow as pa
        from deltalake import CommitProperties, PostCommitHookProperties, write_deltalake

        if not isinstance(data, pa.Table):
            data = pa.Table.from_pandas(data, preserve_index=False)
        if DATE not in data.column_names:
            raise ValueError(f"append_rows({table!r}): the data has no {DATE!r} column")
        data = _lake_types(data.replace_schema_metadata(None))
        properties = CommitProperties(custom_metadata={k: str(v) for k, v in (commit_info or {}).items()})
        handle = handle if handle is not None else self.open_table(table)
        write_deltalake(
            self.table_uri(table) if handle is None else handle,
            data,
            partition_by=[DATE] if handle is None else None,
            mode="append",
            schema_mode="merge",
            storage_options=self.storage_options() if handle is None else None,
            commit_properties=properties,
            post_commithook_properties=PostCommitHookProperties(cleanup_expired_logs=False),
        )
        handle = handle if handle is not None else self.open_table(table)  # a handle is updated by the write
        assert handle is not None
        return handle

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's commits, newest first (version, timestamp, operation, parameters, our commit info)."""
        handle = self.open_table(table)
        return [] if handle is None else list(handle.history(limit))

    # -- facts
    def _facts(self, table: str, dates: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Facts table rows by date: ``{"files": [...], "facts": {...}}`` (latest version), of ``dates`` only
        when given (their partitions of the facts table alone are read)."""
        facts_table = f"{FACTS_ZONE}/{table}"
        if dates is not None and not dates:
            return {}
        handle = self.open_table(facts_table)
        if handle is None:
            return {}
        # a version of a table is immutable: read and parsed once per process (the backtest and a long task
        # read the same facts many times); the table's id tells a table recreated at the same path apart
        key = (
            self.table_uri(facts_table),
            handle.metadata().id,
            int(handle.version()),
            None if dates is None else tuple(dates),
        )
        rows = _FACTS_READ.get(key)
        if rows is None:
            predicate = None if dates is None else [(DATE, "in", list(dates))]
            wanted = None if dates is None else set(dates)
            rows = [
                (row[DATE], tuple(row["files"]), row["facts"])
                for row in handle.to_pyarrow_dataset(
                    filesystem=self._filesystem(facts_table), file_pruning_predicate=predicate
                )
                .to_table(columns=[DATE, "files", "facts"])
                .to_pylist()
                if wanted is None or row[DATE] in wanted
            ]
            _FACTS_READ[key] = rows
            while len(_FACTS_READ) > _FACTS_READ_KEPT:
                _FACTS_READ.pop(next(iter(_FACTS_READ)))
        # parsed on every call: the caller owns (and may change) what it gets
        return {day: {"files": list(files), "facts": json.loads(facts)} for day, files, facts in rows}

    def _record_facts(
        self,
        table: str,
        version: int,
        files: Mapping[str, tuple[str, ...]],
        facts: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Write the facts of partitions committed at ``version`` (last writer wins; readers check the files)."""
        import pyarrow as pa
        from deltalake import write_deltalake
        from deltalake.exceptions import CommitFailedError

        days = sorted(files)
        if not days:
            return
        rows = pa.table(
            {
                DATE: pa.array(days, pa.string()),
                "data_version": pa.array([version] * len(days), pa.int64()),
                "files": pa.array([list(files[d]) for d in days], pa.list_(pa.string())),
                "facts": pa.array(
                    [json.dumps(facts[d], sort_keys=True, default=str) for d in days], pa.string()
                ),
            }
        )
        facts_table = f"{FACTS_ZONE}/{table}"
        predicate = f"{DATE} IN ({', '.join(_sql_string(d) for d in days)})"
        for attempt in range(10):
            handle = self.open_table(facts_table)
            try:
                if handle is None:
                    write_deltalake(
                        self.table_uri(facts_table),
                        rows,
                        partition_by=[DATE],
                        mode="error",
                        storage_options=self.storage_options(),
                    )
                else:
                    write_deltalake(handle, rows, mode="overwrite", predicate=predicate)
                return
            except CommitFailedError:
                continue
            except Exception as exc:
                if "already exists" in str(exc).lower() and attempt < 9:
                    continue
                raise
        raise LakeError(f"{self.table_uri(facts_table)}: could not record partition facts after 10 attempts")

    # -- maintenance
    def compact(self, table: str, dates: list[str], *, dry_run: bool = False) -> dict[str, tuple[int, int]]:
        """Rewrite the ``dates`` partitions of an append-only table (one without partition facts, such as captured
        requests) as few large files, in one commit (Delta's OPTIMIZE compaction: same rows, same order; appends
        may run meanwhile). Returns (files before, files after) of each partition that had more than one file;
        a dry run returns them with the after count unknown (-1). The replaced files stay until vacuum."""
        from deltalake import CommitProperties

        if self.open_table(f"{FACTS_ZONE}/{table}") is not None:
            raise LakeError(
                f"{self.table_uri(table)}: its partitions have recorded facts (file lists) that compaction would "
                "invalidate; only append-only tables are compacted"
            )
        handle = self.open_table(table)
        if handle is None:
            return {}
        wanted = set(dates)
        before = {day: len(files) for day, files in _files_by_date(handle).items() if day in wanted}
        days = sorted(day for day, count in before.items() if count > 1)
        if dry_run or not days:
            return {day: (before[day], -1 if dry_run else before[day]) for day in days}
        handle.optimize.compact(
            partition_filters=[(DATE, "in", days)],
            commit_properties=CommitProperties(custom_metadata={"mlops.writer": "maintain"}),
        )
        after = _files_by_date(handle)
        return {day: (before[day], len(after.get(day, []))) for day in days}

    def vacuum(
        self, table: str, keep_versions: list[int], retention_hours: int, *, dry_run: bool = False
    ) -> list[str]:
        """Delete files not referenced by the latest version that were removed (or, never committed, written)
        more than ``retention_hours`` ago, except files of ``keep_versions`` (Delta's full vacuum). Returns the
        deleted (or, dry run, deletable) files."""
        handle = self.open_table(table)
        if handle is None:
            return []
        return list(
            handle.vacuum(
                retention_hours=retention_hours,
                dry_run=dry_run,
                enforce_retention_duration=False,
                full=True,
                keep_versions=sorted(set(keep_versions)) or None,
            )
        )


def commit_with_retry(
    lake: Lake,
    table: str,
    build: Callable[[Snapshot], pa.Table | pd.DataFrame | tuple[Any, Mapping[str, Mapping[str, Any]]] | None],
    *,
    attempts: int = COMMIT_ATTEMPTS,
    commit_info: Mapping[str, Any] | None = None,
    on_conflict: Callable[[CommitConflict], None] | None = None,
    dates: Iterable[str] | None = None,
) -> Commit | None:
    """Build from a fresh snapshot and commit; on :class:`CommitConflict`, rebuild from the new snapshot.

    ``build(snapshot)`` returns the rows to write (with ``date``), or ``(rows, facts by date)``, or None when
    there is nothing to write. ``dates``: the snapshot holds these dates only (:meth:`Lake.snapshot`). The last
    conflict is raised after ``attempts`` tries."""
    wanted = None if dates is None else sorted(set(map(_iso, dates)))
    for attempt in range(1, attempts + 1):
        snapshot = lake.snapshot(table, dates=wanted)
        built = build(snapshot)
        if built is None:
            return None
        data, facts = built if isinstance(built, tuple) else (built, None)
        try:
            return lake.write_partitions(
                table, data, read_version=snapshot.version, facts=facts, commit_info=commit_info
            )
        except CommitConflict as conflict:
            if on_conflict is not None:
                on_conflict(conflict)
            if attempt == attempts:
                raise
    return None  # pragma: no cover - the loop returns or raises


# the rows (date, files, facts as JSON) of recent reads of a facts table version, oldest first
_FACTS_READ: dict[tuple[Any, ...], list[tuple[str, tuple[str, ...], str]]] = {}
_FACTS_READ_KEPT = 32

_ARROW_TYPES = {"int": "int64", "float": "float64", "string": "string", "bool": "bool"}


def arrow_type(kind: str) -> pa.DataType:
    """The Arrow type a lake table stores for a use case column of type ``kind`` (config ColumnType)."""
    import pyarrow as pa

    if kind == "timestamp":
        return pa.timestamp("us", tz="UTC")
    return pa.type_for_alias(_ARROW_TYPES[kind])


def _lake_types(table: pa.Table) -> pa.Table:
    """The Arrow types a Delta table stores: timestamps in microseconds, plain strings, no dictionaries (so a
    content hash computed before a write equals the one computed after reading it back)."""
    import pyarrow as pa

    fields = []
    for item in table.schema:
        kind = item.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_timestamp(kind) and kind.unit != "us":
            kind = pa.timestamp("us", tz=kind.tz)
        elif pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
            kind = pa.string()
        fields.append(pa.field(item.name, kind, item.nullable))
    target = pa.schema(fields)
    return table if target.equals(table.schema) else table.cast(target)


def _same_schema(stored: pa.Schema, written: pa.Schema) -> bool:
    """Whether a table's schema has the columns and types of ``written`` (order aside), string and timestamp
    encodings as the lake normalizes them (:func:`_lake_types`)."""

    def kinds(schema: pa.Schema) -> dict[str, pa.DataType]:
        return dict(zip(schema.names, _lake_types(schema.empty_table()).schema.types, strict=True))

    return kinds(stored) == kinds(written)


def _files_by_date(handle: DeltaTable) -> dict[str, list[tuple[str, int]]]:
    """(file path, rows or -1) of each ``date`` partition of a loaded table version, from its add actions."""
    import pyarrow as pa

    adds = pa.table(handle.get_add_actions(flatten=True))
    by_date: dict[str, list[tuple[str, int]]] = {}
    part_column = f"partition.{DATE}"
    if not adds.num_rows or part_column not in adds.column_names:
        return by_date
    paths = adds.column("path").to_pylist()
    days = adds.column(part_column).to_pylist()
    counts = (
        adds.column("num_records").to_pylist() if "num_records" in adds.column_names else [None] * len(paths)
    )
    for path, day, count in zip(paths, days, counts, strict=True):
        by_date.setdefault(str(day), []).append((str(path), -1 if count is None else int(count)))
    return by_date


def _split_by_date(data: pa.Table, dates: list[str]) -> dict[str, pa.Table]:
    """The rows of each of ``dates`` (their order kept), in one pass: one stable sort by date and a slice per
    date, instead of a filter over every row per date (a year of 10M rows: 365 passes)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not dates:
        return {}
    if data.num_rows == 0 or not pa.types.is_string(data.schema.field(DATE).type):
        return {day: data.filter(pc.equal(data[DATE], day)) for day in dates}
    encoded = pc.dictionary_encode(data[DATE]).combine_chunks()
    if encoded.null_count:
        return {day: data.filter(pc.equal(data[DATE], day)) for day in dates}
    names = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(names))
    ordered = data.take(order) if (order != np.arange(len(order))).any() else data
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    found = {
        str(name): ordered.slice(int(start), int(count))
        for name, start, count in zip(names, starts, counts, strict=True)
    }
    return {day: found[day] for day in dates}


def _schema_names(handle: DeltaTable) -> tuple[str, ...]:
    schema = handle.schema()
    return tuple(f.name for f in schema.fields)


def _string_array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def _sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _iso(day: date | str) -> str:
    return day if isinstance(day, str) else day.isoformat()


def open_lake(uri: str | None = None, s3_env: Mapping[str, str] | None = None) -> Lake:
    """The lake of the active profile (or ``uri``), with S3 settings ``s3_env`` for it alone (:class:`Lake`)."""
    if uri is None:
        from pipelines.config import load_profile

        uri = load_profile().lake_uri
    return Lake(uri, s3_env)
