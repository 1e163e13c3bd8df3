"""Each step result carries ``timings``: its fixed costs (first imports, configuration, SparkSession, GX context,
MLflow client, interpreter start) apart from its work."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import run_step
from pipelines.context import StepFailed
from pipelines.ingest.inbox import land_file
from pipelines.lake import open_lake
from pipelines.timings import fixed_cost, step_timer
from tests._ingest_fixtures import DAY1, USECASE, csv_bytes, flights_rows


def test_first_imports_and_fixed_costs_are_counted_once_apart_from_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slow_to_import_for_timings.py").write_text("import time\ntime.sleep(0.3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with step_timer() as timer:
        import slow_to_import_for_timings  # noqa: F401 - a first import: counted
        import slow_to_import_for_timings as again  # noqa: F401 - loaded already: not counted

        with fixed_cost("spark_session"):
            time.sleep(0.2)
            with fixed_cost("gx_context"):  # inside another fixed cost: counted once, under the outer name
                time.sleep(0.1)
        (tmp_path / "slow_too_for_timings.py").write_text("import time\ntime.sleep(0.3)\n")
        with fixed_cost("config", imports_apart=True):  # its first imports count as imports
            import slow_too_for_timings  # noqa: F401

            time.sleep(0.1)
        time.sleep(0.2)  # work
        timings = timer.result({"interpreter_start": 1.0})
    assert "slow_to_import_for_timings" in sys.modules
    assert 0.6 <= timings["fixed"]["imports"] < 0.9
    assert 0.1 <= timings["fixed"]["config"] < 0.25
    assert 0.3 <= timings["fixed"]["spark_session"] < 0.6 and "gx_context" not in timings["fixed"]
    assert timings["fixed"]["interpreter_start"] == 1.0
    assert timings["fixed_s"] == pytest.approx(sum(timings["fixed"].values()), abs=0.002)
    assert timings["work_s"] == pytest.approx(timings["total_s"] - timings["fixed_s"], abs=0.002)
    assert 0.2 <= timings["work_s"] < 0.5
    import builtins

    assert not hasattr(builtins.__import__, "__wrapped__")  # the import hook is gone after the step


def test_a_step_result_carries_its_timings_also_when_it_fails(mlops_env: Path) -> None:
    result = run_step(["ingest", "--usecase", USECASE, "--date", DAY1.isoformat()])
    timings = result["timings"]
    assert {"total_s", "fixed_s", "work_s", "fixed"} <= set(timings) and "config" in timings["fixed"]
    assert timings["work_s"] == pytest.approx(timings["total_s"] - timings["fixed_s"], abs=0.002)

    bad = csv_bytes(flights_rows(DAY1, 5)).replace(b",UA,", b",UA,x,", 1)
    land_file(open_lake(), USECASE, DAY1, "flights_2013-01-01.csv", bad)
    with pytest.raises(StepFailed) as caught:
        run_step(["ingest", "--usecase", USECASE, "--date", DAY1.isoformat()])
    assert caught.value.result["files_quarantined"] == 1
    assert caught.value.result["timings"]["total_s"] >= caught.value.result["timings"]["fixed_s"]
