"""The data lake: one interface, two storage backends (local folder, S3 through boto3).

Layout (see docs/lake.md)::

    <lake>/landing/<usecase>/<yyyy-mm-dd>/<file>          files as they arrive
    <lake>/quarantine/<usecase>/<yyyy-mm-dd>/<file>       rejected files + <file>.report.json/.html
    <lake>/raw/<usecase>/<source>/date=<yyyy-mm-dd>/      validated, typed Parquet
    <lake>/features/<usecase>/date=<yyyy-mm-dd>/          feature partitions
    <lake>/predictions/<usecase>/date=<yyyy-mm-dd>/       batch scores with the model version
    <lake>/runs/<usecase>/<step>/date=<yyyy-mm-dd>/       step results (train, evaluate, gate, ...)
    <lake>/reports/<usecase>/...                          evaluation, fairness, drift reports

Commit protocol, the same on both backends: a partition is a folder of data files plus ``_manifest.json``.
A writer uploads data files under fresh names, then writes the manifest last (an atomic rename locally, a single
PUT on S3), then deletes files the manifest no longer lists. Readers read the manifest and only the files it
lists, so no reader ever sees a partial write; a folder without a manifest is not a partition.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "_manifest.json"


class LakeError(RuntimeError):
    """A lake operation failed; the message names the URI."""


# --------------------------------------------------------------------------------------------------- storage


class Storage(ABC):
    """Byte-level operations on keys relative to the lake root."""

    root_uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically: readers see the old or the new content, never a part."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None: ...

    @abstractmethod
    def upload_file(self, local_path: Path, key: str) -> None: ...

    @abstractmethod
    def download_file(self, key: str, local_path: Path) -> None: ...

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

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

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
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def upload_file(self, local_path: Path, key: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)

    def download_file(self, key: str, local_path: Path) -> None:
        shutil.copyfile(self._path(key), local_path)


class S3Storage(Storage):
    """S3 through boto3. Endpoint, region and credentials come from the environment
    (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), which the
    Airflow task factory fills from an Airflow connection; never from files in the repository."""

    def __init__(self, uri: str) -> None:
        import boto3

        rest = uri.removeprefix("s3://")
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = boto3.client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL")
            or os.environ.get("MLOPS_S3_ENDPOINT_URL")
            or None,
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise LakeError(f"{self.uri(key)}: not found") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

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

    def upload_file(self, local_path: Path, key: str) -> None:
        self.client.upload_file(str(local_path), self.bucket, self._key(key))

    def download_file(self, key: str, local_path: Path) -> None:
        self.client.download_file(self.bucket, self._key(key), str(local_path))


def storage_for(uri: str) -> Storage:
    if uri.startswith("s3://"):
        return S3Storage(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise LakeError(f"lake URI {uri!r}: unsupported scheme; use a local path or s3://bucket/prefix")
    return LocalStorage(uri)


# --------------------------------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Partition:
    """A committed partition: its key prefix and manifest."""

    prefix: str
    manifest: dict[str, Any]

    @property
    def files(self) -> list[str]:
        return [f"{self.prefix}/{name}" for name in self.manifest["files"]]

    @property
    def rows(self) -> int:
        return int(self.manifest.get("rows", 0))


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a data frame (values, column names and order), independent of the file encoding."""
    import pandas as pd

    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()


