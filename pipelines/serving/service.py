"""Scoring requests: features from the online snapshot (the batch scorer's function), the served version's
probabilities and decisions, canary or shadow routing to the challenger, and capture.

Routing: with ``challenger_share`` s in (0, 1], s of the requests (exactly, spread evenly: request n goes to the
challenger when floor((n+1)s) > floor(ns)) are answered by the challenger when one is served; with ``shadow``,
every request answered by the champion is also scored by the challenger off the request path, captured with
``shadow = true`` and never returned.

What is served is checked (:meth:`Service.readiness`, and every request): a version answers only from a snapshot
built with the features config it was trained with (the model version's ``features_config_hash`` tag against the
snapshot date's ``config_hash`` fact), else the request gets 503 and ``/ready`` says which hashes differ and what to
rebuild; a version registered before the tag existed is served, with a warning in ``/ready``. The service is also
unready when its newest snapshot's prediction time is older than ``serving.max_snapshot_age`` of the use case
(``--max-snapshot-age``), by the service's clock: the features step has stopped publishing snapshots.

Capture (``serving.capture`` of the use case): every answered request's rows go to ``captures/<usecase>`` with
their request fields, answer, model version and snapshot day and version; the model inputs only with
``model_inputs`` (pipelines.serving.recapture rebuilds them from the rest), and only the requests whose id hash
falls within ``sample`` (pipelines.serving.capture.sampled; the others are counted).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipelines.config import ConfigError, UseCase, parse_duration
from pipelines.features.model_inputs import SMALL_BATCH, model_input_columns
from pipelines.features.online import feature_columns_of
from pipelines.lake import Lake, arrow_type
from pipelines.modeling.tracking import CHALLENGER_ALIAS, CHAMPION_ALIAS
from pipelines.serving.capture import CaptureWriter, Constant, sampled
from pipelines.serving.limits import DEFAULT_BURST, DEFAULT_IN_FLIGHT, DEFAULT_RATE
from pipelines.serving.models import RETRY_FIRST_S, RETRY_MAX_S, ModelSlots, ServedModel
from pipelines.serving.snapshots import SnapshotCache


class NotReady(Exception):
    """The service has no verified champion or no snapshot to serve with."""


@dataclass
class ServeSettings:
    """How one service process serves (the command's options)."""

    challenger_share: float = 0.0
    shadow: bool = False
    capture: bool = True
    max_batch_records: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    refresh_s: float = 10.0
    api_keys: frozenset[str] = field(default_factory=frozenset)
    api_keys_file: str | None = None
    auth: bool = True
    shadow_queue: int = 64
    # the oldest newest snapshot that keeps the service ready (a duration such as 36h; "off": no limit);
    # None: the use case's serving.max_snapshot_age
    max_snapshot_age: str | None = None
    # per API key and worker process (pipelines.serving.limits): requests a second (0: none) with bursts of
    # rate_burst, and requests in flight at once (0: no cap)
    rate_limit: float = DEFAULT_RATE
    rate_burst: int = DEFAULT_BURST
    max_in_flight: int = DEFAULT_IN_FLIGHT
    # a version that failed to load or verify is tried again after retry_first_s, then twice as long after each
    # failure, up to retry_max_s (pipelines.serving.models.ModelSlots)
    retry_first_s: float = RETRY_FIRST_S
    retry_max_s: float = RETRY_MAX_S


@dataclass
class Scored:
    """One request's answer."""

    request_id: str
    served: ServedModel
    snapshot_day: str
    snapshot_version: int | None
    at: datetime
    scores: Any
    decisions: Any | None
    rows: int
    runtime: str  # what computed the scores (pipelines.serving.models.ServedModel.scores)

    def predictions(self) -> list[dict[str, Any]]:
        version = self.served.version
        if self.decisions is None:
            return [{"prediction": s, "model_version": version} for s in self.scores.tolist()]
        return [
            {"probability": s, "decision": d, "model_version": version}
            for s, d in zip(self.scores.tolist(), self.decisions.tolist(), strict=True)
        ]


def capture_structs(usecase: UseCase) -> dict[str, dict[str, Any]]:
    """The struct columns of captured rows and their fields' Arrow types: ``request`` (the primary source's
    columns, typed as the use case declares) and, with ``serving.capture.model_inputs``, ``model_inputs`` (the
    model's feature columns; otherwise pipelines.serving.recapture rebuilds them from ``request``)."""
    import pyarrow as pa

    spec = usecase.sources[usecase.features.primary_source].columns
    structs = {"request": {name: arrow_type(column.type) for name, column in spec.items()}}
    if usecase.serving.capture.model_inputs:
        structs["model_inputs"] = {
            **{name: pa.float64() for name in usecase.features.numeric},
            **{name: pa.string() for name in usecase.features.categorical},
        }
    return structs


class _ArrowStrings:
    """A batch's object columns (strings, booleans) as Arrow arrays of their captured type, made while the
    request is answered. Their values are then in the CPU cache: converting a batch's strings at the capture flush,
    100,000 rows later, took twice as long (0.6 against 1.3 ms a 1000-row request in process; each Python string
    is read back from memory). A column that is both a record column and a model input is converted once. Not
    for a few rows, where an Arrow call per column costs more than it saves."""

    def __init__(self, structs: Mapping[str, Mapping[str, Any]], *, enabled: bool) -> None:
        self.structs, self.enabled = structs, enabled
        self._made: dict[int, Any] = {}

    def of(self, struct: str, name: str, values: Any) -> Any:
        import pyarrow as pa

        if not (self.enabled and isinstance(values, np.ndarray) and values.dtype == object):
            return values  # numbers and times: joined as numpy arrays at the flush, which costs little
        made = self._made.get(id(values))
        if made is None:
            try:
                made = pa.array(values, type=self.structs[struct][name], from_pandas=True)
            except (
                Exception
            ):  # never fail a request for capture: the capture thread tries again, counts a failure
                return values
            self._made[id(values)] = made
        return made


def _utc_values(values: Any) -> Any:
    """A request column for capture: a UTC DatetimeIndex as naive datetime64[us] (UTC), else as it is."""
    import pandas as pd

    if isinstance(values, pd.DatetimeIndex):  # its int64 values count from the epoch in UTC; NaT stays NaT
        return values.as_unit("us").asi8.view("datetime64[us]")
    return values


def _utc(value: datetime | None, default: datetime) -> datetime:
    if value is None:
        return default
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NO_AGE_LIMIT = ("off", "none", "0")


def max_snapshot_age_seconds(usecase: UseCase, setting: str | None) -> int | None:
    """The age limit of the newest snapshot in seconds (None: no limit): ``setting`` (a duration, or one of
    :data:`NO_AGE_LIMIT`), else the use case's ``serving.max_snapshot_age``."""
    if setting is None:
        return usecase.serving.max_snapshot_age_seconds
    if str(setting).strip().lower() in NO_AGE_LIMIT:
        return None
    return parse_duration(setting, "--max-snapshot-age")


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


class Service:
    """Everything one serving process holds: the use case, the lake, the model slots, snapshots and capture."""

    def __init__(
        self,
        usecase: UseCase,
        lake: Lake,
        settings: ServeSettings,
        *,
        slots: ModelSlots | None = None,
        snapshots: SnapshotCache | None = None,
        capture: CaptureWriter | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if usecase.time.prediction_time.per_event:
            # the snapshot holds lookups for one time per day; answering with them would give an event features
            # of another time than its own prediction time, the one its model was trained and judged on
            raise ConfigError(
                f"use case {usecase.name!r}: time.prediction_time has a time per event (lead or column); the REST "
                "service serves a daily prediction time only (days_before and at). Score in batch (the score DAG "
                "reads each event's own features), or use a daily prediction time to serve"
            )
        self.usecase, self.lake, self.settings = usecase, lake, settings
        self.clock = clock or (lambda: datetime.now(UTC))  # the time that judges a snapshot's age
        self.max_snapshot_age_s = max_snapshot_age_seconds(usecase, settings.max_snapshot_age)
        wants_challenger = settings.challenger_share > 0 or settings.shadow
        self.slots = slots or ModelSlots(
            usecase,
            challenger=wants_challenger,
            retry_first_s=settings.retry_first_s,
            retry_max_s=settings.retry_max_s,
        )
        self.snapshots = snapshots or SnapshotCache(lake, usecase)
        self.capture = (
            capture
            if capture is not None
            else (
                CaptureWriter(lake, usecase.name, structs=capture_structs(usecase))
                if settings.capture
                else None
            )
        )
        self._record_columns = list(usecase.sources[usecase.features.primary_source].columns)
        self.classification = usecase.task == "classification"
        self._requests = 0
        self._route_lock = threading.Lock()
        self._shadow_pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlops-shadow") if settings.shadow else None
        )
        self._shadow_pending = 0
        self.shadow_dropped = 0
        self.shadow_scored = 0
        self.shadow_errors = 0
        self._snapshot_stop = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the models and the snapshot table once, then keep both fresh in the background."""
        self.slots.refresh()
        self.snapshots.refresh()
        if self.settings.refresh_s > 0:
            self.slots.start(self.settings.refresh_s)

            def refresh_snapshots() -> None:
                while not self._snapshot_stop.wait(self.settings.refresh_s):
                    self.snapshots.refresh()

            threading.Thread(target=refresh_snapshots, name="mlops-snapshot-watcher", daemon=True).start()

    def stop(self) -> None:
        self._snapshot_stop.set()
        self.slots.stop()
        if self._shadow_pool is not None:
            self._shadow_pool.shutdown(wait=True)
        if self.capture is not None:
            self.capture.close()

    def snapshot_age_seconds(self) -> float | None:
        """Seconds from the newest snapshot's prediction time to now (the service's clock); None: no snapshot."""
        newest = self.snapshots.newest()
        if newest is None:
            return None
        return (self.clock() - self.snapshots.prediction_time(newest)).total_seconds()

    def features_config_problem(self, served: ServedModel, day: str) -> str | None:
        """Why ``served`` may not answer from the snapshot of ``day`` (built with other features than it was
        trained with), or None. A version without the tag (registered before it existed) is not refused."""
        wanted = served.features_config
        built_with = self.snapshots.config_hash(day)
        if wanted is None or built_with == wanted:
            return None
        name = self.usecase.name
        built = (
            "records no features config hash"
            if built_with is None
            else f"was built with features config {built_with}"
        )
        return (
            f"the online feature snapshot of {day} (features_online/{name}, table version "
            f"{self.snapshots.version}) {built}, but version {served.version} "
            f"({served.alias}) of {name!r} was trained with features config {wanted}: its inputs would not be "
            "the features it learned from. Rebuild the features with the config the model was trained with "
            f"(python -m pipelines features --usecase {name} --date {day} --start {day} --rebuild), or retrain "
            "and promote a model on the current features config"
        )

    def readiness(self) -> dict[str, Any]:
        """Ready when a verified champion and an online snapshot are loaded, the newest snapshot was built with
        the champion's features config and is not older than the configured age; with what is served, the
        reasons it is not ready and warnings."""
        champion = self.slots.served(CHAMPION_ALIAS)
        newest = self.snapshots.newest()
        reasons: list[str] = []
        warnings: list[str] = []
        if champion is None:
            reasons.append(f"no verified champion of {self.usecase.name!r} is loaded")
        if newest is None:
            reasons.append(
                f"no online feature snapshot of {self.usecase.name!r} is loaded: run the features step"
                + (f" ({self.snapshots.error})" if self.snapshots.error else "")
            )
        age = self.snapshot_age_seconds()
        limit = self.max_snapshot_age_s
        if age is not None and limit is not None and age > limit:
            reasons.append(
                f"the newest online feature snapshot ({newest}, prediction time "
                f"{self.snapshots.prediction_time(newest).isoformat()}) is {_duration(age)} old, over the limit "
                f"of {_duration(limit)} (serving.max_snapshot_age): the features step has not published a newer "
                f"one; run it (python -m pipelines features --usecase {self.usecase.name} --date <today>)"
            )
        model_hashes = {}
        for alias in self.slots.aliases:
            served = self.slots.served(alias)
            if served is None:
                continue
            model_hashes[alias] = served.features_config
            if newest is None:
                continue
            problem = self.features_config_problem(served, newest)
            if problem is not None and alias == CHAMPION_ALIAS:
                reasons.append(problem)
            elif problem is not None:
                warnings.append(f"the {alias} does not answer: {problem}")
            elif served.features_config is None:
                warnings.append(
                    f"version {served.version} ({alias}) has no features_config_hash tag (registered before it "
                    "was recorded), so the features config of the snapshots it answers from cannot be checked; "
                    "register it again or retrain"
                )
        for (
            alias
        ) in self.slots.aliases:  # a version an alias points to that failed to load: when it is retried
            state = self.slots.state[alias]
            retry = state.retry()
            if retry is not None:
                text = (
                    f"version {state.refused_version} ({alias}) is not served after {state.failures} failed "
                    f"load(s); it is tried again at {retry['next_retry_at']}: {state.error}"
                )
                (reasons if alias == CHAMPION_ALIAS and champion is None else warnings).append(text)
        if self.snapshots.pending:
            warnings.append(self.snapshots.pending)
        return {
            "ready": not reasons,
            "reasons": reasons,
            "warnings": warnings,
            "usecase": self.usecase.name,
            "models": self.slots.report(),
            "snapshot": {
                "table_version": self.snapshots.version,
                "newest_day": newest,
                "prediction_time": None
                if newest is None
                else self.snapshots.prediction_time(newest).isoformat(),
                "age_seconds": age,
                "max_age_seconds": limit,
                "features_config_hash": None if newest is None else self.snapshots.config_hash(newest),
                "error": self.snapshots.error,
            },
            "models_features_config_hash": model_hashes,
        }

    # ------------------------------------------------------------------ scoring
    def route(self) -> tuple[ServedModel, ServedModel | None]:
        """(the version that answers, the version that scores a shadow copy or None)."""
        champion = self.slots.served(CHAMPION_ALIAS)
        if champion is None:
            raise NotReady(f"no verified champion of {self.usecase.name!r} is loaded: {self.slots.report()}")
        challenger = self.slots.served(CHALLENGER_ALIAS)
        if challenger is None:
            return champion, None
        share = self.settings.challenger_share
        if share > 0:
            with self._route_lock:
                n = self._requests
                self._requests += 1
            if int((n + 1) * share) > int(n * share):
                return challenger, None
        return champion, (challenger if self.settings.shadow else None)

    def score(
        self,
        rows: list[dict[str, Any]] | None,
        at: datetime | None = None,
        *,
        columns: dict[str, Any] | None = None,
    ) -> Scored:
        """Score validated records (dicts keyed by column) as of ``at`` (default now, UTC); ``columns``: the same
        records as typed columns (pipelines.features.online.request_columns' form) when the caller has them, in which case
        ``rows`` may be None."""
        if rows is None and columns is None:
            raise ValueError("Service.score needs the records as rows or as typed columns")
        count = len(rows) if rows is not None else len(next(iter(columns.values())))
        received = datetime.now(UTC)
        when = _utc(at, received)
        served, shadow = self.route()
        if not self.snapshots.days:
            raise NotReady(f"no online feature snapshot of {self.usecase.name!r} is loaded")
        snapshot = self.snapshots.for_time(when)
        if served.alias != CHAMPION_ALIAS and self.features_config_problem(served, snapshot.day) is not None:
            # a canary whose features config differs from the snapshot's: the champion answers instead
            served = self.slots.served(CHAMPION_ALIAS) or served
        problem = self.features_config_problem(served, snapshot.day)
        if problem is not None:
            raise NotReady(problem)
        if shadow is not None and self.features_config_problem(shadow, snapshot.day) is not None:
            shadow = None
        features = feature_columns_of(self.usecase, rows if columns is None else columns, snapshot, when)
        inputs = model_input_columns(self.usecase, features, f"snapshot of {snapshot.day}")
        scores, runtime = served.scores(inputs, count)
        if not np.isfinite(scores).all():  # never answer NaN or infinity as a probability: fail the request
            raise ValueError(
                f"version {served.version} of {self.usecase.name!r} scored {int((~np.isfinite(scores)).sum())} of "
                f"{len(scores)} records as NaN or infinity"
            )
        decisions = scores >= served.threshold if self.classification else None
        scored = Scored(
            request_id=uuid.uuid4().hex,
            served=served,
            snapshot_day=snapshot.day,
            snapshot_version=self.snapshots.version,
            at=when,
            scores=scores,
            decisions=decisions,
            rows=count,
            runtime=runtime,
        )
        if self.capture is not None and not sampled(scored.request_id, self.usecase.serving.capture.sample):
            self.capture.skip(count)  # its shadow copy (same request id) is left out too
        elif self.capture is not None:
            if count > SMALL_BATCH:  # a batch's strings made Arrow now, while they are in the CPU cache
                captured = self._capture_rows(scored, features, inputs, received, shadow=False, strings=True)
                self.capture.offer_later(count, lambda: captured)
            else:  # a few rows: all formatting in the capture thread, none on the request path
                self.capture.offer_later(
                    count, lambda: self._capture_rows(scored, features, inputs, received, shadow=False)
                )
        if shadow is not None:
            self._score_shadow(shadow, scored, features, inputs, received)
        return scored

    def _score_shadow(
        self,
        shadow: ServedModel,
        answered: Scored,
        features: dict[str, Any],
        inputs: Any,
        received: datetime,
    ) -> None:
        assert self._shadow_pool is not None
        with self._route_lock:
            if self._shadow_pending >= self.settings.shadow_queue:
                self.shadow_dropped += answered.rows
                return
            self._shadow_pending += 1

        def run() -> None:
            try:
                scores, runtime = shadow.scores(inputs, answered.rows)
                copy = Scored(
                    request_id=answered.request_id,
                    served=shadow,
                    snapshot_day=answered.snapshot_day,
                    snapshot_version=answered.snapshot_version,
                    at=answered.at,
                    scores=scores,
                    decisions=scores >= shadow.threshold if self.classification else None,
                    rows=answered.rows,
                    runtime=runtime,
                )
                self.shadow_scored += answered.rows
                if self.capture is not None and sampled(
                    answered.request_id, self.usecase.serving.capture.sample
                ):
                    columns = self._capture_rows(
                        copy, features, inputs, received, shadow=True, strings=answered.rows > SMALL_BATCH
                    )
                    self.capture.offer_later(answered.rows, lambda: columns)
            except Exception:
                self.shadow_errors += 1
            finally:
                with self._route_lock:
                    self._shadow_pending -= 1

        self._shadow_pool.submit(run)

    def _capture_rows(
        self,
        scored: Scored,
        features: dict[str, Any],
        inputs: Any,
        received: datetime,
        *,
        shadow: bool,
        strings: bool = False,
    ) -> dict[str, Any]:
        """The captured rows of one answer, as columns (CaptureWriter's form): the record's typed columns (and,
        with serving.capture.model_inputs, its model inputs) as struct columns, the score and decision, and the
        versions that made them. ``strings``: make object columns Arrow arrays now (see _ArrowStrings)."""
        assert self.capture is not None
        arrow = _ArrowStrings(self.capture.structs, enabled=strings)  # the types the writer's flush uses
        columns = {
            "date": Constant(scored.snapshot_day),
            "request_id": Constant(scored.request_id),
            "row": np.arange(scored.rows, dtype="int64"),
            "received_at": Constant(received),
            "prediction_time": Constant(scored.at),
            "alias": Constant(scored.served.alias),
            "model_version": Constant(scored.served.version),
            "shadow": Constant(shadow),
            "snapshot_day": Constant(scored.snapshot_day),
            "snapshot_version": Constant(scored.snapshot_version),
            "score": scored.scores,
            "decision": Constant(None) if scored.decisions is None else scored.decisions,
            "request": {
                name: arrow.of("request", name, _utc_values(features[name])) for name in self._record_columns
            },
        }
        if "model_inputs" in self.capture.structs:  # serving.capture.model_inputs
            columns["model_inputs"] = {
                name: arrow.of("model_inputs", name, values) for name, values in inputs.items()
            }
        return columns
