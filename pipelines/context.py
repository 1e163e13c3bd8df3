"""What every step receives: the typed use case, the logical date, the platform profile and the lake."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

from pipelines.config import Profile, UseCase
from pipelines.lake import Lake

MANUAL_RUN = "manual"  # the run of a step started from the command line (no MLOPS_RUN_ID)
_SAFE_RUN = re.compile(r"[A-Za-z0-9._-]+")


def safe_run_id(run: str) -> str:
    """``run`` as one segment of an object key: unchanged when it has only letters, digits, ``.``, ``_`` and
    ``-`` (``manual``); else those characters kept, the others replaced by ``_``, and 8 hex characters of the
    id's SHA-256 appended, so two run ids never share a key (``manual__2013-02-01T09:00:00+00:00`` ->
    ``manual__2013-02-01T09_00_00_00_00-<hash>``)."""
    if _SAFE_RUN.fullmatch(run) and run.strip(".") and not run.startswith("-"):
        return run
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", run).strip("._-") or "run"
    return f"{readable}-{hashlib.sha256(run.encode()).hexdigest()[:8]}"


def run_key(usecase: str, day: date | str, step: str, run: str) -> str:
    """``runs/<usecase>/<step>/date=<D>/run=<run>``: where ``step`` of one orchestrator run (``MLOPS_RUN_ID``,
    ``manual`` from the command line) keeps its ``result.json`` for the logical date ``day``. Keyed by run, so a
    manual ``<uc>_train`` run and the ``<uc>_train_nightly`` run of one date never read or overwrite each other's
    results; the date stays in the key for lookup (a date's runs are the folders under its ``date=`` prefix)."""
    return f"{Lake.dated_key('runs', usecase, day, step)}/run={safe_run_id(run)}"


def run_result_key(usecase: str, day: date | str, step: str, run: str) -> str:
    """The ``result.json`` of ``step`` in ``run`` for ``day`` (see :func:`run_key`)."""
    return f"{run_key(usecase, day, step, run)}/result.json"


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

    def run_key(self, step: str, day: date | None = None, run: str | None = None) -> str:
        """Where ``step`` of this run (``run_id`` unless ``run`` names another) keeps its result for this use
        case and date (runs zone; see :func:`run_key`): a step reads its own run's predecessors."""
        return run_key(self.usecase.name, day or self.day, step, run or self.run_id)

    def report_prefix(self, report: str) -> str:
        """``reports/<usecase>/<report>/date=<D>/run=<run>``: a report of this run (the evaluation report, which
        this run's gate completes with its decision)."""
        return (
            f"{Lake.dated_key('reports', self.usecase.name, self.day, report)}/run={safe_run_id(self.run_id)}"
        )

    @cached_property
    def code_version(self) -> str:
        return code_version()

    @property
    def run_id(self) -> str:
        """The orchestrator's run of this step (``MLOPS_RUN_ID``, set by the Airflow operator), else ``manual``."""
        return os.environ.get("MLOPS_RUN_ID") or MANUAL_RUN


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
