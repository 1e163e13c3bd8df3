"""Per-API-key limits of a scoring service: a token bucket (a rate and a burst) and a cap on the requests in flight.

One process's event loop reads and changes them (the ASGI middleware in pipelines.serving.app), so they need no
lock; each worker process of ``mlops serve --workers N`` has its own, so a key may send up to N times the rate
to the service as a whole (the kernel spreads connections over the workers). Requests without a key
(``--no-auth``) share one bucket and one cap. Only accepted keys get a bucket, so the buckets are bounded by the
keys configured (a client inventing keys gets 401, never a bucket).

The defaults (:data:`DEFAULT_RATE`, :data:`DEFAULT_BURST`, :data:`DEFAULT_IN_FLIGHT`) stay far from what the
benchmark (bench/serving.py) sends from its one key: at most eight connections, each with one request at a
time, and about a thousand requests a second per worker for one-record requests (docs/benchmarks.md). They stop a
client that opens hundreds of connections (slow bodies included: a request counts as in flight from its first
byte) or sends tens of thousands of requests a second, not a busy one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_RATE = 2000.0  # requests a second, per key and worker process
DEFAULT_BURST = 4000  # requests at once above the rate (two seconds of it)
DEFAULT_IN_FLIGHT = 64  # requests under way at once, per key and worker process (the benchmark: at most 8)


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(
                f"a token bucket needs a rate above 0 and a burst of at least 1 ({rate}, {burst})"
            )
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self) -> float:
        """0.0 when a token was taken; else the seconds until one is there (nothing taken)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0 - 1e-9:  # a token refilled over several steps adds up to a hair under 1
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused (``reason``: ``rate`` or ``in_flight``) and when to try again."""

    reason: str
    retry_after_s: int
    message: str


class KeyLimits:
    """The buckets and in-flight counts of every key. ``rate`` 0: no rate limit; ``max_in_flight`` 0: no cap."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or max_in_flight < 0:
            raise ValueError(f"limits cannot be negative (rate {rate}, in flight {max_in_flight})")
        if rate > 0 and burst < 1:
            raise ValueError(f"a burst of at least 1 request is needed with a rate ({burst})")
        self.rate, self.burst, self.max_in_flight, self.clock = rate, burst, max_in_flight, clock
        self._buckets: dict[str, TokenBucket] = {}
        self.in_flight: dict[str, int] = {}

    def enabled(self) -> bool:
        return self.rate > 0 or self.max_in_flight > 0

    def admit(self, key: str) -> Refusal | None:
        """Count a request of ``key`` as in flight and return None, or the refusal (nothing counted). A request
        admitted must be :meth:`release`-d once answered."""
        held = self.in_flight.get(key, 0)
        if self.max_in_flight and held >= self.max_in_flight:
            return Refusal(
                "in_flight",
                1,
                f"too many requests in flight for this API key: {held}, at most {self.max_in_flight} "
                "(--max-in-flight); wait for answers before sending more",
            )
        if self.rate:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
            wait = bucket.take()
            if wait > 0:
                return Refusal(
                    "rate",
                    max(1, math.ceil(wait)),
                    f"too many requests for this API key: at most {self.rate:g} a second with bursts of "
                    f"{self.burst} (--rate-limit, --rate-burst)",
                )
        self.in_flight[key] = held + 1
        return None

    def release(self, key: str) -> None:
        held = self.in_flight.get(key, 0) - 1
        if held > 0:
            self.in_flight[key] = held
        else:
            self.in_flight.pop(key, None)
