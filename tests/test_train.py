"""train and evaluate steps, candidate families and metrics, on real MLflow (tmp SQLite), real lake files."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from _labels import write_features_and_labels
from _model_fixtures import (
    FAST_CANDIDATES,
    fast_usecase,
    make_context,
    synthetic_day,
    use_tmp_platform,
    write_config_dir,
    write_feature_partitions,
)
from mlflow import MlflowClient
from sklearn.metrics import log_loss, roc_auc_score

from pipelines import modeling
from pipelines.cli import main, run_step
from pipelines.config import REPO_ROOT, CandidateSpec, ConfigError, load_usecase
from pipelines.context import MANUAL_RUN, StepFailed, run_result_key
from pipelines.evaluation import metrics
from pipelines.features.model_inputs import model_inputs
from pipelines.lake import LATEST, Lake, LakeError, content_hash, features_table, labels_table
from pipelines.modeling import tracking, training_window
from pipelines.steps import train as train_step

START = date(2013, 1, 1)
DAY = date(2013, 2, 10)  # train [01-06, 02-03), holdout [02-03, 02-10); partitions exist up to 02-14
LOGREG_ONLY = [FAST_CANDIDATES[0]]


def _labeled_rows(usecase, first: date, end: date, rows_per_day: int, known_by: date | None = None) -> int:
    """Rows of [first, end) with a label known before the training date (``known_by``, default ``end``) begins
    (local midnight): the last evening's flights land after it and are not trained on."""
    total, cutoff = 0, usecase.time.local_midnight(known_by or end)
    day = first
    while day < end:
        frame = synthetic_day(usecase, day, rows_per_day)
        known = frame[usecase.target.column].notna() & (frame["outcome_known_at"] < cutoff)
        total += int(known.sum())
        day += timedelta(days=1)
    return total


@pytest.fixture(scope="module")
def trained_module(tmp_path_factory):
    """45 days of features, one full train (3 candidates), one evaluate and its report for DAY."""
    tmp = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        use_tmp_platform(mp, tmp)
        usecase = fast_usecase()
        mp.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp / "config", usecase)))
        lake = Lake(str(tmp / "lake"))
        dates = write_feature_partitions(lake, usecase, START, 45, rows_per_day=120)
        result = run_step(["train", "--usecase", usecase.name, "--date", DAY.isoformat()])
        evaluation = run_step(["evaluate", "--usecase", usecase.name, "--date", DAY.isoformat()])
        report = run_step(["report", "--usecase", usecase.name, "--date", DAY.isoformat()])
        yield SimpleNamespace(
            tmp=tmp,
            usecase=usecase,
            lake=lake,
            dates=dates,
            result=result,
            evaluation=evaluation,
            report=report,
        )


@pytest.fixture
def trained(trained_module, monkeypatch):
    """The module's trained state, with MLflow pointed back at its store (other tests move the global URI)."""
    use_tmp_platform(monkeypatch, trained_module.tmp)
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(trained_module.tmp / "config"))
    uri = f"sqlite:///{trained_module.tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return trained_module


@pytest.fixture
def small_env(tmp_path, monkeypatch):
    """A fresh tmp platform with a logistic-regression-only use case (no TensorFlow)."""
    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase(LOGREG_ONLY)
    return SimpleNamespace(usecase=usecase, ctx=make_context(usecase, DAY), lake=Lake(str(tmp_path / "lake")))


def _holdout_features(trained) -> tuple[pd.DataFrame, np.ndarray]:
    usecase = trained.usecase
    parts = trained.lake.partitions(features_table(usecase.name))
    dates = [d for d in parts if "2013-02-03" <= d < "2013-02-10"]
    version = trained.result["tables_read"][features_table(usecase.name)]
    frame = trained.lake.read_frame(features_table(usecase.name), dates, version=version)
    labels = trained.lake.read_frame(
        labels_table(usecase.name), dates, version=trained.result["labels_version"]
    )
    keys = [*usecase.features.keys, "date"]
    frame = frame.merge(labels, on=keys, how="left", validate="one_to_one").sort_values("date", kind="stable")
    known = frame["outcome_known_at"] < usecase.time.local_midnight(
        DAY
    )  # outcomes known by the training date
    frame = frame[frame[usecase.target.column].notna() & known].reset_index(drop=True)
    return model_inputs(usecase, frame, "test rows"), frame[usecase.target.column].to_numpy(dtype="int64")


# --------------------------------------------------------------------------------------------------- train


def test_train_window_rows_and_inputs(trained):
    usecase, result = trained.usecase, trained.result
    stored = trained.lake.read_json(run_result_key(usecase.name, DAY, "train", MANUAL_RUN))
    assert stored["result_uri"] == result["result_uri"]
    assert stored["window"] == {
        "train_start": "2013-01-06",
        "train_end": "2013-01-27",
        "validation_start": "2013-01-27",  # decision.validation_days: 7, where the thresholds are chosen
        "validation_end": "2013-02-03",
        "holdout_start": "2013-02-03",
        "holdout_end": "2013-02-10",
    }
    expected_dates = [d for d in trained.dates if "2013-01-06" <= d < "2013-02-10"]
    assert stored["feature_partitions"] == expected_dates
    assert max(stored["feature_partitions"]) < DAY.isoformat()  # never on or after the logical date
    holdout_rows = _labeled_rows(usecase, date(2013, 2, 3), DAY, 120)
    validation_rows = _labeled_rows(usecase, date(2013, 1, 27), date(2013, 2, 3), 120, known_by=DAY)
    train_rows = _labeled_rows(usecase, date(2013, 1, 6), date(2013, 1, 27), 120)
    assert train_rows > usecase.split.max_train_rows
    assert stored["rows"] == {
        "train": usecase.split.max_train_rows,
        "validation": validation_rows,
        "holdout": holdout_rows,
        "final_fit": usecase.split.max_train_rows,  # train + validation, capped: what the logged model fits
    }
    expected_inputs = sorted(
        f"raw/{usecase.name}/{s}/date={d}" for d in expected_dates for s in usecase.sources
    )
    assert stored["inputs"] == expected_inputs
    assert [c["name"] for c in stored["candidates"]] == ["logreg", "hgb", "mlp"]
    assert result["candidates"] == stored["candidates"]
    assert result["inputs_count"] == len(expected_inputs)
    assert stored["mode"] == "full"
    table = features_table(usecase.name)
    labels = labels_table(usecase.name)
    assert stored["tables_read"] == {table: 0, labels: 0}
    assert stored["features_version"] == 0 and stored["labels_version"] == 0
    assert stored["raw_versions"] == {f"raw/{usecase.name}/{s}": 0 for s in sorted(usecase.sources)}
    frames = training_window.training_frames(
        make_context(usecase, DAY), trained.lake.snapshot(table, 0), stored["window"]
    )
    assert stored["data_hashes"] == {
        "train": content_hash(frames.train),
        "validation": content_hash(frames.validation),
        "holdout": content_hash(frames.holdout),
    }


