"""What every step receives: the typed use case, the logical date, the platform profile and the lake."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

from pipelines.config import Profile, UseCase
from pipelines.lake import Lake


class StepFailed(RuntimeError):
    """A step ended in a failure the user must act on (bad input, failed check).

    ``result`` is still printed as the JSON line, so callers see counts and report locations.
    """

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result or {}


@dataclass
class StepContext:
    usecase: UseCase
    day: date
    profile: Profile
    lake: Lake
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pipelines"))

    @property
    def ds(self) -> str:
        return self.day.isoformat()

    def run_key(self, step: str, day: date | None = None) -> str:
        """Where a step keeps its result for this use case and date (runs zone)."""
        return Lake.dated_key("runs", self.usecase.name, day or self.day, step)

    @cached_property
    def code_version(self) -> str:
        return code_version()

    @property
    def run_id(self) -> str:
        """The orchestrator's run of this step (``MLOPS_RUN_ID``, set by the Airflow operator), else ``manual``."""
        return os.environ.get("MLOPS_RUN_ID") or "manual"


def code_version() -> str:
    """Git commit of the code (``MLOPS_CODE_VERSION`` in containers), else the package version."""
    if os.environ.get("MLOPS_CODE_VERSION"):
        return os.environ["MLOPS_CODE_VERSION"]
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"v{version('mlops-airflow')}"
    except PackageNotFoundError:
        return "unknown"


def write_line(text: str, stream: Any = None) -> None:
    """``text`` and its newline in one write, then flushed (stdout when no stream is given).

    ``print`` writes the text and the newline separately; where stdout and stderr share one pipe or one Docker log
    stream, the other stream's line can land between the two, and a JSON result no longer starts its line."""
    stream = sys.stdout if stream is None else stream
    stream.write(f"{text}\n")
    stream.flush()


def progress(message: str) -> None:
    """Progress for long work: to stderr, so stdout's last line stays the JSON result."""
    write_line(message, sys.stderr)
