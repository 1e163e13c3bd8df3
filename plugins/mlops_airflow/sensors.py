"""Deferrable arrival sensor on the landing zone of the configured lake.

The sensor checks once in the worker; while nothing has landed it defers to :class:`LandingFilesTrigger`, which
polls the lake from the triggerer without holding a worker slot. The check is cheap (one listing of the inbox,
no Great Expectations), see ``pipelines.ingest.inbox.pending_files``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent


def _pending(usecase: str, up_to: str | None, conn_id: str | None) -> list[str]:
    """Files waiting for the ingest run of date ``up_to``: dated up to the last event date predicted that day
    (the schedule of tomorrow's events lands under tomorrow's date), as the ingest step takes them."""
    from pipelines.config import load_profile, load_usecase
    from pipelines.ingest.inbox import pending_files

    profile = load_profile()
    through = load_usecase(usecase).time.ingested_through(date.fromisoformat(up_to)) if up_to else None
    return pending_files(_lake(profile, conn_id), usecase, through)


def _lake(profile: Any, conn_id: str | None) -> Any:
    """The profile's lake with the S3 connection's endpoint and keys given to it alone: the triggerer runs many
    triggers in one process, so the process environment is never changed (no credentials shared or raced on)."""
    from mlops_airflow.operators import s3_environment
    from pipelines.lake import open_lake

    env = s3_environment(conn_id or profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
    return open_lake(profile.lake_uri, s3_env=env or None)


class LandingFilesTrigger(BaseTrigger):
    """Fires once files for ``usecase`` with a landing date on or before ``up_to`` wait in the inbox."""

    def __init__(
        self, usecase: str, up_to: str | None, poll_seconds: float = 60.0, conn_id: str | None = None
    ):
        super().__init__()
        self.usecase = usecase
        self.up_to = up_to
        self.poll_seconds = poll_seconds
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "usecase": self.usecase,
                "up_to": self.up_to,
                "poll_seconds": self.poll_seconds,
                "conn_id": self.conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            files = await asyncio.to_thread(_pending, self.usecase, self.up_to, self.conn_id)
            if files:
                yield TriggerEvent({"files": files})
                return
            self.log.info(
                "No landed files for %s up to %s; next check in %ss",
                self.usecase,
                self.up_to,
                self.poll_seconds,
            )
            await asyncio.sleep(self.poll_seconds)


class LandingArrivalSensor(BaseSensorOperator):
    """Wait until files for the use case have landed (landing date <= the run's date, ``up_to`` or as the ingest
    step reads it); returns them."""

    template_fields = ("up_to",)
    ui_color = "#e8f8f5"

    def __init__(
        self,
        *,
        usecase: str,
        up_to: str | None = None,
        poll_seconds: float = 60.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", timedelta(hours=23))
        super().__init__(**kwargs)
        self.usecase = usecase
        self.up_to = up_to
        self.poll_seconds = poll_seconds
        self.deferrable = deferrable

    def _up_to(self, context: Any) -> str | None:
        """The run's date (the ``up_to`` given, else as the ingest step reads it: operators.logical_day)."""
        if self.up_to:
            return str(self.up_to)
        from mlops_airflow.operators import logical_day
        from pipelines.config import load_usecase

        return logical_day(context, load_usecase(self.usecase).time.timezone)

    def poke(self, context: Any) -> bool:
        return bool(_pending(self.usecase, self._up_to(context), None))

    def execute(self, context: Any) -> list[str] | None:
        up_to = self._up_to(context)
        files = _pending(self.usecase, up_to, None)
        if files:
            self.log.info("%d landed file(s) waiting: %s", len(files), files[:5])
            return files
        if not self.deferrable:
            super().execute(context)
            return _pending(self.usecase, up_to, None)
        self.defer(
            trigger=LandingFilesTrigger(self.usecase, up_to, self.poll_seconds),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )
        return None

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[str]:
        files = (event or {}).get("files") or []
        self.log.info("%d landed file(s) arrived: %s", len(files), files[:5])
        return files


# --------------------------------------------------------------------------------------------------- features


def _what_is_missing(lake: Any, usecase: Any, day: str) -> str:
    """Why a day has no features yet, from the lake: its events not landed, landed but not ingested, or
    ingested but not built."""
    from pipelines.ingest.inbox import pending_files
    from pipelines.lake import raw_table

    primary = usecase.features.primary_source
    if day in lake.snapshot(raw_table(usecase.name, primary), facts=False, dates=[day]).partitions:
        return (
            f"the features of {day} (its {primary!r} rows are ingested; the features step has not built them)"
        )
    waiting = [key for key in pending_files(lake, usecase.name, date.fromisoformat(day)) if f"/{day}/" in key]
    if waiting:
        return f"the ingest of {len(waiting)} landed file(s) of {day} ({', '.join(waiting[:3])})"
    return f"every {primary!r} file of {day} (none has landed)"