def test_each_candidate_records_the_threshold_its_rule_chooses_on_the_validation_rows(trained):
    """The threshold is chosen by decision.rule (best F1) on the validation rows by the candidate fitted on the
    train rows only, and the candidate to gate by the primary metric there. Only that one is refitted on train +
    validation and carries a threshold of its own scale: the score at which it flags the share of the validation
    rows that threshold flags, on the holdout inputs, which it did not train on. The others are logged as fitted
    on train, with the threshold chosen for them (train result, MLflow metric and tags, the model's metadata that
    scorers read, and how it was chosen)."""
    from pipelines.evaluation.metrics import choose_threshold

    usecase = trained.usecase
    table = features_table(usecase.name)
    window = trained.result["window"]
    frames = training_window.training_frames(
        make_context(usecase, DAY), trained.lake.snapshot(table, 0), window
    )
    X_val = model_inputs(usecase, frames.validation, "test rows")
    y_val = frames.validation[usecase.target.column].to_numpy(dtype="int64")
    assert len(frames.validation) == trained.result["rows"]["validation"] > 0
    assert (
        window["train_end"]
        == window["validation_start"]
        < window["validation_end"]
        == window["holdout_start"]
    )
    final = frames.final_fit_rows(usecase.split.max_train_rows, usecase.split.seed)
    assert trained.result["rows"]["final_fit"] == len(final) == usecase.split.max_train_rows
    X_train = model_inputs(usecase, frames.train, "test rows")
    y_train = frames.train[usecase.target.column].to_numpy(dtype="int64")
    X_holdout = model_inputs(usecase, frames.holdout, "test rows")
    on_validation = {c["name"]: c["validation_metrics"]["roc_auc"] for c in trained.result["candidates"]}
    best = max(on_validation, key=on_validation.get)
    assert trained.result["chosen"] == {
        "candidate": best,
        "on": "validation",
        "metric": "roc_auc",
        "value": on_validation[best],
    }
    client = MlflowClient()
    checked = {"refit": 0, "train": 0}
    for candidate in trained.result["candidates"]:
        refit = candidate["name"] == best
        fitted_on = "train+validation" if refit else "train"
        run = client.get_run(candidate["run_id"])
        assert candidate["fitted_on"] == fitted_on.split("+") and run.data.tags["fitted_on"] == fitted_on
        assert run.data.params["rows.final_fit"] == str(candidate["fit_rows"])
        assert candidate["fit_rows"] == len(final if refit else frames.train)
        assert candidate["fit_data_hash"] == content_hash(final if refit else frames.train)
        if candidate["family"] == "keras_mlp":
            continue  # deterministic too, but refitting it here costs a TensorFlow session; the others suffice
        spec = usecase.candidate(candidate["name"])
        on_train = modeling.fit_candidate(spec, usecase, X_train, y_train, usecase.split.seed)
        expected = choose_threshold(y_val, on_train.scores(X_val), usecase.decision)
        model = tracking.load_model(candidate["model_uri"])
        metrics = run.data.metrics
        source = run.data.tags["threshold_source"]
        assert source == candidate["threshold_source"] == model.metadata.metadata["threshold_source"]
        assert metrics["validation_f1"] == pytest.approx(expected["f1"], abs=1e-9)
        if not refit:  # the fit on train is the logged model: its threshold is the one chosen for it
            assert candidate["decision_threshold"] == pytest.approx(expected["threshold"], abs=1e-9)
            assert tracking.decision_threshold(model) == pytest.approx(expected["threshold"], abs=1e-9)
            assert metrics["decision_threshold"] == pytest.approx(expected["threshold"], abs=1e-9)
            assert (
                "validation_threshold" not in metrics and "validation_threshold" not in candidate["decision"]
            )
            assert source == (
                "best_f1 on validation 2013-01-27..2013-02-02 for the registered model, fitted on train "
                f"2013-01-06..2013-01-26 only (not refitted: {best!r} was chosen)"
            )
            np.testing.assert_allclose(
                tracking.predict_proba(model, X_val), on_train.scores(X_val), rtol=1e-6
            )
            checked["train"] += 1
            continue
        rate = float((on_train.scores(X_val) >= expected["threshold"]).mean())
        flagged = round(rate * len(X_holdout))
        own = np.sort(tracking.predict_proba(model, X_holdout))[::-1][flagged - 1]
        assert 0 < flagged < len(X_holdout)
        assert candidate["decision_threshold"] == pytest.approx(own, abs=1e-9)
        assert tracking.decision_threshold(model) == pytest.approx(own, abs=1e-9)
        assert candidate["decision"]["validation_threshold"] == pytest.approx(expected["threshold"], abs=1e-9)
        assert metrics["decision_threshold"] == pytest.approx(own, abs=1e-9)
        assert metrics["validation_threshold"] == pytest.approx(expected["threshold"], abs=1e-9)
        assert metrics["validation_positive_rate"] == pytest.approx(rate)
        assert metrics["holdout_inputs_positive_rate"] == pytest.approx(flagged / len(X_holdout))
        assert "holdout inputs 2013-02-03..2013-02-09" in source and "labels unused" in source, source
        # the logged model is the refit on train + validation, not the model the threshold was chosen with; a
        # logistic regression's solver starts from the fit on train's coefficients
        X_final = model_inputs(usecase, final, "test rows")
        y_final = final[usecase.target.column].to_numpy(dtype="int64")
        refit_model = modeling.fit_candidate(
            spec, usecase, X_final, y_final, usecase.split.seed, start_from=on_train
        )
        np.testing.assert_allclose(tracking.predict_proba(model, X_val), refit_model.scores(X_val), rtol=1e-6)
        if spec.family == "logistic_regression":  # started elsewhere, it reaches the same optimum
            cold = modeling.fit_candidate(spec, usecase, X_final, y_final, usecase.split.seed)
            warm_model = refit_model.estimator.named_steps["model"]
            cold_model = cold.estimator.named_steps["model"]
            assert warm_model.n_iter_[0] < cold_model.n_iter_[0]
            assert not warm_model.warm_start  # the logged params are those of a plain fit
            assert roc_auc_score(y_val, refit_model.scores(X_val)) == pytest.approx(
                roc_auc_score(y_val, cold.scores(X_val)), abs=1e-3
            )
        assert candidate["decision_threshold"] != 0.5
        checked["refit"] += 1
    assert checked == {"refit": 1, "train": 1}, checked  # the chosen one (not the mlp here) and one other


def test_a_refit_on_another_scale_gets_its_own_threshold_from_inputs_it_did_not_train_on(
    small_env, monkeypatch
):
    """The refit on train + validation scores on another scale than the fit on train (here it weighs the positive
    rows four times, which lifts every score): the registered threshold is the quantile of the refit's own scores
    of the holdout inputs, which it did not train on, that flags the share of the validation rows the fit on train
    flags at its chosen threshold. Permuting the holdout labels changes nothing; a rerun reuses the run and reports
    the same threshold and how it was chosen."""
    from pipelines.evaluation.metrics import choose_threshold

    usecase, lake, ctx = small_env.usecase, small_env.lake, small_env.ctx
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 36, rows_per_day=60)
    original, calls = modeling.fit_candidate, []

    def shifted_refit(spec, usecase_, X, y, seed, start_from=None):  # the fit on train, then the refit
        calls.append(len(X))
        if len(calls) % 2 == 0:
            spec = spec.model_copy(update={"params": {**spec.params, "class_weight": {0: 1.0, 1: 4.0}}})
        return original(spec, usecase_, X, y, seed, start_from=start_from)

    monkeypatch.setattr(modeling, "fit_candidate", shifted_refit)
    args = SimpleNamespace(mode="full", candidates=None, retrain=True)
    result = train_step.run(ctx, args)
    (candidate,) = result["candidates"]
    frames = training_window.training_frames(
        ctx, lake.snapshot(features_table(usecase.name), result["features_version"]), result["window"]
    )
    label = usecase.target.column
    spec = usecase.candidate(candidate["name"])
    first = original(
        spec,
        usecase,
        model_inputs(usecase, frames.train, "test rows"),
        frames.train[label].to_numpy(dtype="int64"),
        usecase.split.seed,
    )
    validation_scores = first.scores(model_inputs(usecase, frames.validation, "test rows"))
    chosen = choose_threshold(
        frames.validation[label].to_numpy(dtype="int64"), validation_scores, usecase.decision
    )["threshold"]
    X_holdout = model_inputs(usecase, frames.holdout, "test rows")
    first_scores = first.scores(X_holdout)
    model = tracking.load_model(candidate["model_uri"])
    own = tracking.predict_proba(model, X_holdout)  # the registered model's, of rows it did not train on
    flagged = round(float((validation_scores >= chosen).mean()) * len(X_holdout))
    assert own.mean() > first_scores.mean() + 0.15  # the refit's scale is not the first fit's
    threshold = candidate["decision_threshold"]
    assert threshold == pytest.approx(np.sort(own)[::-1][flagged - 1], abs=1e-12)
    assert tracking.decision_threshold(model) == threshold
    assert candidate["decision"]["validation_threshold"] == pytest.approx(chosen, abs=1e-12)
    assert threshold > chosen + 0.05
    assert int((own >= threshold).sum()) == flagged  # the validation share of the holdout rows
    assert int((own >= chosen).sum()) > 1.3 * flagged  # the carried-over number would flag far more
    assert "labels unused" in candidate["threshold_source"]

    holdout_days = sorted(d for d in frames.partitions if d >= result["window"]["holdout_start"])
    held = lake.read_frame(labels_table(usecase.name), holdout_days, version=result["labels_version"])
    permuted = held.assign(**{label: np.random.default_rng(0).permutation(held[label].to_numpy())})
    assert (permuted[label] != held[label]).any()
    lake.write_partitions(labels_table(usecase.name), permuted, read_version=LATEST)
    again = train_step.run(ctx, args)
    assert again["labels_version"] > result["labels_version"]
    assert again["data_hashes"]["holdout"] != result["data_hashes"]["holdout"]
    assert again["candidates"][0]["run_id"] != candidate["run_id"]
    assert again["candidates"][0]["decision_threshold"] == threshold
    assert again["candidates"][0]["threshold_source"] == candidate["threshold_source"]

    reused = train_step.run(ctx, SimpleNamespace(mode="full", candidates=None, retrain=False))
    assert reused["candidates"][0]["run_id"] == again["candidates"][0]["run_id"]
    for key in ("decision_threshold", "threshold_source"):
        assert reused["candidates"][0][key] == again["candidates"][0][key]
    assert len(calls) == 4  # two fits per trained run, none for the reused one


