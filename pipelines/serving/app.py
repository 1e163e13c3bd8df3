"""The HTTP API of a scoring service (FastAPI).

- ``POST /v1/usecases/{usecase}/predict``: one record or a batch of raw records, optionally ``at``;
- ``POST /invocations``: MLflow's scoring contract (``dataframe_split``, ``dataframe_records``, ``instances``,
  ``inputs``; ``{"predictions": [...]}``), the records being raw records as above;
- the Open Inference Protocol (KServe V2) with the pandas codec: ``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``;
  its errors as the protocol's ``{"error": "<message>"}`` (the message names the field at fault); inputs and
  outputs as JSON tensors or as binary tensors (the protocol's binary tensor extension, what Triton's clients
  send by default; pipelines.serving.oip_binary);
- ``/ping``: MLflow's and SageMaker's container health check (200 once a champion is served, else 503);
- ``/health`` (alive), ``/ready`` (without a key only its status; with one, the state: a verified champion and a snapshot loaded, the snapshot built with the
  champion's features config and not older than ``serving.max_snapshot_age``; 503 otherwise, with the reasons),
  ``/metrics`` (Prometheus) and the OpenAPI document (``/openapi.json``, ``/docs``).

A request at any hour gets the features of the newest snapshot made at or before its ``at``, as of that snapshot's
prediction time (pipelines.features.online): the inputs batch scoring and training computed. A request whose snapshot was
built with another features config than the answering model's gets 503.

Client mistakes never get a 5xx: a field that breaks the use case's schema 422 naming it, a body over
``max_body_bytes`` (as sent, and once decompressed: ``Content-Encoding: gzip`` and ``deflate`` bodies are read,
another encoding gets 415, data not of their encoding 400) or a batch over ``max_batch_records`` 413, a missing or
wrong API key 401 (``X-API-Key`` or ``Authorization: Bearer``; health, readiness and metrics need none). A key past
its rate (a token bucket) or with too many requests in flight gets 429 with ``Retry-After``
(pipelines.serving.limits; health, readiness and metrics are never limited), in the endpoint's error shape:
``{"detail": ...}``, MLflow's ``{"error_code": ..., "message": ...}`` on ``/invocations``, the protocol's
``{"error": ...}`` under ``/v2/``. Every answer says which version made it (``model_version`` and the
``X-Model-Version`` header).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import os
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.modeling.tracking import CHAMPION_ALIAS
from pipelines.serving import oip_binary
from pipelines.serving.limits import KeyLimits, Refusal
from pipelines.serving.schema import (
    ColumnChecker,
    Timestamp,
    field_errors,
    predict_request_model,
    record_model,
    request_rows,
)
from pipelines.serving.service import NotReady, Scored, Service
from pipelines.serving.snapshots import NoSnapshot

log = logging.getLogger("mlops.serve")
PANDAS_CODEC = "pd"
_V2_TYPES = {"int": "INT64", "float": "FP64", "string": "BYTES", "timestamp": "BYTES", "bool": "BOOL"}


class ApiKeys:
    """The accepted API keys: ``MLOPS_API_KEYS`` (comma-separated) and the lines of the file named by
    ``MLOPS_API_KEYS_FILE`` (re-read when it changes, so keys rotate without a restart)."""

    def __init__(self, keys: frozenset[str], path: str | None) -> None:
        self.fixed, self.path = keys, Path(path) if path else None
        self._file_keys: frozenset[str] = frozenset()
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0

    @classmethod
    def from_environment(cls) -> ApiKeys:
        keys = frozenset(k.strip() for k in os.environ.get("MLOPS_API_KEYS", "").split(",") if k.strip())
        return cls(keys, os.environ.get("MLOPS_API_KEYS_FILE") or None)

    def current(self) -> frozenset[str]:
        if self.path is not None and time.monotonic() - self._checked > 1.0:
            self._checked = time.monotonic()
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime, stat.st_size)
                if stamp != self._stamp:
                    lines = self.path.read_text().splitlines()
                    self._file_keys = frozenset(line.strip() for line in lines if line.strip())
                    self._stamp = stamp
            except OSError as exc:  # keep the keys read last; say why
                log.warning("API keys file %s cannot be read: %s", self.path, exc)
        return self.fixed | self._file_keys

    def configured(self) -> bool:
        return bool(self.current()) or self.path is not None

    def accepts(self, given: str | None) -> bool:
        if not given:
            return False
        matched = False
        for key in self.current():  # compare with every key, in constant time each
            matched |= hmac.compare_digest(given.encode(), key.encode())
        return matched


AUTH_REQUIRED = "a valid API key is required (header X-API-Key or Authorization: Bearer)"
READY_DETAIL = "the service's state (models, snapshot, reasons) is shown with a valid API key"


def given_api_key(headers: Any) -> str | None:
    """The API key a request carries: ``X-API-Key``, else an ``Authorization: Bearer`` token."""
    given = headers.get("x-api-key")
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given


# never limited per key: probes and scrapes (health, readiness, metrics) and the API's documents
_NEVER_LIMITED = frozenset(
    {"/health", "/ping", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
)


def never_limited(path: str) -> bool:
    """A path the per-key limits leave alone (:data:`_NEVER_LIMITED`, ``/v2/health/*``, ``/v2/models/*/ready``)."""
    return (
        path in _NEVER_LIMITED
        or path.startswith("/v2/health/")
        or (path.startswith("/v2/models/") and path.endswith("/ready"))
    )


class _BodyLimit:
    """ASGI middleware for the requests with a body (every one of them needs a key) and the requests the per-key
    limits count (pipelines.serving.limits): a request without a valid API key gets 401 before a byte of its body
    is read; one past its key's rate or in-flight cap 429 (``shed``), before its body is read too; and a body over
    ``limit`` bytes 413 before any handler reads it. A request counts as in flight from here until answered, so a
    client sending its body slowly holds one of its key's places all that time."""

    def __init__(
        self,
        app: Any,
        limit: int,
        accepts: Any = None,
        refused: Any = None,
        limits: KeyLimits | None = None,
        shed: Any = None,
    ) -> None:
        self.app, self.limit, self.accepts, self.refused = app, limit, accepts, refused
        self.limits = limits if limits is not None and limits.enabled() else None
        self.shed = shed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        has_body = scope["method"] not in ("GET", "HEAD", "OPTIONS")
        limited = self.limits is not None and not never_limited(path)
        if not has_body and not limited:
            await self.app(scope, receive, send)
            return
        key = ""  # without keys (--no-auth) every request shares one bucket
        if self.accepts is not None:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
            given = given_api_key(headers)
            if self.accepts(given):
                key = given
            elif has_body:
                await self.refused(path)(scope, receive, send)
                return
            else:  # a GET without a valid key: its route answers 401 (or 404); no bucket for an unknown key
                limited = False
        if limited:
            refusal = self.limits.admit(key)
            if refusal is not None:
                await self.shed(path, refusal)(scope, receive, send)
                return
        try:
            if has_body:
                await self._with_body(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            if limited:
                self.limits.release(key)

    async def _with_body(self, scope: dict, receive: Any, send: Any) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.limit
        chunks: list[bytes] = []
        size = 0
        if not too_large:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    too_large = True
                    break
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if too_large:
            message = f"the request body is over the limit of {self.limit} bytes (--max-body-bytes)"
            await _body_error(scope, 413, message)(scope, receive, send)
            return
        body, sent = b"".join(chunks), False
        encoding = _header(scope, b"content-encoding").strip().lower()
        if encoding not in ("", "identity"):
            wbits = _DECODINGS.get(encoding)
            if wbits is None:
                message = f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or no encoding"
                await _body_error(scope, 415, message)(scope, receive, send)
                return
            try:
                # off the event loop (zlib lets go of the GIL while it inflates): a body near the limit takes
                # tens of milliseconds, which /health and the other requests would otherwise wait for
                body = await run_in_threadpool(_inflate, body, wbits, self.limit)
            except zlib.error as exc:
                message = f"the request body is not valid {encoding} data (Content-Encoding): {exc}"
                await _body_error(scope, 400, message)(scope, receive, send)
                return
            if body is None:
                message = f"the request body, decompressed, is over the limit of {self.limit} bytes (--max-body-bytes)"
                await _body_error(scope, 413, message)(scope, receive, send)
                return
            # the handlers see the body as if it had been sent uncompressed
            headers = [
                (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
            ]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# the Content-Encoding values a request body may come in (tritonclient's request_compression_algorithm sends both;
# its deflate is the zlib format, as RFC 9110 defines it), and the zlib window bits that read each
_DECODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _header(scope: dict, name: bytes) -> str:
    return dict(scope.get("headers") or []).get(name, b"").decode("latin-1")


def _body_error(scope: dict, status: int, message: str) -> JSONResponse:
    """A refusal of the body itself, before any handler: the Open Inference Protocol's ``{"error": ...}`` under
    ``/v2/``, ``{"detail": ...}`` elsewhere."""
    key = "error" if scope["path"].startswith("/v2/") else "detail"
    return JSONResponse({key: message}, status_code=status)


def _inflate(body: bytes, wbits: int, limit: int) -> bytes | None:
    """``body`` decompressed, or None as soon as it is over ``limit`` bytes. At most ``limit`` + 1 bytes are ever
    inflated (zlib's ``max_length``; what is left stays compressed in ``unconsumed_tail``), so a bomb of a few
    KiB that would expand to gigabytes costs the limit's memory, not the bomb's. zlib.error for data that is not
    of the encoding, cut short, or followed by more."""
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size, pending = 0, body
    while not inflater.eof:
        part = inflater.decompress(pending, limit + 1 - size)  # never 0 (no bound): size <= limit here
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
        pending = inflater.unconsumed_tail
        if not part and not pending:
            raise zlib.error("the compressed data end before their end marker")
    if inflater.unused_data:
        raise zlib.error("more data after the end of the compressed data")
    return b"".join(parts)


class _FastJSON(JSONResponse):
    """A JSON response rendered by orjson (scores are finite: Service.score refuses others)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _Measure:
    """ASGI middleware: count every HTTP request and its latency by route and status (a plain ASGI wrapper: no
    per-request task or queue, unlike ``@app.middleware``)."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(path, status, time.perf_counter() - started)


def _headers(scored: Scored) -> dict[str, str]:
    return {
        "X-Model-Version": scored.served.version,
        "X-Model-Alias": scored.served.alias,
        "X-Request-Id": scored.request_id,
    }


def _too_many(count: int, limit: int) -> HTTPException:
    return HTTPException(
        413, f"{count} records in one request; at most {limit} (--max-batch-records): split the batch"
    )


def _v2_columns(body: Any, columns: dict[str, Any]) -> dict[str, list[Any]]:
    """The records of an Open Inference Protocol request with the pandas codec, column by column (one input per
    column, all of one length)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestValidationError(
            [{"loc": ["body", "inputs"], "msg": "a non-empty list of inputs is required", "type": "missing"}]
        )
    data: dict[str, list[Any]] = {}
    lengths = set()
    for index, item in enumerate(body["inputs"]):
        where = ["body", "inputs", index]
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestValidationError(
                [{"loc": [*where, "name"], "msg": "each input needs a name", "type": "missing"}]
            )
        name = item["name"]
        if name not in columns:
            raise RequestValidationError(
                [
                    {
                        "loc": [*where, "name"],
                        "msg": f"{name!r} is not a column of the record (expected {sorted(columns)})",
                        "type": "extra_forbidden",
                    }
                ]
            )
        values = item.get("data")
        if not isinstance(values, list):
            raise RequestValidationError(
                [{"loc": [*where, "data"], "msg": "data must be a list", "type": "list_type"}]
            )
        shape = item.get("shape")
        if shape is not None and (not isinstance(shape, list) or not shape or shape[0] != len(values)):
            raise RequestValidationError(
                [
                    {
                        "loc": [*where, "shape"],
                        "msg": f"shape {shape} does not match {len(values)} values",
                        "type": "value_error",
                    }
                ]
            )
        data[name] = values
        lengths.add(len(values))
    if len(lengths) != 1:
        raise RequestValidationError(
            [
                {
                    "loc": ["body", "inputs"],
                    "msg": f"inputs of different lengths {sorted(lengths)}",
                    "type": "value_error",
                }
            ]
        )
    return data


def _records_of(data: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Columns of equal length as records."""
    return [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]


def _invocation_input(body: Any) -> tuple[str, list[Any] | dict[str, list[Any]]]:
    """(the MLflow input format used, its records) of an ``/invocations`` body: column name -> values for the
    columnar forms (``dataframe_split``, ``inputs`` as a dict of lists), which are checked without making a
    record; a list of records for the others."""
    formats = ("dataframe_split", "dataframe_records", "instances", "inputs")
    if not isinstance(body, dict):
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"a JSON object with one of {formats}", "type": "dict_type"}]
        )
    given = [key for key in formats if key in body]
    unknown = sorted(set(body) - {*formats, "params"})
    if len(given) != 1 or unknown:
        raise RequestValidationError(
            [
                {
                    "loc": ["body", *(unknown[:1] or [])],
                    "msg": f"give exactly one of {formats} (and optionally params)",
                    "type": "value_error",
                }
            ]
        )
    key = given[0]
    value = body[key]
    if key == "dataframe_split":
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("columns"), list)
            or not isinstance(value.get("data"), list)
        ):
            raise RequestValidationError(
                [{"loc": ["body", key], "msg": "needs columns and data lists", "type": "value_error"}]
            )
        columns, rows = value["columns"], value["data"]
        if not all(isinstance(name, str) for name in columns):
            raise RequestValidationError(
                [{"loc": ["body", key, "columns"], "msg": "column names are strings", "type": "string_type"}]
            )
        width = len(columns)
        wrong = next(
            (i for i, row in enumerate(rows) if not isinstance(row, list) or len(row) != width), None
        )
        if wrong is not None:
            raise RequestValidationError(
                [
                    {
                        "loc": ["body", key, "data", wrong],
                        "msg": f"a row of {width} values is expected",
                        "type": "value_error",
                    }
                ]
            )
        # no rows, or a repeated column name: read as records (a repeated name's last value counts)
        if not rows or len(set(columns)) != width:
            return key, [dict(zip(columns, row, strict=True)) for row in rows]
        return key, dict(zip(columns, map(list, zip(*rows, strict=True)), strict=True))
    if key == "inputs" and isinstance(value, dict):  # columns -> lists of values
        lists = list(value.values())
        if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) > 1:
            raise RequestValidationError(
                [
                    {
                        "loc": ["body", key],
                        "msg": "columns of equal-length lists are expected",
                        "type": "value_error",
                    }
                ]
            )
        return key, value
    if not isinstance(value, list):
        raise RequestValidationError(
            [{"loc": ["body", key], "msg": "a list of records is expected", "type": "list_type"}]
        )
    return key, value


