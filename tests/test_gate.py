"""The gate: each check kind on crafted evaluate results, and the real step through the CLI."""

from __future__ import annotations

import json
import math
from datetime import date

import pytest
from _model_fixtures import fast_usecase, use_tmp_platform, write_config_dir

from pipelines.cli import main
from pipelines.config import HIGHER_IS_BETTER, Bound, ChangeBound, GateSpec, SliceGateSpec
from pipelines.context import StepFailed, run_result_key
from pipelines.lake import Lake
from pipelines.steps.gate import FIRST_RUN_REASON, decide, decision_id

DAY = date(2013, 4, 1)
# the demo use case's gate: roc_auc >= 0.60, brier <= 0.25, roc_auc +0.002 over the champion,
# robustness on roc_auc over slices with >= 300 rows (smaller ones on their interval), every slice >= 0.5
GATE = fast_usecase().gate


def _slices(**values: tuple[int, float | None]) -> dict:
    return {"carrier": {name: {"rows": rows, "roc_auc": auc} for name, (rows, auc) in values.items()}}


def evaluation(
    roc_auc: float | None = 0.72,
    brier: float | None = 0.18,
    champion: dict | None = None,
    slices: dict | None = None,
    noise: float = 0.0,
    gate: GateSpec = GATE,
    **extra_metrics: float | None,
) -> dict:
    """An evaluate result with one candidate 'hgb' as best; against a champion, the paired interval of each
    change metric's improvement is the difference +/- ``noise``."""
    metrics = {"roc_auc": roc_auc, "pr_auc": 0.5, "log_loss": 0.45, "brier": brier, **extra_metrics}
    comparison = {}
    for metric in gate.change:
        ours, theirs = metrics.get(metric), ((champion or {}).get("metrics") or {}).get(metric)
        if champion is None or ours is None or theirs is None or math.isnan(ours) or math.isnan(theirs):
            continue
        difference = (ours - theirs) * (1 if HIGHER_IS_BETTER[metric] else -1)
        comparison[metric] = {
            "difference": difference,
            "low": difference - noise,
            "high": difference + noise,
            "confidence": 0.95,
            "resamples": 1000,
            "seed": 7,
            "rows": 1700,
            "method": "paired bootstrap",
        }
    return {
        "comparison": comparison,
        "infrastructure": {"passed": True, "reason": "scored 50 rows the same", "max_abs_difference": 0.0},
        "best": "hgb",
        "candidates": {
            "hgb": {
                "run_id": "run-hgb",
                "model_uri": "models:/m-hgb",
                "metrics": metrics,
                "slices": slices if slices is not None else _slices(AA=(900, 0.70), B6=(800, 0.66)),
            },
            "logreg": {
                "run_id": "run-lr",
                "model_uri": "models:/m-lr",
                "metrics": {"roc_auc": 0.65},
                "slices": {},
            },
        },
        "champion": champion,
        "holdout_rows": 1700,
    }


def champion(roc_auc: float | None, **extra: object) -> dict:
    return {
        "version": "3",
        "run_id": "run-old",
        "candidate": "hgb",
        "metrics": {"roc_auc": roc_auc, "brier": 0.2},
        **extra,
    }


def _check(decision: dict, name: str) -> dict:
    return next(c for c in decision["checks"] if c["name"] == name)


def test_first_run_uses_absolute_thresholds_only():
    decision = decide(GATE, evaluation())
    assert decision["passed"] is True
    assert decision["reasons"] == []
    assert (decision["candidate"], decision["run_id"], decision["model_uri"]) == (
        "hgb",
        "run-hgb",
        "models:/m-hgb",
    )
    assert decision["candidate_value"] == 0.72
    assert decision["champion_value"] is None and decision["champion_version"] is None
    change = _check(decision, "roc_auc_vs_champion")
    assert change["kind"] == "change" and change["skipped"] is True and change["reason"] == FIRST_RUN_REASON
    assert {c["kind"] for c in decision["checks"]} == {"absolute", "change", "robustness", "infrastructure"}
    for check in decision["checks"]:
        assert set(check) >= {
            "name",
            "kind",
            "metric",
            "value",
            "threshold",
            "baseline",
            "passed",
            "skipped",
            "reason",
        }


