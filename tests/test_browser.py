"""A finished sweep as a user sees it, in a real headless Chromium: its MLflow record served by
``mlflow server`` (the runs table with the trials under the parent, the parent's convergence
charts) and its ``frontier.html`` with every point drawn.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium
(a dev dependency); skipped with the reason where they are absent. Every wait is on a page
element (``WebDriverWait``) with a generous limit, never a fixed sleep, so a slow machine makes
the test slower, not red.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_sweep import mlflow_server, ray_session, small_config  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
WAIT_S = 240  # the limit of one wait: a loaded 2-core machine renders MLflow's UI in seconds

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "no headless browser: install Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver, as .ci/run does)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is a dev dependency: pip install -e '.[dev]'"
)
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def finished(ray_session, mlflow_server, tmp_path_factory):  # noqa: F811 - the imported fixtures
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep import run_sweep
    from orchestrator.tracking.reads import experiment_id, finished_parents, trial_runs_of

    tmp = tmp_path_factory.mktemp("browse")
    # a schedule that learns this data whatever the sampler draws (kappa and the cap stay searched)
    fixed = ("lr=0.01", "batch_size=64", "std_epochs=1", "ramp_epochs=1")
    cfg = small_config(
        tmp,
        "browse",
        mlflow_server,
        trials=4,
        scheduler="none",
        synthetic_size=1024,
        test_samples=64,
        fixed=fixed,
    )
    rows = run_sweep(cfg)
    c = MlflowClient(tracking_uri=mlflow_server)
    exp = experiment_id(c, cfg.dataset)
    (parent,) = finished_parents(c, exp, cfg.name)
    trials = trial_runs_of(c, exp, cfg.name, "acert")
    return cfg, rows, exp, parent, trials


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


# A page that is still rendering: an element not there yet, replaced, or covered for a moment
# (MLflow lays its panels out after the first paint). A wait goes on through all of them.
NOT_YET = (
    NoSuchElementException,
    StaleElementReferenceException,
    ElementClickInterceptedException,
    ElementNotInteractableException,
)


def wait(driver, what: str, check):
    """``check(driver)`` until it is truthy, failing with ``what`` and the page's text after
    WAIT_S; an exception of a page still rendering (``NOT_YET``) counts as not yet."""
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25, ignored_exceptions=NOT_YET).until(check)
    except Exception as e:
        text = driver.find_element(By.TAG_NAME, "body").text[:2000]
        raise AssertionError(f"{what}: not seen at {driver.current_url}\n{text}") from e


def click(driver, what: str, css: str = "", xpath: str = "") -> None:
    """Click the element once it takes the click: a covered element raises before the click
    happens, so a toggle is never clicked twice."""
    by, sel = (By.CSS_SELECTOR, css) if css else (By.XPATH, xpath)
    wait(driver, f"a click on {what}", lambda d: d.find_element(by, sel).click() or True)


def link_to(run_id: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f'a[href$="/runs/{run_id}"]'


def test_the_runs_table_lists_the_trials_under_the_parent(finished, browser, mlflow_server):  # noqa: F811
    cfg, _, exp, parent, trials = finished
    pid = parent.info.run_id
    # a fresh browser lands on MLflow's GenAI view; the sidebar toggle (README) switches it
    browser.get(f"{mlflow_server}/#/experiments/{exp}")
    toggle = "//*[@role='button'][normalize-space(.)='Model training']"

    def leave_genai(d):
        for tip in d.find_elements(By.XPATH, "//button[normalize-space(.)='Got it']"):
            tip.click()  # the GenAI overview's "Detect Issues" tip covers the page on a first visit
        d.find_element(By.XPATH, toggle).click()
        return True

    wait(browser, "a click on the sidebar's 'Model training' toggle", leave_genai)
    wait(browser, "the parent run in the runs table", lambda d: d.find_elements(*link_to(pid)))
    assert "workflowType=machine_learning" in browser.current_url
    assert not browser.find_elements(*link_to(trials[0].info.run_id)), "trials are nested, not listed flat"
    row = f'.ag-row[row-id="{pid}"] [col-id="attributes.`Run Name`"] button'
    click(browser, "the parent's expander", css=row)
    for t in trials:
        wait(
            browser,
            f"trial run {t.data.tags['ray.trial_id']}",
            lambda d, t=t: d.find_elements(*link_to(t.info.run_id)),
        )
    want = [cfg.name, *sorted(t.info.run_name for t in trials)]

    def listed(d):  # the run-name column, top down: the parent, then its trials
        names = [a.text for a in d.find_elements(By.CSS_SELECTOR, '[col-id="attributes.`Run Name`"] a')]
        return names[:1] + sorted(names[1:]) == want

    wait(browser, f"the runs listed as {want}", listed)


def test_the_parent_run_shows_the_convergence_charts(finished, browser, mlflow_server):  # noqa: F811
    cfg, rows, exp, parent, _ = finished
    # the README's link form: the view named in the address, so no toggle is needed
    url = f"{mlflow_server}/#/experiments/{exp}/runs/{parent.info.run_id}/model-metrics?workflowType=machine_learning"
    browser.get(url)
    keys = ["hypervolume/acert"] + [
        f"best_val_acr/acert/{r['target']:g}" for r in rows if r["status"] == "ok"
    ]
    assert len(keys) > 1, "the fixed schedule meets the lowest target"
    for key in keys:  # each chart's legend names the run and the metric
        wait(
            browser,
            f"the chart of {key}",
            lambda d, key=key: f"{cfg.name} ({key})" in d.find_element(By.TAG_NAME, "body").text,
        )


def test_frontier_html_draws_every_trial_and_winner(finished, browser):
    cfg, rows, _, _, trials = finished
    page = Path(cfg.storage) / cfg.name / "frontier.html"
    browser.get(page.resolve().as_uri())
    count = "return Array.from(document.querySelectorAll('#frontier-plot g.trace.scatter')).map(t => t.querySelectorAll('path.point').length)"
    drawn = wait(
        browser, "the frontier's markers", lambda d: (n := d.execute_script(count)) and sum(n) > 0 and n
    )
    finite = [t for t in trials if t.info.status == "FINISHED" and "ended" not in t.data.tags]
    won = {r["trial_id"] for r in rows if r["status"] == "ok"}
    # per method: its trials (validation), its front (a line, no markers), its winners (stars)
    assert drawn == [len(finite), 0, len(won)], json.dumps(drawn)
