"""A training window's rows, read the same way wherever they are needed: the train step fits on them, evaluation
and report read its holdout back (pipelines.evaluation.evaluation_data), and lineage reloads a registered model's rows.

The window's parts (train, validation when the split has one, holdout) are dated before the training date, ends
exclusive (:func:`training_window`); their rows come from one features table version joined by the feature keys
and the date to one labels table version, kept when the label was known before the training date
(:func:`read_labeled`), the train rows capped by a seeded sample (:func:`training_frames`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.lake import (
    DATE,
    LakeError,
    PartitionInfo,
    Snapshot,
    content_hash,
    features_table,
    labels_table,
)


def training_window(
    day: date, train_window_days: int, holdout_days: int, validation_days: int = 0
) -> dict[str, str]:
    """ISO dates of the train, validation (when ``validation_days``) and holdout windows before ``day``, in that
    order and ends exclusive: the candidates are fitted on train, their decision threshold is chosen on
    validation, and they are judged on the holdout."""
    holdout_start = day - timedelta(days=holdout_days)
    train_end = holdout_start - timedelta(days=validation_days)
    window = {
        "train_start": (day - timedelta(days=train_window_days)).isoformat(),
        "train_end": train_end.isoformat(),
    }
    if validation_days:
        window |= {"validation_start": train_end.isoformat(), "validation_end": holdout_start.isoformat()}
    return window | {"holdout_start": holdout_start.isoformat(), "holdout_end": day.isoformat()}


def window_parts(window: dict[str, str]) -> list[str]:
    """The parts of a training window, in time order: train, validation (when it has one), holdout."""
    return ["train", *(["validation"] if "validation_start" in window else []), "holdout"]


def features_snapshot(ctx: StepContext, version: int | None = None) -> Snapshot:
    """The use case's features table at ``version`` (latest when None)."""
    return ctx.lake.snapshot(features_table(ctx.usecase.name), version)


def labels_snapshot(ctx: StepContext, version: int | None = None) -> Snapshot:
    """The use case's labels table at ``version`` (latest when None; an empty snapshot when ``version`` is None
    and the table does not exist yet)."""
    return ctx.lake.snapshot(labels_table(ctx.usecase.name), version)


def recorded_labels(ctx: StepContext, result: dict[str, Any]) -> Snapshot:
    """The labels version a train result (or lineage) read; StepFailed for a result written before labels had
    their own table."""
    if "labels_version" not in result:
        raise StepFailed(
            f"the train result for {ctx.ds} records no labels table version (written by an older release); rerun "
            f"train (python -m pipelines train --usecase {ctx.usecase.name} --date {ctx.ds})"
        )
    version = result["labels_version"]
    if version is None:  # no labels table when train ran: no labels
        return Snapshot(
            labels_table(ctx.usecase.name), ctx.lake.table_uri(labels_table(ctx.usecase.name)), None, {}
        )
    try:
        return labels_snapshot(ctx, int(version))
    except LakeError as exc:
        raise StepFailed(f"{exc}; rerun train for {ctx.ds}") from None


def served_dates(usecase: Any, snapshot: Snapshot, window: dict[str, str]) -> str:
    """What the features table can train on, for an error about a date it cannot: its first and last partition
    and the dates a training run of ``window``'s length may be given, or how to build features."""
    days = sorted(snapshot.partitions)
    if not days:
        return (
            f"the features table has no partitions yet: run ingest and features first (python -m pipelines "
            f"features --usecase {usecase.name} --date D)"
        )
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    starts = [date.fromisoformat(v) for k, v in window.items() if k.endswith("_start")]
    ends = [date.fromisoformat(v) for k, v in window.items() if k.endswith("_end")]
    length = (max(ends) - min(starts)).days if starts and ends else usecase.min_window_days
    earliest = first + timedelta(days=length)
    newest = last + timedelta(days=1)
    dates = f"from {earliest} to {newest}" if earliest <= newest else f"none yet (the newest is {newest})"
    return (
        f"the features table holds {len(days)} partitions, {first} to {last}: a training run's date (its "
        f"window's end) can be {dates}; for other dates run ingest and features first"
    )


def window_partitions(snapshot: Snapshot, start: str, end: str) -> dict[str, PartitionInfo]:
    """Partitions of a features snapshot with ``start <= date < end``, by ISO date."""
    return {day: part for day, part in snapshot.partitions.items() if start <= day < end}


def labels_known_before(ctx: StepContext, window: dict[str, str]) -> datetime:
    """Training on ``window`` uses only outcomes known before the start (local midnight) of the day the window
    ends, the training date: what a training run on that date could have seen."""
    return ctx.usecase.time.local_midnight(date.fromisoformat(window["holdout_end"]))


