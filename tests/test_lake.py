"""The lake's commit protocol on both backends: local folder and S3 (real moto server over HTTP)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.lake import MANIFEST, Lake, LakeError


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        return Lake(str(tmp_path / "lake"))
    return Lake(request.getfixturevalue("s3_lake"))


def _frame(n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": range(offset, offset + n), "value": [float(i) / 3 for i in range(n)]})


def test_partition_commit_read_and_rewrite(lake: Lake) -> None:
    prefix = Lake.partition_key("raw", "uc", "2013-01-02", "flights")
    assert prefix == "raw/uc/flights/date=2013-01-02"
    assert lake.partition(prefix) is None

    first = lake.write_frame(prefix, _frame(5), {"source": "flights"})
    assert first.rows == 5 and first.manifest["source"] == "flights"
    pd.testing.assert_frame_equal(lake.read_frame(lake.partition(prefix)), _frame(5))

    # rewriting with the same data gives the same content hash; stale files are removed
    second = lake.write_frame(prefix, _frame(5))
    assert second.manifest["data_hash"] == first.manifest["data_hash"]
    assert second.manifest["commit_id"] != first.manifest["commit_id"]
    names = {Path(k).name for k in lake.storage.list(prefix)}
    assert names == {MANIFEST, *second.manifest["files"]}

    third = lake.write_frame(prefix, _frame(3, offset=10))
    assert third.manifest["data_hash"] != first.manifest["data_hash"]
    assert lake.read_frame(lake.partition(prefix))["id"].tolist() == [10, 11, 12]


def test_readers_list_only_committed_partitions(lake: Lake) -> None:
    lake.write_frame(Lake.partition_key("features", "uc", "2013-01-01"), _frame(2))
    lake.write_frame(Lake.partition_key("features", "uc", "2013-01-03"), _frame(3))
    # an interrupted writer leaves data files but no manifest: not a partition
    lake.storage.write_bytes("features/uc/date=2013-01-02/part-deadbeef-00000.parquet", b"partial")
    partitions = lake.partitions("features", "uc")
    assert list(partitions) == ["2013-01-01", "2013-01-03"]
    assert lake.read_frames(list(partitions.values()))["id"].tolist() == [0, 1, 0, 1, 2]


def test_json_objects_and_missing_keys(lake: Lake) -> None:
    uri = lake.write_json("runs/uc/train/date=2013-02-01/result.json", {"b": 1, "a": [1, 2]})
    assert uri.endswith("runs/uc/train/date=2013-02-01/result.json")
    assert lake.read_json("runs/uc/train/date=2013-02-01/result.json") == {"a": [1, 2], "b": 1}
    with pytest.raises(LakeError, match="not found"):
        lake.storage.read_bytes("runs/uc/nothing.json")


def test_local_files_stages_s3_objects(lake: Lake) -> None:
    part = lake.write_frame(Lake.partition_key("raw", "uc", "2013-01-01"), _frame(4))
    with lake.local_files(part.files) as paths:
        assert len(paths) == 1 and paths[0].exists()
        assert pd.read_parquet(paths[0])["id"].tolist() == [0, 1, 2, 3]


def test_unsupported_scheme_is_a_clear_error() -> None:
    with pytest.raises(LakeError, match="unsupported scheme"):
        Lake("gs://bucket/lake")
