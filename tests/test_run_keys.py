"""Step results keyed by the orchestrator's run (MLOPS_RUN_ID): a manual `<uc>_train` run and the
`<uc>_train_nightly` run of one date each read their own predecessors and neither overwrites the other's results;
the promote that comes second finds the champion moved since its gate and moves nothing. Real steps, real lake
files, a real MLflow registry (tmp SQLite)."""

from __future__ import annotations

from datetime import date

import pytest
from _model_fixtures import (
    FAST_CANDIDATES,
    fast_usecase,
    use_tmp_platform,
    write_config_dir,
    write_feature_partitions,
)

from pipelines.cli import run_step
from pipelines.context import StepFailed, run_key, run_result_key, safe_run_id
from pipelines.lake import Lake

DAY = "2013-02-10"
MANUAL = "manual__2013-02-10T03:12:00+00:00"  # <uc>_train, triggered by hand
NIGHTLY = "scheduled__2013-02-10T10:00:00+00:00"  # <uc>_train_nightly


def test_safe_run_id_keeps_plain_ids_and_never_merges_two() -> None:
    assert safe_run_id("manual") == "manual"
    encoded = safe_run_id(MANUAL)
    assert encoded.startswith("manual__2013-02-10T03_12_00_00_00-") and "/" not in encoded
    assert safe_run_id("a:b") != safe_run_id("a+b") != safe_run_id("a_b")
    assert safe_run_id("../x") != ".._x" and "/" not in safe_run_id("../x")
    assert run_key("uc", DAY, "gate", MANUAL) == f"runs/uc/gate/date={DAY}/run={encoded}"


def test_a_manual_and_a_nightly_train_run_on_one_date_keep_their_own_results(tmp_path, monkeypatch) -> None:
    use_tmp_platform(monkeypatch, tmp_path)
    usecase = fast_usecase([FAST_CANDIDATES[0]])
    usecase = usecase.model_copy(
        update={"gate": usecase.gate.model_copy(update={"infrastructure_check": False})}
    )
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(tmp_path / "config", usecase)))
    lake = Lake(str(tmp_path / "lake"))
    write_feature_partitions(lake, usecase, date(2013, 1, 1), 45, rows_per_day=60)

    def step(run: str, name: str, *extra: str) -> dict:
        monkeypatch.setenv("MLOPS_RUN_ID", run)
        return run_step([name, "--usecase", usecase.name, "--date", DAY, *extra])

    # the two runs interleave step by step, as two DAG runs of one date can
    trained = {
        MANUAL: step(MANUAL, "train", "--mode", "full"),
        NIGHTLY: step(NIGHTLY, "train", "--mode", "refresh"),
    }
    candidate_run = {run: result["candidates"][0]["run_id"] for run, result in trained.items()}
    assert candidate_run[MANUAL] != candidate_run[NIGHTLY]  # two trainings, two MLflow runs
    for run in (MANUAL, NIGHTLY):
        step(run, "evaluate")
    gated = {run: step(run, "gate") for run in (MANUAL, NIGHTLY)}
    reported = {
        run: step(run, "report", "--importance-rows", "300", "--importance-repeats", "1") for run in gated
    }
    registered = {run: step(run, "register") for run in (MANUAL, NIGHTLY)}

    for run in (MANUAL, NIGHTLY):
        # each step read its own run's predecessor: the gate decided on this run's candidate (through this run's
        # evaluate of this run's train), register registered it
        assert gated[run]["run_id"] == candidate_run[run] and gated[run]["run"] == run
        stored_train = lake.read_json(run_result_key(usecase.name, DAY, "train", run))
        assert stored_train["mode"] == ("full" if run == MANUAL else "refresh")
        assert stored_train["candidates"][0]["run_id"] == candidate_run[run]
        evaluation = lake.read_json(run_result_key(usecase.name, DAY, "evaluate", run))
        assert evaluation["candidates"]["logreg"]["run_id"] == candidate_run[run]
        assert f"/run={safe_run_id(run)}/report.json" in reported[run]["report_uri"]
        # the report shows its own run's decision
        assert reported[run]["decision_id"] == gated[run]["decision_id"]
        assert gated[run]["passed"] is True and gated[run]["champion_version"] is None
        assert gated[run]["result_uri"].endswith(run_result_key(usecase.name, DAY, "gate", run))
        # ... and register this run's gate: the gate candidate's version comes from this run's training
        by_candidate = {v["candidate"]: v for v in registered[run]["versions"]}
        assert by_candidate["logreg"]["run_id"] == candidate_run[run]
        assert registered[run]["gate_candidate_version"] == by_candidate["logreg"]["version"]
    assert registered[MANUAL]["gate_candidate_version"] != registered[NIGHTLY]["gate_candidate_version"]

    # both gates compared against no champion: the first promote moves the alias, the second finds it moved
    promoted = step(MANUAL, "promote")
    assert promoted["champion_version"] == registered[MANUAL]["gate_candidate_version"]
    with pytest.raises(StepFailed) as failure:
        step(NIGHTLY, "promote")
    assert (
        f"compared candidate version {registered[NIGHTLY]['gate_candidate_version']} against no champion, but "
        f"the champion is now version {promoted['champion_version']}"
    ) in str(failure.value)
    assert (
        step(MANUAL, "promote")["champion_version"] == promoted["champion_version"]
    )  # still the manual run's
