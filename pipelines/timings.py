"""Where a step's time goes: its fixed costs apart from its work.

A step pays some costs whatever its data: the interpreter's start (a step run as its own process or container),
first imports (pandas, Great Expectations, MLflow, scikit-learn, PySpark: seconds each), the configuration, the
SparkSession's start, the Great Expectations context and suites, the MLflow client and its store. A second step in
the same process (an Airflow ``dag.test``, the demo's direct runner) finds most of them paid. :func:`step_timer`
records them while a step runs; the code that pays one wraps it in :func:`fixed_cost`; the step's result carries::

    "timings": {"total_s": 4.1, "fixed_s": 2.9, "work_s": 1.2,
                "fixed": {"imports": 2.2, "config": 0.1, "gx_context": 0.6, ...}}

``work_s`` is ``total_s - fixed_s``: everything else the step did (reading, validating, fitting, writing).
Imports are timed by a hook on ``builtins.__import__`` while the step runs, in the step's thread only, and only
where an import statement loads a module not loaded before; a fixed cost that imports (a SparkSession start
importing PySpark) counts once, under its own name.
"""

from __future__ import annotations

import builtins
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


class StepTimer:
    """The fixed costs of one running step (seconds by name) and its start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.fixed: dict[str, float] = {}
        self.thread = threading.get_ident()
        self.depth = 0  # > 0 inside a fixed cost already being timed: nested ones are not counted again

    def add(self, name: str, seconds: float) -> None:
        self.fixed[name] = self.fixed.get(name, 0.0) + seconds

    def result(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """``total_s``, ``fixed_s``, ``work_s`` and the fixed parts, in seconds (``extra``: fixed costs paid
        before the timer started, such as the interpreter's start, added to both the total and the fixed part)."""
        fixed = {**(extra or {}), **self.fixed}
        total = time.perf_counter() - self.started + sum((extra or {}).values())
        fixed_s = sum(fixed.values())
        return {
            "total_s": round(total, 3),
            "fixed_s": round(fixed_s, 3),
            "work_s": round(max(total - fixed_s, 0.0), 3),
            "fixed": {name: round(seconds, 3) for name, seconds in sorted(fixed.items())},
        }


_current: StepTimer | None = None


@contextlib.contextmanager
def fixed_cost(name: str, imports_apart: bool = False) -> Iterator[None]:
    """Count the block's seconds as the running step's fixed cost ``name`` (nothing when no step is timed, in
    another thread, or inside another fixed cost). First imports in the block count as ``name`` too, or as
    ``imports`` with ``imports_apart`` (reading the configuration is quick; the first imports it triggers are not)."""
    timer = _current
    if timer is None or timer.thread != threading.get_ident() or timer.depth:
        yield
        return
    if not imports_apart:
        timer.depth += 1
    imported = timer.fixed.get("imports", 0.0)
    start = time.perf_counter()
    try:
        yield
    finally:
        if not imports_apart:
            timer.depth -= 1
        nested = timer.fixed.get("imports", 0.0) - imported if imports_apart else 0.0
        timer.add(name, time.perf_counter() - start - nested)


def _timed_import(original: Any) -> Any:
    def timed(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        timer = _current
        if (
            timer is None
            or timer.depth
            or level
            or (name in sys.modules and not fromlist)
            or timer.thread != threading.get_ident()
        ):
            return original(name, globals, locals, fromlist, level)
        loaded = len(sys.modules)
        timer.depth += 1
        start = time.perf_counter()
        try:
            return original(name, globals, locals, fromlist, level)
        finally:
            timer.depth -= 1
            if len(sys.modules) != loaded:  # something new was loaded: a first import
                timer.add("imports", time.perf_counter() - start)

    timed.__wrapped__ = original  # type: ignore[attr-defined]
    return timed


@contextlib.contextmanager
def step_timer() -> Iterator[StepTimer]:
    """Time the step run in the block (see the module docstring). Nested: the outer step's timer is kept."""
    global _current
    if _current is not None:
        yield _current
        return
    timer = StepTimer()
    original = builtins.__import__
    _current = timer
    builtins.__import__ = _timed_import(original)
    try:
        yield timer
    finally:
        if getattr(builtins.__import__, "__wrapped__", None) is original:
            builtins.__import__ = original
        _current = None


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where unknown: the interpreter's start and
    the imports before a step's first line, in a process started for the step."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        import os

        ticks = os.sysconf("SC_CLK_TCK")
        return max(uptime - int(fields[19]) / ticks, 0.0)
    except (OSError, ValueError, IndexError):
        return None
