"""register, promote and `mlops models list` against a real MLflow registry on a temporary SQLite store."""

from __future__ import annotations

import json
from datetime import date

import pytest
from _serve_fixtures import ServeEnv, produce_day

from pipelines.cli import main, run_step
from pipelines.context import MANUAL_RUN, StepFailed, run_result_key

UC = "flight_delay"


TWO = (("logreg", "logistic_regression"), ("hgb", "hist_gradient_boosting"))


def _step(name: str, day: date) -> dict:
    """The step's result without its ``timings`` (how long it took, which a rerun does not repeat exactly)."""
    result = run_step([name, "--usecase", UC, "--date", day.isoformat()])
    result.pop("timings", None)
    return result


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _champion() -> int | None:
    from pipelines.config import load_usecase
    from pipelines.modeling.tracking import champion_version

    version = champion_version(load_usecase(UC))
    return None if version is None else int(version.version)


def test_register_tags_every_candidate_and_rerun_adds_no_versions(serve_env: ServeEnv) -> None:
    day = date(2013, 3, 1)
    made = produce_day(serve_env, day, gate_passed=True, candidates=TWO)
    best = made["best"]

    first = _step("register", day)
    assert {v["candidate"] for v in first["versions"]} == {"logreg", "hgb"}
    by_name = {v["candidate"]: v for v in first["versions"]}
    assert first["gate_passed"] is True
    assert first["gate_candidate_version"] == by_name[best]["version"]

    client = _client()
    train = made["train"]
    for candidate in train["candidates"]:
        version = client.get_model_version(UC, str(by_name[candidate["name"]]["version"]))
        assert version.run_id == candidate["run_id"]
        tags = version.tags
        assert tags["candidate"] == candidate["name"]
        assert tags["family"] == candidate["family"]
        assert tags["logical_date"] == "2013-03-01"
        assert tags["data_window"] == f"{train['window']['train_start']}..2013-03-01"
        assert tags["feature_partitions"] == "2013-02-23..2013-02-28 (6)"
        assert tags["raw_partitions"].startswith("6 (sha256:")
        assert tags["config_hash"] == serve_env.usecase.config_hash
        assert tags["code_version"] == "test-code-1"
        assert tags["primary_metric"] == "roc_auc"
        expected_auc = made["evaluate"][candidate["name"]]["metrics"]["roc_auc"]
        assert float(tags["primary_metric_value"]) == pytest.approx(expected_auc, abs=1e-6)
        assert tags["gate_status"] == ("passed" if candidate["name"] == best else "not selected")
        assert tags["gate_decision_uri"] == made["gate"]["result_uri"]
        assert by_name[candidate["name"]]["gate_status"] == tags["gate_status"]

    stored = serve_env.lake.read_json(run_result_key(UC, day, "register", MANUAL_RUN))
    assert stored["raw_partitions"] == train["inputs"]

    second = _step("register", day)
    assert second["versions"] == first["versions"]
    assert len(client.search_model_versions(f"name = '{UC}'")) == 2


def test_register_fails_closed_on_missing_or_stale_gate(serve_env: ServeEnv) -> None:
    day = date(2013, 3, 1)
    made = produce_day(serve_env, day, gate_passed=True)
    gate_key = run_result_key(UC, day, "gate", MANUAL_RUN)
    serve_env.lake.write_json(gate_key, {**made["gate"], "run_id": "0" * 32})
    with pytest.raises(StepFailed, match="stale"):
        _step("register", day)
    serve_env.lake.storage.delete([gate_key])
    with pytest.raises(StepFailed, match="no gate result"):
        _step("register", day)
    assert _client().search_model_versions(f"name = '{UC}'") == []


def test_alias_moves_only_through_a_passed_gate(serve_env: ServeEnv) -> None:
    d1, d2, d3 = date(2013, 3, 1), date(2013, 4, 1), date(2013, 5, 1)
    client = _client()

    # day 1: gate passed -> the candidate becomes the first champion
    produce_day(serve_env, d1, gate_passed=True)
    v1 = _step("register", d1)["gate_candidate_version"]
    promoted = _step("promote", d1)
    assert promoted["champion_version"] == v1 and promoted["previous_champion_version"] is None
    assert _champion() == v1
    assert client.get_model_version(UC, str(v1)).tags["promoted_on"] == "2013-03-01"
    assert _step("promote", d1)["champion_version"] == v1  # idempotent rerun
    assert _champion() == v1

    # day 2: gate failed -> registered as failed, promote raises, the champion stays
    made2 = produce_day(serve_env, d2, gate_passed=False)
    registered2 = _step("register", d2)
    v2 = registered2["gate_candidate_version"]
    assert registered2["gate_passed"] is False
    tags2 = client.get_model_version(UC, str(v2)).tags
    assert tags2["gate_status"] == "failed"
    assert tags2["gate_reasons"] == made2["gate"]["reasons"][0]
    with pytest.raises(StepFailed, match="gate did not pass") as failure:
        _step("promote", d2)
    assert failure.value.result["champion_version"] == v1
    assert _champion() == v1
    assert "promoted_on" not in client.get_model_version(UC, str(v2)).tags

    # day 3: gate passed -> the alias moves, the previous champion is recorded; reruns give the same result
    produce_day(serve_env, d3, gate_passed=True)
    v3 = _step("register", d3)["gate_candidate_version"]
    moved = _step("promote", d3)
    assert (moved["champion_version"], moved["previous_champion_version"]) == (v3, v1)
    assert _step("promote", d3) == moved
    assert _champion() == v3
    assert client.get_model_version(UC, str(v1)).tags["superseded_by"] == str(v3)

    # rerunning day 1's promote later (a cleared old run) must not roll production back
    again = _step("promote", d1)
    assert again["champion_version"] == v3 and "not_moved" in again
    assert _champion() == v3


