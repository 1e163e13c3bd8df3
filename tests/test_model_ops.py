"""`mlops models show|promote|rollback|history` on a real MLflow registry and a real lake: promote refuses a version
whose gate did not pass unless forced with a reason, every alias move (the gate's and the manual ones) is one
recorded row in order, a rollback restores the previous champion, no record means no move, and after a rollback
the next batch score and the REST service (its real app) use the restored version."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from _serve_fixtures import ServeEnv, produce_day, write_features

from pipelines.cli import main, run_step
from pipelines.context import StepFailed
from pipelines.lake import alias_moves_table, predictions_table

UC = "flight_delay"


def _step(name: str, day: date) -> dict:
    return run_step([name, "--usecase", UC, "--date", day.isoformat()])


def _champion() -> int | None:
    from pipelines.config import load_usecase
    from pipelines.modeling.tracking import champion_version

    version = champion_version(load_usecase(UC))
    return None if version is None else int(version.version)


def _models(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _trained(env: ServeEnv, day: date, *, passed: bool, promote: bool = False) -> int:
    """A registered candidate for ``day`` whose gate passed or not; promoted by the promote step if asked."""
    produce_day(env, day, gate_passed=passed)
    version = _step("register", day)["gate_candidate_version"]
    if promote:
        assert _step("promote", day)["champion_version"] == version
    return version


def test_promote_rollback_and_history(
    serve_env: ServeEnv, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLOPS_USER", "carol")
    v1 = _trained(serve_env, date(2013, 3, 1), passed=True, promote=True)  # the gate's promotion
    v2 = _trained(serve_env, date(2013, 4, 1), passed=False)

    # a failed gate is refused without --force, and --force needs a reason; nothing moves
    code, _, err = _models(capsys, "promote", "--usecase", UC, str(v2))
    assert code == 1 and f"version {v2} of 'flight_delay' did not pass its gate (gate: failed" in err
    assert "--force --reason" in err
    code, _, err = _models(capsys, "promote", "--usecase", UC, str(v2), "--force")
    assert code == 1 and "--force needs --reason" in err
    code, _, err = _models(capsys, "promote", "--usecase", UC, "99")
    assert code == 1 and "has no version 99" in err and "mlops models list --usecase flight_delay" in err
    assert _champion() == v1

    # forced with a reason: moved, recorded as forced, by whom and why, mirrored on the version's tags
    code, out, _ = _models(
        capsys,
        "promote",
        "--usecase",
        UC,
        str(v2),
        "--force",
        "--reason",
        "hotfix for the holiday",
        "--by",
        "alice",
    )
    assert code == 0 and f"champion moved from v{v1} to v{v2} (forced by alice" in out
    assert _champion() == v2
    tags = MlflowClient().get_model_version(UC, str(v2)).tags
    assert (tags["champion_move.kind"], tags["champion_move.by"]) == ("forced", "alice")
    assert tags["champion_move.reason"] == "hotfix for the holiday" and tags["champion_move.from"] == str(v1)

    # the gate promotes the next passed candidate; promoting the champion again moves nothing
    v3 = _trained(serve_env, date(2013, 5, 1), passed=True, promote=True)
    code, out, _ = _models(capsys, "promote", "--usecase", UC, str(v3))
    assert code == 0 and "already the champion; nothing moved" in out

    # rollbacks walk back through the champions, one alias move each; then nothing is left to roll back to
    code, _, err = _models(capsys, "rollback", "--usecase", UC, "--reason", "  ")
    assert code == 1 and "needs --reason" in err
    code, out, _ = _models(capsys, "rollback", "--usecase", UC, "--reason", "v3 drifts", "--json")
    assert code == 0
    first = json.loads(out)
    assert (first["previous_champion_version"], first["champion_version"]) == (v3, v2)
    assert first["record"]["by"] == "carol" and first["record"]["kind"] == "rollback"
    assert _champion() == v2
    assert _models(capsys, "rollback", "--usecase", UC, "--reason", "v2 too")[0] == 0
    assert _champion() == v1
    code, _, err = _models(capsys, "rollback", "--usecase", UC, "--reason", "again")
    assert code == 1 and f"nothing to roll back to: version {v1} is the first champion" in err
    assert _champion() == v1

    # rerunning day 3's promote (a cleared train run) does not undo the people's rollback
    again = _step("promote", date(2013, 5, 1))
    assert again["champion_version"] == v1 and "was rolled back by carol" in again["not_moved"]
    assert _champion() == v1

    # a manual promote of a version whose gate passed needs no force
    code, out, _ = _models(capsys, "promote", "--usecase", UC, str(v3), "--reason", "drift was a false alarm")
    assert code == 0 and _champion() == v3

    # history: every move, in order, from the records (the gate's and the manual ones alike)
    code, out, _ = _models(capsys, "history", "--usecase", UC, "--json")
    assert code == 0
    history = json.loads(out)
    moves = [(m["kind"], m["from_version"], m["to_version"], m["by"]) for m in history["moves"]]
    assert moves == [
        ("gate", None, v1, "gate"),
        ("forced", v1, v2, "alice"),
        ("gate", v2, v3, "gate"),
        ("rollback", v3, v2, "carol"),
        ("rollback", v2, v1, "carol"),
        ("promote", v1, v3, "carol"),
    ]
    assert [m["reason"] for m in history["moves"]][3:] == ["v3 drifts", "v2 too", "drift was a false alarm"]
    assert all(m["run_id"] == "manual" and m["usecase"] == UC for m in history["moves"])
    assert history["moves"][0]["reason"].startswith("gate passed for 2013-03-01")
    assert history["moves"][0]["decision_uri"].endswith("gate/date=2013-03-01/run=manual/result.json")
    stamps = [m["moved_at"] for m in history["moves"]]
    assert stamps == sorted(stamps) and history["consistent"] is True
    code, out, _ = _models(capsys, "history", "--usecase", UC)
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["moved", "at", "(UTC)", "alias"] and len(lines) == 7
    assert "rollback" in lines[4] and "v3 drifts" in lines[4]
    # the records are a Delta table of the lake, one commit per move
    assert serve_env.lake.version(alias_moves_table(UC)) == 5

    # a move outside mlops (MLflow UI) is flagged, and rollback refuses to guess
    MlflowClient().set_registered_model_alias(UC, "champion", str(v2))
    code, out, _ = _models(capsys, "history", "--usecase", UC)
    assert "WARNING: the registry's champion is v2" in out
    code, _, err = _models(capsys, "rollback", "--usecase", UC, "--reason", "x")
    assert code == 1 and "moved outside `mlops models`" in err and _champion() == v2


def test_show_a_version(serve_env: ServeEnv, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = _trained(serve_env, date(2013, 3, 1), passed=True, promote=True)
    v2 = _trained(serve_env, date(2013, 4, 1), passed=False)

    code, out, _ = _models(capsys, "show", "--usecase", UC, str(v1), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["version"] == v1 and info["champion"] is True and info["candidate"] == "logreg"
    assert info["metrics"]["holdout.roc_auc"] > 0.5
    assert info["gate"]["status"] == "passed"
    assert info["gate"]["decision"]["passed"] is True and info["gate"]["decision"]["checks"][0]["passed"]
    lineage = info["lineage"]
    assert lineage["logical_date"] == "2013-03-01" and lineage["data_window"].endswith("..2013-03-01")
    assert lineage["window"]["holdout_end"] == "2013-03-01" and lineage["features_version"] not in (None, "")
    assert lineage["raw_versions"] == {"raw/flight_delay/flights": 0}
    assert [m["kind"] for m in info["alias_moves"]] == ["gate"] and info["approval"] is None

    code, out, _ = _models(capsys, "show", "--usecase", UC, str(v2))
    assert code == 0
    assert f"flight_delay version {v2}\n" in out + "\n" and "gate: failed" in out
    assert "FAILED   absolute roc_auc min" in out and "lineage:" in out and "features_version" in out
    code, _, err = _models(capsys, "show", "--usecase", UC, "42")
    assert code == 1 and "has no version 42" in err


def test_no_record_no_move(serve_env: ServeEnv, monkeypatch) -> None:
    """The record is written before the alias moves: when it cannot be written nothing moves (the manual path and
    the gate's promote step alike); when the alias cannot be set its record is withdrawn."""
    from mlflow import MlflowClient

    import pipelines.modeling.model_ops as model_ops

    v1 = _trained(serve_env, date(2013, 3, 1), passed=True, promote=True)
    v2 = _trained(serve_env, date(2013, 4, 1), passed=True)

    def lake_down(*args, **kwargs):
        raise OSError("the lake refused the write")

    with monkeypatch.context() as patch:
        patch.setattr(model_ops, "_record", lake_down)
        with pytest.raises(model_ops.ModelOpsError, match="could not be recorded .* was not moved"):
            model_ops.promote(UC, v2)
        with pytest.raises(StepFailed, match="could not be recorded"):
            _step("promote", date(2013, 4, 1))
    assert _champion() == v1
    assert "promoted_on" not in MlflowClient().get_model_version(UC, str(v2)).tags

    def registry_down(self, *args, **kwargs):
        raise RuntimeError("registry unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", registry_down)
        with pytest.raises(model_ops.ModelOpsError, match="its record was withdrawn"):
            model_ops.promote(UC, v2)
    assert _champion() == v1
    assert [m["to_version"] for m in model_ops.history(UC)["moves"]] == [v1]
    assert model_ops.promote(UC, v2)["champion_version"] == v2
    assert [m["to_version"] for m in model_ops.history(UC)["moves"]] == [v1, v2]


# ----------------------------------------------------------------- the batch scorer and the service follow

TRAINED_ON = date(2013, 3, 1)
DAY = date(2013, 3, 10)
KEYS = frozenset({"key-one"})
AUTH = {"X-API-Key": "key-one"}


def test_after_a_rollback_the_batch_score_and_the_service_use_the_restored_version(
    serve_env: ServeEnv,
) -> None:
    from fastapi.testclient import TestClient

    from pipelines.features.online import read_records
    from pipelines.serving.app import create_app
    from pipelines.serving.service import ServeSettings, Service

    env = serve_env
    v1 = _trained(env, TRAINED_ON, passed=True, promote=True)
    v2 = _trained(env, date(2013, 3, 5), passed=True, promote=True)
    write_features(env, [DAY, DAY + timedelta(days=1)], rows=20)
    now = env.usecase.time.prediction_time_of(DAY) + timedelta(hours=1)
    service = Service(
        env.usecase, env.lake, ServeSettings(api_keys=KEYS, refresh_s=0.0, capture=False), clock=lambda: now
    )
    service.start()
    frame = read_records(env.lake, env.usecase, [DAY.isoformat()]).drop(columns=["date"])
    body = {
        "records": json.loads(frame.head(3).to_json(orient="records", date_format="iso")),
        "at": env.usecase.time.prediction_time_of(DAY).isoformat(),
    }
    path = f"/v1/usecases/{UC}/predict"
    try:
        with TestClient(create_app(service)) as client:
            before = client.post(path, json=body, headers=AUTH)
            assert before.status_code == 200 and before.headers["X-Model-Version"] == str(v2)
            scored = _step("score", DAY - timedelta(days=1))  # the flights of March 10, by the champion v2
            assert scored["model_version"] == v2

            from pipelines.modeling.model_ops import rollback

            moved = rollback(UC, reason="v2 misbehaves", by="oncall")
            assert (moved["previous_champion_version"], moved["champion_version"]) == (v2, v1)
            service.slots.refresh()  # what the watcher does every --refresh-seconds
            after = client.post(path, json=body, headers=AUTH)
            assert after.status_code == 200, after.text
            assert after.headers["X-Model-Version"] == str(v1)
            assert {p["model_version"] for p in after.json()["predictions"]} == {str(v1)}
            assert after.json()["predictions"] != before.json()["predictions"]
    finally:
        service.stop()

    scored = _step("score", DAY)  # the next batch: March 11's flights, by the restored champion
    assert scored["model_version"] == v1 and scored["rows"] > 0
    predictions = env.lake.read_frame(predictions_table(UC))
    by_day = predictions.groupby("date")["model_version"].unique().to_dict()
    assert [str(v) for v in by_day[DAY.isoformat()]] == [str(v2)]
    assert [str(v) for v in by_day[(DAY + timedelta(days=1)).isoformat()]] == [str(v1)]


def test_alias_moves_on_an_s3_lake(serve_env: ServeEnv, moto_server: str, new_bucket, monkeypatch) -> None:
    """The records live in the configured lake: on S3 (a moto server) promote, rollback, history and a withdrawn
    record of a move the registry refused work as on a local disk."""
    from mlflow import MlflowClient

    import pipelines.modeling.model_ops as model_ops
    from pipelines.lake import Lake

    v1 = _trained(serve_env, date(2013, 3, 1), passed=True)
    v2 = _trained(serve_env, date(2013, 4, 1), passed=True)
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    uri = f"s3://{new_bucket()}/lake"
    monkeypatch.setenv("MLOPS_LAKE_URI", uri)

    model_ops.promote(UC, v1, by="ops")
    model_ops.promote(UC, v2, by="ops")

    def registry_down(self, *args, **kwargs):
        raise OSError("registry down")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", registry_down)
        with pytest.raises(model_ops.ModelOpsError, match="its record was withdrawn"):
            model_ops.rollback(UC, reason="refused by the registry")
    assert model_ops.rollback(UC, reason="v2 misbehaves", by="ops")["champion_version"] == v1
    moves = model_ops.history(UC)["moves"]
    assert [(m["kind"], m["from_version"], m["to_version"]) for m in moves] == [
        ("promote", None, v1),
        ("promote", v1, v2),
        ("rollback", v2, v1),
    ]
    assert _champion() == v1
    s3 = Lake(uri)
    assert s3.version(alias_moves_table(UC)) == 4  # three moves and the withdrawn one's delete
    assert not serve_env.lake.storage.exists(f"{alias_moves_table(UC)}/_delta_log/00000000000000000000.json")
