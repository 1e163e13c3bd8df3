"""A scoring service that sheds abuse (issue 26, item 3): per-key rate and in-flight limits answering 429 with
``Retry-After`` in each endpoint's error shape, a refused model version retried with back-off, dead workers
replaced, and a load test of hostile clients against a real uvicorn server on loopback (a real champion in a real
MLflow registry, a real lake) while ``/health`` stays fast and a well-behaved client is always answered."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from _hostile_clients import (
    GOOD,
    HAMMER,
    HUGE,
    INFER,
    KEYS,
    LIMITS,
    PREDICT,
    SLOW,
    percentile,
    request,
    run_hostile_clients,
    serve,
    stop,
)
from _serve_fixtures import (
    USECASE,
    ServeEnv,
    client_records,
    free_port,
    make_serve_env,
    prediction_at,
    use_mlflow_of,
    write_features,
)
from _serve_fixtures import champion_from as _champion_from
from fastapi.testclient import TestClient

from pipelines.serving.limits import KeyLimits, TokenBucket

ARTIFACTS = (
    Path(os.environ.get("MLOPS_TEST_ARTIFACTS") or Path(__file__).resolve().parent.parent / "test-artifacts")
    / "serve"
)
TRAINED_ON = date(2013, 3, 1)
DAY = date(2013, 3, 10)
DAYS = [DAY - timedelta(days=2), DAY - timedelta(days=1), DAY]


def _records(env: ServeEnv, day: date = DAY) -> list[dict]:
    return client_records(env, day, without_nulls=True)


def _at(env: ServeEnv, day: date = DAY) -> str:
    return prediction_at(env, day)


def _service(env: ServeEnv, **settings):
    from pipelines.serving.service import ServeSettings, Service

    now = env.usecase.time.prediction_time_of(DAY) + timedelta(hours=1)
    options = {"api_keys": KEYS, "refresh_s": 0.0, "capture": False, **settings}
    service = Service(env.usecase, env.lake, ServeSettings(**options), clock=lambda: now)
    service.start()
    return service


# ---------------------------------------------------------------------------------------------- the limits alone
class _Clock:
    """A clock the test moves by hand (the bucket's only input besides requests)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait() -> None:
    clock = _Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0], "the burst at once"
    assert bucket.take() == pytest.approx(0.1), "then one token each 1/rate s"
    clock.now += 0.05
    assert bucket.take() == pytest.approx(0.05)
    clock.now += 0.05
    assert bucket.take() == 0.0
    clock.now += 60
    assert [bucket.take() for _ in range(4)][-1] > 0, "an idle minute refills up to the burst, no more"
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_key_limits_cap_requests_in_flight_and_rate_per_key() -> None:
    clock = _Clock()
    limits = KeyLimits(rate=2, burst=2, max_in_flight=0, clock=clock)
    assert limits.admit("a") is None and limits.admit("a") is None
    refused = limits.admit("a")
    assert refused is not None and refused.reason == "rate" and refused.retry_after_s == 1
    assert limits.admit("b") is None, "each key has its own bucket"
    clock.now += 0.5
    assert limits.admit("a") is None

    capped = KeyLimits(rate=0, burst=0, max_in_flight=2)
    assert capped.admit("a") is None and capped.admit("a") is None
    refused = capped.admit("a")
    assert refused is not None and refused.reason == "in_flight" and refused.retry_after_s >= 1
    assert capped.admit("b") is None, "another key's requests do not count"
    capped.release("a")
    assert capped.admit("a") is None, "an answered request frees its place"
    for _ in range(2):
        capped.release("a")
    capped.release("b")
    assert capped.in_flight == {}, "no key is kept once its requests are answered"
    assert not KeyLimits(rate=0, burst=0, max_in_flight=0).enabled()
    with pytest.raises(ValueError):
        KeyLimits(rate=-1)


