"""The approval flow in a browser: Playwright drives Debian's chromium against a live Airflow (`airflow standalone`
as `mlops ui` starts it: api-server, scheduler, dag-processor, triggerer) and the MLflow UI, over a fast synthetic
use case that requires approval. One test walks every step (the live start costs minutes; it is done once):
log in; the DAG list shows the use case's DAGs and no import error; trigger `<uc>_train` from its Params form with a
changed training window; the run reaches the approval; approve it under Required Actions; the run succeeds; the
MLflow UI shows `champion` on the approved version; a second run's approval links to its evaluation report, which
opens; rejecting it leaves the alias where it was. A screenshot of each step is kept under
``$MLOPS_TEST_ARTIFACTS/browser`` (default ``test-artifacts/browser``)."""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path
from urllib.parse import quote

import pytest

from pipelines.config import REPO_ROOT

pytestmark = pytest.mark.e2e

USECASE = "flight_delay"
DAG_ID = f"{USECASE}_train"
USERS = {"admin": "admin-pw"}
CHROMIUM_MISSING = (
    "Debian's chromium is needed for the browser tests: apt-get install chromium (make test runs "
    "scripts/ensure-chromium.sh; Playwright's own browser download is not used)"
)
ARTIFACTS = Path(os.environ.get("MLOPS_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts") / "browser"
RUN_TIMEOUT_S = 900  # a train run on a busy 2-core machine, every task its own process


def chromium_path() -> str:
    """Debian's chromium binary (its /usr/bin/chromium is a wrapper script)."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(CHROMIUM_MISSING, pytrace=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A use case requiring admin's approval, 45 days of synthetic features, and the live Airflow and MLflow UI."""
    from _browser_stack import Stack
    from _model_fixtures import manual_usecase, use_tmp_platform, write_config_dir
    from _model_fixtures import write_feature_partitions as write_features

    from pipelines.config import ApprovalSpec
    from pipelines.lake import Lake

    home = tmp_path_factory.mktemp("browser")
    monkeypatch = pytest.MonkeyPatch()
    use_tmp_platform(monkeypatch, home)
    usecase = manual_usecase(approval=ApprovalSpec(mode="required", approvers=["admin"], timeout="2h"))
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(write_config_dir(home / "config", usecase)))
    write_features(Lake(str(home / "lake")), usecase, date(2013, 1, 1), 45, rows_per_day=60)
    live = Stack(home / "home", USERS, {"MLOPS_CONFIG_DIR": os.environ["MLOPS_CONFIG_DIR"]})
    yield live
    live.stop()
    monkeypatch.undo()


def test_approve_and_reject_a_candidate_in_the_airflow_and_mlflow_uis(stack) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            walk(stack, page, ARTIFACTS)
        finally:
            browser.close()


def _shot(page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _runs(stack) -> list[dict]:
    status, body = stack.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=50", user="admin")
    assert status == 200, body
    return body["dag_runs"]


def _task_state(stack, run_id: str, task_id: str) -> str | None:
    status, body = stack.request(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}", user="admin"
    )
    return body.get("state") if status == 200 else None


def _run_state(stack, run_id: str) -> str | None:
    status, body = stack.request(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}", user="admin"
    )
    return body.get("state") if status == 200 else None


def _wait_waiting_for_approval(stack, run_id: str) -> None:
    """The approval task waits for input and the report beside it is written (its link must open)."""

    def ready() -> bool:
        if _run_state(stack, run_id) in ("failed", "success"):
            raise AssertionError(f"run {run_id} ended before its approval (logs in {stack.logs})")
        return (
            _task_state(stack, run_id, "approval") == "awaiting_input"
            and _task_state(stack, run_id, "report") == "success"
        )

    stack.wait_for(f"{run_id} waiting for approval", ready, timeout_s=RUN_TIMEOUT_S, every_s=3)


def _wait_run_success(stack, run_id: str) -> None:
    def done() -> bool:
        state = _run_state(stack, run_id)
        assert state != "failed", f"run {run_id} failed (logs in {stack.logs})"
        return state == "success"

    stack.wait_for(f"{run_id} succeeded", done, timeout_s=RUN_TIMEOUT_S, every_s=3)


def _required_action(page, stack, run_id: str):
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/approval/required_actions")
    approve = page.get_by_role("button", name="Approve")
    approve.wait_for()
    return approve


def _champion() -> int | None:
    from pipelines.config import load_usecase
    from pipelines.modeling.model_ops import alias_version

    return alias_version(load_usecase(USECASE), "champion")