def test_promote_refuses_when_the_champion_moved_after_the_gate(serve_env: ServeEnv) -> None:
    """Compare and set: promote moves the alias only while the champion is the version the gate compared against
    (no champion counts as one). When another run moved it since, promote fails naming both versions, and the
    alias and the candidate's tags stay as they were."""
    d1, d2 = date(2013, 3, 1), date(2013, 4, 1)
    client = _client()

    # day 1: the gate compared against no champion; another run promotes one before this promote runs
    made1 = produce_day(serve_env, d1, gate_passed=True, candidates=TWO)
    assert made1["gate"]["champion_version"] is None
    by_name = {v["candidate"]: v["version"] for v in _step("register", d1)["versions"]}
    best, other = by_name[made1["best"]], next(v for c, v in by_name.items() if c != made1["best"])
    client.set_registered_model_alias(UC, "champion", str(other))
    with pytest.raises(StepFailed) as failure:
        _step("promote", d1)
    message = str(failure.value)
    assert f"compared candidate version {best} against no champion" in message
    assert f"the champion is now version {other}" in message and "nothing moved" in message
    assert failure.value.result["champion_version"] == other
    assert failure.value.result["gate_champion_version"] is None
    assert _champion() == other
    assert "promoted_on" not in client.get_model_version(UC, str(best)).tags

    # back to no champion: the gate's comparison holds again and the alias moves
    client.delete_registered_model_alias(UC, "champion")
    assert _step("promote", d1)["champion_version"] == best
    assert _champion() == best

    # day 2: the gate compared against day 1's champion; the alias moved to another version meanwhile
    made2 = produce_day(serve_env, d2, gate_passed=True)
    assert made2["gate"]["champion_version"] == str(best)
    v2 = _step("register", d2)["gate_candidate_version"]
    client.set_registered_model_alias(UC, "champion", str(other))
    with pytest.raises(StepFailed, match=rf"against version {best}, but the champion is now version {other}"):
        _step("promote", d2)
    assert _champion() == other
    assert "promoted_on" not in client.get_model_version(UC, str(v2)).tags
    assert "superseded_by" not in client.get_model_version(UC, str(other)).tags
    assert not serve_env.lake.storage.exists(run_result_key(UC, d2, "promote", MANUAL_RUN))

    # the champion is the compared version again: promote moves it
    client.set_registered_model_alias(UC, "champion", str(best))
    moved = _step("promote", d2)
    assert (moved["champion_version"], moved["previous_champion_version"]) == (v2, best)
    assert _champion() == v2


def test_models_list_marks_the_champion(serve_env: ServeEnv, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", UC]) == 0
    assert "No model versions registered" in capsys.readouterr().out

    day = date(2013, 3, 1)
    made = produce_day(serve_env, day, gate_passed=True, candidates=TWO)
    registered = _step("register", day)
    champion = _step("promote", day)["champion_version"]
    capsys.readouterr()

    assert main(["models", "list", UC]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = lines[0], lines[1:]
    assert "gate" in header and "champion" in header and "primary metric" in header
    assert len(rows) == len(registered["versions"])
    marked = [r for r in rows if r.startswith("*")]
    assert len(marked) == 1
    fields = marked[0].split()
    assert fields[1] == str(champion) and fields[2] == made["best"] and fields[-1] == "champion"
    assert "2013-03-01" in marked[0] and "passed" in marked[0]
    others = [r for r in rows if not r.startswith("*")]
    assert all("not selected" in r and not r.rstrip().endswith("champion") for r in others)

    assert main(["models", "list", UC, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["version"] for row in listed if row["champion"]] == [champion]
    assert {row["candidate"] for row in listed} == {"logreg", "hgb"}
    assert all(row["data_window"].endswith("..2013-03-01") for row in listed)
