"""The console in a real browser: Debian's headless Chromium driven by Selenium, against a real
server process with a real worker process and an API token (so the login form is exercised).

One browser session and one server serve the whole module. A browser that cannot start fails
these tests: `.ci/run` installs it (scripts/setup.sh --browser). With FLUX_CONSOLE_SCREENSHOTS
set to a folder, each page is saved there as a PNG (scripts/console_screenshots.sh does that for
docs/console.md).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from examples import distributed_console
from tests.conftest_net import Procs, wait_for

pytestmark = pytest.mark.slow

TOKEN = "console-test-token"
SHOTS = os.environ.get("FLUX_CONSOLE_SCREENSHOTS")


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        f"none of {', '.join(names)} is installed: run `scripts/setup.sh --browser` (as root)"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console")
    procs = Procs(tmp)
    try:
        server, url = procs.server(str(tmp / "console.db"), extra=("--api-token", TOKEN))
        procs.worker(url, "console-worker", concurrency=4)
        started = distributed_console.fill(url, TOKEN)
        yield {"url": url, "started": started, "server": server}
    finally:
        procs.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: webdriver.Chrome, predicate: Any, timeout: float = 15) -> Any:
    # the live regions are swapped while we look: an element may go stale between two reads
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(predicate)


def settled_as(state: str) -> Any:
    """The page shows ``state`` and has reloaded to its final form (no actions left)."""

    def check(driver: webdriver.Chrome) -> bool:
        return (
            driver.find_element(By.ID, "state").text == state
            and not driver.find_elements(By.CSS_SELECTOR, ".actions form")
            and not driver.find_elements(By.CSS_SELECTOR, "#live[data-poll]")
        )

    return check


def text_of(driver: webdriver.Chrome, css: str, timeout: float = 15) -> str:
    return until(driver, ec.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout).text


def shot(driver: webdriver.Chrome, name: str) -> None:
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def no_console_errors(driver: webdriver.Chrome) -> None:
    """Nothing the page did was refused (a CSP violation or a script error shows up here)."""
    severe = [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "/ui/login" not in e["message"]  # the wrong token's 401
    ]
    assert severe == []


def api(site: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=site["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )


def api_state(site: dict[str, Any], eid: str) -> str:
    with api(site) as c:
        return c.get(f"/executions/{eid}").json()["state"]


def test_login_then_the_executions_list(site, browser):
    url = site["url"]
    browser.get(url + "/")
    until(browser, ec.url_contains("/ui/login"))
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    assert "not this server's API token" in text_of(browser, "#error")
    shot(browser, "login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    until(browser, ec.url_contains("/ui/executions"))
    order_id = site["started"]["order"]
    wait_for(lambda: api_state(site, order_id) == "PAUSED", 30, "the order to pause")
    wait_for(lambda: api_state(site, site["started"]["doomed"]) == "FAILED", 30, "doomed")
    browser.refresh()
    rows = browser.find_elements(By.CSS_SELECTOR, "#executions-table tbody tr")
    shown = {r.get_attribute("data-id"): r.text for r in rows}
    assert "PAUSED" in shown[order_id] and "order" in shown[order_id]
    assert "FAILED" in shown[site["started"]["doomed"]]
    counts = browser.find_element(By.CSS_SELECTOR, ".counts").text
    assert "FAILED 1" in counts and "PAUSED 1" in counts
    # the list is live: an execution started elsewhere appears without a reload
    with api(site) as c:
        fresh = c.post("/workflows/invoice/run/async", json=[1, 2]).json()["execution_id"]
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{fresh}"]'))
    until(
        browser,
        lambda d: "COMPLETED" in d.find_element(By.CSS_SELECTOR, f'tr[data-id="{fresh}"]').text,
    )
    shot(browser, "executions")
    # filters: by state, and search by id prefix
    browser.get(url + "/ui/executions?state=FAILED")
    ids = [
        r.get_attribute("data-id")
        for r in browser.find_elements(By.CSS_SELECTOR, "#executions-table tbody tr")
    ]
    assert ids == [site["started"]["doomed"]]
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys(order_id)
    box.submit()
    until(browser, ec.url_contains(f"/ui/executions/{order_id}"))
    no_console_errors(browser)


def test_an_execution_with_its_timeline_and_error(site, browser):
    url = site["url"]
    doomed = site["started"]["doomed"]
    browser.get(f"{url}/ui/executions/{doomed}")
    assert text_of(browser, "#state") == "FAILED"
    assert "OutOfStock" in text_of(browser, "#error-message")
    assert "marmalade is out of stock" in text_of(browser, "#error-message")
    trace = text_of(browser, "#traceback")
    assert "Traceback (most recent call last)" in trace and "in check" in trace
    order_id = site["started"]["order"]
    browser.get(f"{url}/ui/executions/{order_id}")
    assert text_of(browser, "#state") == "PAUSED"
    rows = {
        r.get_attribute("data-call"): r
        for r in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.call")
    }
    assert list(rows) == [
        "fetch_stock#0",
        "loyalty_points#1",
        "reserve_gift#2",
        "sleep#3",
        "parallel#4",
        "parallel#4/price#0",
        "parallel#4/price#1",
        "parallel#4/price#2",
        "invoice#5",
        "pause#6",
    ]

    def bars(call_id: str) -> list[str]:
        return [
            b.get_attribute("class")
            for b in rows[call_id].find_elements(By.CSS_SELECTOR, "rect.bar")
        ]

    assert bars("fetch_stock#0") == [
        "bar seg-attempt out-failed",
        "bar seg-retry out-completed",
    ]
    assert "bar seg-fallback out-completed" in bars("loyalty_points#1")
    assert bars("reserve_gift#2") == [
        "bar seg-attempt out-failed",
        "bar seg-rollback out-completed",
    ]
    assert bars("sleep#3") == ["bar seg-sleep out-completed"]
    assert bars("parallel#4") == ["bar seg-group out-completed"]
    assert bars("pause#6") == ["bar seg-pause out-running"]
    # each bar is drawn where its call ran: the prices after the sleep, in the same stretch
    left = {
        c: float(row.find_element(By.CSS_SELECTOR, "rect").get_attribute("x"))
        for c, row in rows.items()
    }
    assert left["fetch_stock#0"] <= left["sleep#3"] < left["parallel#4/price#0"] <= left["pause#6"]
    # the child execution is linked both ways
    child_link = rows["invoice#5"].find_element(By.CSS_SELECTOR, "a.child-link")
    child_id = child_link.get_attribute("href").rsplit("/", 1)[1]
    assert child_id in browser.find_element(By.ID, "children").text
    assert browser.find_element(By.ID, "events-title").text.startswith("Events")
    shot(browser, "execution")
    child_link.click()
    assert text_of(browser, "#state") == "COMPLETED"
    assert text_of(browser, "#output") == "120"  # 10 * len: tea, scones, jam
    assert browser.find_element(By.ID, "parent-link").text == order_id
    no_console_errors(browser)


def test_the_logs_panel_follows_a_running_execution_and_a_bar_shows_its_lines(site, browser):
    url = site["url"]
    order_id = site["started"]["order"]
    wait_for(lambda: api_state(site, order_id) == "PAUSED", 30, "the order to pause")
    browser.get(f"{url}/ui/executions/{order_id}")
    lines = browser.find_elements(By.CSS_SELECTOR, "#log-lines tbody tr")
    texts = [r.find_element(By.CSS_SELECTOR, "pre").text for r in lines]
    assert texts == [
        "asking the stock service about tea (try 1)",
        "asking the stock service about tea (try 2)",
    ]
    assert [r.get_attribute("data-call") for r in lines] == ["fetch_stock#0"] * 2
    assert "attempt 2" in lines[1].text
    # the bar of a call links to its lines
    bar = browser.find_element(
        By.CSS_SELECTOR, '#timeline tr[data-call="fetch_stock#0"] a.call-logs'
    )
    bar.click()
    until(browser, ec.url_contains("call=fetch_stock%230"))
    assert text_of(browser, "#logs-call") == "fetch_stock#0"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#log-lines tbody tr")) == 2
    browser.find_element(
        By.CSS_SELECTOR, '#timeline tr[data-call="reserve_gift#2"] a.call-logs'
    ).click()
    until(browser, ec.url_contains("call=reserve_gift%232"))
    assert "No log lines for this call" in text_of(browser, "#no-logs")
    # a running execution: its lines appear without a reload
    long_haul = site["started"]["long_haul"]
    browser.get(f"{url}/ui/executions/{long_haul}")
    assert browser.find_element(By.ID, "logs").get_attribute("data-poll")
    browser.execute_script("window.fluxProbe = 'same page'")
    first = len(browser.find_elements(By.CSS_SELECTOR, "#log-lines tbody tr"))

    def grew(driver: webdriver.Chrome) -> bool:
        return len(driver.find_elements(By.CSS_SELECTOR, "#log-lines tbody tr")) >= first + 2

    until(browser, grew, 20)
    shown = until(
        browser,
        lambda d: [r.text for r in d.find_elements(By.CSS_SELECTOR, "#log-lines tbody tr pre")],
    )
    assert shown[:3] == ["tick 0", "tick 1", "tick 2"]
    # swapped in place: the page itself was not reloaded
    assert browser.execute_script("return window.fluxProbe") == "same page"
    browser.execute_script("document.getElementById('logs-title').scrollIntoView()")
    shot(browser, "logs")
    no_console_errors(browser)


def test_resume_a_paused_execution(site, browser):
    order_id = site["started"]["order"]
    browser.get(f"{site['url']}/ui/executions/{order_id}")
    field = browser.find_element(By.ID, "resume-value")
    field.clear()
    field.send_keys('{"name": "Grace"')  # not JSON: the form says so and sends nothing
    browser.find_element(By.ID, "resume").click()
    assert browser.execute_script("return arguments[0].validationMessage", field).startswith(
        "Not valid JSON"
    )
    assert api_state(site, order_id) == "PAUSED"
    field.clear()
    field.send_keys('"Grace"')
    browser.find_element(By.ID, "resume").click()
    until(browser, settled_as("COMPLETED"), 30)
    output = text_of(browser, "#output")
    assert '"approved_by": "Grace"' in output and '"total": 120' in output
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.call")
    pause_bar = rows[-1].find_element(By.CSS_SELECTOR, "rect")
    assert pause_bar.get_attribute("class") == "bar seg-pause out-completed"
    assert browser.find_elements(By.ID, "resume") == []  # nothing left to resume
    no_console_errors(browser)


def test_cancel_a_running_execution(site, browser):
    long_id = site["started"]["long_haul"]
    browser.get(f"{site['url']}/ui/executions/{long_id}")
    assert text_of(browser, "#state") == "RUNNING"
    # live: the timeline grows while it runs, without a reload
    first = len(browser.find_elements(By.CSS_SELECTOR, "#timeline tr.call"))
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline tr.call")) > first)
    shot(browser, "execution-running")
    browser.find_element(By.ID, "cancel").click()
    alert = until(browser, ec.alert_is_present())
    assert long_id in alert.text
    alert.accept()
    until(browser, settled_as("CANCELLED"), 30)
    assert api_state(site, long_id) == "CANCELLED"
    assert browser.find_elements(By.ID, "cancel") == []


def test_the_run_form(site, browser):
    browser.get(f"{site['url']}/ui/workflows")
    shot(browser, "workflows")
    browser.find_element(By.LINK_TEXT, "invoice").click()
    source = text_of(browser, "#source")
    assert "async def invoice(ctx" in source
    assert browser.find_elements(By.CSS_SELECTOR, "#source span.kw")  # highlighted
    field = browser.find_element(By.ID, "run-input")
    field.clear()
    field.send_keys("[1, 2,")
    browser.find_element(By.ID, "run").click()
    assert "Not valid JSON" in text_of(browser, ".json-error")
    field.clear()
    field.send_keys("[4, 5, 6]")
    browser.find_element(By.ID, "mode-sync").click()
    shot(browser, "workflow")
    browser.find_element(By.ID, "run").click()
    until(browser, ec.url_contains("/ui/executions/"))
    assert text_of(browser, "#state") == "COMPLETED"  # sync: settled before the page opened
    assert text_of(browser, "#output") == "15"
    no_console_errors(browser)


def test_workers_and_secrets(site, browser):
    browser.get(f"{site['url']}/ui/workers")
    table = text_of(browser, "#workers-table")
    assert "console-worker-" in table and "ago" in table
    # the worker has been connected since the module started: seconds, not "0 ms"
    connected = browser.find_element(By.CSS_SELECTOR, "#workers-table tbody td:last-child").text
    assert connected.endswith(" s") and float(connected.split()[0]) > 1
    shot(browser, "workers")
    browser.get(f"{site['url']}/ui/secrets")
    browser.find_element(By.ID, "secret-name").send_keys("PAYMENT_KEY")
    browser.find_element(By.ID, "secret-value").send_keys("s3cr3t-value-never-shown")
    browser.find_element(By.ID, "secret-set").click()
    assert "Secret PAYMENT_KEY set." in text_of(browser, "#notice")
    assert "PAYMENT_KEY" in text_of(browser, "#secrets")
    assert "s3cr3t-value-never-shown" not in browser.page_source
    shot(browser, "secrets")
    browser.find_element(By.CSS_SELECTOR, "#secrets button").click()
    until(browser, ec.alert_is_present()).accept()
    assert "Secret PAYMENT_KEY removed." in text_of(browser, "#notice")
    assert browser.find_elements(By.ID, "no-secrets")
    no_console_errors(browser)
    time.sleep(0)  # keep the module's browser for the next test