def test_absolute_bounds_fail_with_reasons():
    decision = decide(GATE, evaluation(roc_auc=0.58, brier=0.3))
    assert decision["passed"] is False
    low = _check(decision, "roc_auc_min")
    assert (low["passed"], low["value"], low["threshold"]) == (False, 0.58, 0.6)
    assert "below the minimum 0.6" in low["reason"]
    high = _check(decision, "brier_max")
    assert high["passed"] is False and "above the maximum 0.25" in high["reason"]
    assert set(decision["reasons"]) == {low["reason"], high["reason"]}


@pytest.mark.parametrize("undefined", [float("nan"), None, float("inf")])
def test_undefined_candidate_metric_fails(undefined):
    decision = decide(GATE, evaluation(roc_auc=undefined, champion=champion(0.7)))
    assert decision["passed"] is False
    assert decision["candidate_value"] is None
    for name in ("roc_auc_defined", "roc_auc_min", "roc_auc_vs_champion"):
        check = _check(decision, name)
        assert check["passed"] is False and "missing/NaN" in check["reason"]
        assert check["value"] is None  # stays valid JSON
    json.dumps(decision, allow_nan=False)


@pytest.mark.parametrize(
    ("baseline", "extra", "expected"),
    [
        (float("nan"), {}, "baseline roc_auc is missing/NaN"),
        (None, {"error": "OSError: artifact gone"}, "missing/NaN (OSError: artifact gone)"),
        (0.0, {}, "baseline roc_auc is 0"),
    ],
)
def test_unusable_champion_baseline_fails(baseline, extra, expected):
    decision = decide(GATE, evaluation(roc_auc=0.9, champion=champion(baseline, **extra)))
    change = _check(decision, "roc_auc_vs_champion")
    assert change["passed"] is False and change["skipped"] is False
    assert expected in change["reason"] and "champion v3" in change["reason"]
    assert decision["passed"] is False
    assert decision["champion_version"] == "3"


def test_change_needs_min_delta_in_the_better_direction():
    too_small = decide(GATE, evaluation(roc_auc=0.7015, champion=champion(0.700)))
    change = _check(too_small, "roc_auc_vs_champion")
    assert change["passed"] is False and change["baseline"] == 0.7 and change["threshold"] == 0.002
    assert "improvement +0.0015" in change["reason"]
    assert too_small["passed"] is False and too_small["champion_value"] == 0.7
    enough = decide(GATE, evaluation(roc_auc=0.7025, champion=champion(0.700)))
    assert _check(enough, "roc_auc_vs_champion")["passed"] is True and enough["passed"] is True

    # lower is better for log_loss: the candidate must be at least min_delta *below* the champion
    gate = GATE.model_copy(update={"change": {"log_loss": ChangeBound(min_delta=0.005)}})
    champ = {"version": "3", "metrics": {"log_loss": 0.46}}
    assert decide(gate, evaluation(champion=champ, log_loss=0.45, gate=gate))["passed"] is True
    worse = decide(gate, evaluation(champion=champ, log_loss=0.47, gate=gate))
    assert worse["passed"] is False
    assert "improvement -0.0100" in _check(worse, "log_loss_vs_champion")["reason"]


def test_rerun_after_promotion_does_not_compare_the_champion_with_itself():
    decision = decide(GATE, evaluation(roc_auc=0.72, champion=champion(0.72, run_id="run-hgb")))
    change = _check(decision, "roc_auc_vs_champion")
    assert change["skipped"] is True and "already the champion" in change["reason"]
    assert decision["passed"] is True
    # the absolute checks still apply
    assert decide(GATE, evaluation(roc_auc=0.5, champion=champion(0.5, run_id="run-hgb")))["passed"] is False