def _features_readiness(usecase: str, run_day: str, conn_id: str | None) -> dict[str, Any]:
    """pipelines.features.scoring_time.readiness of the score run of ``run_day`` now, as a plain dict."""
    from datetime import UTC, datetime

    from pipelines.config import load_profile, load_usecase
    from pipelines.features.scoring_time import due_at, grace, readiness
    from pipelines.lake import online_table
    from pipelines.modeling.tracking import champion_version, configure_mlflow

    profile = load_profile()
    spec = load_usecase(usecase)
    configure_mlflow(profile, spec)
    if champion_version(spec) is None:  # a registry error raises: the run fails, nothing is scored
        day = spec.time.predicted_through(date.fromisoformat(run_day))
        return {
            "day": day.isoformat(),
            "ready": True,
            "failure": None,
            "deadline": (due_at(spec, date.fromisoformat(run_day)) + grace(spec)).isoformat(),
            "reason": "no champion yet: nothing to wait for (the score step records that it scored nothing)",
        }
    lake = _lake(profile, conn_id)
    day = date.fromisoformat(run_day)
    # the predicted day's snapshot alone (the sensor polls: its cost must not grow with the history)
    predicted = spec.time.predicted_through(day).isoformat()
    partitions = lake.snapshot(online_table(usecase), dates=[predicted]).partitions
    state = readiness(spec, partitions, day, datetime.now(UTC))
    if state.failure and state.day not in partitions:
        state = readiness(spec, partitions, day, datetime.now(UTC), _what_is_missing(lake, spec, state.day))
    return {
        "day": state.day,
        "ready": state.ready,
        "failure": state.failure,
        "deadline": state.deadline.isoformat(),
    }


class FeaturesReadyTrigger(BaseTrigger):
    """Fires when the features of the day a score run predicts are ready, or when the run must fail."""

    def __init__(self, usecase: str, run_day: str, poll_seconds: float = 60.0, conn_id: str | None = None):
        super().__init__()
        self.usecase = usecase
        self.run_day = run_day
        self.poll_seconds = poll_seconds
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "usecase": self.usecase,
                "run_day": self.run_day,
                "poll_seconds": self.poll_seconds,
                "conn_id": self.conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            state = await asyncio.to_thread(_features_readiness, self.usecase, self.run_day, self.conn_id)
            if state["ready"] or state["failure"]:
                yield TriggerEvent(state)
                return
            self.log.info(
                "Features of %s for the score run of %s not ready; waiting until %s (next check in %ss)",
                state["day"],
                self.run_day,
                state["deadline"],
                self.poll_seconds,
            )
            await asyncio.sleep(self.poll_seconds)


class FeaturesReadySensor(BaseSensorOperator):
    """Wait until the features and online snapshot of the day this score run predicts are in the lake (and its
    prediction time has come); fail, naming the day and what is missing, once the prediction time + the use
    case's ``schedules.score_grace`` has passed (pipelines.features.scoring_time.readiness). With ``replay`` true (a
    batched replay of history) it does not wait: the score step then judges every day from recorded arrivals."""

    template_fields = ("run_day", "replay")
    ui_color = "#fef5e7"

    def __init__(
        self,
        *,
        usecase: str,
        run_day: str = "{{ ds }}",
        replay: str = "{{ params.replay }}",
        poll_seconds: float = 60.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)  # a missed deadline stays missed
        super().__init__(**kwargs)
        self.usecase = usecase
        self.run_day = run_day
        self.replay = replay
        self.poll_seconds = poll_seconds

    def _day(self, context: Any) -> str:
        from mlops_airflow.operators import logical_day
        from pipelines.config import load_usecase

        if self.run_day:
            return str(self.run_day)
        return logical_day(context, load_usecase(self.usecase).time.timezone)

    def _decide(self, state: dict[str, Any]) -> bool:
        from airflow.sdk.exceptions import AirflowFailException

        if state.get("failure"):
            raise AirflowFailException(state["failure"])
        return bool(state.get("ready"))

    def poke(self, context: Any) -> bool:
        return self._decide(_features_readiness(self.usecase, self._day(context), None))

    def execute(self, context: Any) -> dict[str, Any] | None:
        if str(self.replay).strip().lower() in ("true", "1", "yes"):
            self.log.info("Replay: the score step judges every day from the recorded arrivals; not waiting")
            return None
        day = self._day(context)
        state = _features_readiness(self.usecase, day, None)
        if self._decide(state):
            self.log.info("Features of %s are ready for the score run of %s", state["day"], day)
            return state
        self.log.info("Features of %s not ready; deferring until %s", state["day"], state["deadline"])
        self.defer(
            trigger=FeaturesReadyTrigger(self.usecase, day, self.poll_seconds),
            method_name="execute_complete",
        )
        return None

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        state = event or {}
        self._decide(state)
        self.log.info("Features of %s are ready", state.get("day"))
        return state