class Lake:
    """Partitioned, manifest-committed storage on a local folder or S3."""

    def __init__(self, uri: str) -> None:
        self.storage = storage_for(uri)
        self.uri = self.storage.root_uri

    # -- keys
    @staticmethod
    def partition_key(zone: str, usecase: str, day: date | str, *sub: str) -> str:
        return "/".join([zone, usecase, *sub, f"date={_iso(day)}"])

    # -- small objects
    def read_json(self, key: str) -> Any:
        return json.loads(self.storage.read_bytes(key))

    def write_json(self, key: str, payload: Any) -> str:
        self.storage.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
        return self.storage.uri(key)

    def write_text(self, key: str, text: str) -> str:
        self.storage.write_bytes(key, text.encode("utf-8"))
        return self.storage.uri(key)

    # -- partitions
    def commit_partition(
        self, prefix: str, local_files: list[Path], manifest: dict[str, Any] | None = None
    ) -> Partition:
        """Upload ``local_files`` under ``prefix`` with fresh names, then commit them with the manifest."""
        commit_id = uuid.uuid4().hex[:12]
        names = []
        for index, path in enumerate(sorted(local_files)):
            name = f"part-{commit_id}-{index:05d}{''.join(Path(path).suffixes) or '.parquet'}"
            self.storage.upload_file(Path(path), f"{prefix}/{name}")
            names.append(name)
        body = dict(manifest or {})
        body.update({"files": names, "commit_id": commit_id})
        self.write_json(f"{prefix}/{MANIFEST}", body)
        stale = [k for k in self.storage.list(prefix) if Path(k).name not in {*names, MANIFEST}]
        self.storage.delete(stale)
        return Partition(prefix, body)

    def write_frame(
        self, prefix: str, frame: pd.DataFrame, manifest: dict[str, Any] | None = None
    ) -> Partition:
        """Write a pandas frame as one Parquet file and commit it as the partition at ``prefix``."""
        body = {"rows": len(frame), "data_hash": frame_hash(frame), "columns": list(map(str, frame.columns))}
        body.update(manifest or {})
        with tempfile.TemporaryDirectory(prefix="lake-") as tmp:
            path = Path(tmp) / "data.parquet"
            frame.to_parquet(path, index=False)
            return self.commit_partition(prefix, [path], body)

    def partition(self, prefix: str) -> Partition | None:
        """The committed partition at ``prefix``, or None if nothing is committed there."""
        key = f"{prefix}/{MANIFEST}"
        if not self.storage.exists(key):
            return None
        return Partition(prefix, self.read_json(key))

    def partitions(self, zone: str, usecase: str, *sub: str) -> dict[str, Partition]:
        """Committed partitions of a dataset by ISO date, oldest first."""
        base = "/".join([zone, usecase, *sub])
        found: dict[str, Partition] = {}
        for key in self.storage.list(base):
            parts = key.split("/")
            if parts[-1] != MANIFEST or not parts[-2].startswith("date="):
                continue
            if "/".join(parts[:-2]) != base:
                continue
            day = parts[-2].removeprefix("date=")
            found[day] = Partition("/".join(parts[:-1]), self.read_json(key))
        return dict(sorted(found.items()))

    def read_frame(self, partition: Partition, columns: list[str] | None = None) -> pd.DataFrame:
        import pandas as pd
        import pyarrow.parquet as pq

        tables = [
            pq.read_table(io.BytesIO(self.storage.read_bytes(k)), columns=columns) for k in partition.files
        ]
        if not tables:
            return pd.DataFrame(columns=columns or partition.manifest.get("columns", []))
        import pyarrow as pa

        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def read_frames(self, partitions: list[Partition], columns: list[str] | None = None) -> pd.DataFrame:
        import pandas as pd

        frames = [self.read_frame(p, columns) for p in partitions]
        frames = [f for f in frames if len(f.columns)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    @contextmanager
    def local_files(self, keys: list[str]) -> Iterator[list[Path]]:
        """Local paths for ``keys``: the files themselves on a local lake, temporary copies on S3."""
        paths = [self.storage.local_path(k) for k in keys]
        if all(p is not None for p in paths):
            yield [p for p in paths if p is not None]
            return
        with tempfile.TemporaryDirectory(prefix="lake-stage-") as tmp:
            staged = []
            for index, key in enumerate(keys):
                target = Path(tmp) / f"{index:06d}-{Path(key).name}"
                self.storage.download_file(key, target)
                staged.append(target)
            yield staged


def _iso(day: date | str) -> str:
    return day if isinstance(day, str) else day.isoformat()


def open_lake(uri: str | None = None) -> Lake:
    """The lake of the active profile (or ``uri``)."""
    if uri is None:
        from pipelines.config import load_profile

        uri = load_profile().lake_uri
    return Lake(uri)
