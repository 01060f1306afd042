"""The console without a browser: its safety rules over HTTP, and what its pages compute."""

from __future__ import annotations

import re

import httpx
import pytest
import trio

from flux.net.console import auth, views
from flux.runtime import codec
from flux.runtime.records import StoredEvent
from tests.conftest_net import Live, start_live

TOKEN = "t0ken-for-the-console"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@pytest.fixture
async def locked(nursery, tmp_path) -> Live:
    return await start_live(nursery, tmp_path, api_token=TOKEN)


@pytest.fixture
async def open_live(nursery, tmp_path) -> Live:
    return await start_live(nursery, tmp_path / "open")


@pytest.mark.trio
async def test_root_redirects_to_the_console_and_pages_are_locked_down(open_live):
    async with httpx.AsyncClient(base_url=open_live.url) as c:
        r = await c.get("/")
        assert r.status_code == 302 and r.headers["location"] == "/ui"
        cookie = (await c.get("/ui/workers")).headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
        for path in ("/ui/executions", "/ui/workflows", "/ui/workers", "/ui/secrets"):
            r = await c.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            # no inline script, no inline handler, no inline style: the CSP would refuse them
            assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path
            assert not re.search(r"\son[a-z]+=", r.text), path
            assert "style=" not in r.text, path
        js = await c.get("/ui/static/console.js")
        assert js.status_code == 200 and "data-poll" in js.text


@pytest.mark.trio
async def test_every_post_needs_its_csrf_token(open_live):
    async with httpx.AsyncClient(base_url=open_live.url) as c:
        page = await c.get("/ui/secrets")
        token = _csrf(page.text)
        r = await c.post("/ui/secrets", data={"name": "K", "value": "a-longer-value"})
        assert r.status_code == 403 and "security token" in r.text
        bad = {"name": "K", "value": "a-longer-value", "csrf": "0" * 64}
        r = await c.post("/ui/secrets", data=bad)
        assert r.status_code == 403
        # another site's form, even with a token, is refused by its Origin
        r = await c.post(
            "/ui/secrets",
            data={"name": "K", "value": "a-longer-value", "csrf": token},
            headers={"Origin": "http://evil.example"},
        )
        assert r.status_code == 403 and "another site" in r.text
        assert await open_live.server.dispatcher.secrets.names() == []
        good = {"name": "K", "value": "a-longer-value", "csrf": token}
        r = await c.post("/ui/secrets", data=good)
        assert r.status_code == 303 and "Secret+K+set" in r.headers["location"]
        assert list(await open_live.server.dispatcher.secrets.names()) == ["K"]
        listed = await c.get("/ui/secrets")
        assert "K" in listed.text and "a-longer-value" not in listed.text
    # a fresh browser (another session cookie) cannot reuse that token
    async with httpx.AsyncClient(base_url=open_live.url) as other:
        r = await other.post("/ui/secrets/remove", data={"name": "K", "csrf": token})
        assert r.status_code == 403


@pytest.mark.trio
async def test_without_tokens_only_loopback_hosts_are_served(open_live):
    async with httpx.AsyncClient(base_url=open_live.url) as c:
        # a page on another site that rebinds its DNS name to 127.0.0.1 sends its own Host
        r = await c.get("/ui/executions", headers={"Host": "attacker.example"})
        assert r.status_code == 403 and "this machine only" in r.text
        r = await c.get("/ui/executions", headers={"Host": "localhost:8000"})
        assert r.status_code == 200


@pytest.mark.trio
async def test_with_a_token_the_console_asks_for_it_once(locked):
    async with httpx.AsyncClient(base_url=locked.url) as c:
        r = await c.get("/ui/executions?state=FAILED")
        assert r.status_code == 302
        assert r.headers["location"].startswith("/ui/login?next=/ui/executions")
        r = await c.get("/ui/executions?partial=1")
        assert r.status_code == 401
        # the API itself still wants its bearer token
        assert (await c.get("/executions")).status_code == 401
        login = await c.get("/ui/login")
        token = _csrf(login.text)
        r = await c.post("/ui/login", data={"token": "nope", "csrf": token})
        assert r.status_code == 401 and "not this server's API token" in r.text
        r = await c.post("/ui/login?next=//evil.example/", data={"token": TOKEN, "csrf": token})
        assert r.status_code == 303 and r.headers["location"] == "/ui/executions"
        cookie = r.headers["set-cookie"]
        assert "flux_console_token=" in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        r = await c.get("/ui/workflows")
        assert r.status_code == 200 and ">hello</a>" in r.text
        r = await c.post("/ui/logout", data={"csrf": token})
        assert r.status_code == 303
        assert (await c.get("/ui/workflows")).status_code == 302