def login(stack, page, shots: Path) -> None:
    page.goto(f"{stack.url}/")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(USERS["admin"])
    _shot(page, shots, "01-login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)


def walk(stack, page, shots: Path) -> None:
    """Every step of the flow (see the module doc); a screenshot after each."""
    from pipelines.modeling.model_ops import show

    login(stack, page, shots)

    # the DAG list: every DAG of the use case, no import error
    status, errors = stack.request("GET", "/api/v2/importErrors", user="admin")
    assert status == 200 and errors["total_entries"] == 0, errors
    page.goto(f"{stack.url}/dags")
    expected = [f"{USECASE}_{kind}" for kind in ("features", "ingest", "maintenance", "models", "monitor")]
    expected += [f"{USECASE}_{kind}" for kind in ("score", "train")]
    for dag_id in expected:
        page.get_by_text(dag_id, exact=True).first.wait_for()
    assert page.get_by_text("Import Errors").count() == 0
    _shot(page, shots, "02-dag-list")

    # trigger the train DAG from its Params form: the form proposes the newest date the lake can serve (the
    # features end on 2013-02-14); train to 2013-02-10 instead, on a 30-day window (default 35). The logical date
    # stays the form's default (now): the window's end is the Param.
    page.goto(f"{stack.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    end_date = dialog.locator("input[name=element_end_date]")
    assert end_date.input_value() == "2013-02-15"
    end_date.fill("2013-02-10")
    dialog.locator("input[name=element_window_days]").fill("30")
    _shot(page, shots, "03-trigger-form")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    run = stack.wait_for(
        "the triggered run",
        lambda: next(
            (r for r in _runs(stack) if (r.get("conf") or {}).get("end_date") == "2013-02-10"), None
        ),
    )
    assert run["conf"]["window_days"] == 30, run["conf"]
    run_id = run["dag_run_id"]

    # the run reaches the approval
    _wait_waiting_for_approval(stack, run_id)
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    page.get_by_text("approval").first.wait_for()
    _shot(page, shots, "04-waiting-for-approval")

    # approve under Required Actions
    approve = _required_action(page, stack, run_id)
    page.get_by_text("Checks passed").first.wait_for()
    _fill_comment(page, "looks right")
    _shot(page, shots, "05-required-action")
    approve.click()
    _wait_run_success(stack, run_id)
    page.goto(f"{stack.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    page.get_by_text("promote").first.wait_for()
    _shot(page, shots, "06-run-succeeded")
    assert _task_state(stack, run_id, "promote") == "success"
    approved = _champion()
    assert approved is not None
    info = show(USECASE, approved)
    assert info["approval"]["tags"]["approval.by"] == "admin", info["approval"]
    assert info["approval"]["tags"]["approval.comment"] == "looks right"

    # the MLflow UI: the registered model, `champion` on the approved version
    _shot(page, shots, "07-mlflow-champion")

    _check_champion_in_mlflow(page, stack, approved)
    _shot(page, shots, "07-mlflow-champion")
    reject_second_run(stack, page, shots, approved)


def _check_champion_in_mlflow(page, stack, version: int) -> None:
    """The MLflow UI's page of the registered model shows the alias `champion` on the row of ``version``."""
    import re

    page.goto(f"{stack.mlflow_url}/#/models/{USECASE}")
    alias = page.get_by_text(re.compile(r"^@?\s*champion$")).first
    alias.wait_for()
    row = page.locator("[role=row], tr").filter(has=page.get_by_text(re.compile(r"^@?\s*champion$")))
    assert row.count() == 1 and f"Version {version}" in row.first.inner_text(), row.all_inner_texts()


def second_run(stack) -> str:
    """The second train run of 2013-02-10 (triggered through the REST API; the first went through the form)."""
    existing = next((r for r in _runs(stack) if r["logical_date"].startswith("2013-02-10T10:00")), None)
    if existing is not None:
        return existing["dag_run_id"]
    status, body = stack.request(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"logical_date": "2013-02-10T10:00:00Z", "conf": {}},
        user="admin",
    )
    assert status in (200, 201), body
    return body["dag_run_id"]


def reject_second_run(stack, page, shots: Path, approved: int) -> None:
    """A second run: its approval links to its evaluation report, which opens; a rejection keeps the champion."""
    run_id = second_run(stack)
    _wait_waiting_for_approval(stack, run_id)
    _required_action(page, stack, run_id)
    href = page.get_by_role("link", name="open the report").get_attribute("href")
    assert href and href.startswith(stack.mlflow_url), href
    page.goto(href)
    page.get_by_text("report.html").first.wait_for()
    page.frame_locator("iframe").first.get_by_text("flight_delay").first.wait_for()
    _shot(page, shots, "08-report-from-the-approval-link")

    _required_action(page, stack, run_id)
    _fill_comment(page, "not this one")
    _shot(page, shots, "09-reject")
    page.get_by_role("button", name="Reject").click()
    _wait_run_success(stack, run_id)
    assert _task_state(stack, run_id, "promote") == "skipped"
    assert _champion() == approved
    _check_champion_in_mlflow(page, stack, approved)
    _shot(page, shots, "10-mlflow-after-reject")


def _fill_comment(page, text: str) -> None:
    field = page.locator("[name=element_comment]")
    field.fill(text)
