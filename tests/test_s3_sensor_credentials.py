"""The triggerer's lake checks take the S3 connection's endpoint and keys for their own lake alone: the process
environment (shared by every trigger of the triggerer) holds no AWS credentials, and is not changed, neither
after nor while a check runs (least privilege; mlops_airflow.sensors._lake, pipelines.lake.Lake's ``s3_env``)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import date
from pathlib import Path

import pytest
from _ingest_fixtures import DAY1, weather_rows

from pipelines.ingest.inbox import land_file
from pipelines.lake import Lake

USECASE = "flight_delay"
CONN_ID = "mlops_lake_triggered"
# what would give a lake an endpoint or credentials from the process environment
CREDENTIAL_KEYS = frozenset(
    {
        "AWS_ENDPOINT_URL",
        "MLOPS_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
)


@pytest.fixture
def connection_only(moto_server: str, new_bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """A lake on the moto server whose endpoint and keys are only in the Airflow connection CONN_ID
    (``AIRFLOW_CONN_…`` in its JSON form); no AWS credentials in the environment, nor in a profile file."""
    for key in (*CREDENTIAL_KEYS, "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to fall back on either
    monkeypatch.setenv("MLOPS_PROFILE", "s3")
    uri = f"s3://{new_bucket('trig')}/lake"
    monkeypatch.setenv("MLOPS_LAKE_URI", uri)
    connection = {
        "conn_type": "aws",
        "login": "trigger-key",
        "password": "trigger-secret",
        "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    s3_env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "lander-key",
        "AWS_SECRET_ACCESS_KEY": "lander-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return {"uri": uri, "lander": Lake(uri, s3_env=s3_env)}


def _csv(frame) -> bytes:
    return frame.to_csv(index=False).encode()


class EnvironWatch:
    """Samples os.environ from a thread while it runs: any AWS credential seen, any change from the start."""

    def __init__(self) -> None:
        self.before = dict(os.environ)
        self.credentials_seen: set[str] = set()
        self.changed: list[set[str]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = dict(os.environ)
            self.samples += 1
            self.credentials_seen |= CREDENTIAL_KEYS & now.keys()
            if now != self.before:
                self.changed.append(set(now.items()) ^ set(self.before.items()))
            self._stop.wait(0.0005)

    def __enter__(self) -> EnvironWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_the_trigger_finds_landed_files_with_the_connection_and_leaves_the_environment_alone(
    connection_only: dict,
) -> None:
    import mlops_airflow.operators  # noqa: F401  (imported before the snapshot: importing may set Airflow's own)
    from mlops_airflow.sensors import LandingFilesTrigger, _lake, _pending
    from pipelines.config import load_profile

    lander = connection_only["lander"]
    land_file(
        lander, USECASE, date(2013, 1, 3), "weather_2013-01-03.csv", _csv(weather_rows(date(2013, 1, 3)))
    )
    land_file(lander, USECASE, DAY1, "weather_2013-01-01.csv", _csv(weather_rows(DAY1)))
    assert not CREDENTIAL_KEYS & os.environ.keys()

    # the lake the check opens holds the connection's keys, for itself alone
    lake = _lake(load_profile(), CONN_ID)
    credentials = lake.storage.client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key) == ("trigger-key", "trigger-secret")
    assert lake.storage_options()["AWS_ACCESS_KEY_ID"] == "trigger-key"

    trigger = LandingFilesTrigger(USECASE, up_to="2013-01-01", poll_seconds=0.2, conn_id=CONN_ID)
    assert "trigger-secret" not in json.dumps(trigger.serialize())

    async def first_event():
        async for event in trigger.run():
            return event

    async def two_checks_at_once():  # as two triggers of one triggerer process
        return await asyncio.gather(
            asyncio.wait_for(first_event(), timeout=30),
            asyncio.to_thread(_pending, USECASE, "2013-01-03", CONN_ID),
        )

    # every write to os.environ from any thread, recorded (deterministic; the sampling thread also catches a
    # change made below os.environ, e.g. by os.putenv, as far as its scheduling lets it)
    writes: list[str] = []
    environ_type = type(os.environ)
    with pytest.MonkeyPatch.context() as patch:
        for method in ("__setitem__", "__delitem__"):
            original = getattr(environ_type, method)

            def recording(self, key, *value, _original=original):
                writes.append(key)
                return _original(self, key, *value)

            patch.setattr(environ_type, method, recording)
        with EnvironWatch() as watch:
            event, later = asyncio.run(two_checks_at_once())
    assert event.payload == {"files": ["landing/flight_delay/2013-01-01/weather_2013-01-01.csv"]}
    assert later == [
        "landing/flight_delay/2013-01-01/weather_2013-01-01.csv",
        "landing/flight_delay/2013-01-03/weather_2013-01-03.csv",
    ]
    assert writes == [], f"the checks wrote {writes} to os.environ"
    assert watch.samples >= 2  # it sampled while the checks ran (how often depends on the machine's load)
    assert watch.credentials_seen == set(), "AWS credentials appeared in the triggerer's environment"
    assert watch.changed == [], f"the check changed os.environ while it ran: {watch.changed[:3]}"
    assert dict(os.environ) == watch.before


def test_a_lake_with_its_own_credentials_reads_and_writes_delta_tables(connection_only: dict) -> None:
    """delta-rs (storage options) and pyarrow (S3FileSystem, the data files) take the lake's ``s3_env`` too."""
    import pandas as pd

    lake = connection_only["lander"]
    before = dict(os.environ)
    frame = pd.DataFrame({"date": ["2013-01-01", "2013-01-01", "2013-01-02"], "value": [1, 2, 3]})
    lake.write_partitions("raw/creds_check", frame, read_version=None)
    assert lake.read("raw/creds_check", dates=["2013-01-01"])["value"].to_pylist() == [1, 2]
    assert sorted(lake.partitions("raw/creds_check")) == ["2013-01-01", "2013-01-02"]
    assert dict(os.environ) == before
    # a lake without them has nothing to reach the bucket with (no endpoint, no keys in the environment)
    with pytest.raises(Exception):  # noqa: B017  (boto3's NoCredentialsError or a connection error)
        Lake(connection_only["uri"]).storage.list("raw/")
