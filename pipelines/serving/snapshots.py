"""The online feature snapshot a request uses: for a request at time ``at``, the newest snapshot whose prediction
time is at or before ``at`` (what was known then), read from one version of ``features_online/<usecase>`` and
kept in memory. :meth:`SnapshotCache.refresh` moves to a newer table version when the features step commits one.

Each date's features config hash (``config_hash`` in its partition facts, written by the features step just after
the snapshot's commit) is kept beside it: the service answers only from a snapshot built with its model's features
config. A new table version whose newest date has no recorded hash yet (its facts are written a moment after its
commit) is taken on a later refresh, the version in use serving meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import date, datetime
from typing import Any

from pipelines.config import UseCase
from pipelines.features.online import OnlineSnapshot, read_snapshots, snapshot_day_for
from pipelines.lake import Lake, online_table


class NoSnapshot(Exception):
    """No online snapshot was made at or before the request time."""


class SnapshotCache:
    """Snapshots of one table version, by event date (the few most recent kept)."""

    def __init__(self, lake: Lake, usecase: UseCase, *, keep: int = 4) -> None:
        self.lake, self.usecase, self.keep = lake, usecase, keep
        self.version: int | None = None
        self.days: list[str] = []  # every date with a snapshot at self.version, ascending
        self.config_hashes: dict[str, str | None] = {}  # features config hash each date was built with
        self._cache: OrderedDict[str, OnlineSnapshot] = OrderedDict()
        self._lock = threading.Lock()
        self.error: str | None = None
        self.pending: str | None = None  # why a newer table version is not served yet

    def refresh(self) -> bool:
        """Read the table's newest version; True when it changed. The new version's newest snapshot is read before
        it replaces the old one (the other cached snapshots are dropped), so no request waits for the lake after a
        start or a features commit; if that read fails, the old version keeps serving and ``error`` says why."""
        table = online_table(self.usecase.name)
        try:
            snapshot = self.lake.snapshot(table, facts=False)
            version = None if snapshot.version is None else int(snapshot.version)
            if version == self.version and (not self.days or self.config_hash(self.days[-1]) is not None):
                self.error = None
                return False
            if version is not None:  # with the facts of its dates
                snapshot = self.lake.snapshot(table, version)
            days = sorted(snapshot.partitions)
            hashes = {day: snapshot.partitions[day].facts.get("config_hash") for day in days}
            if version == self.version:
                self.config_hashes = hashes  # facts recorded since the version was taken
                self.error = None
                return False
            if self.version is not None and days and hashes[days[-1]] is None:
                # its facts are not written yet (or never will be: a writer other than the features step)
                self.pending = (
                    f"version {version} is not served yet: no features config hash is recorded for {days[-1]}"
                )
                return False
            warm = read_snapshots(self.lake, self.usecase, days[-1:], version) if days else {}
        except Exception as exc:  # keep serving from what is loaded; report
            self.error = f"{self.lake.table_uri(table)} could not be read: {type(exc).__name__}: {exc}"
            return False
        with self._lock:
            self.version, self.days, self.config_hashes = version, days, hashes
            self._cache = OrderedDict(warm)
        self.pending = None
        self.error = None
        return True

    def day_for(self, at: Any) -> str:
        """The date of the snapshot serving a request at ``at``: the newest one made at or before it."""
        import bisect

        wanted = snapshot_day_for(self.usecase, at).isoformat()
        index = bisect.bisect_right(self.days, wanted)
        if index == 0:
            first = self.days[0] if self.days else None
            raise NoSnapshot(
                f"no online feature snapshot of {self.usecase.name!r} was made at or before {at} (the first is "
                f"of {first}); the features step publishes one per event date"
                if first
                else f"{self.lake.table_uri(online_table(self.usecase.name))} has no snapshot yet: run the "
                "features step"
            )
        return self.days[index - 1]

    def cached(self, at: Any) -> bool:
        """Whether the snapshot serving ``at`` is loaded (True too when none serves it: nothing to read)."""
        try:
            return self.day_for(at) in self._cache
        except NoSnapshot:
            return True

    def for_time(self, at: Any) -> OnlineSnapshot:
        """The snapshot serving a request at ``at`` (read once per table version and date)."""
        day = self.day_for(at)
        found = self._cache.get(day)
        if found is not None:
            return found
        with self._lock:
            found = self._cache.get(day)
            if found is None:
                found = read_snapshots(self.lake, self.usecase, [day], self.version)[day]
                self._cache[day] = found
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
        return found

    def newest(self) -> str | None:
        return self.days[-1] if self.days else None

    def config_hash(self, day: str) -> str | None:
        """The features config hash the snapshot of ``day`` was built with (None: not recorded)."""
        return self.config_hashes.get(day)

    def prediction_time(self, day: str) -> datetime:
        """The prediction time (UTC) of the snapshot of ``day``."""
        return self.usecase.time.prediction_time_of(date.fromisoformat(day))
