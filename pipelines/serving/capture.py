"""Requests the service answered, appended to the lake's ``captures/<usecase>`` Delta table off the request path.

A request hands its rows (or a function making them, run in the capture thread, so formatting costs no
request time) to :meth:`CaptureWriter.offer` or :meth:`CaptureWriter.offer_later`, which never block: when the
bounded queue is full the rows are dropped and counted (``dropped``), so a slow lake slows no request. A daemon thread appends what is
queued every ``flush_s`` seconds or ``batch_rows`` rows, in one commit; a failed commit is retried once with the
next batch, then counted as lost (``failed``) so memory stays bounded. ``close`` flushes what is left.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.lake import Lake, captures_table

if TYPE_CHECKING:
    import pyarrow as pa

# A DeltaTable handle's commit cost grows with the commits made through it (measured with delta-rs 1.6 on the
# capture table's schema: about 24 ms a commit over its first 100, 137 ms over its fourth 100; 57 to 81 ms when the
# table is opened afresh for each), so the writer reads the table afresh after this many
HANDLE_COMMITS = 100

# rows as columns: name -> one value per row (a list or a numpy array) or one value for all the chunk's rows
# (a Constant), or, for a struct column, a dict of those
Columns = dict[str, Any]


def sampled(request_id: str, share: float) -> bool:
    """Whether the request ``request_id`` is captured when ``share`` of the requests are (serving.capture.sample):
    decided by a hash of the id, not at random, so the same id is always kept or always left out (a rerun, a
    shadow copy, a second look at the table agree); over many ids the kept share is ``share``."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2.0**64


@dataclass(frozen=True)
class Constant:
    """One value for every row of a chunk (a request's id, versions and times): made into an Arrow column in C,
    not from a Python list of copies."""

    value: Any


def arrow_table(chunks: list[tuple[int, Columns]], structs: Mapping[str, Mapping[str, Any]]) -> pa.Table:
    """One Arrow table of the chunks' rows: each column's parts joined (numpy arrays in one concatenation, no
    per-row Python), a column in ``structs`` as a struct of its children with their Arrow types; NaN and
    NaT are NULL. A column a chunk lacks is NULL in its rows."""
    import pyarrow as pa

    names = list(dict.fromkeys(name for _, columns in chunks for name in columns))
    arrays = []
    for name in names:
        children = structs.get(name)
        if children is None:
            parts = [_part(columns, name) for _, columns in chunks]
            if any(isinstance(part, Constant) for part in parts):
                arrays.append(_constants_joined(parts, [count for count, _ in chunks]))
            else:
                arrays.append(pa.array(_joined(parts), from_pandas=True))
            continue
        parts = [columns.get(name) or {} for _, columns in chunks]
        fields = [
            _typed_array(
                [_child(part, child, count) for (count, _), part in zip(chunks, parts, strict=True)], kind
            )
            for child, kind in children.items()
        ]
        arrays.append(pa.StructArray.from_arrays(fields, names=list(children)))
    return pa.table(arrays, names=names)


def _typed_array(parts: list[Any], kind: pa.DataType) -> pa.Array:
    """Parts of one struct field (lists, numpy arrays, or Arrow arrays made when the request was answered) as one
    Arrow array of type ``kind``."""
    import pyarrow as pa

    if any(isinstance(part, pa.Array) for part in parts):
        return pa.concat_arrays(
            [
                part if isinstance(part, pa.Array) else pa.array(part, type=kind, from_pandas=True)
                for part in parts
            ]
        )
    return pa.array(_joined(parts), type=kind, from_pandas=True)


def _part(columns: Mapping[str, Any], name: str) -> Any:
    values = columns.get(name)
    return Constant(None) if values is None else values


def _child(struct: Mapping[str, Any], name: str, count: int) -> Any:
    values = struct.get(name)
    return [None] * count if values is None else values


def _constants_joined(parts: list[Any], counts: list[int]) -> pa.Array:
    """One Arrow array of a column whose parts are Constants or values: each part as an array, the NULL-only ones
    (a Constant None, a column a chunk lacks) given the others' type."""
    import pyarrow as pa

    pieces = [
        pa.repeat(pa.scalar(part.value), count)
        if isinstance(part, Constant)
        else pa.array(_joined([part]), from_pandas=True)
        for part, count in zip(parts, counts, strict=True)
    ]
    kinds = {piece.type for piece in pieces if not pa.types.is_null(piece.type)}
    if len(kinds) > 1:  # parts of different types (an int and a float version): let Arrow find the common one
        values = [v for piece in pieces for v in piece.to_pylist()]
        return pa.array(values, from_pandas=True)
    kind = kinds.pop() if kinds else pa.null()
    return pa.concat_arrays([piece if piece.type == kind else pa.nulls(len(piece), kind) for piece in pieces])


def _joined(parts: list[Any]) -> Any:
    """Parts of one column as one list (all lists) or one numpy array."""
    import numpy as np

    if all(isinstance(part, list) for part in parts):
        return [value for part in parts for value in part]
    arrays = [np.array(part, dtype=object) if isinstance(part, list) else np.asarray(part) for part in parts]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _as_columns(rows: list[dict[str, Any]]) -> Columns:
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


