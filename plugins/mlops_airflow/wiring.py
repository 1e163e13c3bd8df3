"""Shared DAG settings derived from a use case: ids, schedules, owners, retries, tags and docs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from pipelines.config import UseCase, list_usecases, load_usecase


def usecases() -> list[UseCase]:
    """Every use case declared in config/usecases/ (validated; a bad file fails the DAG import with its message)."""
    return [load_usecase(name) for name in list_usecases()]


def raw_asset_name(usecase: UseCase) -> str:
    return f"{usecase.name}_raw"


def dag_kwargs(usecase: UseCase, kind: str, *, schedule: Any, doc: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``DAG(...)`` of one lifecycle DAG of ``usecase``."""
    return {
        "dag_id": f"{usecase.name}_{kind}",
        "schedule": schedule,
        # cron schedules are read in the use case's time zone (score at 18:00 New York time, DST included)
        "start_date": pendulum.parse(usecase.schedules.start_date, tz=usecase.time.timezone),
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["mlops", usecase.name, kind, *usecase.tags],
        "doc_md": f"### {usecase.name}: {kind}\n\n{doc}\n\n*Use case:* {usecase.description}",
        "default_args": {
            "owner": usecase.owner,
            "retries": 2,
            "retry_delay": timedelta(minutes=2),
            "retry_exponential_backoff": True,
        },
        **extra,
    }