def test_train_logs_one_run_per_candidate(trained):
    usecase = trained.usecase
    client = MlflowClient()
    for candidate in trained.result["candidates"]:
        run = client.get_run(candidate["run_id"])
        assert run.info.run_name == f"{candidate['name']}@{DAY}"
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["usecase"] == usecase.name
        assert tags["logical_date"] == DAY.isoformat()
        assert tags["mode"] == "full"
        assert tags["candidate"] == candidate["name"]
        assert tags["family"] == candidate["family"]
        assert tags["config_hash"] == usecase.config_hash
        assert tags["code_version"] == "test-code"
        assert run.data.params["rows.train"] == str(usecase.split.max_train_rows)
        info = mlflow.models.get_model_info(candidate["model_uri"])
        assert info.signature.inputs.input_names() == tracking.feature_columns(usecase)
        assert info.saved_input_example_info is not None
    logreg = client.get_run(trained.result["candidates"][0]["run_id"])
    assert logreg.data.params["model.C"] == "1.0"
    mlp = client.get_run(trained.result["candidates"][2]["run_id"])
    assert json.loads(mlp.data.params["model.hidden_units"]) == [16]


def test_rerun_reuses_runs_and_retrain_gives_identical_predictions(trained, monkeypatch):
    argv = ["train", "--usecase", trained.usecase.name, "--date", DAY.isoformat()]
    again = run_step(argv)
    assert [c["run_id"] for c in again["candidates"]] == [c["run_id"] for c in trained.result["candidates"]]

    retrained = run_step([*argv, "--retrain"])
    X, _ = _holdout_features(trained)
    for old, new in zip(trained.result["candidates"], retrained["candidates"], strict=True):
        assert new["run_id"] != old["run_id"]
        before = tracking.predict_proba(tracking.load_model(old["model_uri"]), X)
        after = tracking.predict_proba(tracking.load_model(new["model_uri"]), X)
        assert np.array_equal(before, after), old["name"]
    run_step(argv)  # leave a result pointing at reused runs again


def test_train_fails_without_feature_partitions(small_env):
    args = SimpleNamespace(mode="full", candidates=None, retrain=False)
    with pytest.raises(
        StepFailed, match=r"no committed feature partitions .*features/flight_delay.*\[2013-01-06"
    ):
        train_step.run(small_env.ctx, args)


def test_a_training_date_the_lake_cannot_serve_fails_naming_the_dates_it_can(small_env):
    """A run given a date past the features it has fails at once (before reading anything else), naming the
    partitions the table holds and the dates a run of the same window could be given."""
    usecase, lake = small_env.usecase, small_env.lake
    write_feature_partitions(lake, usecase, START, 45, rows_per_day=20)  # 2013-01-01 .. 2013-02-14
    late = make_context(usecase, date(2013, 6, 1))
    args = SimpleNamespace(mode="full", candidates=None, retrain=False)
    window = usecase.split.train_window_days
    earliest = START + timedelta(days=window)
    with pytest.raises(StepFailed) as failed:
        train_step.run(late, args)
    message = str(failed.value)
    assert "holds 45 partitions, 2013-01-01 to 2013-02-14" in message, message
    assert f"can be from {earliest} to 2013-02-15" in message, message


def test_train_fails_on_a_single_class(small_env):
    usecase = small_env.usecase
    frames = []
    for offset in range(36):
        day = date(2013, 1, 5) + timedelta(days=offset)
        frame = synthetic_day(usecase, day, 60)
        frame[usecase.target.column] = 0.0
        frames.append(frame)
    write_features_and_labels(small_env.lake, usecase, pd.concat(frames))
    args = SimpleNamespace(mode="full", candidates=None, retrain=False)
    with pytest.raises(StepFailed, match=r"train window .* single class"):
        train_step.run(small_env.ctx, args)


def test_train_fails_on_too_few_rows_and_cli_exits_1(small_env, capsys, tmp_path, monkeypatch):
    write_feature_partitions(small_env.lake, small_env.usecase, date(2013, 1, 5), 36, rows_per_day=2)
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", small_env.usecase)))
    code = main(["train", "--usecase", small_env.usecase.name, "--date", DAY.isoformat()])
    assert code == 1
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["failed"] is True
    assert "labeled rows; at least 100 are needed" in last["error"]


def _unlabelled(usecase, first: date, end: date, rows_per_day: int, known_by: date) -> int:
    """Events of [first, end) whose outcome was due before ``known_by`` (event time + label delay) but has no
    label: the outcomes that never arrived."""
    total, cutoff = 0, usecase.time.local_midnight(known_by)
    delay = timedelta(seconds=usecase.time.outcome.delay_seconds)
    day = first
    while day < end:
        frame = synthetic_day(usecase, day, rows_per_day)
        due = (pd.to_datetime(frame[usecase.time.event_time], utc=True) + delay) < cutoff
        total += int((due & frame[usecase.target.column].isna()).sum())
        day += timedelta(days=1)
    return total


def test_train_result_counts_the_outcomes_that_never_arrived(trained):
    """Each part's events whose outcome was due by the training date but never arrived (label NULL) are counted;
    the last evening's flights, whose outcomes are not due yet, are not."""
    usecase, result = trained.usecase, trained.result
    expected = {
        "train": _unlabelled(usecase, date(2013, 1, 6), date(2013, 1, 27), 120, DAY),
        "validation": _unlabelled(usecase, date(2013, 1, 27), date(2013, 2, 3), 120, DAY),
        "holdout": _unlabelled(usecase, date(2013, 2, 3), DAY, 120, DAY),
    }
    assert all(n > 0 for n in expected.values()), expected  # about 2% of the synthetic labels are missing
    assert result["unlabelled_events"] == expected
    stored = trained.lake.read_json(run_result_key(usecase.name, DAY, "train", MANUAL_RUN))
    assert stored["unlabelled_events"] == expected
    holdout = stored["completeness"]["holdout"]
    assert (holdout["expected_days"], holdout["present_days"], holdout["missing_days"]) == (7, 7, [])
    assert holdout["events"] == 7 * 120 and holdout["events_due"] < holdout["events"]  # the last evening's
    assert holdout["labelled"] == result["rows"]["holdout"]
    assert holdout["labelled"] + holdout["unlabelled_events"] == holdout["events_due"]
    assert sum(holdout["unlabelled_by_day"].values()) == expected["holdout"]


def test_a_window_part_with_missing_days_fails_naming_them(tmp_path, monkeypatch):
    """A holdout with 1 of its 14 days present fails the train step, naming the part and the missing days; a
    window that starts before the first features partition (the first training after go-live) is not short."""
    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase(LOGREG_ONLY, train_window_days=35, holdout_days=14)
    ctx, lake = make_context(usecase, DAY), Lake(str(tmp_path / "lake"))
    args = SimpleNamespace(mode="full", candidates=None, retrain=False)
    # train [01-06, 01-20), validation [01-20, 01-27), holdout [01-27, 02-10): data from 01-15 to 01-26, and 02-05
    write_feature_partitions(lake, usecase, date(2013, 1, 15), 12, rows_per_day=60)
    write_feature_partitions(lake, usecase, date(2013, 2, 5), 1, rows_per_day=60)
    with pytest.raises(StepFailed) as failure:
        train_step.run(ctx, args)
    message = str(failure.value)
    assert "holdout window [2013-01-27, 2013-02-10)" in message
    assert "feature partitions for 1 of its 14 expected days" in message
    assert "missing: 2013-01-27..2013-02-04, 2013-02-06..2013-02-09" in message
    holdout = failure.value.result["completeness"]["holdout"]
    assert holdout["present_days"] == 1 and len(holdout["missing_days"]) == 13
    # the train part starts before the first partition (01-15): its expected days count from there, complete
    assert failure.value.result["completeness"]["train"] == {
        "expected_from": "2013-01-15",
        "expected_days": 5,
        "present_days": 5,
        "missing_days": [],
    }

    # the holdout's days land: the short first window trains, and the result says from when days were expected
    write_feature_partitions(lake, usecase, date(2013, 1, 27), 9, rows_per_day=60)
    write_feature_partitions(lake, usecase, date(2013, 2, 6), 4, rows_per_day=60)
    result = train_step.run(ctx, args)
    assert result["window"]["train_start"] == "2013-01-06"
    stored = lake.read_json(run_result_key(usecase.name, DAY, "train", MANUAL_RUN))
    assert stored["completeness"]["train"]["expected_from"] == "2013-01-15"
    assert {p: c["missing_days"] for p, c in stored["completeness"].items()} == dict.fromkeys(
        ["train", "validation", "holdout"], []
    )