@pytest.mark.trio
async def test_actions_refuse_bad_input_with_a_clear_page(open_live):
    async with httpx.AsyncClient(base_url=open_live.url) as c:
        token = _csrf((await c.get("/ui/workflows/hello")).text)
        r = await c.post("/ui/workflows/hello/run", data={"input": "{oops", "csrf": token})
        assert r.status_code == 400 and "The input is not valid JSON" in r.text
        r = await c.post("/ui/workflows/nope/run", data={"input": "1", "csrf": token})
        assert r.status_code == 404
        r = await c.post("/ui/workflows/hello/run", data={"input": "1", "mode": "x", "csrf": token})
        assert r.status_code == 400 and "Unknown run mode" in r.text
        r = await c.post(
            "/ui/workflows/hello/run", data={"input": "1", "mode": "sync", "csrf": token}
        )
        assert r.status_code == 303
        eid = r.headers["location"].split("/ui/executions/")[1].split("?")[0]
        r = await c.post(f"/ui/executions/{eid}/resume", data={"value": "1", "csrf": token})
        assert r.status_code == 409
        r = await c.get("/ui/executions/no-such-id")
        assert r.status_code == 404 and "No execution" in r.text
        r = await c.get("/ui/executions?state=SLEEPY")
        assert r.status_code == 400 and "Unknown state" in r.text
        r = await c.get("/ui/executions?since=yesterday")
        assert r.status_code == 400 and "From must be a date" in r.text
        assert (await open_live.server.store.count_executions()) == 1


@pytest.mark.trio
async def test_the_list_filters_by_time_and_id_prefix(open_live):
    async with httpx.AsyncClient(base_url=open_live.url) as c:
        ids = []
        for _ in range(3):
            r = await c.post("/workflows/hello/run/sync", json="x")
            ids.append(r.json()["execution_id"])
        page = await c.get("/ui/executions", params={"q": ids[1][:10]})
        assert ids[1] in page.text and ids[0] not in page.text
        exact = await c.get("/ui/executions", params={"q": ids[2]})
        assert exact.status_code == 303 and exact.headers["location"].endswith(ids[2])
        later = await c.get("/ui/executions", params={"since": "2999-01-01T00:00"})
        assert "No executions match these filters" in later.text
        assert "COMPLETED <b>" not in later.text  # the counts are the filtered ones
        one = await c.get("/ui/executions", params={"q": ids[0][:12], "state": "COMPLETED"})
        assert "COMPLETED <b>1</b>" in one.text and ids[0] in one.text
        every = await c.get("/ui/executions", params={"since": "2000-01-01T00:00"})
        assert all(i in every.text for i in ids)
        assert "COMPLETED <b>3</b>" in every.text


@pytest.mark.trio
async def test_hostile_values_are_shown_escaped(open_live):
    hostile = '<img src=x onerror="alert(1)"></pre><script>alert(2)</script>'
    async with httpx.AsyncClient(base_url=open_live.url) as c:
        r = await c.post("/workflows/hello/run/sync", json=hostile)
        eid = r.json()["execution_id"]
        page = await c.get(f"/ui/executions/{eid}")
        assert page.status_code == 200
        assert "<img src=x" not in page.text and "<script>alert" not in page.text
        assert "&lt;img src=x" in page.text
        r = await c.post("/workflows/hello/run/sync", json="x" * 300_000)
        big = await c.get(f"/ui/executions/{r.json()['execution_id']}")
        assert "more characters: GET the API for all" in big.text
        assert len(big.text) < 400_000


# ---------------------------------------------------------------------------- pure parts


def _ev(seq, type_, call_id, t, value=None, name=None):
    data = None if value is None else codec.encode(value)
    return StoredEvent("e", seq, type_, call_id, name or call_id.split("#")[0], data, t)