# ------------------------------------------------------------------------------------- a served champion (module)
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A champion (trained on March 1) and the snapshots of March 8 to 10."""
    tmp = tmp_path_factory.mktemp("abuse")
    with pytest.MonkeyPatch.context() as mp:
        env = make_serve_env(tmp, mp, tmp_path_factory.getbasetemp())
        version = _champion_from(env, TRAINED_ON)
        write_features(env, DAYS, rows=40)
        yield SimpleNamespace(env=env, version=version, mp=mp)


@pytest.fixture
def api(served):
    use_mlflow_of(served.env)
    return served


def test_a_key_past_its_rate_gets_429_with_retry_after_in_each_endpoints_error_shape(api) -> None:
    """A key past its bucket gets 429, ``Retry-After`` and the error shape of the endpoint it called; another key
    is still answered; health, readiness and metrics are never limited; without keys (``--no-auth``) every
    request shares one bucket; the refusals are counted by reason in /metrics."""
    from pipelines.serving.app import create_app

    env = api.env
    record = _records(env)[0]
    at = _at(env)
    bodies = {
        PREDICT: {"record": record, "at": at},
        "/invocations": {"dataframe_records": [record], "params": {"at": at}},
        INFER: {
            "inputs": [
                {"name": k, "datatype": "BYTES", "shape": [1], "data": [v]} for k, v in record.items()
            ],
            "parameters": {"at": at},
        },
    }
    service = _service(env, rate_limit=0.01, rate_burst=1, max_in_flight=0)
    try:
        with TestClient(create_app(service)) as client:
            for path, body in bodies.items():  # a key of its own per endpoint: its one token, then 429
                key = {PREDICT: GOOD, "/invocations": HAMMER, INFER: SLOW}[path]
                first = client.post(path, json=body, headers={"X-API-Key": key})
                assert first.status_code == 200, first.text
                second = client.post(path, json=body, headers={"X-API-Key": key})
                assert second.status_code == 429, second.text
                assert int(second.headers["Retry-After"]) >= 1
                shape = second.json()
                if path == INFER:
                    assert set(shape) == {"error"} and "--rate-limit" in shape["error"]
                elif path == "/invocations":
                    assert (
                        shape["error_code"] == "REQUEST_LIMIT_EXCEEDED" and "--rate-limit" in shape["message"]
                    )
                else:
                    assert "--rate-limit" in shape["detail"]
            assert client.get(f"/v2/models/{USECASE}", headers={"X-API-Key": GOOD}).status_code == 429
            assert client.post(PREDICT, json=bodies[PREDICT], headers={"X-API-Key": HUGE}).status_code == 200
            wrong = client.post(PREDICT, json=bodies[PREDICT], headers={"X-API-Key": "not-a-key"})
            assert wrong.status_code == 401, "a wrong key gets 401, never a bucket"
            for path in ("/health", "/ping", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"):
                assert all(client.get(path).status_code == 200 for _ in range(5)), path
            assert client.get(f"/v2/models/{USECASE}/ready").status_code == 200
            metrics = client.get("/metrics").text
            assert 'mlops_serve_limited_requests_total{reason="rate"} 4.0' in metrics
            assert 'mlops_serve_limited_requests_total{reason="in_flight"} 0.0' in metrics
    finally:
        service.stop()

    open_service = _service(env, auth=False, rate_limit=0.01, rate_burst=2)
    try:
        with TestClient(create_app(open_service)) as client:
            answers = [
                client.post(PREDICT, json=bodies[PREDICT], headers=headers).status_code
                for headers in ({}, {"X-API-Key": "a"}, {"X-API-Key": "b"})
            ]
            assert answers == [200, 200, 429], "without keys, one bucket for every request"
    finally:
        open_service.stop()


# ---------------------------------------------------------------------------------------- hostile clients, live
def test_hostile_clients_are_shed_while_health_stays_fast_and_a_polite_client_is_answered(
    api, tmp_path
) -> None:
    """For about 12 s against ``mlops serve`` (one uvicorn worker in a process of its own, as deployed; its limits
    set by the command's options: in-flight cap 4, 20 requests a second with bursts of 10, a 64 KiB body limit;
    in-process, the clients' threads shared the server's GIL and measured that instead), the clients of
    ``_hostile_clients``: slow bodies (a few bytes a second, more connections than the key's cap), bodies over
    the limit (declared, and chunked without a length), wrong keys, a key hammering past its rate, and a client
    cycling ``at`` over times before, between and after the snapshots. Meanwhile a probe measures ``/health`` and
    a well-behaved client (its own key, a few requests a second) scores batches. Every ``/health`` probe is
    answered within a liveness probe's 1 s timeout (the failure this guards: Kubernetes restarting a pod whose
    loop is stalled), every polite request is answered 200, every refusal has the status its abuse calls for.
    The latency itself (target: p99 under 100 ms) is measured by ``bench/serve_abuse.py`` (docs/benchmarks.md)
    and kept here as a test artefact (``serve/abuse-health.json``), not asserted: a 100 ms bound on a shared
    2-core CI machine would fail on the machine's noise, not the service's."""
    env = api.env
    log_path = tmp_path / "serve.log"
    server, port = serve(log_path, *LIMITS)
    try:
        run = run_hostile_clients(
            port, _records(env), _at(env), env.usecase.time.prediction_time_of(DAYS[0]), seconds=12.0
        )
    finally:
        stop(server, log_path)

    summary = run.summary()
    health_ms = run.health_ms()
    p99 = percentile(health_ms, 0.99)
    print(
        f"\n/health: {len(health_ms)} probes, p50 {statistics.median(health_ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {health_ms[-1]:.1f} ms; answers by client: {summary}"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "abuse-health.json").write_text(
        json.dumps(
            {
                "probes": len(health_ms),
                "p50_ms": round(statistics.median(health_ms), 1),
                "p99_ms": round(p99, 1),
                "max_ms": round(health_ms[-1], 1),
                "answers_by_client": {k: {str(c): n for c, n in v.items()} for k, v in summary.items()},
            },
            indent=2,
        )
    )
    assert not run.problems, run.problems[:5]
    assert len(health_ms) > 100, summary
    assert health_ms[-1] < 1000, f"a /health probe took {health_ms[-1]:.0f} ms: past a liveness probe's 1 s"
    assert set(summary["good"]) == {200} and summary["good"][200] >= 20, summary
    assert summary["slow"].get(429) == 2 and set(summary["slow"]) == {429}, summary
    assert summary["huge"].get(413, 0) >= 4 and set(summary["huge"]) <= {413, "reset"}, summary
    assert set(summary["bad"]) == {401} and summary["bad"][401] > 50, summary
    assert summary["hammer"].get(429, 0) > summary["hammer"].get(200, 0) > 0, summary
    assert set(summary["hammer"]) == {200, 429}, summary
    assert summary["cycler"].get(200, 0) > 0 and set(summary["cycler"]) <= {200, 422, 429}, summary
    limited = {
        line.split('"')[1]: float(line.split()[-1])
        for line in run.metrics.splitlines()
        if line.startswith("mlops_serve_limited_requests_total{")
    }
    assert limited["in_flight"] >= 2 and limited["rate"] >= summary["hammer"][429], (limited, summary)


# ------------------------------------------------------------------------------------ a refused version, retried
def test_a_refused_version_is_retried_with_back_off(serve_env: ServeEnv) -> None:
    """A version whose artifact was tampered with is tried again after its back-off, fails again and stays out
    (the old version keeps serving; /ready says when the next try is, the wait doubling); a version whose
    artifacts were briefly unreachable (their folder moved away, then back) is served at the first retry after
    they are back."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.serving.app import create_app

    first = _champion_from(serve_env, TRAINED_ON)
    write_features(serve_env, [DAY], rows=10)
    service = _service(serve_env, retry_first_s=1.0, retry_max_s=1.5)
    slot = service.slots.state["champion"]

    def artifacts(version: str) -> Path:
        source = MlflowClient().get_model_version(USECASE, version).source
        location = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
        return Path(location.removeprefix("file://"))

    def wait_for_retry() -> None:
        assert slot.retry_at is not None
        time.sleep(max(0.0, slot.retry_at - time.time()) + 0.05)

    try:
        tampered = _champion_from(serve_env, date(2013, 3, 5), promote=False)
        weights = next(artifacts(tampered).rglob("*.skops"))
        weights.write_bytes(weights.read_bytes() + b"\0")
        MlflowClient().set_registered_model_alias(USECASE, "champion", tampered)
        service.slots.refresh()
        assert (slot.served.version, slot.refused_version, slot.failures) == (first, tampered, 1)
        first_wait = slot.retry_at - time.time()
        assert 0.5 < first_wait <= 1.0
        service.slots.refresh()
        assert slot.failures == 1, "not tried again before its back-off has passed"
        with TestClient(create_app(service)) as client:
            ready = client.get("/ready", headers={"X-API-Key": GOOD})
            assert ready.status_code == 200, "the old version serves"
            retry = ready.json()["models"]["champion"]["retry"]
            assert retry["failures"] == 1 and 0 < retry["next_retry_in_s"] <= 1.0
            assert any(f"version {tampered} (champion)" in w for w in ready.json()["warnings"])
        for failures in (2, 3):
            wait_for_retry()
            service.slots.refresh()
            assert (slot.served.version, slot.refused_version, slot.failures) == (first, tampered, failures)
            assert "changed since the model was logged" in slot.error
        assert 1.0 < slot.retry_at - time.time() <= 1.5, "the wait doubled, up to retry_max_s"
        assert service.slots.reload_failures == 3

        flaky = _champion_from(serve_env, date(2013, 3, 6), promote=False)
        folder = artifacts(flaky)
        away = folder.with_name(folder.name + ".away")
        folder.rename(away)  # the artifact store is unreachable
        MlflowClient().set_registered_model_alias(USECASE, "champion", flaky)
        service.slots.refresh()
        assert (slot.served.version, slot.refused_version, slot.failures) == (first, flaky, 1), slot.error
        away.rename(folder)  # and back
        service.slots.refresh()
        assert slot.served.version == first, "still waiting for its back-off"
        wait_for_retry()
        service.slots.refresh()
        assert slot.served.version == flaky, slot.error
        assert (slot.refused_version, slot.error, slot.failures, slot.retry_at) == (None, None, 0, None)
        assert service.readiness()["ready"]
    finally:
        service.stop()


