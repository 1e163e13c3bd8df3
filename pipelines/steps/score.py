"""Score ahead: the champion predicts the events whose prediction time is on the logical date, before they happen.

Runs at the use case's prediction time (``schedules.score``, e.g. 18:00 local), after the DAG's sensor saw the
features of the day it predicts (pipelines.features.scoring_time). For logical date D it scores every event date E with an
online feature snapshot (``features_online/<usecase>``, published by the features step) and
D - ``schedules.score_catch_up_days`` < E - ``days_before`` <= D that has no predictions partition yet and whose
events had arrived by the run's time + ``schedules.score_grace`` (a missed evening is caught up, a rerun scores
nothing twice). Every prediction carries ``scored_at`` (the run's time: ``--scored-at``, the Airflow logical date)
and ``scored_late`` (made after its prediction time); days of the window left without predictions are listed in
the result with why. ``--replay`` scores a batch of history as the schedule's runs would have, one by one, from
the recorded arrivals, so a batched replay writes the predictions a day-by-day run writes. The events are the primary source's rows of E (at the raw
version the snapshot was built from) and their model inputs come from :func:`pipelines.features.online.feature_frame`, the
function a live service uses: batch and online compute features with the same code, as of E's prediction time, so
the scorer never needs the outcome. A model scores only events predicted on or after its training date (tag
``logical_date``): it never predicts events whose prediction time came before it existed or days it was trained or
evaluated on.
The champion is looked up once by alias and loaded by its pinned version, so a promotion during the run cannot mix
two models. Lookups are read from one version of the snapshot table; every prediction row records the model
version, that snapshot version and its prediction time. All new partitions are one commit to the Delta
table ``predictions/<usecase>``; a concurrent commit to the same partitions makes the step plan again.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.features.online import feature_frame, read_records, read_snapshots
from pipelines.features.scoring_time import (
    SCORED_AT,
    SCORED_LATE,
    due_at,
    events_arrived_at,
    replayed_runs,
    scoring_plan,
)
from pipelines.lake import (
    COMMIT_ATTEMPTS,
    DATE,
    CommitConflict,
    Snapshot,
    features_table,
    online_table,
    predictions_table,
    raw_table,
)
from pipelines.modeling.batch_scoring import score_frame

if TYPE_CHECKING:
    import pandas as pd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scored-at",
        type=_moment,
        default=None,
        help="the time of this run (ISO, e.g. the Airflow run's logical date); default: the run's due time, "
        "the prediction time of the events it predicts",
    )
    parser.add_argument(
        "--replay",
        type=_flag,
        nargs="?",
        const=True,
        default=False,
        help="score as every run of the schedule would have, from the recorded arrivals (a batched replay of "
        "history): each day gets the time of the first run that could score it",
    )


def _moment(text: str) -> datetime | None:
    if not text.strip():
        return None
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--scored-at needs a time zone, got {text!r}")
    return moment.astimezone(UTC)


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", ""):
        raise argparse.ArgumentTypeError(f"--replay: expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def scoring_window(ctx: StepContext) -> list[str]:
    """Every event date a run on ``ctx.day`` can score or report, live or replayed: the catch-up windows of the
    runs :func:`pipelines.features.scoring_time.replayed_runs` gives (each run's own window ends at the date it predicts,
    ``schedules.score_catch_up_days`` long). The step reads the snapshots and predictions of these dates only,
    so its cost does not grow with the history in the lake."""
    last = ctx.usecase.time.predicted_through(ctx.day)
    span = 2 * ctx.usecase.schedules.score_catch_up_days
    return [(last - timedelta(days=k)).isoformat() for k in range(span, -1, -1)]


def plan_scoring(
    ctx: StepContext,
    online: Snapshot,
    scored_dates: set[str],
    not_before: date | None,
    scored_at: datetime | None = None,
    replay: bool = False,
) -> dict[str, datetime]:
    """Event dates this run scores, each with the time it is scored at (pipelines.features.scoring_time.scoring_plan):
    a live run scores, at its own time, what had arrived by then + grace in its catch-up window; a replay gives
    each date the time of the first scheduled run that could have scored it."""
    available = {day: events_arrived_at(part.facts) for day, part in online.partitions.items()}
    if replay:
        runs = replayed_runs(ctx.usecase, ctx.day, not_before)
    else:
        runs = [(ctx.day, scored_at or due_at(ctx.usecase, ctx.day))]
    return scoring_plan(ctx.usecase, available, runs, scored_dates, not_before, own_day_required=replay)


def unscored_days(
    ctx: StepContext, online: Snapshot, scored_dates: set[str], not_before: date | None
) -> list[dict[str, str]]:
    """The dates of the catch-up window that have no predictions, each with why (never silent)."""
    last = ctx.usecase.time.predicted_through(ctx.day)
    days_before = timedelta(days=ctx.usecase.time.prediction_time.day_offset)
    first = last - timedelta(days=ctx.usecase.schedules.score_catch_up_days - 1)
    if not_before is not None:
        first = max(first, not_before + days_before)
    missing = []
    for k in range((last - first).days + 1):
        day = (first + timedelta(days=k)).isoformat()
        if day in scored_dates:
            continue
        why = (
            "its events arrived after this run's deadline (a later run scores them, late)"
            if day in online.partitions
            else "no features: no events of that day have landed"
        )
        missing.append({"date": day, "why": why})
    return missing


def check_snapshots(ctx: StepContext, online: Snapshot, days: list[str]) -> None:
    """Each snapshot to score was built with the current features configuration (else its lookups may not be
    the ones the model's features need)."""
    from pipelines.features.feature_identity import features_config_hash

    wanted = features_config_hash(ctx.usecase)
    for day in days:
        built_with = online.partitions[day].facts.get("config_hash")
        if built_with != wanted:
            raise StepFailed(
                f"{online.uri}/{DATE}={day} (version {online.version}): built with features config {built_with}, "
                f"not the current {wanted}; rebuild the features of {day} with the current use case config "
                f"(python -m pipelines features --usecase {ctx.usecase.name} --date {day} --start {day} --rebuild)"
            )


def features_of(ctx: StepContext, online: Snapshot, days: list[str]) -> pd.DataFrame:
    """The events of ``days`` with their features, computed from their records and online snapshots (the
    function a live request goes through), each day's records read at the raw version its snapshot was built
    from. With per-event prediction times the features are each event's own, read from the features table
    version written with the snapshot (one snapshot per day cannot hold a time per event)."""
    import pandas as pd

    if ctx.usecase.time.prediction_time.per_event:
        return _features_table_rows(ctx, online, days)
    primary = raw_table(ctx.usecase.name, ctx.usecase.features.primary_source)
    snapshots = read_snapshots(ctx.lake, ctx.usecase, days, online.version)
    frames = []
    for day in days:
        raw_version = online.partitions[day].facts.get("raw_versions", {}).get(primary)
        if day not in snapshots or raw_version is None:
            raise StepFailed(
                f"{online.uri}/{DATE}={day} (version {online.version}): the snapshot or the raw version it was "
                f"built from is missing; rebuild the features of {day} (python -m pipelines features --usecase "
                f"{ctx.usecase.name} --date {day} --start {day} --rebuild)"
            )
        records = read_records(ctx.lake, ctx.usecase, [day], int(raw_version))
        frame = feature_frame(ctx.usecase, records, snapshots[day])
        frame[DATE] = day
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _features_table_rows(ctx: StepContext, online: Snapshot, days: list[str]) -> pd.DataFrame:
    """The features of ``days`` as the features step wrote them with each day's snapshot."""
    import pandas as pd

    frames = []
    for day in days:
        version = online.partitions[day].facts.get("features_version")
        if version is None:
            raise StepFailed(
                f"{online.uri}/{DATE}={day} (version {online.version}): the features version it was built with "
                f"is not recorded; rebuild the features of {day} (python -m pipelines features --usecase "
                f"{ctx.usecase.name} --date {day} --start {day} --rebuild)"
            )
        frame = ctx.lake.read_frame(features_table(ctx.usecase.name), [day], version=int(version))
        frame[DATE] = day
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run(ctx: StepContext, args: argparse.Namespace) -> dict[str, Any]:
    """Score the unscored feature partitions of the catch-up window with the champion."""
    from pipelines.modeling.tracking import (
        champion_version,
        configure_mlflow,
        decision_threshold,
        load_model,
        model_name,
    )

    uc = ctx.usecase.name
    result_key = f"{ctx.run_key('score')}/result.json"
    result_uri = ctx.lake.storage.uri(result_key)
    configure_mlflow(ctx.profile, ctx.usecase)
    champion = champion_version(ctx.usecase)
    if champion is None:
        progress(f"score: model {model_name(ctx.usecase)!r} has no champion yet; nothing scored")
        result = {
            "scored": [],
            "rows": 0,
            "model_version": None,
            "partitions": [],
            "reason": "no champion yet",
            "result_uri": result_uri,
        }
        ctx.lake.write_json(result_key, result)
        return result

    online = ctx.lake.snapshot(online_table(uc), dates=scoring_window(ctx))
    trained_on = (champion.tags or {}).get("logical_date")
    not_before = date.fromisoformat(trained_on) if trained_on else None
    version, run_id = int(champion.version), champion.run_id
    model_uri = f"models:/{model_name(ctx.usecase)}/{version}"
    model = None
    commit = None
    todo: list[str] = []
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        scored = ctx.lake.snapshot(predictions_table(uc), facts=False, dates=scoring_window(ctx))
        plan = plan_scoring(
            ctx,
            online,
            set(scored.partitions),
            not_before,
            getattr(args, "scored_at", None),
            bool(getattr(args, "replay", False)),
        )
        todo = sorted(plan)
        late = [
            day for day in todo if plan[day] > ctx.usecase.time.prediction_time_of(date.fromisoformat(day))
        ]
        progress(
            f"score: champion version {version}; {len(todo)} partition(s) to score: {todo}"
            + (f"; {len(late)} after their prediction time (late): {late}" if late else "")
        )
        if not todo:
            break
        if model is None:
            model = load_model(model_uri)
        threshold = decision_threshold(model) if ctx.usecase.task == "classification" else None
        where = f"{online.uri} (version {online.version})"
        check_snapshots(ctx, online, todo)
        frame = features_of(ctx, online, todo)
        predictions = score_frame(ctx, model, frame, version, run_id, int(online.version or 0), where, plan)
        # a day is late when any of its predictions is (with a time per event, the rows decide, not the day)
        late = sorted(set(predictions.loc[predictions[SCORED_LATE], DATE].astype(str)))
        facts = {
            day: {
                "model_version": version,
                "decision_threshold": threshold,
                "model_run_id": run_id,
                "model_uri": model_uri,
                "snapshot_version": online.version,
                "snapshot_content": online.partitions[day].content_id,
                "features_version": online.partitions[day].facts.get("features_version"),
                "scored_for": ctx.ds,
                SCORED_AT: plan[day].isoformat(),
                SCORED_LATE: day in late,
            }
            for day in todo
        }
        try:
            commit = ctx.lake.write_partitions(
                predictions_table(uc),
                predictions,
                read_version=scored.version,
                facts=facts,
                commit_info={"mlops.step": "score", "mlops.date": ctx.ds, "mlops.model_version": version},
            )
        except CommitConflict as conflict:
            if attempt == COMMIT_ATTEMPTS:
                raise StepFailed(str(conflict), {"scored": [], "rows": 0}) from None
            progress(f"score: {conflict}; planning again")
            continue
        progress(f"score: committed {commit.table} version {commit.version}: {commit.rows} rows")
        break
    done = set(ctx.lake.snapshot(predictions_table(uc), facts=False, dates=scoring_window(ctx)).partitions)
    unscored = unscored_days(ctx, online, done, not_before)
    if unscored:
        progress(f"score: {len(unscored)} day(s) of the catch-up window have no predictions: {unscored[:5]}")
    late_rows = int(predictions[SCORED_LATE].sum()) if commit else 0
    result = {
        "scored": commit.dates if commit else [],
        "rows": commit.rows if commit else 0,
        "rows_late": late_rows,
        "late": [day for day in (commit.dates if commit else []) if day in late],
        "scored_at": {day: plan[day].isoformat() for day in (commit.dates if commit else [])},
        "unscored": unscored,
        "model_version": version,
        "model_run_id": run_id,
        "decision_threshold": None
        if model is None or ctx.usecase.task == "regression"
        else decision_threshold(model),
        "partitions": commit.partition_uris() if commit else [],
        "tables_read": {online.table: online.version} if online.version is not None else {},
        "tables_written": {commit.table: commit.version} if commit else {},
        "result_uri": result_uri,
    }
    ctx.lake.write_json(result_key, result)
    return result