class CaptureWriter:
    """Bounded, non-blocking capture of served rows (see the module doc)."""

    def __init__(
        self,
        lake: Lake,
        usecase: str,
        *,
        max_rows: int = 250_000,  # about 200 bytes a queued row: some 50 MB at most
        batch_rows: int = 100_000,
        flush_s: float = 10.0,  # a commit has a fixed cost (tens of ms of log and file work): few and large ones
        structs: Mapping[str, Mapping[str, Any]] | None = None,
        background: bool = True,
    ) -> None:
        """``background``: a thread flushes when ``batch_rows`` are queued or every ``flush_s``; without it the
        caller flushes (a tool, or a test that must know what each flush took)."""
        self.lake, self.table = lake, captures_table(usecase)
        # struct column -> its fields' Arrow types (pipelines.serving.service.capture_structs)
        self.structs = {name: dict(children) for name, children in (structs or {}).items()}
        self.max_rows, self.batch_rows, self.flush_s = max_rows, batch_rows, flush_s
        # (row count, a function making the rows as columns): made in the capture thread, off the request path
        self._queue: collections.deque[tuple[int, Callable[[], Columns]]] = collections.deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self.written = self.dropped = self.failed = self.commits = 0
        self.sampled_out = 0  # rows of requests serving.capture.sample left out (never queued, never dropped)
        self.last_error: str | None = None
        self._pending: list[tuple[int, Columns]] = []  # a batch whose commit failed once
        # the table's DeltaTable after the last commit, so its log is not read again for the next one; read afresh
        # every HANDLE_COMMITS commits, because a commit through a handle costs more the more it has made
        self._handle: Any = None
        self._handle_commits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlops-capture", daemon=True)
        if background:
            self._thread.start()

    def offer(self, rows: list[dict[str, Any]]) -> int:
        """Queue ``rows`` without waiting; return how many were dropped because the queue was full."""
        return self.offer_later(len(rows), lambda: _as_columns(rows))

    def offer_later(self, count: int, make_columns: Callable[[], Columns]) -> int:
        """Queue the ``count`` rows that ``make_columns()`` returns as columns (name -> list of values; called
        later, in the capture thread) without waiting; return how many were dropped because the queue was full
        (all of them or none)."""
        with self._lock:
            if self._queued_rows + count > self.max_rows:
                self.dropped += count
                return count
            self._queue.append((count, make_columns))
            self._queued_rows += count
        return 0

    def skip(self, count: int) -> None:
        """Count ``count`` rows left out by sampling (so answered = written + dropped + failed + sampled out +
        queued)."""
        with self._lock:
            self.sampled_out += count

    def queued(self) -> int:
        return self._queued_rows + sum(count for count, _ in self._pending)

    def _drain(self, limit: int) -> tuple[list[tuple[int, Columns]], int]:
        """(queued chunks made into columns, the rows taken from the queue), up to ``limit`` rows (at least one
        chunk when any is queued)."""
        chunks: list[tuple[int, Columns]] = []
        rows = 0
        while rows < limit:
            with self._lock:
                if not self._queue:
                    break
                count, make_columns = self._queue.popleft()
                self._queued_rows -= count
            rows += count
            try:
                chunks.append((count, make_columns()))
            except Exception as exc:  # rows that cannot be formatted are lost, counted and reported
                self.failed += count
                self.last_error = f"formatting {count} captured rows failed: {type(exc).__name__}: {exc}"
        return chunks, rows

    def flush(self) -> None:
        """Append the rows queued when it is called (in commits of up to ``batch_rows``). Rows queued meanwhile
        wait for the next flush: under steady traffic the queue is never empty, and draining it until it is would
        turn one flush into a stream of small commits that take the service's CPU."""
        left = self._queued_rows
        while True:
            retried = len(self._pending)
            drained, taken = self._drain(min(self.batch_rows, left)) if left > 0 else ([], 0)
            left -= taken
            chunks, self._pending = self._pending + drained, []
            if not chunks:
                return
            if not self._write(chunks):
                if retried:  # the second failure of these rows: counted as lost, memory stays bounded
                    self.failed += sum(count for count, _ in chunks[:retried])
                    self._pending = chunks[retried:]
                else:
                    self._pending = chunks
                return

    def _write(self, chunks: list[tuple[int, Columns]]) -> bool:
        try:
            table = arrow_table(chunks, self.structs)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if self._handle_commits >= HANDLE_COMMITS:
            self._handle, self._handle_commits = None, 0
        while True:
            kept = self._handle is not None
            try:
                self._handle = self.lake.append_rows(
                    self.table, table, commit_info={"mlops.writer": "serve"}, handle=self._handle
                )
                self._handle_commits += 1
                break
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._handle, self._handle_commits = None, 0  # read the table afresh
                if not kept:
                    return False
                # a kept handle is refused once another writer changed the table's schema ("Metadata changed
                # since last commit": a service capturing other columns, serving.capture.model_inputs): at
                # once through a fresh one, not a flush later
        self.written += sum(count for count, _ in chunks)
        self.commits += 1
        self.last_error = None
        return True

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.05):
            if self._queued_rows >= self.batch_rows or time.monotonic() - last >= self.flush_s:
                self.flush()
                last = time.monotonic()

    def close(self) -> None:
        """Stop the thread and append what is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self.flush()