def test_a_window_part_whose_outcomes_never_arrived_fails(small_env):
    """Half of the holdout's due outcomes never arrived: train fails naming the part and the days, even though
    enough labelled rows remain to fit on."""
    usecase = small_env.usecase
    frames = []
    for offset in range(36):
        day = date(2013, 1, 5) + timedelta(days=offset)
        frame = synthetic_day(usecase, day, 120)
        if day >= date(2013, 2, 3):  # the holdout
            lost = np.arange(len(frame)) % 2 == 0
            frame.loc[lost, usecase.target.column] = np.nan
            frame.loc[lost, "outcome_known_at"] = pd.NaT
        frames.append(frame)
    write_features_and_labels(small_env.lake, usecase, pd.concat(frames))
    args = SimpleNamespace(mode="full", candidates=None, retrain=False)
    with pytest.raises(
        StepFailed, match=r"holdout window \[2013-02-03, 2013-02-10\) .* has labels for"
    ) as failure:
        train_step.run(small_env.ctx, args)
    message = str(failure.value)
    assert "less than split.min_labelled_share 0.8" in message and "outcomes never arrived" in message
    assert "2013-02-0" in message.split("most on", 1)[1]
    holdout = failure.value.result["completeness"]["holdout"]
    assert 0.4 < holdout["labelled_share"] < 0.6
    assert set(holdout["unlabelled_by_day"]) == {f"2013-02-{d:02d}" for d in range(3, 10)}


def test_unknown_candidate_is_a_config_error(small_env):
    write_feature_partitions(small_env.lake, small_env.usecase, date(2013, 1, 5), 36, rows_per_day=20)
    args = SimpleNamespace(mode="full", candidates="logreg,nope", retrain=False)
    with pytest.raises(ConfigError, match="no candidate 'nope'"):
        train_step.run(small_env.ctx, args)


def test_raw_inputs_from_features_facts():
    assert train_step.raw_inputs(
        "uc", {"flights": {"2013-01-02": "h1", "2013-01-01": "h2"}, "planes": {}}
    ) == [
        "raw/uc/flights/date=2013-01-02",
        "raw/uc/flights/date=2013-01-01",
    ]
    assert train_step.raw_inputs("uc", None) == []


def test_training_window_ends_before_the_logical_date():
    window = training_window.training_window(date(2013, 3, 1), 91, 14)
    assert window == {
        "train_start": "2012-11-30",
        "train_end": "2013-02-15",
        "holdout_start": "2013-02-15",
        "holdout_end": "2013-03-01",
    }
    with_validation = training_window.training_window(date(2013, 3, 1), 91, 14, 7)
    assert list(with_validation.items()) == [
        ("train_start", "2012-11-30"),
        ("train_end", "2013-02-08"),
        ("validation_start", "2013-02-08"),
        ("validation_end", "2013-02-15"),
        ("holdout_start", "2013-02-15"),
        ("holdout_end", "2013-03-01"),
    ]


# --------------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("family", ["logistic_regression", "hist_gradient_boosting", "keras_mlp"])
def test_family_learns_handles_nulls_and_round_trips_through_mlflow(family, tmp_path, monkeypatch):
    use_tmp_platform(monkeypatch, tmp_path)
    spec = next(c for c in FAST_CANDIDATES if c.family == family)
    usecase = fast_usecase([spec])
    train = pd.concat([synthetic_day(usecase, START + timedelta(days=i), 150) for i in range(12)])
    train = train[train[usecase.target.column].notna()]
    test = synthetic_day(usecase, date(2013, 2, 1), 400)
    test = test[test[usecase.target.column].notna()].reset_index(drop=True)
    test.loc[0, "carrier"] = "ZZ"  # unseen category
    test.loc[1, ["carrier", "origin"]] = None  # null categories
    test.loc[2, usecase.features.numeric] = np.nan  # all numeric features null
    X = model_inputs(usecase, train, "test rows")
    fitted = modeling.fit_candidate(spec, usecase, X, train[usecase.target.column], seed=3)
    X_test = model_inputs(usecase, test, "test rows")
    proba = fitted.scores(X_test)
    assert proba.shape == (len(test),) and np.isfinite(proba).all() and ((proba > 0) & (proba < 1)).all()
    assert roc_auc_score(test[usecase.target.column], proba) > 0.65

    tracking.configure_mlflow(make_context(usecase, DAY).profile, usecase)
    with mlflow.start_run():
        info = modeling.log_fitted_model(fitted, modeling.input_example(X))
    loaded = tracking.predict_proba(tracking.load_model(info.model_uri), X_test)
    np.testing.assert_allclose(loaded, proba, rtol=1e-6, atol=1e-7)


def test_model_inputs_types():
    usecase = fast_usecase()
    frame = synthetic_day(usecase, START, 5)
    frame["dep_hour"] = np.arange(5)  # ints become float64
    frame["origin"] = ["EWR", None, np.nan, "JFK", "LGA"]
    X = model_inputs(usecase, frame, "test rows")
    assert list(X.columns) == tracking.feature_columns(usecase)
    assert X["dep_hour"].dtype == "float64"
    assert X["origin"].tolist() == ["EWR", None, None, "JFK", "LGA"]
    with pytest.raises(StepFailed, match="wx_temp"):
        model_inputs(usecase, frame.drop(columns=["wx_temp"]), "test rows")


def test_bad_candidate_params_name_the_candidate():
    usecase = fast_usecase()
    X = model_inputs(usecase, synthetic_day(usecase, START, 50), "test rows")
    bad = FAST_CANDIDATES[0].model_copy(update={"params": {"not_a_param": 1}})
    with pytest.raises(ConfigError, match="candidate 'logreg'"):
        modeling.fit_candidate(bad, usecase, X, np.arange(50) % 2, seed=0)
    bad_mlp = FAST_CANDIDATES[2].model_copy(update={"params": {"layers": 3}})
    with pytest.raises(ConfigError, match=r"candidate 'mlp' \(keras_mlp\): unknown params \['layers'\]"):
        modeling.fit_candidate(bad_mlp, usecase, X, np.arange(50) % 2, seed=0)


