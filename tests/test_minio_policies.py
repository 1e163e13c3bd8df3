"""The stack's scoped S3 users (docker/minio/*.json, created by docker-compose.yaml's minio-init) hold what they
need and no more, checked against a real S3 server that enforces IAM: moto's server with IAM authorization on
(``INITIAL_NO_AUTH_ACTION_COUNT``; MinIO cannot be pulled where these tests run). The buckets and the users are made
while authorization is still off, then it is switched on (``/moto-api/reset-auth``) and every call below is signed
with one user's keys and judged against the policy file attached to that user:

- tasks write and read a Delta table of the lake bucket through the project's Lake, and the artifact bucket;
- serve reads the online feature snapshot and appends to ``captures/<usecase>`` through the service's own
  CaptureWriter, but is refused (AccessDenied) writing a features or raw table, deleting objects, writing beside the
  captures, and reading the raw and features tables or any other bucket;
- mlflow reads and writes the artifact bucket and cannot touch the lake bucket;
- an access key nobody was given is refused.

What moto cannot evaluate: policy conditions. moto (5.2) passes no request context (``s3:prefix`` of a listing) to
the policy check, and an Allow statement whose condition it cannot satisfy comes out as an explicit Deny. serve's
ListBucket statements are limited by ``s3:prefix`` to the tables it reads; moto gets them without that condition
(so it grants serve every listing of the lake bucket). The condition is checked here instead: every listing the
server logged while serve read its snapshot and appended its captures has a prefix the condition's StringLike
patterns match (the patterns evaluated by this test, not by the server), and the patterns are compared with the
serving code's table paths. Everything else (actions, object ARNs with wildcards, bucket ARNs, no grant to a
bucket not named, unknown keys) moto enforces as AWS and MinIO do. Not covered: MinIO's own policy parser (a
policy MinIO rejects would fail minio-init, not this test) and the multipart actions (the objects are small).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.lake import Lake, captures_table, features_table, online_table, raw_table

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICIES = REPO_ROOT / "docker" / "minio"
LAKE_BUCKET, ARTIFACT_BUCKET, OTHER_BUCKET = "mlops-lake", "mlflow", "root-only"
LAKE_URI = f"s3://{LAKE_BUCKET}/lake"  # the stack profile's lake_uri (config/platform.yaml)
USECASE = "flight_delay"
USERS = ("tasks", "mlflow", "serve")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _policy(name: str) -> dict:
    return json.loads((POLICIES / f"{name}.json").read_text())


def _without_conditions(policy: dict) -> dict:
    """The policy as moto can evaluate it: statements without their Condition (see the module doc)."""
    policy = copy.deepcopy(policy)
    for statement in policy["Statement"]:
        statement.pop("Condition", None)
    return policy


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A moto server of its own (authorization must not leak into the session's shared one) with the buckets and
    the three users made; authorization on. Returns {"url": ..., "log": its request log, user: (key id, secret),
    ...}."""
    import boto3

    log = tmp_path_factory.mktemp("iam-s3") / "requests.log"

    exe = Path(sys.executable).parent / "moto_server"
    port = _free_port()
    # INITIAL_NO_AUTH_ACTION_COUNT: how many calls pass before authorization starts; the setup below switches it
    # on at an exact point with /moto-api/reset-auth instead of counting calls
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # one line per request (werkzeug's log): the listings' prefixes
        env={"INITIAL_NO_AUTH_ACTION_COUNT": "1000000", "PATH": "/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        else:
            pytest.fail(f"moto_server did not answer on {url}")
        root = {"endpoint_url": url, "region_name": "us-east-1"}
        root |= {"aws_access_key_id": "root", "aws_secret_access_key": "root-secret"}
        s3, iam = boto3.client("s3", **root), boto3.client("iam", **root)
        for bucket in (LAKE_BUCKET, ARTIFACT_BUCKET, OTHER_BUCKET):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=OTHER_BUCKET, Key="secret.txt", Body=b"root only")
        users: dict = {"url": url, "log": log}
        for user in USERS:
            iam.create_user(UserName=user)
            arn = iam.create_policy(
                PolicyName=user, PolicyDocument=json.dumps(_without_conditions(_policy(user)))
            )["Policy"]["Arn"]
            iam.attach_user_policy(UserName=user, PolicyArn=arn)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            users[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        request = urllib.request.Request(
            f"{url}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(request, timeout=5)
        yield users
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _client(iam_s3: dict, user: str):
    import boto3

    key, secret = iam_s3[user]
    return boto3.client(
        "s3",
        endpoint_url=iam_s3["url"],
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def _as(iam_s3: dict, user: str, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """The stack's lake, with ``user``'s keys in the environment (as the services get them)."""
    key, secret = iam_s3[user]
    monkeypatch.setenv("AWS_ENDPOINT_URL", iam_s3["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return Lake(LAKE_URI)


def _denied(call, *args, **kwargs) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    assert raised.value.response["Error"]["Code"] in ("AccessDenied", "403"), raised.value.response


LISTING_PARAMETERS = {
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "continuation-token",
    "start-after",
    "marker",
    "encoding-type",
    "fetch-owner",
}


def _listed_prefixes(log: Path, start: int, bucket: str) -> list[str]:
    """The ``prefix`` of every listing of ``bucket`` the server logged after byte ``start`` of its log."""
    from urllib.parse import parse_qs, urlsplit

    prefixes = []
    for line in log.read_text()[start:].splitlines():
        request = re.search(r'"GET (/[^ ]*) HTTP', line)
        if request:
            url = urlsplit(request.group(1))
            query = parse_qs(url.query, keep_blank_values=True)
            # a GET of the bucket with nothing but listing parameters (ListObjects v1 or v2)
            if url.path.strip("/") == bucket and set(query) <= LISTING_PARAMETERS:
                prefixes.append(query.get("prefix", [""])[0])
    return prefixes


def _string_like(pattern: str, value: str) -> bool:
    """IAM's StringLike: ``*`` any characters, ``?`` one."""
    return (
        re.fullmatch(".*".join(".".join(map(re.escape, p.split("?"))) for p in pattern.split("*")), value)
        is not None
    )


def _rows(day: str, n: int) -> pa.Table:
    return pa.table(
        {"date": [day] * n, "key": [f"k{i}" for i in range(n)], "value": [float(i) for i in range(n)]}
    )


def test_tasks_write_and_read_the_lake_and_the_artifacts(
    iam_s3: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = _as(iam_s3, "tasks", monkeypatch)
    for table in (raw_table(USECASE, "flights"), features_table(USECASE), online_table(USECASE)):
        commit = lake.write_partitions(table, _rows("2013-01-01", 3), read_version=None)
        assert commit.version == 0
        assert lake.read(table, ["2013-01-01"]).num_rows == 3
    s3 = _client(iam_s3, "tasks")
    s3.put_object(Bucket=ARTIFACT_BUCKET, Key="artifacts/1/model/MLmodel", Body=b"model")
    assert s3.get_object(Bucket=ARTIFACT_BUCKET, Key="artifacts/1/model/MLmodel")["Body"].read() == b"model"
    s3.delete_object(Bucket=LAKE_BUCKET, Key="lake/_meta/extent/nothing.json")  # maintenance deletes
    _denied(s3.get_object, Bucket=OTHER_BUCKET, Key="secret.txt")
    _denied(s3.list_objects_v2, Bucket=OTHER_BUCKET)
    _denied(s3.list_buckets)
    _denied(s3.create_bucket, Bucket="made-by-tasks")
    _denied(s3.delete_bucket, Bucket=LAKE_BUCKET)
    _denied(s3.put_bucket_policy, Bucket=LAKE_BUCKET, Policy=json.dumps(_policy("tasks")))


def test_serve_reads_snapshots_and_appends_captures_and_nothing_more(
    iam_s3: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.serving.capture import CaptureWriter

    tasks = _as(iam_s3, "tasks", monkeypatch)
    if tasks.version(online_table(USECASE)) is None:  # this test alone
        for table in (raw_table(USECASE, "flights"), features_table(USECASE), online_table(USECASE)):
            tasks.write_partitions(table, _rows("2013-01-01", 3), read_version=None)

    log_start = len(iam_s3["log"].read_text())
    lake = _as(iam_s3, "serve", monkeypatch)
    snapshot = lake.snapshot(online_table(USECASE))  # with its facts, as the snapshot cache reads it
    assert sorted(snapshot.partitions) == ["2013-01-01"]
    assert lake.read(online_table(USECASE), ["2013-01-01"]).num_rows == 3

    writer = CaptureWriter(lake, USECASE, background=False)
    for batch in range(2):  # the first commit creates the table, the next appends through the kept handle
        writer.offer([{"date": "2013-01-01", "request_id": f"r{batch}", "score": 0.5}])
        writer.flush()
        assert writer.last_error is None, writer.last_error
    assert writer.written == 2 and writer.commits == 2
    assert lake.read(captures_table(USECASE)).num_rows == 2

    # what moto cannot judge: every listing serving made has a prefix its policy's s3:prefix condition allows
    listed = _listed_prefixes(iam_s3["log"], log_start, LAKE_BUCKET)
    allowed = next(
        s["Condition"]["StringLike"]["s3:prefix"]
        for s in _policy("serve")["Statement"]
        if s["Resource"] == [f"arn:aws:s3:::{LAKE_BUCKET}"]
    )
    assert listed, "no listing was logged: the check below would prove nothing"
    assert all(any(_string_like(p, prefix) for p in allowed) for prefix in listed), (listed, allowed)

    s3 = _client(iam_s3, "serve")
    # the model artifacts: read only
    tasks_s3 = _client(iam_s3, "tasks")
    tasks_s3.put_object(Bucket=ARTIFACT_BUCKET, Key="artifacts/2/model/MLmodel", Body=b"model")
    assert s3.get_object(Bucket=ARTIFACT_BUCKET, Key="artifacts/2/model/MLmodel")["Body"].read() == b"model"
    _denied(s3.put_object, Bucket=ARTIFACT_BUCKET, Key="artifacts/2/model/MLmodel", Body=b"tampered")

    # no writes but captures' table files; no deletes at all, not even of its own captures
    for table in (features_table(USECASE), raw_table(USECASE, "flights"), online_table(USECASE)):
        with pytest.raises(Exception, match="(?i)access ?denied|403|forbidden"):
            lake.write_partitions(table, _rows("2013-01-02", 1), read_version=0)
        _denied(
            s3.put_object,
            Bucket=LAKE_BUCKET,
            Key=f"lake/{table}/_delta_log/00000000000000000001.json",
            Body=b"{}",
        )
    captured = [o["Key"] for o in s3.list_objects_v2(Bucket=LAKE_BUCKET, Prefix="lake/captures/")["Contents"]]
    assert any(k.endswith(".parquet") for k in captured) and any("/_delta_log/" in k for k in captured)
    for key in captured[:2]:
        _denied(s3.delete_object, Bucket=LAKE_BUCKET, Key=key)
    _denied(s3.put_object, Bucket=LAKE_BUCKET, Key=f"lake/captures/{USECASE}/notes.json", Body=b"{}")
    _denied(s3.put_object, Bucket=LAKE_BUCKET, Key="lake/elsewhere.parquet", Body=b"x")

    # no reads of what serving does not read, nor of any other bucket; no bucket listing or administration
    for key in (
        f"lake/{features_table(USECASE)}/_delta_log/00000000000000000000.json",
        "lake/_meta/extent/x.json",
    ):
        _denied(s3.get_object, Bucket=LAKE_BUCKET, Key=key)
    _denied(s3.get_object, Bucket=OTHER_BUCKET, Key="secret.txt")
    _denied(s3.list_objects_v2, Bucket=OTHER_BUCKET)
    _denied(s3.list_buckets)
    _denied(s3.create_bucket, Bucket="made-by-serve")
    _denied(s3.delete_bucket, Bucket=LAKE_BUCKET)


def test_serves_appends_at_a_checkpoint_leave_log_cleanup_to_maintenance(
    iam_s3: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """delta-rs cleans a table's expired log entries after a checkpoint (delta.enableExpiredLogCleanup): deletes,
    which serve may not make. Refused, they failed a commit that had landed, and the capture writer appended the
    same rows again; Lake.append_rows leaves the cleanup to the maintenance step. Here every log entry has expired
    at once (logRetentionDuration 0) and every second commit checkpoints."""
    from deltalake import write_deltalake

    from pipelines.serving.capture import CaptureWriter

    usecase = "checkpointed"
    tasks = _as(iam_s3, "tasks", monkeypatch)
    write_deltalake(
        tasks.table_uri(captures_table(usecase)),
        pa.table({"date": ["2013-01-01"], "request_id": ["r-1"], "score": [0.5]}),
        partition_by=["date"],
        storage_options=tasks.storage_options(),
        configuration={"delta.logRetentionDuration": "interval 0 seconds", "delta.checkpointInterval": "2"},
    )
    writer = CaptureWriter(_as(iam_s3, "serve", monkeypatch), usecase, background=False)
    for batch in range(3):
        time.sleep(
            1.1
        )  # S3 times are in seconds: the log entries so far are older than the retention's cutoff
        writer.offer([{"date": "2013-01-01", "request_id": f"r{batch}", "score": 0.5}])
        writer.flush()
        assert writer.last_error is None, writer.last_error
    assert (writer.written, writer.commits, writer.failed) == (3, 3, 0)
    assert tasks.read(captures_table(usecase)).num_rows == 4  # no batch appended twice
    log = {
        o["Key"].rsplit("/", 1)[-1]
        for o in _client(iam_s3, "tasks").list_objects_v2(
            Bucket=LAKE_BUCKET, Prefix=f"lake/{captures_table(usecase)}/_delta_log/"
        )["Contents"]
    }
    assert "00000000000000000000.json" in log and any(k.endswith(".checkpoint.parquet") for k in log), log


def test_mlflow_keeps_to_the_artifact_bucket(iam_s3: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = _client(iam_s3, "mlflow")
    s3.put_object(Bucket=ARTIFACT_BUCKET, Key="artifacts/3/model/MLmodel", Body=b"model")
    assert s3.get_object(Bucket=ARTIFACT_BUCKET, Key="artifacts/3/model/MLmodel")["Body"].read() == b"model"
    assert [
        o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACT_BUCKET, Prefix="artifacts/3/")["Contents"]
    ] == ["artifacts/3/model/MLmodel"]
    s3.delete_object(Bucket=ARTIFACT_BUCKET, Key="artifacts/3/model/MLmodel")  # mlflow gc deletes artifacts
    _denied(s3.list_objects_v2, Bucket=LAKE_BUCKET)
    _denied(s3.get_object, Bucket=LAKE_BUCKET, Key="lake/anything")
    _denied(s3.put_object, Bucket=LAKE_BUCKET, Key="lake/features/x.parquet", Body=b"x")
    _denied(s3.get_object, Bucket=OTHER_BUCKET, Key="secret.txt")
    _denied(s3.list_buckets)
    with pytest.raises(Exception, match="(?i)access ?denied|403|forbidden"):
        _as(iam_s3, "mlflow", monkeypatch).read(features_table(USECASE))


def test_an_unknown_key_is_refused(iam_s3: dict) -> None:
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client(
        "s3",
        endpoint_url=iam_s3["url"],
        region_name="us-east-1",
        aws_access_key_id="root",
        aws_secret_access_key="root-secret",
    )
    with pytest.raises(ClientError) as raised:
        s3.list_objects_v2(Bucket=LAKE_BUCKET)
    assert raised.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_the_policies_grant_no_admin_and_limit_serves_listing_to_its_tables() -> None:
    """What moto cannot check: the s3:prefix conditions of serve's listing, against the paths serving uses."""
    for user in USERS:
        actions = {
            a
            for s in _policy(user)["Statement"]
            for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        }
        assert all(a.startswith("s3:") and "*" not in a for a in actions), (user, actions)
        assert not actions & {
            "s3:ListAllMyBuckets",
            "s3:CreateBucket",
            "s3:DeleteBucket",
            "s3:PutBucketPolicy",
        }
        assert all(s["Effect"] == "Allow" and "Principal" not in s for s in _policy(user)["Statement"])
    serve = _policy("serve")["Statement"]
    listings = [s for s in serve if "s3:ListBucket" in s["Action"]]
    assert listings and all(s["Condition"]["StringLike"]["s3:prefix"] for s in listings)
    lake_prefixes = next(
        s["Condition"]["StringLike"]["s3:prefix"]
        for s in listings
        if s["Resource"] == [f"arn:aws:s3:::{LAKE_BUCKET}"]
    )
    assert sorted(lake_prefixes) == sorted(
        f"lake/{table.replace(USECASE, '*')}"
        for table in (
            f"{online_table(USECASE)}",
            f"_meta/partitions/{online_table(USECASE)}",
            captures_table(USECASE),
        )
    )
    writes = [r for s in serve if "s3:PutObject" in s["Action"] for r in s["Resource"]]
    assert writes and all(r.startswith(f"arn:aws:s3:::{LAKE_BUCKET}/lake/captures/") for r in writes)
    assert not any(a in s["Action"] for s in serve for a in ("s3:DeleteObject", "s3:AbortMultipartUpload"))
