"""Named points where a fault-injection test can stop a step: ``MLOPS_FAILPOINTS=name[,name...]`` makes
:func:`failpoint` of those names pause (``MLOPS_FAILPOINT_PAUSE_S`` seconds, default 600), so a test can kill the
process at that exact point instead of at whatever point a timer happens to reach (the idea of TiKV's fail-rs or
FoundationDB's buggify, reduced to a pause). Unset, as in production, a failpoint is one environment lookup.

The points: ``register.version_created`` (a model version created, its description and the step's result not yet
written: a retry must find that version, not create a second one)."""

from __future__ import annotations

import os
import sys
import time

FAILPOINTS_ENV = "MLOPS_FAILPOINTS"
PAUSE_ENV = "MLOPS_FAILPOINT_PAUSE_S"


def failpoint(name: str) -> None:
    """Pause here when ``name`` is listed in ``MLOPS_FAILPOINTS`` (saying so on stderr); otherwise return."""
    names = os.environ.get(FAILPOINTS_ENV)
    if not names or name not in {n.strip() for n in names.split(",")}:
        return
    seconds = float(os.environ.get(PAUSE_ENV, "600"))
    print(f"failpoint {name}: pausing {seconds:.0f} s ({FAILPOINTS_ENV})", file=sys.stderr, flush=True)
    time.sleep(seconds)