def test_robustness_worst_slice_and_gap():
    unfair = decide(GATE, evaluation(slices=_slices(AA=(900, 0.74), B6=(400, 0.45), XX=(20, 0.10))))
    worst = _check(unfair, "robustness_carrier_min_roc_auc")
    assert worst["passed"] is False and worst["value"] == 0.45 and "'B6'" in worst["reason"]
    assert unfair["passed"] is False

    # slices under min_slice_rows (XX, 20 rows) do not count
    fair = decide(GATE, evaluation(slices=_slices(AA=(900, 0.74), B6=(400, 0.61), XX=(20, 0.10))))
    assert _check(fair, "robustness_carrier_min_roc_auc")["passed"] is True and fair["passed"] is True

    gap_gate = GATE.model_copy(
        update={"robustness": SliceGateSpec(metric="roc_auc", min_slice_rows=300, min_value=0.5, max_gap=0.1)}
    )
    gap = _check(
        decide(gap_gate, evaluation(slices=_slices(AA=(900, 0.74), B6=(400, 0.61)))),
        "robustness_carrier_gap_roc_auc",
    )
    assert gap["passed"] is False and math.isclose(gap["value"], 0.13) and "exceeds 0.1" in gap["reason"]


def test_robustness_nan_fails_and_no_gatable_slice_fails_closed():
    nan_slice = decide(GATE, evaluation(slices=_slices(AA=(900, 0.74), B6=(400, None))))
    check = _check(nan_slice, "robustness_carrier_min_roc_auc")
    assert check["passed"] is False and "['B6']" in check["reason"]
    # a slice too small for its value and without an interval: nothing can be gated, so nothing passes
    small = decide(GATE, evaluation(slices=_slices(AA=(100, 0.4))))
    closed = _check(small, "robustness_carrier")
    assert closed["passed"] is False and closed["skipped"] is False
    assert "no carrier slice could be gated" in closed["reason"] and "['AA']" in closed["reason"]
    listed = _check(small, "robustness_carrier_not_gated")
    assert listed["skipped"] is True and "['AA']" in listed["reason"]
    assert small["passed"] is False


def _small_slice(low: float, high: float) -> dict:
    return {"rows": 120, "roc_auc": (low + high) / 2, "intervals": {"roc_auc": {"low": low, "high": high}}}


def test_a_small_slice_is_gated_on_its_interval():
    """A slice under min_slice_rows fails the floor when its interval's upper bound is below it, and only then;
    one with no interval is named as not gated beside the gated ones."""
    bad = _slices(AA=(900, 0.74), B6=(800, 0.70))
    bad["carrier"]["EV"] = _small_slice(0.22, 0.41)
    bad["carrier"]["OO"] = {"rows": 9, "roc_auc": None}
    decision = decide(GATE, evaluation(slices=bad))
    floor = _check(decision, "robustness_carrier_min_roc_auc")
    assert floor["passed"] is False and floor["group"] == "EV" and floor["value"] == 0.41
    assert "gated on its interval" in floor["reason"] and "['OO']" in floor["reason"]
    assert "['OO']" in _check(decision, "robustness_carrier_not_gated")["reason"]
    assert decision["passed"] is False
    noisy = _slices(AA=(900, 0.74), B6=(800, 0.70))
    noisy["carrier"]["EV"] = _small_slice(0.30, 0.62)  # below the floor on its value, not on its interval
    assert decide(GATE, evaluation(slices=noisy))["passed"] is True


def test_a_slice_with_few_positives_is_flagged_not_gated():
    """A 515-row group with 3 positives has an AUC that is noise: shown and named, never failing the gate."""
    slices = {
        "carrier": {
            "AA": {"rows": 900, "positives": 150, "roc_auc": 0.74},
            "B6": {"rows": 800, "positives": 120, "roc_auc": 0.70},
            "ZZ": {"rows": 515, "positives": 3, "roc_auc": 0.21},
            "YY": {"rows": 600, "positives": 590, "roc_auc": 0.30},  # too few negatives
        }
    }
    decision = decide(GATE, evaluation(slices=slices))
    worst = _check(decision, "robustness_carrier_min_roc_auc")
    assert worst["passed"] is True and worst["value"] == 0.70
    assert "not gated" in worst["reason"] and "['YY', 'ZZ']" in worst["reason"]
    assert decision["passed"] is True
    enough = {**slices["carrier"], "ZZ": {"rows": 515, "positives": 40, "roc_auc": 0.21}}
    assert decide(GATE, evaluation(slices={"carrier": enough}))["passed"] is False


