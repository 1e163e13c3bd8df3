"""`mlops backtest`: two retraining policies (never, monthly) replayed over four synthetic weeks by the real train,
evaluate, gate, register, promote and outcomes steps, each policy in its own workspace (registry, predictions).

One world: features and labels of 2013-01-01..03-12 (a learnable signal whose strongest input turns the other way
from 2013-02-08), built once for both policies."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.lake import Lake, predictions_table, predictions_with_outcomes_table

USECASE = "flight_delay"
FIRST, LAST = date(2013, 2, 11), date(2013, 3, 10)  # a Monday to a Sunday: four weeks, a month start inside
FLIP_FROM = date(2013, 2, 8)  # the inputs' relation to the outcome changes: the initial model decays


def _write_world(lake: Lake, usecase, first: date, days: int, flip_from: date) -> None:
    """Features and labels of ``days`` days from ``first``, 300 events a day; from ``flip_from`` the strongest
    input works the other way round (mirrored around its mean), so a model trained before it decays and a
    retraining after it pays."""
    from _labels import write_features_and_labels
    from _model_fixtures import synthetic_day

    column = usecase.features.numeric[0]
    frames, facts = [], {}
    for offset in range(days):
        day = first + timedelta(days=offset)
        frame = synthetic_day(usecase, day, 300)
        if day >= flip_from:
            frame[column] = 100.0 - frame[column]
        frames.append(frame)
        inputs = {source: {day.isoformat(): f"hash-{source}-{day}"} for source in sorted(usecase.sources)}
        facts[day.isoformat()] = {
            "inputs": inputs,
            "inputs_fingerprint": f"fp-{day}",
            "raw_versions": {f"raw/{usecase.name}/{s}": 0 for s in sorted(usecase.sources)},
        }
    write_features_and_labels(lake, usecase, pd.concat(frames, ignore_index=True), facts=facts)


@pytest.fixture(scope="module")
def backtest(tmp_path_factory: pytest.TempPathFactory):
    from _model_fixtures import FAST_CANDIDATES, fast_usecase, use_tmp_platform, write_config_dir

    from mlops_cli.cli import main

    tmp = tmp_path_factory.mktemp("backtest")
    with pytest.MonkeyPatch.context() as patch:
        use_tmp_platform(patch, tmp)
        usecase = fast_usecase([FAST_CANDIDATES[0]])  # logreg
        usecase = usecase.model_copy(
            update={"gate": usecase.gate.model_copy(update={"infrastructure_check": False})}
        )
        patch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp / "config", usecase)))
        lake = Lake(str(tmp / "lake"))
        _write_world(lake, usecase, date(2013, 1, 1), 71, FLIP_FROM)
        argv = ["backtest", "--usecase", USECASE, "--policy", "never,monthly"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main([*argv, "--from", FIRST.isoformat(), "--to", LAST.isoformat()])
        assert code == 0, printed.getvalue()
        prefix = f"reports/{USECASE}/backtest/{FIRST}_{LAST}"
        summary = lake.read_json(f"{prefix}/summary.json")
        yield {
            "tmp": tmp,
            "lake": lake,
            "usecase": usecase,
            "prefix": prefix,
            "summary": summary,
            "printed": printed.getvalue(),
            "policies": {p["policy"]: p for p in summary["policies"]},
            "workspace": tmp / "home" / "backtest" / USECASE / f"{FIRST}_{LAST}",
        }


def test_monthly_retrains_at_each_month_start_and_never_does_not(backtest):
    never, monthly = backtest["policies"]["never"], backtest["policies"]["monthly"]
    assert [(r["date"], r["reason"]) for r in never["retrainings"]] == [
        (FIRST.isoformat(), "initial training")
    ]
    assert [(r["date"], r["reason"]) for r in monthly["retrainings"]] == [
        (FIRST.isoformat(), "initial training"),
        ("2013-03-01", "first of the month"),
    ]
    for policy in (never, monthly):
        assert all(r["gate_passed"] for r in policy["retrainings"]), policy["retrainings"]
        assert policy["promotions"] == len(policy["retrainings"])
        assert policy["compute_seconds"] > 0 and policy["step_seconds"]["train"] > 0
        assert set(policy["step_seconds"]) >= {"train", "evaluate", "gate", "register", "promote", "score"}
        assert "not through Airflow" in policy["orchestration"]
    # a long replay shows each training as it ends, with its outcome
    for policy in (never, monthly):
        for training in policy["retrainings"]:
            line = f"{policy['policy']} {training['date']}: training"
            assert line in backtest["printed"], backtest["printed"]
            assert (
                f"promoted v{training['promoted_version']}"
                in backtest["printed"].split(line, 1)[1].split("\n")[0]
            )


def test_policies_do_not_share_champions(backtest):
    """Each policy has its own registry: both start at version 1, and after 03-01 only monthly scores with its
    second version while never keeps its first."""
    never, monthly = backtest["policies"]["never"], backtest["policies"]["monthly"]
    assert never["retrainings"][0]["promoted_version"] == monthly["retrainings"][0]["promoted_version"]
    weeks = {
        p: {w["week"]: w["model_versions"] for w in backtest["policies"][p]["weeks"]}
        for p in backtest["policies"]
    }
    assert weeks["never"]["2013-03-04"] == [1]
    assert weeks["monthly"]["2013-03-04"] == [2]
    assert weeks["never"]["2013-02-25"] == [1]
    assert weeks["monthly"]["2013-02-25"] == [1, 2]  # 03-02 onward (predicted 03-01 evening) by version 2
    for policy in ("never", "monthly"):
        assert (backtest["workspace"] / policy / "mlflow.db").exists()
        scored = Lake(str(backtest["workspace"] / policy / "lake")).read_frame(predictions_table(USECASE))
        # the first evening (FIRST) predicts FIRST + 1; nothing before the initial training is scored
        assert scored["date"].min() == (FIRST + timedelta(days=1)).isoformat()
        assert scored["date"].max() == (LAST + timedelta(days=1)).isoformat()
    # the lake the features came from got no predictions of its own
    assert backtest["lake"].version(predictions_table(USECASE)) is None


def test_weekly_live_roc_auc_only_from_predictions_made_ahead(backtest):
    """Each week's live ROC AUC is the one of its events' predictions that were made (at the prediction time, the
    evening before) ahead of their outcome and joined once the outcome was known; every labelled event counts."""
    from sklearn.metrics import roc_auc_score

    label = backtest["usecase"].target.column
    for name, policy in backtest["policies"].items():
        weeks = policy["weeks"]
        assert [w["week"] for w in weeks] == [
            "2013-02-11",
            "2013-02-18",
            "2013-02-25",
            "2013-03-04",
            "2013-03-11",
        ]
        lake = Lake(str(backtest["workspace"] / name / "lake"))
        joined = lake.read_frame(predictions_with_outcomes_table(USECASE))
        made = pd.to_datetime(joined["prediction_time"], utc=True)
        assert (pd.to_datetime(joined["scored_at"], utc=True) <= made).all()
        assert (made < pd.to_datetime(joined["outcome_known_at"], utc=True)).all()
        assert not joined["scored_late"].any()
        days = pd.to_datetime(joined["date"])
        joined = joined.assign(
            week=(days - pd.to_timedelta(days.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d")
        )
        labels = lake.read_frame("labels/flight_delay")
        scored = lake.read_frame(predictions_table(USECASE))
        labelled = scored.merge(
            labels[["year", "month", "day", "flight", "carrier", "date"]].drop_duplicates()
        )
        assert len(joined) == len(labelled)  # every scored event whose outcome arrived, the last week's too
        for week in weeks:
            rows = joined[joined["week"] == week["week"]]
            assert week["rows_ahead_with_outcome"] == len(rows) > 0
            assert week["live_roc_auc"] == pytest.approx(
                roc_auc_score(rows[label], rows["probability"]), abs=1e-4
            )
    # the flip of 02-08 decays the first model; monthly's March champion, trained across it, does better
    never = {w["week"]: w["live_roc_auc"] for w in backtest["policies"]["never"]["weeks"]}
    monthly = {w["week"]: w["live_roc_auc"] for w in backtest["policies"]["monthly"]["weeks"]}
    assert never["2013-02-11"] == monthly["2013-02-11"]
    assert monthly["2013-03-04"] > never["2013-03-04"] + 0.05


def test_table_plot_and_page_are_written(backtest):
    lake, prefix = backtest["lake"], backtest["prefix"]
    root = Path(lake.storage.local_path(prefix))
    assert (root / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (root / "index.html").read_text()
    assert (
        "data:image/png;base64," in page
        and "never" in page
        and "monthly" in page
        and "not through Airflow" in page
    )
    text = (root / "backtest.md").read_text()
    assert "| never | 1 | 1 |" in text and "| monthly | 2 | 2 |" in text
    weekly = pd.read_csv(root / "backtest.csv")
    assert set(weekly["policy"]) == {"never", "monthly"} and len(weekly) == 10
    summary = json.loads((root / "summary.json").read_text())
    assert [r["policy"] for r in summary["table"]] == ["never", "monthly"]


def test_calendar_of_each_policy():
    """When each policy trains by its calendar (drift: only on the first day; the monitor asks for the rest) and
    how far one champion scores before the policy may train again."""
    from pipelines.backtest import chunk_end, scheduled_training

    first, last = date(2013, 2, 13), date(2013, 3, 31)  # a Wednesday
    trained = {
        policy: [
            (day.isoformat(), *planned)
            for day in (first + timedelta(days=k) for k in range((last - first).days + 1))
            if (planned := scheduled_training(policy, day, first)) is not None
        ]
        for policy in ("never", "monthly", "drift", "nightly")
    }
    assert trained["never"] == trained["drift"] == [("2013-02-13", "initial training", "full")]
    assert trained["monthly"] == [
        ("2013-02-13", "initial training", "full"),
        ("2013-03-01", "first of the month", "full"),
    ]
    assert len(trained["nightly"]) == 47
    assert trained["nightly"][1] == ("2013-02-14", "nightly refresh", "refresh")
    assert ("2013-03-01", "first of the month", "full") in trained["nightly"]
    assert chunk_end("never", first, last) == date(2013, 2, 17)  # the Sunday
    assert chunk_end("monthly", date(2013, 2, 25), last) == date(2013, 2, 28)  # the day before the 1st
    assert chunk_end("drift", date(2013, 3, 25), date(2013, 3, 27)) == date(2013, 3, 27)  # the period's end
    assert chunk_end("nightly", first, last) == first


def test_a_budget_stops_the_replay_and_says_where(backtest, tmp_path):
    import io

    from pipelines.backtest import Replay

    replay = Replay(backtest["usecase"], "nightly", FIRST, LAST, io.StringIO())
    run = replay.replay(Lake(str(tmp_path / "lake")), budget_seconds=-1)
    assert run.stopped["before"] == FIRST.isoformat() and "--budget-seconds" in run.stopped["reason"]
    assert run.retrainings == [] and run.weeks == [] and run.as_dict()["stopped_early"] == run.stopped