def create_app(service: Service, *, keys: ApiKeys | None = None) -> FastAPI:
    """The FastAPI app serving ``service`` (its models and snapshots loaded by ``service.start()``)."""
    from pipelines.serving.metrics import ServeMetrics

    usecase = service.usecase
    settings = service.settings
    keys = keys or ApiKeys(settings.api_keys, settings.api_keys_file)
    record = record_model(usecase)
    request_model = predict_request_model(usecase, record)
    records_adapter = TypeAdapter(list[record])  # type: ignore[valid-type]
    checker = ColumnChecker(usecase)
    at_adapter = TypeAdapter(Timestamp | None)
    metrics = ServeMetrics(service)
    columns = usecase.sources[usecase.features.primary_source].columns
    # the outputs of the Open Inference Protocol's answers, in their order
    output_names = ("probability", "decision") if service.classification else ("prediction",)

    app = FastAPI(
        title=f"mlops scoring service: {usecase.name}",
        version="1",
        description=f"Scores raw records of use case {usecase.name!r} with its champion; features come from the "
        "online feature snapshot, computed by the function batch scoring uses.",
    )
    app.state.service = service
    app.state.metrics = metrics

    async def require_key(request: Request) -> None:  # async: no thread hop per request
        if not settings.auth:
            return
        if not keys.accepts(given_api_key(request.headers)):
            metrics.errors.labels("auth").inc()
            raise HTTPException(401, AUTH_REQUIRED, headers={"WWW-Authenticate": "Bearer"})

    def refused(path: str) -> JSONResponse:
        """The 401 of a request refused before its body was read, in its API's error shape."""
        metrics.errors.labels("auth").inc()
        headers = {"WWW-Authenticate": "Bearer"}
        if path.startswith("/v2/"):
            return _v2_error(AUTH_REQUIRED, 401, headers)
        return JSONResponse({"detail": AUTH_REQUIRED}, status_code=401, headers=headers)

    def validate_rows(
        rows: Any, where: tuple[Any, ...]
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """(the records, their typed columns or None): checked column by column, or by the pydantic model
        (which names the field that broke a rule) when the column checker does not accept them."""
        if isinstance(rows, list) and len(rows) > settings.max_batch_records:
            raise _too_many(len(rows), settings.max_batch_records)
        typed = checker.columns(rows)
        if typed is not None:
            return rows, typed
        try:
            items = records_adapter.validate_python(rows)
        except ValidationError as exc:
            raise RequestValidationError(field_errors(exc.errors(), where)) from None
        if not items:
            raise RequestValidationError(
                [{"loc": [*where], "msg": "at least one record is required", "type": "too_short"}]
            )
        return [item.model_dump(by_alias=True) for item in items], None

    def validate_columns(
        data: dict[str, list[Any]], where: tuple[Any, ...]
    ) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
        """(None, typed columns) of records given column by column, checked without making records; when the
        column checker does not accept them, (the records, None) checked by the pydantic model as
        :func:`validate_rows` does (it names the field that broke a rule)."""
        count = max(map(len, data.values()), default=0)  # the callers made sure the columns are of one length
        if count > settings.max_batch_records:
            raise _too_many(count, settings.max_batch_records)
        typed = checker.columns_of(data)
        if typed is not None:
            return None, typed
        return validate_rows(_records_of(data), where)

    def run(
        rows: list[dict[str, Any]] | None,
        typed: dict[str, Any] | None,
        at: datetime | None,
        at_loc: tuple[Any, ...],
    ) -> Scored:
        try:
            return service.score(rows, at, columns=typed)
        except NotReady as exc:
            metrics.errors.labels("not_ready").inc()
            raise HTTPException(503, str(exc)) from None
        except NoSnapshot as exc:
            if at is not None:  # the client asked for a time before any snapshot
                raise RequestValidationError(
                    [{"loc": list(at_loc), "msg": str(exc), "type": "value_error"}]
                ) from None
            metrics.errors.labels("not_ready").inc()
            raise HTTPException(503, str(exc)) from None

    async def score_off_loop(
        rows: list[dict[str, Any]] | None,
        typed: dict[str, Any] | None,
        at: datetime | None,
        at_loc: tuple[Any, ...],
    ) -> Scored:
        """:func:`run`, with the lake read of a snapshot a client's ``at`` chose (one not cached yet) done in a
        worker thread first, so that /health and the other requests never wait on the lake."""
        if at is not None and not service.snapshots.cached(at):
            with contextlib.suppress(Exception):  # run() answers whatever the read raised, with its status
                await run_in_threadpool(service.snapshots.for_time, at)
        return run(rows, typed, at, at_loc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("validation").inc()
        detail = []
        for error in exc.errors():
            item = {k: v for k, v in dict(error).items() if k in ("loc", "msg", "type")}
            given = dict(error).get("input")
            if isinstance(given, str | int | float | bool):  # echo a rejected value, never a whole body
                item["input"] = given[:200] if isinstance(given, str) else given
            detail.append(item)
        if _open_inference(request):
            return _v2_error(_v2_message(detail), 422)
        return JSONResponse({"detail": _plain(detail)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _open_inference(request):
            return _v2_error(str(exc.detail), exc.status_code, getattr(exc, "headers", None))
        return await http_exception_handler(request, exc)

    limits = KeyLimits(settings.rate_limit, settings.rate_burst, settings.max_in_flight)
    app.state.limits = limits

    def shed(path: str, refusal: Refusal) -> JSONResponse:
        """The 429 of a request past its key's limits, in its API's error shape, with ``Retry-After``."""
        metrics.limited.labels(refusal.reason).inc()
        headers = {"Retry-After": str(refusal.retry_after_s)}
        if path.startswith("/v2/"):
            return _v2_error(refusal.message, 429, headers)
        if path == "/invocations":  # MLflow's scoring server's error shape (its code for HTTP 429)
            body = {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": refusal.message}
            return JSONResponse(body, status_code=429, headers=headers)
        return JSONResponse({"detail": refusal.message}, status_code=429, headers=headers)

    # inside the measuring middleware below; the key is checked there too, so a client without one cannot make
    # the service buffer a body, and the per-key limits before the body is read
    app.add_middleware(
        _BodyLimit,
        limit=settings.max_body_bytes,
        accepts=keys.accepts if settings.auth else None,
        refused=refused,
        limits=limits,
        shed=shed,
    )
    app.add_middleware(_Measure, metrics=metrics)

    # async, as the liveness probes below: answered on the event loop, with no hop to the thread pool (whose
    # threads wait for the CPU behind the scoring on a busy machine)
    @app.get("/health", tags=["operations"], summary="the process is alive")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/ping",
        tags=["operations"],
        summary="MLflow's and SageMaker's container health check: 200 once a champion is served",
    )
    def ping() -> Response:
        ready = service.readiness()["ready"]
        return Response("\n", media_type="application/json", status_code=200 if ready else 503)

    @app.get(
        "/ready",
        tags=["operations"],
        summary="a verified champion and a fresh feature snapshot of its features config are loaded",
    )
    def ready(request: Request) -> JSONResponse:
        state = service.readiness()
        status = 200 if state["ready"] else 503
        if settings.auth and not keys.accepts(given_api_key(request.headers)):
            # a probe needs the status only; model versions, run ids, digests and error texts need a key
            return JSONResponse({"ready": state["ready"], "detail": READY_DETAIL}, status_code=status)
        return JSONResponse(_plain(state), status_code=status)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    def predict_body(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None, datetime | None]:
        """(records, typed columns or None, at) of a predict body; 422 naming the field that breaks a rule."""
        if (
            type(body) is dict
            and body.keys() <= {"records", "record", "at"}
            and ("records" in body) != ("record" in body)
        ):
            records = body["records"] if "records" in body else [body["record"]]
            if type(records) is list and len(records) > settings.max_batch_records:
                raise _too_many(len(records), settings.max_batch_records)
            typed = checker.columns(records)
            if typed is not None:
                return records, typed, _parse_at(at_adapter, body.get("at"), ("body", "at"))
        try:
            parsed = request_model.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(field_errors(exc.errors(), ("body",))) from None
        rows = request_rows(parsed)
        if len(rows) > settings.max_batch_records:
            raise _too_many(len(rows), settings.max_batch_records)
        return rows, None, parsed.at

    # async: the CPU work runs on the event loop, with no thread hop (one worker process per core)
    async def predict(name: str, request: Request) -> JSONResponse:
        if name != usecase.name:
            raise HTTPException(404, f"this service scores use case {usecase.name!r}, not {name!r}")
        rows, typed, at = predict_body(await _json(request))
        scored = await score_off_loop(rows, typed, at, ("body", "at"))
        metrics.records.labels(scored.served.alias).inc(scored.rows)
        return _FastJSON(
            {
                "request_id": scored.request_id,
                "usecase": usecase.name,
                "model": {**scored.served.describe(), "runtime": scored.runtime},
                "snapshot": {"day": scored.snapshot_day, "table_version": scored.snapshot_version},
                "prediction_time": scored.at.isoformat(),
                "predictions": scored.predictions(),
            },
            headers=_headers(scored),
        )

    # the body is parsed by predict_body (the column checker first); the OpenAPI document shows its pydantic model
    body_schema = TypeAdapter(request_model).json_schema(ref_template="#/components/schemas/{model}")
    body_definitions = body_schema.pop("$defs", {})
    app.post(
        "/v1/usecases/{name}/predict",
        tags=["scoring"],
        summary="score one record or a batch of raw records",
        dependencies=[Depends(require_key)],
        responses={
            401: {"description": "no or a wrong API key"},
            413: {"description": "body or batch too large"},
            422: {"description": "a field breaks the use case's schema (named in `detail`)"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{request_model.__name__}"}}
                },
            }
        },
    )(predict)
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate_openapi()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(body_definitions)
            schemas[request_model.__name__] = body_schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.post(
        "/invocations",
        tags=["scoring"],
        summary="MLflow's scoring contract: dataframe_split, dataframe_records, instances or inputs of raw records",
        dependencies=[Depends(require_key)],
    )
    async def invocations(request: Request) -> JSONResponse:
        body = await _json(request)
        key, given = _invocation_input(body)
        params = body.get("params") or {}
        at = _parse_at(
            at_adapter, params.get("at") if isinstance(params, dict) else None, ("body", "params", "at")
        )
        where = ("body", key)
        rows, typed = (
            validate_columns(given, where) if isinstance(given, dict) else validate_rows(given, where)
        )
        scored = await score_off_loop(rows, typed, at, ("body", "params", "at"))
        metrics.records.labels(scored.served.alias).inc(scored.rows)
        return _FastJSON({"predictions": scored.scores.tolist()}, headers=_headers(scored))

    @app.get("/v2/health/live", tags=["open inference protocol"])
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open inference protocol"])
    def v2_ready() -> JSONResponse:
        ready = service.readiness()["ready"]
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def known_model(name: str) -> None:
        if name != usecase.name:
            raise HTTPException(
                404, f"model {name!r} is not served here (this service serves {usecase.name!r})"
            )

    @app.get("/v2/models/{name}", tags=["open inference protocol"], dependencies=[Depends(require_key)])
    def v2_metadata(name: str) -> dict[str, Any]:
        known_model(name)
        champion = service.slots.served(CHAMPION_ALIAS)
        outputs = (
            [
                {"name": "probability", "datatype": "FP64", "shape": [-1]},
                {"name": "decision", "datatype": "BOOL", "shape": [-1]},
            ]
            if service.classification
            else [{"name": "prediction", "datatype": "FP64", "shape": [-1]}]
        )
        return {
            "name": usecase.name,
            "versions": [] if champion is None else [champion.version],
            "platform": "mlflow",
            "inputs": [
                {"name": c, "datatype": _V2_TYPES[spec.type], "shape": [-1]} for c, spec in columns.items()
            ],
            "outputs": outputs,
        }

    @app.get("/v2/models/{name}/ready", tags=["open inference protocol"])
    def v2_model_ready(name: str) -> JSONResponse:
        known_model(name)
        ready = service.readiness()["ready"]
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @app.post(
        "/v2/models/{name}/infer", tags=["open inference protocol"], dependencies=[Depends(require_key)]
    )
    async def v2_infer(name: str, request: Request) -> Response:
        """Inputs as JSON tensors or binary tensors (the binary tensor extension: the JSON header's length in
        ``Inference-Header-Content-Length``, the tensors' bytes after it); outputs as JSON, or binary where the
        request asks for them so."""
        known_model(name)
        body = await _v2_body(request, settings.max_batch_records)
        wanted = _with_binary_errors(oip_binary.requested_outputs, body, output_names)
        data = _v2_columns(body, columns)
        params = body.get("parameters") or {}
        at = _parse_at(
            at_adapter, params.get("at") if isinstance(params, dict) else None, ("body", "parameters", "at")
        )
        rows, typed = validate_columns(data, ("body", "inputs"))
        scored = await score_off_loop(rows, typed, at, ("body", "parameters", "at"))
        metrics.records.labels(scored.served.alias).inc(scored.rows)
        outputs = [
            oip_binary.Output(output_names[0], "FP64", scored.scores),
            *([] if scored.decisions is None else [oip_binary.Output("decision", "BOOL", scored.decisions)]),
        ]
        if wanted is not None:  # the outputs the request names, in its order
            by_name = {output.name: output for output in outputs}
            outputs = [by_name[name] for name in wanted if name in by_name]
        answer = {
            "model_name": usecase.name,
            "model_version": scored.served.version,
            "id": str(body.get("id") or scored.request_id),
            "parameters": {"content_type": PANDAS_CODEC},
        }
        if not wanted or not any(wanted.values()):
            outputs_json = [
                {"name": o.name, "shape": [scored.rows], "datatype": o.datatype, "data": o.values.tolist()}
                for o in outputs
            ]
            return _FastJSON({**answer, "outputs": outputs_json}, headers=_headers(scored))
        entries, raw = oip_binary.encode_outputs(outputs, wanted)
        header = orjson.dumps({**answer, "outputs": entries})
        return Response(
            header + raw,
            media_type="application/octet-stream",
            headers={**_headers(scored), "Inference-Header-Content-Length": str(len(header))},
        )

    return app


def _open_inference(request: Request) -> bool:
    """A request of the Open Inference Protocol, whose clients read errors as ``{"error": "<message>"}``."""
    return request.url.path.startswith("/v2/")


def _v2_message(detail: list[dict[str, Any]]) -> str:
    """Validation errors as the one message the Open Inference Protocol has room for, each naming its field."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}" for item in detail
    )


def _v2_error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _json(request: Request) -> Any:
    """The body as JSON (see :func:`_parse_json`)."""
    return _parse_json(await request.body())


def _parse_json(raw: bytes | memoryview) -> Any:
    """``raw`` as JSON: orjson (several times faster on a batch), or, for what orjson refuses (NaN, integers
    beyond 64 bits, a body that is not JSON), the standard library, so that the field at fault is named."""
    import json

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"the body is not JSON: {exc}", "type": "json_invalid"}]
        ) from None


# binary tensors over this many bytes are decoded in a worker thread; smaller ones on the event loop, as JSON
# bodies are parsed (measured: 40,000 BYTES elements, 400 kB, in 11 ms, about 3.5 times what orjson takes for
# the same strings as JSON; numbers are read by numpy at once)
_DECODE_OFF_LOOP_BYTES = 64 * 1024


async def _v2_body(request: Request, max_elements: int) -> Any:
    """The JSON of an Open Inference Protocol request, its binary inputs (the binary tensor extension) decoded
    into ``data`` lists; a JSON body without ``Inference-Header-Content-Length`` is read as :func:`_json` reads
    it. 422 naming the input for a body that does not add up, 413 for an input of too many elements."""
    raw = await request.body()
    header, binary = _with_binary_errors(
        oip_binary.split_body, raw, request.headers.get(oip_binary.HEADER_LENGTH)
    )
    body = _parse_json(header)
    if not len(binary) and not oip_binary.has_binary_inputs(body):
        return body
    if len(binary) > _DECODE_OFF_LOOP_BYTES:
        await run_in_threadpool(_with_binary_errors, oip_binary.decode_inputs, body, binary, max_elements)
    else:
        _with_binary_errors(oip_binary.decode_inputs, body, binary, max_elements)
    return body


def _with_binary_errors(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` with the binary tensor extension's errors as the service's: 422 naming the input
    (RequestValidationError), 413 for too many elements."""
    try:
        return function(*args)
    except oip_binary.TooManyElements as exc:
        raise _too_many(exc.count, exc.limit) from None
    except oip_binary.BinaryTensorError as exc:
        raise RequestValidationError([{"loc": exc.loc, "msg": exc.message, "type": "value_error"}]) from None


def _parse_at(adapter: TypeAdapter, value: Any, loc: tuple[Any, ...]) -> datetime | None:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise RequestValidationError(field_errors(exc.errors(), loc)) from None


def _plain(value: Any) -> Any:
    """JSON-safe copies of error details and states (tuples as lists, exceptions and others as text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