def test_everything_passes_against_a_champion():
    decision = decide(GATE, evaluation(roc_auc=0.75, champion=champion(0.72)))
    assert decision["passed"] is True and decision["reasons"] == []
    assert not any(c["skipped"] for c in decision["checks"])
    assert decision["champion_value"] == 0.72 and decision["champion_version"] == "3"


def test_no_thresholds_configured_means_no_promotion():
    gate = GateSpec(primary_metric="pr_auc", infrastructure_check=False)
    decision = decide(gate, evaluation(pr_auc=0.9, gate=gate))
    assert [c["name"] for c in decision["checks"]] == ["thresholds_configured", "pr_auc_defined"]
    assert decision["passed"] is False
    assert "no absolute or change thresholds" in decision["reasons"][0]
    # one absolute bound is enough to decide on
    bounded = gate.model_copy(update={"absolute": {"pr_auc": Bound(min=0.5)}})
    assert decide(bounded, evaluation(pr_auc=0.9, gate=bounded))["passed"] is True


def test_an_improvement_within_the_noise_is_not_promoted():
    """+0.010 ROC AUC looks like a win, but its paired interval [-0.005, +0.025] reaches below min_delta."""
    noisy = decide(GATE, evaluation(roc_auc=0.71, champion=champion(0.70), noise=0.015))
    change = _check(noisy, "roc_auc_vs_champion")
    assert noisy["passed"] is False and change["passed"] is False
    assert change["interval"]["low"] == pytest.approx(-0.005) and change["interval"]["resamples"] == 1000
    assert change["difference"] == pytest.approx(0.01)
    assert "within the noise" in change["reason"] and "95% interval" in change["reason"]
    assert "not shown to beat the champion by min_delta 0.002" in change["reason"]
    assert "straddles zero" in change["reason"] and "worse" not in change["reason"]
    clear = decide(GATE, evaluation(roc_auc=0.73, champion=champion(0.70), noise=0.01))
    assert _check(clear, "roc_auc_vs_champion")["passed"] is True and clear["passed"] is True
    # no interval recorded (an evaluation from an older release): fail closed
    missing = evaluation(roc_auc=0.75, champion=champion(0.70))
    missing["comparison"] = {}
    assert decide(GATE, missing)["passed"] is False


def test_the_infrastructure_check_fails_the_gate():
    broken = evaluation()
    broken["infrastructure"] = {"passed": False, "reason": "the scorer cannot load models:/m-hgb: OSError"}
    decision = decide(GATE, broken)
    assert decision["passed"] is False and "cannot load" in _check(decision, "infrastructure")["reason"]
    del broken["infrastructure"]
    assert decide(GATE, broken)["passed"] is False  # not checked is not passed


def test_malformed_evaluation_is_a_step_failure():
    bad = evaluation()
    bad["best"] = "nope"
    with pytest.raises(StepFailed, match="best candidate 'nope'"):
        decide(GATE, bad)


def test_real_step_writes_the_decision_and_exits_0_when_not_passed(tmp_path, monkeypatch, capsys):
    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase()
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    argv = ["gate", "--usecase", usecase.name, "--date", DAY.isoformat()]

    assert main(argv) == 1  # no evaluate result yet
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["failed"] is True and run_result_key(usecase.name, DAY, "evaluate", "manual") in out["error"]

    lake = Lake(str(tmp_path / "lake"))
    lake.write_json(run_result_key(usecase.name, DAY, "evaluate", "manual"), evaluation(roc_auc=0.55))
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = lake.read_json(run_result_key(usecase.name, DAY, "gate", "manual"))
    assert printed["passed"] is False and stored["passed"] is False
    assert (
        stored["result_uri"]
        == printed["result_uri"]
        == lake.storage.uri(run_result_key(usecase.name, DAY, "gate", "manual"))
    )
    assert stored["checks"] == printed["checks"]
    assert any("below the minimum 0.6" in r for r in stored["reasons"])


