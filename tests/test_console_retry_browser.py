"""The console's Retry button and a Graph's DAG in a real browser (Debian's headless Chromium
driven by Selenium), against a real server process and a real worker process with an API
token. Screenshots (FLUX_CONSOLE_SCREENSHOTS): execution-dag, execution-retried."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from tests.conftest_net import Procs, wait_for
from tests.test_console_browser import (
    TOKEN,
    browser,  # noqa: F401 - fixture
    no_console_errors,
    shot,
    text_of,
    until,
)
from tests.test_console_retry import GRAPH_SOURCE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def review_site(tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("review")
    procs = Procs(tmp)
    try:
        _, url = procs.server(str(tmp / "review.db"), extra=("--api-token", TOKEN))
        procs.worker(url, "review-worker", concurrency=2)
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        files = {"file": ("review.py", GRAPH_SOURCE.encode())}
        client.post("/workflows", files=files).raise_for_status()
        yield {"url": url, "client": client, "tmp": tmp}
        client.close()
    finally:
        procs.close()


def _nodes(driver: Any) -> dict[str, str]:
    return {
        g.get_attribute("data-node"): g.get_attribute("data-state")
        for g in driver.find_elements(By.CSS_SELECTOR, "svg.dag-svg g.dag-node")
    }


def _login(driver: Any, url: str, path: str) -> None:
    driver.get(url + path)
    if "/ui/login" in driver.current_url:
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login").click()
    until(driver, ec.url_contains(path))


def test_retry_button_and_the_dag_of_a_failed_graph(review_site, browser):  # noqa: F811
    url, client, tmp = review_site["url"], review_site["client"], review_site["tmp"]
    log = str(tmp / "failing.log")
    open(log + ".fail", "w").close()
    failed = client.post("/workflows/review/run/sync", json={"log": log, "score": 720}).json()
    assert failed["state"] == "FAILED"
    eid = failed["execution_id"]
    _login(browser, url, f"/ui/executions/{eid}")
    assert text_of(browser, "#state") == "FAILED"
    assert _nodes(browser) == {
        "screen": "completed",
        "check": "failed",
        "approve": "pending",
        "decline": "pending",
    }
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg.dag-svg .dag-cond")]
    assert labels == ["good", "bad"]
    # drawn left to right: screen, then check, then its two branches in one column
    x = {
        g.get_attribute("data-node"): float(g.find_element(By.TAG_NAME, "rect").get_attribute("x"))
        for g in browser.find_elements(By.CSS_SELECTOR, "g.dag-node")
    }
    assert x["screen"] < x["check"] < x["approve"] == x["decline"]
    dag = browser.find_element(By.CSS_SELECTOR, "section.dag")
    browser.execute_script("arguments[0].scrollIntoView()", dag)
    shot(browser, "execution-dag")

    os.remove(log + ".fail")  # the checker is back
    browser.find_element(By.ID, "retry").click()
    alert = until(browser, ec.alert_is_present())
    assert eid in alert.text
    alert.accept()

    def opened(d: Any) -> str | None:
        found = d.current_url.split("/ui/executions/")[-1].split("?")[0]
        return found if found and found != eid and "/" not in found else None

    new_id = until(browser, opened)
    until(browser, lambda d: d.find_element(By.ID, "state").text == "COMPLETED", 30)
    until(browser, lambda d: _nodes(d).get("approve") == "completed")
    assert _nodes(browser) == {
        "screen": "completed",
        "check": "completed",
        "approve": "completed",
        "decline": "skipped",
    }
    assert browser.find_element(By.ID, "retry-of").text == eid
    assert text_of(browser, "#output") == '"approved 720"'
    with open(log) as f:
        assert f.read().split() == ["screen", "check", "check"]  # screen did not run again
    shot(browser, "execution-retried")  # the top: retry of ..., the output
    browser.find_element(By.ID, "retry-of").click()
    until(browser, ec.url_contains(f"/ui/executions/{eid}"))
    assert browser.find_element(By.CSS_SELECTOR, "a.retried-by").text == new_id
    no_console_errors(browser)


def test_the_dag_follows_a_running_graph(review_site, browser):  # noqa: F811
    url, client, tmp = review_site["url"], review_site["client"], review_site["tmp"]
    body = {"log": str(tmp / "live.log"), "score": 300, "hold": 4}
    eid = client.post("/workflows/review/run/async", json=body).json()["execution_id"]
    wait_for(lambda: client.get(f"/executions/{eid}").json()["state"] == "RUNNING", 20, "running")
    _login(browser, url, f"/ui/executions/{eid}")
    until(browser, lambda d: _nodes(d).get("check") == "running", 20)
    assert _nodes(browser)["approve"] == "pending" and _nodes(browser)["decline"] == "pending"
    # live: the page was not reloaded, the states move on by themselves
    until(browser, lambda d: _nodes(d).get("decline") == "completed", 30)
    until(browser, lambda d: d.find_element(By.ID, "state").text == "COMPLETED", 30)
    assert _nodes(browser) == {
        "screen": "completed",
        "check": "completed",
        "approve": "skipped",
        "decline": "completed",
    }
    assert browser.find_elements(By.ID, "retry") == []
    no_console_errors(browser)