# --------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_metrics_slices_and_best(trained):
    usecase = trained.usecase
    stored = trained.lake.read_json(run_result_key(usecase.name, DAY, "evaluate", MANUAL_RUN))
    X, y = _holdout_features(trained)
    assert stored["holdout_rows"] == len(y) == trained.result["rows"]["holdout"]
    assert stored["champion"] is None
    scores = {}
    for candidate in trained.result["candidates"]:
        entry = stored["candidates"][candidate["name"]]
        proba = tracking.predict_proba(tracking.load_model(candidate["model_uri"]), X)
        assert entry["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, proba))
        assert entry["metrics"]["log_loss"] == pytest.approx(log_loss(y, np.clip(proba, 1e-7, 1 - 1e-7)))
        assert set(entry["metrics"]) == {"roc_auc", "pr_auc", "log_loss", "brier"}
        for column in usecase.slices:
            assert sum(s["rows"] for s in entry["slices"][column].values()) == len(y)
        origin = entry["slices"]["origin"]["JFK"]
        mask = (X["origin"] == "JFK").to_numpy()
        assert origin["roc_auc"] == pytest.approx(roc_auc_score(y[mask], proba[mask]))
        scores[candidate["name"]] = entry["metrics"]["roc_auc"]
        run = MlflowClient().get_run(candidate["run_id"])
        assert run.data.metrics["holdout_roc_auc"] == pytest.approx(entry["metrics"]["roc_auc"])
    # chosen on the validation window (the fit on train only, scored on rows it was not fitted on), not on the
    # holdout that gates it
    on_validation = {c["name"]: c["validation_metrics"]["roc_auc"] for c in trained.result["candidates"]}
    assert stored["selected_on"] == "validation"
    assert stored["best"] == max(on_validation, key=on_validation.get)
    assert trained.evaluation["best"] == stored["best"]
    interval = stored["candidates"][stored["best"]]["intervals"]["roc_auc"]
    assert interval["low"] < scores[stored["best"]] < interval["high"]
    assert stored["infrastructure"]["passed"] is True, stored["infrastructure"]


def test_evaluate_report_explains_the_best_model(trained):
    usecase = trained.usecase
    prefix = f"reports/{usecase.name}/evaluation/date={DAY}/run={MANUAL_RUN}"
    report = trained.lake.read_json(f"{prefix}/report.json")
    assert trained.report["report_uri"].endswith(f"{prefix}/report.json")
    explanation = report["explanation"]
    importance = {f["feature"]: f["importance"] for f in explanation["feature_importance"]["features"]}
    assert set(importance) == set(tracking.feature_columns(usecase))
    # the synthetic label depends most on the first numeric feature and not at all on the 8th
    assert max(importance, key=importance.get) == usecase.features.numeric[0]
    assert abs(importance[usecase.features.numeric[7]]) < 0.02
    cm = explanation["errors"]["confusion_matrix"]
    assert cm["tp"] + cm["fp"] + cm["tn"] + cm["fn"] == report["holdout"]["rows"]
    assert sum(b["rows"] for b in explanation["calibration"]["bins"]) == report["holdout"]["rows"]
    assert (
        explanation["slices"]
        == trained.lake.read_json(run_result_key(usecase.name, DAY, "evaluate", MANUAL_RUN))["candidates"][
            report["best"]
        ]["slices"]
    )
    page = trained.lake.storage.read_bytes(f"{prefix}/report.html").decode()
    for heading in ("Feature importance", "Worst slices", "Calibration", "carrier", report["best"]):
        assert heading in page


def test_evaluate_reads_the_holdout_train_read_even_after_a_rebuild(trained):
    """Evaluate time-travels to the features and labels versions train recorded: a features partition rewritten
    since training, or labels that changed since, change nothing in what the candidates are judged on."""
    from pipelines.steps import evaluate

    ctx = make_context(trained.usecase, DAY)
    table = features_table(trained.usecase.name)
    labels = labels_table(trained.usecase.name)
    day = "2013-02-05"
    original = trained.lake.read_frame(table, [day])
    original_labels = trained.lake.read_frame(labels, [day])
    before = trained.lake.read_json(run_result_key(trained.usecase.name, DAY, "evaluate", MANUAL_RUN))
    trained.lake.write_partitions(table, original.head(50), read_version=LATEST)
    label = trained.usecase.target.column
    flipped = original_labels.assign(**{label: 1 - original_labels[label]})
    trained.lake.write_partitions(labels, flipped, read_version=LATEST)
    try:
        result = evaluate.run(ctx, SimpleNamespace(importance_rows=500, importance_repeats=1))
        assert result["holdout_rows"] == before["holdout_rows"]
        assert result["tables_read"] == trained.result["tables_read"]
        for name, entry in before["candidates"].items():
            assert result["candidates"][name] == pytest.approx(entry["metrics"]), name
    finally:
        trained.lake.write_partitions(table, original, read_version=LATEST)
        trained.lake.write_partitions(labels, original_labels, read_version=LATEST)


def test_a_registry_outage_during_evaluate_fails_the_run_and_moves_no_alias(trained):
    """Any registry error but "no such model or alias" fails evaluate (Airflow retries it): it is never read as
    "no champion yet", which would take the first-run path and promote on absolute thresholds only. The outage
    is real: the registry's alias table is renamed away in the tracking database for the length of the call."""
    import sqlite3

    usecase = trained.usecase
    argv = ["--usecase", usecase.name, "--date", DAY.isoformat()]
    client = MlflowClient()
    first = trained.result["candidates"][0]
    version = mlflow.register_model(first["model_uri"], tracking.model_name(usecase))
    client.set_registered_model_alias(version.name, tracking.CHAMPION_ALIAS, version.version)
    result_key = run_result_key(usecase.name, DAY, "evaluate", MANUAL_RUN)
    before = trained.lake.read_json(result_key)
    database = sqlite3.connect(trained.tmp / "mlflow.db")
    database.execute("ALTER TABLE registered_model_aliases RENAME TO aliases_away")
    database.commit()
    try:
        with pytest.raises(tracking.RegistryError, match="could not say which version"):
            run_step(["evaluate", *argv])
        assert main(["evaluate", *argv]) == 1  # the task fails
    finally:
        database.execute("ALTER TABLE aliases_away RENAME TO registered_model_aliases")
        database.commit()
        database.close()
    assert trained.lake.read_json(result_key) == before  # nothing decided on a guess
    assert client.get_model_version_by_alias(version.name, tracking.CHAMPION_ALIAS).version == version.version
    client.delete_registered_model_alias(version.name, tracking.CHAMPION_ALIAS)


def test_champion_is_rescored_gated_and_drives_refresh(trained, monkeypatch):
    """The first logreg run becomes champion; a fresh training is evaluated and gated against it; refresh
    then trains only the champion's candidate."""
    usecase = trained.usecase
    argv = ["--usecase", usecase.name, "--date", DAY.isoformat()]
    fresh = run_step(["train", *argv, "--retrain"])  # candidates are new runs, the champion an older one
    first_logreg = trained.result["candidates"][0]
    client = MlflowClient()
    version = mlflow.register_model(first_logreg["model_uri"], tracking.model_name(usecase))
    client.set_model_version_tag(version.name, version.version, "candidate", "logreg")
    client.set_registered_model_alias(version.name, tracking.CHAMPION_ALIAS, version.version)

    run_step(["evaluate", *argv])
    stored = trained.lake.read_json(run_result_key(usecase.name, DAY, "evaluate", MANUAL_RUN))
    assert {c["run_id"] for c in stored["candidates"].values()} == {c["run_id"] for c in fresh["candidates"]}
    champion = stored["champion"]
    assert champion["version"] == str(version.version)
    assert champion["candidate"] == "logreg"
    assert champion["run_id"] == first_logreg["run_id"]
    # same data and seed: the fresh logreg scores exactly like the champion trained earlier
    assert champion["metrics"] == pytest.approx(stored["candidates"]["logreg"]["metrics"])

    decision = run_step(["gate", *argv])
    change = next(c for c in decision["checks"] if c["kind"] == "change")
    assert change["skipped"] is False
    assert change["baseline"] == pytest.approx(champion["metrics"]["roc_auc"])
    assert decision["champion_version"] == str(version.version)
    comparison = stored["comparison"]["roc_auc"]
    best_value = stored["candidates"][stored["best"]]["metrics"]["roc_auc"]
    assert comparison["difference"] == pytest.approx(best_value - champion["metrics"]["roc_auc"])
    assert change["passed"] == (comparison["low"] >= 0.002 - 1e-12)
    assert change["interval"]["low"] == comparison["low"] and comparison["resamples"] == 1000
    if stored["best"] == "logreg":  # an identical model cannot beat the champion by min_delta
        assert decision["passed"] is False and change["reason"] in decision["reasons"]

    original, fits = modeling.fit_candidate, []

    def recording_fit(spec, usecase_, X, y, seed, start_from=None):
        fits.append(len(X))
        return original(spec, usecase_, X, y, seed, start_from=start_from)

    monkeypatch.setattr(modeling, "fit_candidate", recording_fit)
    refresh = run_step(["train", "--usecase", usecase.name, "--date", "2013-02-12", "--mode", "refresh"])
    assert [c["name"] for c in refresh["candidates"]] == ["logreg"]
    assert f"champion version {version.version}" in refresh["selection"]
    (entry,) = refresh["candidates"]
    assert client.get_run(entry["run_id"]).data.tags["mode"] == "refresh"
    # the champion (the refit chosen on validation) carries its decision: the refresh fits once, on train +
    # validation, and its threshold is its own score that flags the champion's share of the holdout inputs
    assert fits == [refresh["rows"]["final_fit"]] and entry["fitted_on"] == ["train", "validation"]
    assert refresh["chosen"]["on"] == f"refresh of champion version {version.version}"
    rate = client.get_run(first_logreg["run_id"]).data.metrics["validation_positive_rate"]
    assert entry["decision"]["validation_positive_rate"] == pytest.approx(rate)
    assert entry["threshold_source"].startswith(
        f"refresh of champion version {version.version}: its decision"
    )
    frames = training_window.training_frames(
        make_context(usecase, date(2013, 2, 12)),
        trained.lake.snapshot(features_table(usecase.name), refresh["features_version"]),
        refresh["window"],
    )
    scores = tracking.predict_proba(
        tracking.load_model(entry["model_uri"]), model_inputs(usecase, frames.holdout, "test rows")
    )
    assert entry["decision_threshold"] == pytest.approx(metrics.rate_threshold(rate, scores)["threshold"])
    # a champion fitted on train only (not refitted) carries no share: the refresh chooses on validation again
    other = next(
        c for c in trained.result["candidates"] if c["fitted_on"] == ["train"] and c["family"] != "keras_mlp"
    )
    on_train = mlflow.register_model(other["model_uri"], tracking.model_name(usecase))
    client.set_model_version_tag(on_train.name, on_train.version, "candidate", other["name"])
    client.set_registered_model_alias(on_train.name, tracking.CHAMPION_ALIAS, on_train.version)
    fits.clear()
    again = run_step(["train", "--usecase", usecase.name, "--date", "2013-02-13", "--mode", "refresh"])
    assert len(fits) == 2 and again["chosen"]["on"] == "validation", (fits, again["chosen"])


# --------------------------------------------------------------------------------------------------- metrics


def test_classification_metrics_edge_cases():
    y = np.array([0, 0, 1, 1])
    perfect = metrics.classification_metrics(y, [0.1, 0.2, 0.8, 0.9])
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0
    assert perfect["brier"] == pytest.approx(np.mean((np.array([0.1, 0.2, 0.8, 0.9]) - y) ** 2))
    assert perfect["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.8, 0.9])))
    one_class = metrics.classification_metrics([0, 0, 0], [0.2, 0.3, 0.4])
    assert one_class["roc_auc"] is None and one_class["pr_auc"] is None and one_class["brier"] is not None
    assert set(metrics.classification_metrics(y, [0.1, np.nan, 0.5, 0.6]).values()) == {None}
    assert set(metrics.classification_metrics([], []).values()) == {None}


def test_calibration_and_importance():
    rng = np.random.default_rng(0)
    y = np.array([1] * 25 + [0] * 75)
    calibrated = metrics.calibration(y, np.full(100, 0.25))
    assert calibrated["ece"] == pytest.approx(0.0)
    assert [b["rows"] for b in calibrated["bins"]] == [0, 0, 100, 0, 0, 0, 0, 0, 0, 0]
    X = pd.DataFrame({"signal": rng.normal(size=2000), "noise": rng.normal(size=2000)})
    labels = (X["signal"] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    importance = metrics.permutation_importance(
        lambda frame: 1 / (1 + np.exp(-frame["signal"].to_numpy())), X, labels, "roc_auc", repeats=2
    )
    assert importance[0]["feature"] == "signal" and importance[0]["importance"] > 0.2
    assert importance[1] == {"feature": "noise", "importance": 0.0, "std": 0.0}


def test_worst_slices_and_best_candidate_follow_the_metric_direction():
    slices = {
        "carrier": {
            "AA": {"rows": 500, "log_loss": 0.4},
            "B6": {"rows": 500, "log_loss": 0.6},
            "XX": {"rows": 5, "log_loss": 2.0},
        }
    }
    assert [w["value"] for w in metrics.worst_slices(slices, "log_loss", min_rows=100)] == ["B6", "AA"]
    candidates = {
        "a": {"metrics": {"log_loss": 0.5, "roc_auc": 0.7}},
        "b": {"metrics": {"log_loss": 0.4, "roc_auc": None}},
    }
    assert metrics.best_candidate(candidates, "log_loss") == "b"
    assert metrics.best_candidate(candidates, "roc_auc") == "a"


def test_window_param_must_leave_room_for_the_holdout(mlops_env, monkeypatch) -> None:
    from pipelines.cli import run_step
    from pipelines.config import REPO_ROOT
    from pipelines.context import StepFailed

    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(REPO_ROOT / "config"))  # the shipped use case: holdout 14 days
    with pytest.raises(
        StepFailed, match=r"--window-days 10 must be larger than split.holdout_days \(14\) plus decision"
    ):
        run_step(["train", "--usecase", "flight_delay", "--date", "2013-03-01", "--window-days", "10"])


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_lineage_reload_and_maintenance_keep_a_models_training_set(
    backend, small_env, tmp_path, monkeypatch, capsys, request
):
    """A registered model names the lake versions it was trained on: after newer and rewritten partitions, and
    after a vacuum that keeps only the versions models name, `mlops lineage --reload` rebuilds the identical
    training set; a version no model names is gone."""
    usecase, lake = small_env.usecase, small_env.lake
    if backend == "s3":
        lake = Lake(request.getfixturevalue("s3_lake"))
        use_tmp_platform(monkeypatch, tmp_path)  # the S3 fixture points MLflow at tmp_path too; keep the lake
        monkeypatch.setenv("MLOPS_LAKE_URI", lake.uri)
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    table = features_table(usecase.name)
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 36, rows_per_day=40)  # version 0
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 36, rows_per_day=40, seed=1)  # version 1
    argv = ["--usecase", usecase.name, "--date", DAY.isoformat()]
    train = run_step(["train", *argv])
    for step in ("evaluate", "gate", "register"):
        run_step([step, *argv])
    version = MlflowClient().search_model_versions(f"name = '{usecase.name}'")[0]
    assert version.tags["lineage.features_version"] == "1"
    assert version.tags["lineage.labels_version"] == "1"
    assert json.loads(version.tags["lineage.window"]) == train["window"]

    # newer partitions and a rewrite of a day inside the training window (versions 2 and 3)
    write_feature_partitions(lake, usecase, DAY, 5, rows_per_day=40)
    write_feature_partitions(lake, usecase, date(2013, 1, 20), 1, rows_per_day=40, seed=7)
    latest = training_window.training_frames(
        make_context(usecase, DAY), lake.snapshot(table), train["window"]
    )
    assert content_hash(latest.train) != train["data_hashes"]["train"], "the current data differs"

    assert main(["lineage", usecase.name, str(version.version), "--reload", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["features_version"] == 1 and shown["reload"]["identical"] is True
    assert shown["labels_version"] == 1
    assert shown["reload"]["data_hashes"] == train["data_hashes"]
    assert shown["config_hash"] == usecase.config_hash and shown["code_version"]

    # maintenance: vacuum everything removed, keeping the versions models name (and the latest)
    result = run_step(["maintain", *argv, "--retention-hours", "0"])
    entry = next(t for t in result["tables"] if t["table"] == table)
    assert entry["kept_versions"] == [1, 3] and entry["files_deleted"] > 0
    entry = next(t for t in result["tables"] if t["table"] == labels_table(usecase.name))
    assert entry["kept_versions"] == [1, 3], "the labels version the model names is kept"
    assert main(["lineage", usecase.name, str(version.version), "--reload"]) == 0
    assert "reload         identical" in capsys.readouterr().out
    with pytest.raises(LakeError, match=r"version 0\): a data file of this version is gone"):
        lake.read(table, version=0)


def test_only_the_chosen_candidate_is_refitted_and_lineage_reloads_what_each_model_was_fitted_on(
    small_env, tmp_path, monkeypatch, capsys
):
    """Two candidates and a validation window: each is fitted on train once and scored on validation, and only the
    one chosen there is fitted again, on train + validation (three fits, not four). Evaluate and the gate take
    train's choice; register tags each version with the window parts it was fitted on, and `mlops lineage
    --reload` rebuilds exactly the rows each model was fitted on (count, keys, and the model inputs and labels in
    fit order): train + validation for the refit, train for the other. A rerun fits nothing."""
    from pipelines.modeling.lineage import model_lineage, reload_frames

    usecase = fast_usecase(FAST_CANDIDATES[:2])  # logreg and hgb
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    lake, label = small_env.lake, usecase.target.column
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 36, rows_per_day=40)
    original, fits = modeling.fit_candidate, []

    def recording_fit(spec, usecase_, X, y, seed, start_from=None):  # what each fit is given
        fits.append((spec.name, X.copy(), np.asarray(y).copy()))
        return original(spec, usecase_, X, y, seed, start_from=start_from)

    monkeypatch.setattr(modeling, "fit_candidate", recording_fit)
    argv = ["--usecase", usecase.name, "--date", DAY.isoformat()]
    train = run_step(["train", *argv])
    rows, entries = train["rows"], {c["name"]: c for c in train["candidates"]}
    chosen = train["chosen"]["candidate"]
    (other,) = set(entries) - {chosen}
    assert train["chosen"]["on"] == "validation"
    on_validation = {n: c["validation_metrics"]["roc_auc"] for n, c in entries.items()}
    assert chosen == max(on_validation, key=on_validation.get)
    assert rows["final_fit"] == rows["train"] + rows["validation"]  # 40 rows a day: under max_train_rows
    assert [(name, len(X)) for name, X, _ in fits] == [
        ("logreg", rows["train"]),
        ("hgb", rows["train"]),
        (chosen, rows["final_fit"]),
    ]
    fitted = {other: fits[[n for n, _, _ in fits].index(other)], chosen: fits[-1]}
    assert entries[chosen]["fitted_on"] == ["train", "validation"] and entries[other]["fitted_on"] == [
        "train"
    ]
    assert "not refitted" in entries[other]["threshold_source"], entries[other]["threshold_source"]
    assert "registered refit" in entries[chosen]["threshold_source"], entries[chosen]["threshold_source"]

    evaluation = run_step(["evaluate", *argv])
    assert evaluation["best"] == chosen and evaluation["selected_on"] == "validation"
    gate = run_step(["gate", *argv])
    assert gate["candidate"] == chosen and gate["run_id"] == entries[chosen]["run_id"]
    run_step(["register", *argv])
    versions = {
        v.tags["candidate"]: v for v in MlflowClient().search_model_versions(f"name = '{usecase.name}'")
    }

    keys = [*usecase.features.keys, "date"]

    def labelled_keys(start: str, end: str) -> set[tuple[str, ...]]:
        """The keys of the labelled rows of [start, end) in the versions train read, straight from the lake."""
        days = [d for d in lake.partitions(features_table(usecase.name)) if start <= d < end]
        frame = lake.read_frame(features_table(usecase.name), days, version=train["features_version"])
        outcomes = lake.read_frame(labels_table(usecase.name), days, version=train["labels_version"])
        frame = frame.merge(outcomes, on=keys, how="left", validate="one_to_one")
        known = frame[label].notna() & (frame["outcome_known_at"] < usecase.time.local_midnight(DAY))
        return set(map(tuple, frame.loc[known, keys].astype(str).to_numpy()))

    for name, parts, end in (
        (chosen, ["train", "validation"], "2013-02-03"),
        (other, ["train"], "2013-01-27"),
    ):
        version = versions[name]
        assert json.loads(version.tags["lineage.fitted_on"]) == parts
        assert version.tags["lineage.fit_window"] == f"2013-01-06..{end}"
        lineage = model_lineage(usecase.name, int(version.version))
        assert lineage["fitted_on"] == parts
        assert lineage["fit_window"] == {"start": "2013-01-06", "end_exclusive": end}
        _, reloaded = reload_frames(lineage)
        _, fit_X, fit_y = fitted[name]
        assert len(reloaded) == len(fit_X) == lineage["fit_rows"] == entries[name]["fit_rows"]
        assert not reloaded.duplicated(keys).any()
        assert set(map(tuple, reloaded[keys].astype(str).to_numpy())) == labelled_keys("2013-01-06", end)
        pd.testing.assert_frame_equal(model_inputs(usecase, reloaded, "the reloaded rows"), fit_X)
        np.testing.assert_array_equal(reloaded[label].to_numpy(dtype=fit_y.dtype), fit_y)

        assert main(["lineage", usecase.name, str(version.version), "--reload", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["reload"]["identical"] is True
        assert shown["reload"]["fitted"] == {
            "on": parts,
            "rows": len(fit_X),
            "data_hash": entries[name]["fit_data_hash"],
            "recorded_data_hash": entries[name]["fit_data_hash"],
        }
        assert main(["lineage", usecase.name, str(version.version), "--reload"]) == 0
        printed = capsys.readouterr().out
        assert f"fitted on      {' + '.join(parts)} [2013-01-06, {end}), {len(fit_X)} rows" in printed
        assert f"reload fitted  {len(fit_X)} rows ({' + '.join(parts)})" in printed

    fits.clear()
    again = run_step(["train", *argv])  # same data, config and code: every run is reused, nothing is fitted
    assert fits == [] and again["chosen"] == train["chosen"]
    fields = ("run_id", "fitted_on", "fit_rows", "fit_data_hash", "decision_threshold", "threshold_source")
    for before, after in zip(train["candidates"], again["candidates"], strict=True):
        assert {k: after[k] for k in fields} == {k: before[k] for k in fields}

    # trained alone, the other one is chosen: its run fitted on train is not reused as its refit
    alone = run_step(["train", *argv, "--candidates", other])
    assert alone["chosen"]["candidate"] == other and alone["candidates"][0]["fitted_on"] == [
        "train",
        "validation",
    ]
    assert alone["candidates"][0]["run_id"] != entries[other]["run_id"]
    assert [(name, len(X)) for name, X, _ in fits] == [(other, rows["train"]), (other, rows["final_fit"])]
    fits.clear()
    both = run_step(["train", *argv])  # and each reused run is the one fitted on the rows it is used with
    assert fits == [] and [c["run_id"] for c in both["candidates"]] == [
        c["run_id"] for c in train["candidates"]
    ]


def test_maintenance_archives_never_champion_versions_and_releases_their_lineage(
    small_env, tmp_path, monkeypatch
):
    """Retention: the champion (trained on features version 0) keeps its lineage; a later version that never
    held the alias (trained on version 1) is archived once older than `retention.archive_after_days` before the
    maintenance date, and the vacuum may then release version 1. A dry run only says so; a younger version stays."""
    usecase, lake = small_env.usecase, small_env.lake
    usecase = usecase.model_copy(
        update={"gate": usecase.gate.model_copy(update={"infrastructure_check": False})}
    )
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    table = features_table(usecase.name)
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 36, rows_per_day=40)  # version 0
    first = ["--usecase", usecase.name, "--date", DAY.isoformat()]
    for step in ("train", "evaluate", "gate", "register", "promote"):
        run_step([step, *first])
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 36, rows_per_day=40, seed=3)  # version 1
    for step in (
        "train",
        "evaluate",
        "gate",
        "register",
    ):  # retrained on version 1: registered, never promoted
        run_step([step, *first])
    write_feature_partitions(
        lake, usecase, date(2013, 1, 5), 36, rows_per_day=40, seed=5
    )  # version 2, rewritten
    client = MlflowClient()
    champion = client.get_model_version_by_alias(usecase.name, "champion").version
    [stale] = [
        v.version for v in client.search_model_versions(f"name = '{usecase.name}'") if v.version != champion
    ]

    young = run_step(["maintain", "--usecase", usecase.name, "--date", "2013-03-01", "--dry-run"])
    assert young["archived_versions"] == []  # 19 days after its training: under the 90 days
    dry = run_step(["maintain", "--usecase", usecase.name, "--date", "2013-06-01", "--dry-run"])
    assert [a["version"] for a in dry["archived_versions"]] == [int(stale)]
    assert "archived" not in client.get_model_version(usecase.name, stale).tags

    done = run_step(["maintain", "--usecase", usecase.name, "--date", "2013-06-01", "--retention-hours", "0"])
    assert [a["version"] for a in done["archived_versions"]] == [int(stale)]
    tags = client.get_model_version(usecase.name, stale).tags
    assert (
        tags["archived"] == "true"
        and tags["archived_on"] == "2013-06-01"
        and "never champion" in tags["archived_reason"]
    )
    assert "archived" not in client.get_model_version(usecase.name, champion).tags
    entry = next(t for t in done["tables"] if t["table"] == table)
    assert entry["kept_versions"] == [0, 2], "the champion's features version and the latest; not version 1"
    with pytest.raises(LakeError, match=r"version 1\): a data file of this version is gone"):
        lake.read(table, version=1)
    again = run_step(["maintain", "--usecase", usecase.name, "--date", "2013-06-02", "--dry-run"])
    assert again["archived_versions"] == []


def test_maintenance_compacts_the_captured_requests_of_days_before_its_date(small_env, tmp_path, monkeypatch):
    """A scoring service appends its captured requests in many commits, a file each. Maintenance of Feb 1 rewrites
    each earlier day as one file (same rows), leaves Feb 1 to the service, and vacuums the replaced files; a dry
    run changes nothing, a second run has nothing to do. A table with partition facts is never compacted."""
    from pipelines.lake import captures_table
    from pipelines.serving.capture import CaptureWriter

    usecase, lake = small_env.usecase, small_env.lake
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    table = captures_table(usecase.name)
    writer = CaptureWriter(lake, usecase.name, flush_s=3600)
    for day, commits in (("2013-01-30", 3), ("2013-01-31", 2), ("2013-02-01", 2)):
        for commit in range(commits):
            writer.offer([{"date": day, "request_id": f"{day}/{commit}", "row": row} for row in range(4)])
            writer.flush()
    writer.close()
    assert writer.commits == 7 and writer.failed == 0

    def files() -> dict[str, int]:
        return {day: len(info.files) for day, info in lake.partitions(table).items()}

    def rows():
        return lake.read(table).to_pandas().sort_values(["request_id", "row"]).reset_index(drop=True)

    before = rows()
    assert files() == {"2013-01-30": 3, "2013-01-31": 2, "2013-02-01": 2}
    argv = ["maintain", "--usecase", usecase.name, "--date", "2013-02-01", "--retention-hours", "0"]
    planned = run_step([*argv, "--dry-run"])
    assert planned["captures_compacted"] == {"2013-01-30": [3, -1], "2013-01-31": [2, -1]}
    assert files() == {"2013-01-30": 3, "2013-01-31": 2, "2013-02-01": 2}

    result = run_step(argv)
    assert result["captures_compacted"] == {"2013-01-30": [3, 1], "2013-01-31": [2, 1]}
    assert files() == {"2013-01-30": 1, "2013-01-31": 1, "2013-02-01": 2}
    pd.testing.assert_frame_equal(rows(), before)
    entry = next(t for t in result["tables"] if t["table"] == table)
    assert entry["files_deleted"] == 5, "the replaced files are vacuumed"
    assert run_step(argv)["captures_compacted"] == {}

    write_feature_partitions(lake, usecase, date(2013, 1, 5), 2, rows_per_day=10)
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 2, rows_per_day=10, seed=1)
    with pytest.raises(LakeError, match=r"recorded facts .* only append-only tables are compacted"):
        lake.compact(features_table(usecase.name), ["2013-01-05"])