def test_every_decision_is_kept_as_a_record_beside_the_earlier_ones(tmp_path, monkeypatch, capsys):
    """A rerun in the same run with the same inputs finds its record; another run, or the same run after a config
    edit, adds a decision beside the earlier ones, each with the config hash, code and data versions it used."""
    from _lake_faults import read_decisions

    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase()
    config_dir = tmp_path / "config"
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(config_dir, usecase)))
    monkeypatch.setenv("MLOPS_CODE_VERSION", "code-1")
    lake = Lake(str(tmp_path / "lake"))
    evaluated = {**evaluation(roc_auc=0.65), "tables_read": {"features/flight_delay": 7}}
    argv = ["gate", "--usecase", usecase.name, "--date", DAY.isoformat()]

    def gate_in(run: str, seconds: float = 2.5) -> dict:  # each run gates its own evaluate result
        timed = evaluated | {  # the load check's reason tells how long it took: not an input of the decision
            "infrastructure": {
                "passed": True,
                "reason": f"scored 50 rows the same (finished {seconds} s after it started)",
                "max_abs_difference": 0.0,
                "seconds": seconds,
            }
        }
        lake.write_json(run_result_key(usecase.name, DAY, "evaluate", run), timed)
        monkeypatch.setenv("MLOPS_RUN_ID", run)
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    first = gate_in("scheduled__2013-04-01T00:00:00+00:00")
    assert first["passed"] is True
    assert first["inputs"]["config_hash"] == usecase.config_hash
    assert first["inputs"]["code_version"] == "code-1"
    assert first["inputs"]["tables_read"] == {"features/flight_delay": 7}
    assert first["inputs"]["candidate_runs"] == {"hgb": "run-hgb", "logreg": "run-lr"}
    assert first["decision_uri"].endswith(
        f"/scheduled__2013-04-01T00_00_00_00_00--{first['decision_id']}.json"
    )
    again = gate_in("scheduled__2013-04-01T00:00:00+00:00", seconds=6.75)
    assert again["decision_id"] == first["decision_id"] and again["decision_uri"] == first["decision_uri"]
    assert len(read_decisions(lake, usecase.name, DAY)) == 1

    stricter = usecase.model_copy(
        update={"gate": usecase.gate.model_copy(update={"absolute": {"roc_auc": Bound(min=0.7)}})}
    )
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config-2", stricter)))
    edited = gate_in("scheduled__2013-04-01T00:00:00+00:00")
    assert edited["passed"] is False and edited["decision_id"] != first["decision_id"]
    assert edited["inputs"]["config_hash"] != first["inputs"]["config_hash"]
    manual = gate_in("manual__2013-04-02T09:00:00+00:00", seconds=0.4)
    assert manual["decision_id"] == edited["decision_id"] and manual["decision_uri"] != edited["decision_uri"]

    decisions = read_decisions(lake, usecase.name, DAY)
    assert sorted((d["run"], d["passed"], d["inputs"]["config_hash"]) for d in decisions) == sorted(
        [
            ("manual__2013-04-02T09:00:00+00:00", False, edited["inputs"]["config_hash"]),
            ("scheduled__2013-04-01T00:00:00+00:00", True, usecase.config_hash),
            ("scheduled__2013-04-01T00:00:00+00:00", False, edited["inputs"]["config_hash"]),
        ]
    )
    # each run's gate result stays beside the other's: the manual run did not overwrite the scheduled one's
    assert lake.read_json(run_result_key(usecase.name, DAY, "gate", manual["run"]))["run"] == manual["run"]
    scheduled = lake.read_json(run_result_key(usecase.name, DAY, "gate", edited["run"]))
    assert scheduled["run"] == edited["run"] and scheduled["decision_uri"] == edited["decision_uri"]