def test_the_timeline_places_calls_by_their_call_id_tree():
    events = [
        _ev(1, "WORKFLOW_STARTED", "wf", 0.0),
        _ev(2, "TASK_STARTED", "par#1/b#1", 1.0, {"args": []}, "b"),
        _ev(3, "TASK_STARTED", "par#1/a#0", 1.0, {"args": []}, "a"),
        _ev(4, "TASK_RETRY_STARTED", "par#1/a#0", 2.0, {"attempt": 1}, "a"),
        _ev(5, "TASK_RETRY_FAILED", "par#1/a#0", 3.0, None, "a"),
        _ev(6, "TASK_FALLBACK_STARTED", "par#1/a#0", 3.0, None, "a"),
        _ev(7, "TASK_FALLBACK_COMPLETED", "par#1/a#0", 4.0, None, "a"),
        _ev(8, "TASK_COMPLETED", "par#1/a#0", 4.0, 1, "a"),
        _ev(9, "TASK_FAILED", "par#1/b#1", 5.0, None, "b"),
        _ev(10, "TASK_STARTED", "first#0", 0.0, {"args": [], "child_id": "kid-1"}, "first"),
        _ev(11, "TASK_COMPLETED", "first#0", 1.0, 1, "first"),
        _ev(12, "TASK_PAUSED", "pause#2", 6.0, "ok", "pause"),
        _ev(13, "WORKFLOW_PAUSED", "wf", 6.0),
    ]
    tl = views.build_timeline(events, now=10.0)
    assert [(r.call_id, r.depth) for r in tl.rows] == [
        ("first#0", 0),
        ("par#1", 0),
        ("par#1/a#0", 1),
        ("par#1/b#1", 1),
        ("pause#2", 0),
    ]
    rows = {r.call_id: r for r in tl.rows}
    assert rows["first#0"].kind == "child" and rows["first#0"].child_id == "kid-1"
    a = rows["par#1/a#0"]
    assert [(s.kind, s.outcome) for s in a.segments] == [
        ("attempt", "failed"),
        ("retry", "failed"),
        ("fallback", "completed"),
    ]
    assert (a.state, a.retries, a.segments[1].left, a.segments[1].width) == ("completed", 1, 20, 10)
    assert rows["par#1"].kind == "group" and rows["par#1"].state == "failed"
    assert (rows["par#1"].start, rows["par#1"].end) == (1.0, 5.0)
    pause = rows["pause#2"]
    # not settled: the pause runs on to "now", the right edge of the timeline
    assert pause.state == "paused" and pause.segments[0].outcome == "running"
    assert tl.end == 10.0 and pause.segments[0].left + pause.segments[0].width == 100
    capped = views.build_timeline(events, now=10.0, max_rows=2)
    assert len(capped.rows) == 2 and capped.left_out == 3


def test_highlighting_escapes_and_classes_tokens():
    lines = views.highlight('@workflow\nasync def f(ctx):  # <b>\n    return "</pre>" + 1\n')
    html = "\n".join(lines)
    assert '<span class="kw">async</span>' in html and '<span class="def">f</span>' in html
    assert '<span class="com"># &lt;b&gt;</span>' in html
    assert '<span class="str">&#34;&lt;/pre&gt;&#34;</span>' in html
    assert '<span class="num">1</span>' in html
    broken = views.highlight('x = """never closed\n<script>')
    assert "<script>" not in "".join(broken) and "&lt;script&gt;" in "".join(broken)


def test_auth_rules():
    rules = auth.ConsoleAuth("tok")
    session = rules.new_session()
    assert rules.csrf_ok(session, rules.csrf_token(session))
    assert not rules.csrf_ok(rules.new_session(), rules.csrf_token(session))
    assert not rules.csrf_ok(None, "x") and not rules.csrf_ok(session, None)
    assert auth.ConsoleAuth("tok").csrf_token(session) == rules.csrf_token(session)
    assert rules.logged_in("tok") and not rules.logged_in("tok2") and not rules.logged_in(None)
    assert auth.loopback_host("127.0.0.1:8000") and auth.loopback_host("[::1]:80")
    assert auth.loopback_host("localhost") and not auth.loopback_host("evil.example:8000")
    assert not auth.loopback_host("127.0.0.1.evil.example") and not auth.loopback_host(None)
    assert auth.same_origin(None, "h:1") and auth.same_origin("http://h:1", "h:1")
    assert not auth.same_origin("null", "h:1") and not auth.same_origin("http://x:1", "h:1")


_ = trio  # the trio tests above run on pytest-trio's runner
