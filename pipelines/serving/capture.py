"""Requests the service answered, appended to the lake's ``captures/<usecase>`` Delta table off the request path.

A request hands its rows to :meth:`CaptureWriter.offer`, which never blocks: when the bounded queue is full the
rows are dropped and counted (``dropped``), so a slow lake slows no request. A daemon thread appends what is
queued every ``flush_s`` seconds or ``batch_rows`` rows, in one commit; a failed commit is retried once with the
next batch, then counted as lost (``failed``) so memory stays bounded. ``close`` flushes what is left.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from pipelines.lake import Lake, captures_table


class CaptureWriter:
    """Bounded, non-blocking capture of served rows (see the module doc)."""

    def __init__(
        self,
        lake: Lake,
        usecase: str,
        *,
        max_rows: int = 50_000,
        batch_rows: int = 5_000,
        flush_s: float = 2.0,
    ) -> None:
        self.lake, self.table = lake, captures_table(usecase)
        self.batch_rows, self.flush_s = batch_rows, flush_s
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_rows)
        self.written = self.dropped = self.failed = self.commits = 0
        self.last_error: str | None = None
        self._pending: list[dict[str, Any]] = []  # a batch whose commit failed once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlops-capture", daemon=True)
        self._thread.start()

    def offer(self, rows: list[dict[str, Any]]) -> int:
        """Queue ``rows`` without waiting; return how many were dropped because the queue was full."""
        dropped = 0
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                dropped += 1
        self.dropped += dropped
        return dropped

    def queued(self) -> int:
        return self._queue.qsize() + len(self._pending)

    def _drain(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while len(rows) < self.batch_rows:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def flush(self) -> None:
        """Append everything queued now (in batches of ``batch_rows``)."""
        while True:
            rows = self._pending + self._drain()
            retried, self._pending = len(self._pending), []
            if not rows:
                return
            if not self._write(rows):
                if retried:  # the second failure of these rows: counted as lost, memory stays bounded
                    self.failed += retried
                    self._pending = rows[retried:]
                else:
                    self._pending = rows
                return

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        import pandas as pd

        try:
            self.lake.append_rows(self.table, pd.DataFrame(rows), commit_info={"mlops.writer": "serve"})
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.written += len(rows)
        self.commits += 1
        self.last_error = None
        return True

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.05):
            if self._queue.qsize() >= self.batch_rows or time.monotonic() - last >= self.flush_s:
                self.flush()
                last = time.monotonic()

    def close(self) -> None:
        """Stop the thread and append what is left."""
        self._stop.set()
        self._thread.join(timeout=60)
        self.flush()