@pytest.mark.parametrize(
    ("metric", "candidate", "champion_value", "worse_word"),
    [("roc_auc", 0.66, 0.70, "a lower roc_auc"), ("rmse", 9.0, 8.0, "a higher rmse")],
)
def test_an_interval_wholly_below_zero_reads_worse_in_the_metric_direction(
    metric, candidate, champion_value, worse_word
):
    """Not 'within the noise': a candidate whose whole interval of improvement lies below zero is worse."""
    gate = GateSpec(
        primary_metric=metric, change={metric: ChangeBound(min_delta=0.002)}, infrastructure_check=False
    )
    evaluated = evaluation(
        gate=gate,
        champion={"version": "3", "run_id": "run-old", "metrics": {metric: champion_value}},
        noise=0.01,
        **{metric: candidate},
    )
    decision = decide(gate, evaluated)
    change = _check(decision, f"{metric}_vs_champion")
    assert change["interval"]["high"] < 0 and change["passed"] is False and decision["passed"] is False
    assert (
        "worse than the champion" in change["reason"] and "whole interval lies below zero" in change["reason"]
    )
    assert worse_word in change["reason"] and "within the noise" not in change["reason"]
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    assert f"({better} is better)" in change["reason"]
    assert decision["reasons"] == [change["reason"]]


def test_an_interval_short_of_min_delta_is_within_the_noise_and_one_above_it_passes():
    """RMSE (lower is better) improved by 0.05 with interval [+0.03, +0.07]: shown better than the champion,
    not by min_delta 0.1; by 0.3 with interval [+0.28, +0.32] it passes."""
    gate = GateSpec(
        primary_metric="rmse", change={"rmse": ChangeBound(min_delta=0.1)}, infrastructure_check=False
    )
    champ = {"version": "3", "run_id": "run-old", "metrics": {"rmse": 8.0}}
    short = _check(
        decide(gate, evaluation(gate=gate, champion=champ, noise=0.02, rmse=7.95)), "rmse_vs_champion"
    )
    assert short["passed"] is False and short["interval"]["low"] == pytest.approx(0.03)
    assert "within the noise, not shown to beat the champion by min_delta 0.1" in short["reason"]
    assert "above zero" in short["reason"] and "worse" not in short["reason"]
    clear = _check(
        decide(gate, evaluation(gate=gate, champion=champ, noise=0.02, rmse=7.7)), "rmse_vs_champion"
    )
    assert clear["passed"] is True and "clears min_delta 0.1: better than the champion" in clear["reason"]


def test_the_decision_id_hashes_the_inputs_only():
    """Identical inputs give the same id whatever the load check took (its reason tells the seconds) and in any
    Airflow run; a changed metric, threshold, champion or data version gives a new one."""

    def identified(evaluated: dict, gate: GateSpec = GATE, **inputs: object) -> str:
        decision = decide(gate, evaluated)
        decision["inputs"] = {
            "config_hash": "c1",
            "code_version": "v1",
            "tables_read": {"features": 7},
        } | inputs
        decision["run"] = "scheduled__x"
        return decision_id(decision)

    def timed(seconds: float, **kwargs: object) -> dict:
        evaluated = evaluation(champion=champion(0.70), noise=0.01, **kwargs)
        evaluated["infrastructure"] = {
            "passed": True,
            "reason": f"loaded models:/m-hgb in a fresh process (finished {seconds} s after it started)",
            "max_abs_difference": 1e-17 * seconds,
            "seconds": seconds,
        }
        return evaluated

    first = identified(timed(3.1))
    assert identified(timed(7.45)) == first
    assert identified(timed(3.1, roc_auc=0.73)) != first
    assert identified(timed(3.1), tables_read={"features": 8}) != first
    assert identified(timed(3.1), config_hash="c2") != first
    other_champion = timed(3.1)
    other_champion["champion"] = champion(0.70, version="4")
    assert identified(other_champion) != first
    stricter = GATE.model_copy(update={"absolute": {"roc_auc": Bound(min=0.65)}})
    assert identified(timed(3.1), gate=stricter) != first
    broken = timed(3.1)
    broken["infrastructure"]["passed"] = False
    assert identified(broken) != first