# --------------------------------------------------------------------------------------- a dead worker replaced
def _workers(parent: int) -> set[int]:
    """The worker processes ``mlops serve`` started (multiprocessing's spawned children of ``parent``)."""
    found = set()
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.add(int(child))
    return found


def test_a_killed_worker_is_replaced_and_requests_keep_being_answered(serve_env: ServeEnv, tmp_path) -> None:
    """``mlops serve --workers 2``: one worker killed with SIGKILL; the other keeps answering while the command
    starts a new one, whose pid appears, and which answers too."""
    _champion_from(serve_env, TRAINED_ON)
    write_features(serve_env, [DAY], rows=40)
    port = free_port()
    command = [sys.executable, "-m", "pipelines", "serve", "--usecase", USECASE, "--port", str(port)]
    command += ["--workers", "2", "--no-auth", "--no-capture", "--max-snapshot-age", "off"]
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    server = subprocess.Popen(command, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    body = json.dumps({"records": _records(serve_env)[:2], "at": _at(serve_env)}).encode()

    def score() -> int | str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            return request(conn, "POST", PREDICT, body, None)[0]
        except OSError as exc:
            return type(exc).__name__
        finally:
            conn.close()

    def ready_workers(timeout: float) -> set[int]:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            found = _workers(server.pid)
            # each worker logs 'serving ... (pid N)' once its models are loaded, and listens a moment later
            if len(found) == 2 and all(f"(pid {pid})" in log_path.read_text() for pid in found):
                time.sleep(2)
                return found
            time.sleep(0.3)

    try:
        before = ready_workers(180)
        assert score() == 200, log_path.read_text()[-3000:]
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        answers = []
        deadline = time.monotonic() + 120
        while True:
            answers.append(score())
            found = _workers(server.pid)
            replaced = victim not in found and len(found) == 2
            if replaced and all(f"(pid {pid})" in log_path.read_text() for pid in found):
                break
            assert time.monotonic() < deadline, (answers[-5:], log_path.read_text()[-3000:])
            time.sleep(0.1)
        after = found
        time.sleep(2)  # the new worker listens a moment after it logged
        assert after - before and victim not in after, (before, after)
        assert f"worker pid {victim} exited with -9" in log_path.read_text()
        # answered all along: at most the requests queued on the killed worker's socket were lost
        assert answers.count(200) >= len(answers) - 3 and answers.count(200) > 5, Counter(answers)
        assert all(score() == 200 for _ in range(20)), "both workers answer"
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
        log.close()
    assert code == 0, log_path.read_text()[-3000:]
