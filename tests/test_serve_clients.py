"""The clients people point at a model server, unchanged, against `mlops serve` on a real uvicorn server (a real
champion in a real MLflow registry, a real lake): Triton's HTTP client (``tritonclient[http]``) with its default
binary tensors, binary or JSON outputs, and JSON tensors; and MLflow's scoring client (``ScoringServerClient``:
``wait_server_ready``, ``ping``, ``invoke``). Both are in the dev dependency group; a missing one fails these tests
(with how to install it), never skips them."""

from __future__ import annotations

import importlib
import json
import struct
from datetime import date, timedelta
from types import ModuleType, SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import requests
from _serve_fixtures import (
    USECASE,
    ServeEnv,
    client_records,
    make_serve_env,
    prediction_at,
    produce_day,
    run_uvicorn,
    use_mlflow_of,
    write_features,
)
from _serve_fixtures import serving_step as _step

KEY = "clients-key"
AUTH = {"X-API-Key": KEY}
TRAINED_ON = date(2013, 3, 1)
DAY = date(2013, 3, 10)  # a day with features and an online snapshot, after the champion's training date
THRESHOLD = 0.3
INFER = f"/v2/models/{USECASE}/infer"
INSTALL = "install the dev dependency group (`make setup`, or `uv sync --group dev`)"