def read_labeled(
    ctx: StepContext,
    snapshot: Snapshot,
    partitions: dict[str, PartitionInfo],
    columns: list[str],
    known_before: datetime,
    counts: dict[str, Any] | None = None,
    labels: Snapshot | None = None,
) -> Any:
    """Rows of ``partitions`` of one features version (oldest first) joined by the feature keys and the date to
    their labels in one ``labels`` version (latest when None), kept when the label was known before
    ``known_before``; StepFailed names the table, the version and the partitions to rebuild. Given ``counts``
    (a dict), fills it with :func:`label_counts` of the rows read."""
    import pandas as pd

    from pipelines.config import OUTCOME_KNOWN_AT

    usecase = ctx.usecase
    label = usecase.target.column
    if labels is None:
        labels = labels_snapshot(ctx)
    if counts is not None:
        counts.update(label_counts(ctx, None, known_before))
    if not partitions:
        return pd.DataFrame(columns=columns)
    where = f"{snapshot.uri} (version {snapshot.version})"
    keys = [k for k in usecase.features.keys if k != DATE]
    event_time = [usecase.time.event_time] if counts is not None else []
    wanted = list(dict.fromkeys([*keys, *[c for c in columns if c != label], DATE, *event_time]))
    for day, part in partitions.items():
        listed = part.facts.get("columns")
        missing = [c for c in wanted if c != DATE and listed is not None and c not in listed]
        if missing:
            raise StepFailed(
                f"{where}: columns {missing} are missing from the feature partition of {day}; rerun the "
                f"features step for {day} (python -m pipelines features --usecase {usecase.name} --date "
                f"{day} --rebuild)"
            )
    try:
        frame = ctx.lake.read_frame(snapshot.table, sorted(partitions), wanted, snapshot.version)
        labelled_days = sorted(d for d in partitions if d in labels.partitions)
        label_rows = (
            ctx.lake.read_frame(
                labels.table, labelled_days, [*keys, DATE, label, OUTCOME_KNOWN_AT], labels.version
            )
            if labelled_days
            else pd.DataFrame(columns=[*keys, DATE, label, OUTCOME_KNOWN_AT])
        )
    except LakeError as exc:
        raise StepFailed(f"{exc}; rerun the features step for the window's days") from None
    if label_rows.duplicated([*keys, DATE]).any():
        raise StepFailed(
            f"{labels.uri} (version {labels.version}): several labels for one event (keys {keys} and date); "
            "rerun the features step with --rebuild for the window's days"
        )
    frame = frame.merge(label_rows, on=[*keys, DATE], how="left", validate="many_to_one")
    labels_ = pd.to_numeric(frame[label], errors="coerce")
    bad = [] if usecase.task == "regression" else sorted(set(labels_.dropna().unique()) - {0, 1})
    if bad:
        days = sorted(frame.loc[labels_.isin(bad), DATE].unique())
        raise StepFailed(
            f"{labels.uri} (version {labels.version}): label column {label!r} has values {bad[:5]} on "
            f"{days[:5]} (expected 0/1 or null); fix the target in the features step"
        )
    frame[label] = labels_
    known = pd.to_datetime(frame[OUTCOME_KNOWN_AT], utc=True) < pd.Timestamp(known_before)
    if counts is not None:
        counts.update(label_counts(ctx, frame.assign(_labelled=labels_.notna() & known), known_before))
    frame = frame[labels_.notna() & known].sort_values(DATE, kind="stable").reset_index(drop=True)
    return frame[columns]


def label_counts(ctx: StepContext, frame: Any, known_before: datetime) -> dict[str, Any]:
    """Of the events of ``frame`` (a features frame with the event time, ``date`` and ``_labelled``: label known
    before ``known_before``): how many there are, how many had their outcome due before ``known_before`` (event
    time + ``time.outcome.label_delay``), how many of those are labelled, and the unlabelled ones (outcome due but
    never arrived), in all and by date. ``frame`` None: no events."""
    import pandas as pd

    if frame is None or len(frame) == 0:
        return {"events": 0, "events_due": 0, "labelled": 0, "unlabelled_events": 0, "unlabelled_by_day": {}}
    delay = pd.Timedelta(seconds=ctx.usecase.time.outcome.delay_seconds)
    event_time = pd.to_datetime(frame[ctx.usecase.time.event_time], utc=True)
    due = (event_time + delay) < pd.Timestamp(known_before)
    labelled = frame["_labelled"].to_numpy(dtype=bool) & due.to_numpy(dtype=bool)
    unlabelled = due.to_numpy(dtype=bool) & ~frame["_labelled"].to_numpy(dtype=bool)
    by_day = frame.loc[unlabelled, DATE].astype(str).value_counts().sort_index()
    return {
        "events": len(frame),
        "events_due": int(due.sum()),
        "labelled": int(labelled.sum()),
        "unlabelled_events": int(unlabelled.sum()),
        "unlabelled_by_day": {str(day): int(n) for day, n in by_day.items()},
    }