def test_maintenance_fails_closed_when_the_registry_cannot_be_read(small_env, tmp_path, monkeypatch):
    """Without the registry's answer the step cannot know which versions models name: it fails (Airflow retries)
    and deletes nothing."""
    usecase, lake = small_env.usecase, small_env.lake
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    table = features_table(usecase.name)
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 3, rows_per_day=10)
    write_feature_partitions(lake, usecase, date(2013, 1, 5), 3, rows_per_day=10, seed=1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(Exception) as caught:
        run_step(["maintain", "--usecase", usecase.name, "--date", "2013-02-01", "--retention-hours", "0"])
    assert not isinstance(caught.value, StepFailed), "a registry error is not bad input: the task must retry"
    assert lake.read(table, version=0).num_rows == 30, "nothing was vacuumed"


@pytest.mark.parametrize(
    ("family", "transform"),
    [
        ("ridge", "none"),
        ("hist_gradient_boosting", "none"),
        ("hist_gradient_boosting", "log1p"),
        ("keras_mlp", "log1p"),
    ],
)
def test_regression_family_learns_and_round_trips_through_mlflow(family, transform, tmp_path, monkeypatch):
    """A regression's candidates predict values (in the label's units, also when fitted on log1p of it), and the
    logged pyfunc model gives the same values after reloading."""
    use_tmp_platform(monkeypatch, tmp_path)
    monkeypatch.setenv(
        "MLOPS_CONFIG_DIR", str(REPO_ROOT / "config")
    )  # the shipped example, not a module's dir
    base = load_usecase("flight_arrival_delay")
    params = {
        "ridge": {"alpha": 1.0},
        "hist_gradient_boosting": {"max_iter": 60},
        "keras_mlp": {"epochs": 30, "hidden_units": [16], "batch_size": 64, "learning_rate": 0.01},
    }
    spec = CandidateSpec(name="cand", family=family, params=params[family])
    usecase = base.model_copy(
        update={"candidates": [spec], "target": base.target.model_copy(update={"transform": transform})}
    )
    rng = np.random.default_rng(5)

    def frame(days: range, rows: int) -> tuple[pd.DataFrame, np.ndarray]:
        data = pd.concat([synthetic_day(fast_usecase(), START + timedelta(days=i), rows) for i in days])
        # the regression's own past-mean inputs, which the classification's synthetic days lack: noise here
        data = data.reset_index(drop=True).assign(
            carrier_mean_delay_7d=rng.normal(5, 10, len(data)),
            carrier_outcomes_7d=rng.integers(0, 300, len(data)).astype(float),
        )
        X = model_inputs(usecase, data, "test rows")
        signal = (
            2.0 * X["distance"].fillna(1000) / 1000
            + 0.2 * X["dep_hour"].fillna(12)
            + (X["origin"] == "JFK") * 3
        )
        return X, np.exp(0.3 * signal.to_numpy() + rng.normal(0, 0.1, len(X)))  # positive and skewed

    X, y = frame(range(10), 150)
    X_test, y_test = frame(range(20, 23), 200)
    fitted = modeling.fit_candidate(spec, usecase, X, y, seed=3)
    predicted = fitted.scores(X_test)
    assert predicted.shape == (len(X_test),) and np.isfinite(predicted).all()
    quality = metrics.regression_metrics(y_test, predicted)
    assert quality["r2"] > 0.5, quality
    if transform == "log1p":
        assert (predicted > 0).all(), (
            "predictions come back in the label's units (expm1 of the model's output)"
        )

    tracking.configure_mlflow(make_context(usecase, DAY).profile, usecase)
    with mlflow.start_run():
        info = modeling.log_fitted_model(fitted, modeling.input_example(X))
    loaded = tracking.predict_proba(tracking.load_model(info.model_uri), X_test)
    np.testing.assert_allclose(loaded, predicted, rtol=1e-5)


def test_regression_metrics_match_scikit_learn():
    from sklearn.metrics import (
        mean_absolute_error,
        mean_absolute_percentage_error,
        r2_score,
        root_mean_squared_error,
    )

    rng = np.random.default_rng(0)
    y = rng.uniform(1, 50, 300)
    p = y + rng.normal(0, 5, 300)
    got = metrics.regression_metrics(y, p)
    assert got["rmse"] == pytest.approx(root_mean_squared_error(y, p))
    assert got["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert got["r2"] == pytest.approx(r2_score(y, p))
    assert got["mape"] == pytest.approx(mean_absolute_percentage_error(y, p))
    assert metrics.regression_metrics([0.0, 1.0], [0.5, 1.0], ["mape"])["mape"] is None  # undefined at 0
    assert metrics.regression_metrics([2.0, 2.0], [1.0, 3.0], ["r2"])["r2"] is None  # no variance
    residuals = metrics.residuals(y, p, bins=5)
    assert residuals["rows"] == 300 and len(residuals["by_predicted"]) == 5
    assert residuals["mean"] == pytest.approx(float(np.mean(p - y)))
    assert sum(b["rows"] for b in residuals["by_predicted"]) == 300


def test_a_load_check_passed_before_is_reused_until_the_environment_changes(trained, monkeypatch):
    """The fresh-process load check runs once per load fingerprint (family, flavors, requirements and their
    installed versions, Python, code version): a second evaluation of a model of the same kind reuses the record
    of the first, the gate passes its check on it, and a changed code version runs the check again."""
    from pipelines.steps.gate import infrastructure_checks

    usecase = trained.usecase
    name = usecase.name
    train_result = trained.lake.read_json(run_result_key(name, DAY, "train", MANUAL_RUN))

    def evaluate_in(run: str) -> dict:
        trained.lake.write_json(run_result_key(name, DAY, "train", run), train_result)
        monkeypatch.setenv("MLOPS_RUN_ID", run)
        run_step(["evaluate", "--usecase", name, "--date", DAY.isoformat()])
        return trained.lake.read_json(run_result_key(name, DAY, "evaluate", run))["infrastructure"]

    # a code version no other test evaluated with: its first evaluation runs the check
    monkeypatch.setenv("MLOPS_CODE_VERSION", "load-check-test")
    first = evaluate_in("first-check")
    assert first["passed"] is True and not first.get("reused") and first["fingerprint"], first
    again = evaluate_in("reuse-check")
    assert again["reused"] is True and again["fingerprint"] == first["fingerprint"], again
    assert again["passed"] is True and again["seconds"] == 0.0 and "run first-check" in again["reason"]
    [check] = infrastructure_checks(usecase.gate, again)
    assert check["passed"] is True and "not rerun" in check["reason"]

    monkeypatch.setenv("MLOPS_CODE_VERSION", "another-commit")
    changed = evaluate_in("new-code")
    assert not changed.get("reused") and changed["fingerprint"] != first["fingerprint"], changed
    assert changed["passed"] is True and "fresh process" in changed["reason"]


def test_the_infrastructure_check_scores_in_a_fresh_process_and_fails_on_a_model_the_scorer_cannot_load(
    trained, tmp_path: Path
):
    """The gate's infrastructure check loads the model as the scorer does (``tracking.load_model``) in another
    Python process: the real model agrees with the in-process scores; a copy whose skops file is damaged, or
    scores that disagree, fail it with the reason."""
    from pipelines.evaluation.loadcheck import start_infrastructure_check

    X, _ = _holdout_features(trained)
    rows = X.head(20)
    entry = next(c for c in trained.result["candidates"] if c["name"] == "logreg")
    expected = tracking.predict_proba(tracking.load_model(entry["model_uri"]), rows)

    copy = Path(mlflow.artifacts.download_artifacts(entry["model_uri"], dst_path=str(tmp_path / "copy")))
    weights = list(copy.rglob("*.skops"))
    assert weights, sorted(p.name for p in copy.rglob("*"))
    for path in weights:
        path.write_bytes(b"not a model")
    # the three fresh processes run side by side, as evaluate's runs while it explains the model
    pending = [
        start_infrastructure_check(uri, rows) for uri in (entry["model_uri"], entry["model_uri"], str(copy))
    ]
    loaded, disagreeing, broken = (
        check.result(scores)
        for check, scores in zip(pending, (expected, expected + 1e-3, expected), strict=True)
    )
    assert loaded["passed"] is True and loaded["max_abs_difference"] <= 1e-9, loaded
    assert loaded["rows"] == 20 and "fresh process" in loaded["reason"]
    assert disagreeing["passed"] is False and "allowed 1e-06" in disagreeing["reason"], disagreeing
    assert broken["passed"] is False and broken["max_abs_difference"] is None, broken
    assert "cannot load or score" in broken["reason"] and str(copy) in broken["reason"], broken


def test_importing_keras_never_leaves_a_stream_that_logging_reconfiguration_closes(tmp_path) -> None:
    """TensorFlow's absl log handler kept the stderr it found at import and closed it whenever logging was
    reconfigured (dictConfig closes every handler ever made) while stderr was something else: the file the demo's
    runner had redirected stderr to, or pytest's own capture (every later test of that xdist worker then failed
    with "I/O operation on closed file"). In a fresh process: Keras imported with stderr redirected to one file,
    logging reconfigured with stderr redirected to another; the first file stays open."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import contextlib, json, logging.config
        from pipelines import modeling
        first, second = open({str(tmp_path / "first.log")!r}, "w"), open({str(tmp_path / "second.log")!r}, "w")
        with contextlib.redirect_stderr(first):
            modeling._import_keras()
        with contextlib.redirect_stderr(second):
            logging.config.dictConfig({{"version": 1}})
        print(json.dumps({{"first_closed": first.closed}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"first_closed": False}