def _client_module(name: str, package: str) -> ModuleType:
    """``name`` imported, or the test fails saying how to install it (these tests never skip)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{name} cannot be imported ({exc}): {INSTALL}, or `pip install '{package}'`")


def _start(env: ServeEnv, **settings):
    """A started service (its clock stopped an hour after DAY's snapshot) under uvicorn on a free loopback port
    in a thread, as ``mlops serve`` runs it (uvloop, httptools): (service, server, thread, port)."""
    from pipelines.serving.app import create_app
    from pipelines.serving.service import ServeSettings, Service

    now = env.usecase.time.prediction_time_of(DAY) + timedelta(hours=1)
    options = {"refresh_s": 0.0, "capture": False, **settings}
    service = Service(env.usecase, env.lake, ServeSettings(**options), clock=lambda: now)
    service.start()
    server, thread, port = run_uvicorn(create_app(service))
    return service, server, thread, port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A champion (trained on March 1, decision threshold 0.3) and the snapshot of March 10, served twice: with
    an API key (and a body limit of 1 MiB) and without keys (``--no-auth``)."""
    tmp = tmp_path_factory.mktemp("clients")
    with pytest.MonkeyPatch.context() as mp:
        env = make_serve_env(tmp, mp, tmp_path_factory.getbasetemp())
        produce_day(env, TRAINED_ON, gate_passed=True, threshold=THRESHOLD)
        version = str(_step("register", TRAINED_ON)["gate_candidate_version"])
        _step("promote", TRAINED_ON)
        write_features(env, [DAY], rows=40)
        started = [
            _start(env, api_keys=frozenset({KEY}), max_body_bytes=1024 * 1024),
            _start(env, auth=False),
        ]
        try:
            (_, _, _, keyed), (_, _, _, open_) = started
            yield SimpleNamespace(env=env, version=version, keyed=keyed, open=open_)
        finally:
            for service, server, thread, _ in started:
                server.should_exit = True
                thread.join(timeout=30)
                service.stop()


@pytest.fixture
def api(served):
    """The module's service with MLflow pointed back at its store (other tests move the URI)."""
    use_mlflow_of(served.env)
    return served


def _records(env: ServeEnv) -> list[dict]:
    """DAY's events without a null: a tensor has no null (an optional column is left out whole)."""
    return client_records(env, DAY, without_nulls=True)


def _at(env: ServeEnv) -> str:
    return prediction_at(env, DAY)


def _json_scores(port: int, records: list[dict], at: str) -> list[float]:
    """The probabilities the service gives ``records`` through its JSON endpoint (Open Inference Protocol, JSON
    tensors, as before the binary extension)."""
    columns = list(records[0])
    body = {
        "parameters": {"at": at},
        "inputs": [{"name": c, "shape": [len(records)], "data": [r[c] for r in records]} for c in columns],
    }
    response = requests.post(f"http://127.0.0.1:{port}{INFER}", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["decision"]["data"] == [p >= THRESHOLD for p in outputs["probability"]["data"]]
    return outputs["probability"]["data"]


_KINDS = {"int": ("INT64", np.int64), "float": ("FP64", np.float64)}


def _tensors(triton, env: ServeEnv, records: list[dict], binary: bool, narrow: bool = False) -> list:
    """One ``InferInput`` per column, filled from a numpy array (``binary``: the client's default, binary data).
    Integers as INT64 and floats as FP64 (the model's metadata), or with ``narrow`` as INT32 and FP32; text and
    timestamps as BYTES."""
    spec = env.usecase.sources[env.usecase.features.primary_source].columns
    inputs = []
    for name, column in spec.items():
        values = [r[name] for r in records]
        if column.type in _KINDS:
            datatype, dtype = _KINDS[column.type]
            if narrow:
                datatype, dtype = {"INT64": ("INT32", np.int32), "FP64": ("FP32", np.float32)}[datatype]
            array = np.array(values, dtype=dtype)
        else:
            datatype, array = "BYTES", np.array([v.encode() for v in values], dtype=np.object_)
        tensor = triton.InferInput(name, [len(records)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_tritonclient_with_binary_and_json_tensors_scores_as_the_json_endpoint(api) -> None:
    """tritonclient's HTTP client, as a user calls it (the API key through ``headers=``, ``at`` through
    ``parameters=``): binary inputs (its default) with binary outputs, with the outputs it asks for by default
    (binary: ``binary_data_output``), with JSON outputs; JSON inputs; INT32 and FP32 inputs. Every answer has the
    probabilities the JSON endpoint gives the same records, and the decisions at the champion's threshold."""
    triton = _client_module("tritonclient.http", "tritonclient[http]")
    records = _records(api.env)[:25]
    assert len(records) >= 20, "the fixture's day has records without nulls"
    at = _at(api.env)
    expected = np.array(_json_scores(api.keyed, records, at))
    client = triton.InferenceServerClient(f"127.0.0.1:{api.keyed}", network_timeout=60.0)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(USECASE)

        def infer(inputs: list, outputs: list | None, request_id: str = ""):
            # the key in a new dict each time: tritonclient writes Inference-Header-Content-Length into it
            return client.infer(
                USECASE,
                inputs,
                outputs=outputs,
                headers={**AUTH},
                parameters={"at": at},
                request_id=request_id,
            )

        def requested(binary: bool) -> list:
            return [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probability", "decision")]

        binary, as_json = (_tensors(triton, api.env, records, binary=b) for b in (True, False))
        cases = {  # (inputs, outputs asked for, whether the outputs come as binary data)
            "binary in, binary out": (binary, requested(True), True),
            "binary in, the client's default outputs (binary)": (binary, None, True),
            "binary in, JSON out": (binary, requested(False), False),
            "JSON in, JSON out": (as_json, requested(False), False),
            "JSON in, binary out": (as_json, requested(True), True),
        }
        for case, (inputs, outputs, binary_out) in cases.items():
            result = infer(inputs, outputs, request_id=f"request-{len(case)}")
            np.testing.assert_allclose(
                result.as_numpy("probability"), expected, rtol=0, atol=1e-12, err_msg=case
            )
            np.testing.assert_array_equal(result.as_numpy("decision"), expected >= THRESHOLD, err_msg=case)
            answer = result.get_response()
            assert answer["model_name"] == USECASE and answer["model_version"] == api.version, case
            assert answer["id"] == f"request-{len(case)}", case
            for output in answer["outputs"]:
                assert ("data" in output) != binary_out, (case, output)
                if binary_out:
                    size = 8 if output["datatype"] == "FP64" else 1
                    assert output["parameters"]["binary_data_size"] == size * len(records), (case, output)

        # one output asked for: only it comes back
        only = infer(_tensors(triton, api.env, records, binary=True), requested(True)[:1])
        assert [o["name"] for o in only.get_response()["outputs"]] == ["probability"]
        assert only.as_numpy("decision") is None

        # INT32 and FP32 tensors: the same values (distances rounded to whole miles, which FP32 holds exactly)
        rounded = [{**r, "distance": float(round(r["distance"]))} for r in records]
        narrow = infer(_tensors(triton, api.env, rounded, binary=True, narrow=True), requested(True))
        np.testing.assert_allclose(
            narrow.as_numpy("probability"), _json_scores(api.keyed, rounded, at), rtol=0, atol=1e-12
        )
    finally:
        client.close()


def test_tritonclient_errors_are_readable_and_the_limits_hold(api) -> None:
    """What tritonclient raises carries the service's Open Inference Protocol error (`{"error": ...}`): a wrong
    key 401, a value that breaks the schema 422 naming the column; binary bodies that do not add up are refused
    naming the input and what is wrong; a binary body over the body limit 413, and a shape over the batch limit
    413 before a value is decoded."""
    triton = _client_module("tritonclient.http", "tritonclient[http]")
    errors = _client_module("tritonclient.utils", "tritonclient[http]")
    records = _records(api.env)[:3]
    at = _at(api.env)
    client = triton.InferenceServerClient(f"127.0.0.1:{api.keyed}", network_timeout=60.0)
    try:
        inputs = _tensors(triton, api.env, records, binary=True)
        for headers in ({"X-API-Key": "wrong"}, None):
            with pytest.raises(errors.InferenceServerException) as refused:
                client.infer(USECASE, inputs, headers=headers, parameters={"at": at})
            assert refused.value.status() == "401", refused.value
            assert "a valid API key is required" in refused.value.message(), refused.value

        sfo = _tensors(triton, api.env, [{**r, "origin": "SFO"} for r in records], binary=True)
        with pytest.raises(errors.InferenceServerException) as invalid:
            client.infer(USECASE, sfo, headers={**AUTH}, parameters={"at": at})
        assert invalid.value.status() == "422" and "origin" in invalid.value.message(), invalid.value

        with pytest.raises(errors.InferenceServerException) as unknown:
            client.infer(USECASE, inputs, outputs=[triton.InferRequestedOutput("nope")], headers={**AUTH})
        assert unknown.value.status() == "422" and "'nope' is not an output" in unknown.value.message()
    finally:
        client.close()

    # binary bodies that do not add up, built by hand (a client library will not send them)
    url = f"http://127.0.0.1:{api.keyed}{INFER}"

    def post(inputs: list[dict], binary: bytes, length: str | None = None, headers: dict | None = None):
        header = json.dumps({"inputs": inputs, "parameters": {"at": at}}).encode()
        given = {**AUTH, "Inference-Header-Content-Length": length or str(len(header)), **(headers or {})}
        return requests.post(url, data=header + binary, headers=given, timeout=30)

    def tensor(name: str, datatype: str, count: int, size: int) -> dict:
        return {
            "name": name,
            "datatype": datatype,
            "shape": [count],
            "parameters": {"binary_data_size": size},
        }

    distance = np.array([r["distance"] for r in records], dtype="<f8").tobytes()
    cases = {
        "a header length that is not a number": (
            post([tensor("distance", "FP64", 3, 24)], distance, length="twelve"),
            ["Inference-Header-Content-Length", "'twelve'"],
        ),
        "a header length past the body": (
            post([tensor("distance", "FP64", 3, 24)], distance, length="100000"),
            ["Inference-Header-Content-Length", "100000"],
        ),
        "a size that does not fit the shape": (
            post([tensor("distance", "FP64", 3, 16)], distance[:16]),
            ["'distance'", "3 FP64 values take 24 bytes, binary_data_size is 16"],
        ),
        "sizes that do not add up to the body": (
            post([tensor("distance", "FP64", 3, 24)], distance + b"\0"),
            ["declare 24 bytes", "has 25"],
        ),
        "a size past the body": (
            post([tensor("distance", "FP64", 3, 24)], distance[:8]),
            ["'distance'", "runs past the end of the body"],
        ),
        "an unknown datatype": (
            post([tensor("distance", "FP128", 3, 48)], distance * 2),
            ["'distance'", "unknown datatype 'FP128'"],
        ),
        "a BYTES element past its size": (
            post(
                [tensor("carrier", "BYTES", 2, 11)],
                struct.pack("<I", 2) + b"AA" + struct.pack("<I", 5) + b"A",
            ),
            ["'carrier'", "element 1"],
        ),
        "text that is not UTF-8": (
            post([tensor("carrier", "BYTES", 1, 6)], struct.pack("<I", 2) + b"\xff\xfe"),
            ["'carrier'", "not UTF-8"],
        ),
        "no shape": (
            post(
                [{"name": "distance", "datatype": "FP64", "parameters": {"binary_data_size": 24}}], distance
            ),
            ["'distance'", "shape"],
        ),
        "a value that breaks the schema": (
            post(
                [
                    {"name": c, "shape": [3], "data": [r[c] for r in records]}
                    for c in records[0]
                    if c != "month"
                ]
                + [tensor("month", "INT64", 3, 24)],
                np.array([13, 1, 2], dtype="<i8").tobytes(),
            ),
            ["month"],
        ),
    }
    for case, (response, words) in cases.items():
        assert response.status_code == 422, (case, response.status_code, response.text)
        message = response.json()
        assert set(message) == {"error"}, (case, message)
        for word in words:
            assert word in message["error"], (case, word, message)

    too_many = post([tensor("distance", "FP64", 10_001, 8 * 10_001)], bytes(8 * 10_001))
    assert too_many.status_code == 413 and "10001 records" in too_many.json()["error"], too_many.text
    over = post([tensor("carrier", "BYTES", 1, 4 + 2**20)], struct.pack("<I", 2**20) + b"A" * 2**20)
    assert over.status_code == 413 and "--max-body-bytes" in over.json()["error"], over.text
    keyless = post([tensor("distance", "FP64", 3, 24)], distance, headers={"X-API-Key": "wrong"})
    assert keyless.status_code == 401 and "API key" in keyless.json()["error"], keyless.text


def test_tritonclient_compressed_bodies_score_as_plain_ones_and_a_bomb_gets_413(api) -> None:
    """tritonclient's ``request_compression_algorithm`` (``Content-Encoding: gzip`` or ``deflate``), binary and
    JSON tensors: the probabilities of the same request uncompressed. The body limit (1 MiB here) bounds the body
    decompressed as well: a gzip bomb (half a MiB that inflates to 512 MiB) gets 413 while the service holds a few
    MiB at most (it inflates no further than the limit); without a valid key it gets 401, its body unread; an
    unknown encoding 415, data that are not gzip 400; our own predict endpoint reads gzip as well."""
    import gzip
    import tracemalloc
    import zlib

    triton = _client_module("tritonclient.http", "tritonclient[http]")
    records = _records(api.env)[:25]
    at = _at(api.env)
    expected = np.array(_json_scores(api.keyed, records, at))
    client = triton.InferenceServerClient(f"127.0.0.1:{api.keyed}", network_timeout=60.0)
    try:
        for algorithm in ("gzip", "deflate"):
            for binary in (True, False):
                result = client.infer(
                    USECASE,
                    _tensors(triton, api.env, records, binary=binary),
                    headers={**AUTH},
                    parameters={"at": at},
                    request_compression_algorithm=algorithm,
                )
                np.testing.assert_allclose(
                    result.as_numpy("probability"), expected, rtol=0, atol=1e-12, err_msg=(algorithm, binary)
                )
    finally:
        client.close()

    url = f"http://127.0.0.1:{api.keyed}{INFER}"
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip, made a MiB at a time
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(512)) + packer.flush()
    assert len(bomb) < 1024 * 1024, "the bomb itself is under the body limit"
    gzipped = {**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    tracemalloc.start()
    try:
        refused = requests.post(url, data=bomb, headers=gzipped, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.status_code == 413, refused.text
    assert "decompressed" in refused.json()["error"] and "--max-body-bytes" in refused.json()["error"]
    assert peak < 16 * 1024 * 1024, (
        f"{peak / 2**20:.0f} MiB held while refusing a bomb: inflated past the limit"
    )
    keyless = requests.post(url, data=bomb, headers={**gzipped, "X-API-Key": "wrong"}, timeout=60)
    assert keyless.status_code == 401 and "API key" in keyless.json()["error"], keyless.text
    unknown = requests.post(url, data=bomb, headers={**gzipped, "Content-Encoding": "br"}, timeout=60)
    assert unknown.status_code == 415 and "'br'" in unknown.json()["error"], unknown.text
    garbage = requests.post(url, data=b"{not gzip}", headers=gzipped, timeout=60)
    assert garbage.status_code == 400 and "not valid gzip" in garbage.json()["error"], garbage.text

    predict = f"http://127.0.0.1:{api.keyed}/v1/usecases/{USECASE}/predict"
    body = json.dumps({"records": records, "at": at}).encode()
    plain = requests.post(
        predict, data=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=60
    )
    packed = requests.post(predict, data=gzip.compress(body), headers=gzipped, timeout=60)
    assert plain.status_code == packed.status_code == 200, (plain.text, packed.text)
    assert packed.json()["predictions"] == plain.json()["predictions"]


def test_mlflow_scoring_client_pings_and_invokes(api) -> None:
    """MLflow's ``ScoringServerClient`` against `mlops serve`: ``wait_server_ready`` and ``ping`` against the
    service with API keys (its health check needs none). ``invoke`` cannot carry an API key (it sends only
    ``Content-Type``): against the keyed service it fails with 401; it scores against the same champion served
    with ``--no-auth``, and the very body it sends (``dump_input_data``) scores through ``requests`` with the key.
    All three give the probabilities the JSON endpoint gives."""
    scoring = _client_module("mlflow.pyfunc.scoring_server.client", "mlflow")
    from mlflow.utils.proto_json_utils import dump_input_data

    records = _records(api.env)
    at = _at(api.env)
    expected = _json_scores(api.keyed, records, at)
    frame = pd.DataFrame(records)

    keyed = scoring.ScoringServerClient("127.0.0.1", api.keyed)
    keyed.wait_server_ready(timeout=30)
    keyed.ping()
    with pytest.raises(Exception, match="error code 401"):
        keyed.invoke(frame, params={"at": at})

    open_ = scoring.ScoringServerClient("127.0.0.1", api.open)
    open_.wait_server_ready(timeout=30)
    answer = open_.invoke(frame, params={"at": at})
    assert answer["predictions"] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(
        answer.get_predictions(predictions_format="ndarray"), expected, rtol=0, atol=1e-12
    )

    body = dump_input_data(frame, params={"at": at})
    response = requests.post(
        f"http://127.0.0.1:{api.keyed}/invocations",
        data=body,
        headers={"Content-Type": "application/json", **AUTH},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == pytest.approx(expected, abs=1e-12)
    assert response.headers["X-Model-Version"] == api.version


def test_every_datatype_of_the_protocol_decodes_to_the_values_a_json_tensor_carries() -> None:
    """The decoder alone, on bytes laid out as the extension says (numpy's little-endian bytes; BYTES by
    tritonclient's own serializer): every fixed-width datatype, BOOL and UTF-8 BYTES give the lists a JSON
    tensor of the same values carries; a BOOL byte other than 0 or 1 is refused naming the input."""
    utils = _client_module("tritonclient.utils", "tritonclient[http]")
    from pipelines.serving import oip_binary

    arrays = {
        datatype: np.array([0, 1, 2, 127], dtype=dtype)
        for datatype, dtype in oip_binary.FIXED.items()
        if datatype != "BOOL"
    }
    arrays["FP64"] = np.array([0.1, -2.5, 1e300, 7.0])
    arrays["BOOL"] = np.array([True, False, True, True])
    text = np.array(["EWR", "é", "", "2013-03-10T13:00:00Z"], dtype=np.object_)
    chunks = [arrays[d].tobytes() for d in arrays] + [utils.serialize_byte_tensor(text).item()]
    inputs = [
        {"name": d.lower(), "datatype": d, "shape": [4], "parameters": {"binary_data_size": len(c)}}
        for d, c in zip([*arrays, "BYTES"], chunks, strict=True)
    ]
    body = {"inputs": inputs}
    oip_binary.decode_inputs(body, memoryview(b"".join(chunks)), max_elements=10)
    decoded = {item["datatype"]: item["data"] for item in body["inputs"]}
    for datatype, array in arrays.items():
        assert decoded[datatype] == array.tolist(), datatype
        assert list(map(type, decoded[datatype])) == list(map(type, array.tolist())), datatype
    assert decoded["BYTES"] == text.tolist()

    with pytest.raises(oip_binary.BinaryTensorError, match="input 'flag': a BOOL byte is 0 or 1"):
        oip_binary.decode_inputs(
            {
                "inputs": [
                    {"name": "flag", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}}
                ]
            },
            memoryview(b"\x01\x02"),
        )
    eleven = {"name": "u", "datatype": "UINT8", "shape": [11], "parameters": {"binary_data_size": 11}}
    with pytest.raises(oip_binary.TooManyElements):  # before a byte is read
        oip_binary.decode_inputs({"inputs": [eleven]}, memoryview(b""), max_elements=10)