@dataclass
class TrainingFrames:
    """The labeled train and holdout rows of one window, read from one features version."""

    train: Any
    holdout: Any
    partitions: dict[str, PartitionInfo]
    validation: Any = None
    label_counts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by part, when counted
    labels: Snapshot | None = None  # the labels version joined to the features
    label_partitions: dict[str, PartitionInfo] = field(default_factory=dict)
    # event keys read beside the model columns (lineage's reload shows them); left out of every content hash, so
    # the hashes are those of what the models saw, whether the keys were read or not
    key_columns: list[str] = field(default_factory=list)

    def content_hash(self, frame: Any) -> str:
        """:func:`content_hash` of ``frame`` without the key columns."""
        return content_hash(frame.drop(columns=self.key_columns) if self.key_columns else frame)

    def hashes(self) -> dict[str, str]:
        """Content hashes of the train rows (after the seeded subsample), the validation rows (when the window has
        them) and the holdout rows."""
        found = {"train": self.content_hash(self.train), "holdout": self.content_hash(self.holdout)}
        if self.validation is not None:
            found["validation"] = self.content_hash(self.validation)
        return found

    def fitted_rows(self, parts: list[str], max_rows: int | None, seed: int) -> Any:
        """The rows a model fitted on the window ``parts`` saw: the train rows for ``["train"]`` (the candidates
        that were not chosen), :meth:`final_fit_rows` for ``["train", "validation"]`` (the chosen one's refit)."""
        if parts == ["train"]:
            return self.train
        if parts == ["train", "validation"] and self.validation is not None:
            return self.final_fit_rows(max_rows, seed)
        raise StepFailed(f"no model is fitted on the window parts {parts} (train, or train + validation)")

    def final_fit_rows(self, max_rows: int | None, seed: int) -> Any:
        """What the logged model is fitted on: the train rows, and once a threshold was chosen on the validation
        rows, train and validation together (capped at ``max_rows`` by a seeded sample), the way scikit-learn's
        ``TunedThresholdClassifierCV(refit=True)`` refits once the threshold is found (the threshold then moves
        to the refit's scores: :func:`registered_decision`)."""
        import pandas as pd

        if self.validation is None:
            return self.train
        rows = pd.concat([self.train, self.validation], ignore_index=True)
        if max_rows and len(rows) > max_rows:
            rows = rows.sample(n=max_rows, random_state=seed).sort_index()
        return rows


def training_frames(
    ctx: StepContext,
    snapshot: Snapshot,
    window: dict[str, str],
    count_labels: bool = False,
    labels: Snapshot | None = None,
    keys: bool = False,
) -> TrainingFrames:
    """The labeled train and holdout rows of ``window`` from one features version joined to one ``labels``
    version (latest when None), the train rows capped at ``split.max_train_rows`` by a seeded sample: what train
    fits on, and what lineage reloads. With ``count_labels``, each part's :func:`label_counts` too; with
    ``keys``, the event keys and the date lead each frame (same rows, same order, same hashes)."""
    from pipelines import modeling

    usecase, split = ctx.usecase, ctx.usecase.split
    parts = {
        part: window_partitions(snapshot, window[f"{part}_start"], window[f"{part}_end"])
        for part in window_parts(window)
    }
    for part, found in parts.items():
        if not found:
            raise StepFailed(
                f"no committed feature partitions in {snapshot.uri} (version {snapshot.version}) for the {part} "
                f"window [{window[f'{part}_start']}, {window[f'{part}_end']}); {served_dates(usecase, snapshot, window)}",
                {"window": window},
            )
    model_columns = [*modeling.feature_columns(usecase), usecase.target.column]
    # only the keys that are not model columns are extra (a key that is a feature is hashed as one)
    key_columns = (
        [k for k in dict.fromkeys([*usecase.features.keys, DATE]) if k not in model_columns] if keys else []
    )
    columns = [*key_columns, *model_columns]
    progress(
        f"train: reading {' + '.join(str(len(found)) for found in parts.values())} feature partitions "
        f"({', '.join(parts)}) of version {snapshot.version}"
    )
    known_before = labels_known_before(ctx, window)
    counts: dict[str, dict[str, Any]] = {part: {} for part in parts} if count_labels else {}
    if labels is None:
        labels = labels_snapshot(ctx)
    frames = {
        part: read_labeled(ctx, snapshot, found, columns, known_before, counts.get(part), labels)
        for part, found in parts.items()
    }
    train = frames["train"]
    if split.max_train_rows and len(train) > split.max_train_rows:
        train = train.sample(n=split.max_train_rows, random_state=split.seed).sort_index()
    every = {day: info for found in parts.values() for day, info in found.items()}
    labelled = {day: labels.partitions[day] for day in every if day in labels.partitions}
    return TrainingFrames(
        train, frames["holdout"], every, frames.get("validation"), counts, labels, labelled, key_columns
    )
