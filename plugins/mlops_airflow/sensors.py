"""Deferrable arrival sensor on the landing zone of the configured lake.

The sensor checks once in the worker; while nothing has landed it defers to :class:`LandingFilesTrigger`, which
polls the lake from the triggerer without holding a worker slot. The check is cheap (one listing of the inbox,
no Great Expectations), see ``pipelines.steps.ingest.pending_files``.
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
    from mlops_airflow.operators import patched_environ, s3_environment
    from pipelines.config import load_profile, load_usecase
    from pipelines.lake import open_lake
    from pipelines.steps.ingest import pending_files

    profile = load_profile()
    through = load_usecase(usecase).time.predicted_through(date.fromisoformat(up_to)) if up_to else None
    env = s3_environment(conn_id or profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
    with patched_environ(env):
        return pending_files(open_lake(profile.lake_uri), usecase, through)


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
    """Wait until files for the use case have landed (landing date <= the run's logical date); returns them."""

    template_fields = ("up_to",)
    ui_color = "#e8f8f5"

    def __init__(
        self,
        *,
        usecase: str,
        up_to: str | None = "{{ ds }}",
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

    def poke(self, context: Any) -> bool:
        return bool(_pending(self.usecase, self.up_to or None, None))

    def execute(self, context: Any) -> list[str] | None:
        files = _pending(self.usecase, self.up_to or None, None)
        if files:
            self.log.info("%d landed file(s) waiting: %s", len(files), files[:5])
            return files
        if not self.deferrable:
            super().execute(context)
            return _pending(self.usecase, self.up_to or None, None)
        self.defer(
            trigger=LandingFilesTrigger(self.usecase, self.up_to or None, self.poll_seconds),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )
        return None

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[str]:
        files = (event or {}).get("files") or []
        self.log.info("%d landed file(s) arrived: %s", len(files), files[:5])
        return files