@pytest.mark.parametrize(
    ("usecase", "metric"), [("flight_arrival_delay", "mae"), ("flight_delay", "roc_auc")]
)
def test_the_replay_summary_names_the_task_metric(tmp_path, usecase, metric):
    """A regression's live metric is stored under its own name (live_mae), never under a ROC AUC key."""
    from mlops_cli.replay import live_quality, metric_note
    from pipelines.config import load_usecase

    loaded = load_usecase(usecase)
    assert loaded.gate.primary_metric == metric
    live = live_quality(Lake(str(tmp_path / "lake")), loaded, [DAY])
    assert f"live_{metric}" in live and live["live_primary_metric"] is None
    assert live["live_roc_auc"] is None  # a regression has no ROC AUC: None, never its MAE
    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    assert f"{metric} ({better} is better)" in metric_note(loaded)


def test_validate_warns_about_a_roc_auc_floor_below_chance(tmp_path, monkeypatch, capsys):
    """A floor under 0.5 (the flight example's robustness floor was 0.47) is a warning with its field and fix;
    the file still validates (exit 0), and the shipped floor is no longer below chance."""
    assert GATE.robustness.min_value >= 0.5
    base = fast_usecase()
    below = base.gate.model_copy(
        update={"robustness": base.gate.robustness.model_copy(update={"min_value": 0.47})}
    )
    monkeypatch.setenv(
        "MLOPS_CONFIG_DIR",
        str(write_config_dir(tmp_path / "config", base.model_copy(update={"gate": below}))),
    )
    assert main(["validate", base.name]) == 0
    out = capsys.readouterr().out
    assert "warning: gate.robustness.min_value: ROC AUC floor 0.47 is below chance (0.5)" in out, out
    assert "fix: use at least 0.5" in out
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "fixed", base)))
    assert main(["validate", base.name]) == 0
    assert "warning" not in capsys.readouterr().out


def test_evaluate_gives_small_slices_intervals_and_a_backwards_one_is_rejected():
    """Real slices (metrics.slice_metrics) with evaluate's intervals for the slices under min_slice_rows: an
    80-row carrier ranked backwards fails the robustness floor on its interval; ranked as well as the rest, it
    passes."""
    import numpy as np
    import pandas as pd

    from pipelines.evaluation.fairness import add_slice_intervals
    from pipelines.evaluation.metrics import slice_metrics

    rng = np.random.default_rng(3)
    rows = 2000
    frame = pd.DataFrame(
        {"carrier": np.where(np.arange(rows) < 80, "EV", rng.choice(["AA", "B6"], size=rows))}
    )
    signal = rng.normal(size=rows)
    y = (rng.random(rows) < 1 / (1 + np.exp(-2 * signal))).astype("float64")
    good = 1 / (1 + np.exp(-(signal + rng.normal(size=rows) * 0.5)))
    small = (frame["carrier"] == "EV").to_numpy()
    for scores, passed in ((np.where(small, 1 - good, good), False), (good, True)):
        slices = slice_metrics(frame, y, scores, ["roc_auc"])
        add_slice_intervals(
            slices, frame, y, scores, spec=GATE.robustness, resamples=500, confidence=0.95, seed=1
        )
        assert "intervals" in slices["carrier"]["EV"] and "intervals" not in slices["carrier"]["AA"]
        floor = _check(decide(GATE, evaluation(slices=slices)), "robustness_carrier_min_roc_auc")
        assert floor["passed"] is passed, floor["reason"]
        if not passed:
            assert (
                floor["group"] == "EV" and floor["value"] < 0.5 and "gated on its interval" in floor["reason"]
            )
