"""The OpenAPI document, the /docs page, and a schema-driven fuzz of the HTTP API.

The fuzz reads /openapi.json and lets hypothesis build requests from it (every operation, its
path and query parameters, JSON or multipart bodies, plus junk: wrong types, bad JSON, odd
tokens), sends them to a server on 127.0.0.1 with an in-process worker, and checks each answer:
never a 5xx, a status the document lists for that operation, the error shape for errors and the
documented schema for successes. Bounded: a fixed number of examples, short timeouts."""

from __future__ import annotations

import json
import queue
import re
import threading
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux.net.openapi import DOCS_HTML, spec
from flux.net.server import create_app
from flux.runtime.settings import Settings
from tests.conftest_net import API_WORKFLOWS, start_live

TOKEN = "fuzz-token"

# ---------------------------------------------------------------------------- the document


def test_spec_describes_every_route_and_only_those(tmp_path):
    doc = spec()
    assert doc["openapi"] == "3.1.0"
    app = create_app(Settings(db_path=str(tmp_path / "x.db")))
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    served = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        if path == "/ui" or path.startswith("/ui/"):
            continue  # the console: HTML pages, not the JSON API (docs/console.md)
        if rule.websocket:
            assert path in doc["x-websockets"], path
            continue
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            if path == "/workflows/{name}/run/{mode}":
                served |= {(method, f"/workflows/{{name}}/run/{m}") for m in ("sync", "async")}
                served.add((method, "/workflows/{name}/run/stream"))
            else:
                served.add((method, path))
    assert documented == served
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"] and op["operationId"], (method, path)
            assert "500" in op["responses"]
            if path not in ("/", "/health", "/openapi.json", "/docs"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)
            for code, response in op["responses"].items():
                if code >= "400":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert "{" + param["name"] + "}" in path
    for text in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)):
        assert text in schemas
    assert "security" not in spec(auth=False)


def test_docs_page_is_self_contained():
    assert "openapi.json" in DOCS_HTML and "fetch(" in DOCS_HTML
    # no CDN, no external script, style, font or image
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", DOCS_HTML)
    assert "@import" not in DOCS_HTML and "url(" not in DOCS_HTML


@pytest.mark.trio
async def test_docs_and_spec_are_served(nursery, tmp_path):
    live = await start_live(nursery, tmp_path, worker=False, upload_source=False)
    async with httpx.AsyncClient(base_url=live.url) as c:
        page = await c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        served = (await c.get("/openapi.json")).json()
        assert served["paths"].keys() == spec()["paths"].keys()
        assert "security" not in served  # this server has no token


# ---------------------------------------------------------------------------- a tiny validator


def check_schema(value: Any, schema: dict, doc: dict, where: str = "$") -> None:
    """Enough JSON Schema for this document: $ref, allOf, type, const, enum, required,
    properties, items."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return check_schema(value, doc["components"]["schemas"][name], doc, where)
    for part in schema.get("allOf", []):
        check_schema(value, part, doc, where)
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        py = {
            "object": dict,
            "array": list,
            "string": str,
            "integer": int,
            "number": (int, float),
            "boolean": bool,
            "null": type(None),
        }
        ok = any(
            isinstance(value, py[k]) and not (k in ("integer", "number") and value is True)
            for k in kinds
        )
        assert ok, f"{where}: {value!r} is not {kinds}"
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in enum"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check_schema(value[key], sub, doc, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value[:50]):
            check_schema(item, schema["items"], doc, f"{where}[{i}]")


# ---------------------------------------------------------------------------- the fuzz


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A server with an API token and a worker, in a thread of its own (hypothesis drives it
    with a plain httpx client)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            try:
                live = await start_live(
                    nursery,
                    tmp,
                    api_token=TOKEN,
                    sync_timeout=2.0,
                    max_body_size=64 * 1024,
                    max_value_size=16 * 1024,
                    keepalive=1.0,
                )
            except BaseException as exc:
                ready.put(exc)
                raise
            ready.put(live)
            while not stop.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    live = ready.get(timeout=60)
    if isinstance(live, BaseException):
        raise live
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=20) as c:
        doc = c.get("/openapi.json").json()
        eid = c.post("/workflows/hello/run/sync", json=2).json()["execution_id"]
        paused = c.post("/workflows/asker/run/sync").json()["execution_id"]
        c.post("/admin/secrets", json={"name": "API_KEY", "value": "v"})
    try:
        yield live, doc, [eid, paused]
    finally:
        stop.set()
        thread.join(20)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.sampled_from(["hello", "asker", "ticker", "guardian", "secretive", "nope"])
texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"), min_size=1
).filter(lambda t: t not in (".", ".."))  # dot segments are resolved by the client


def from_schema(schema: dict, doc: dict) -> st.SearchStrategy:
    if "$ref" in schema:
        return from_schema(doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], doc)
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -5) - 2, schema.get("maximum", 2000) + 2)
    if kind == "number":
        return st.floats(-1, 30, allow_nan=False) | st.sampled_from(["nan", "inf", "x"])
    if kind == "boolean":
        return st.sampled_from(["true", "false", "1", "0", "maybe"])
    if kind == "object":
        props = {k: from_schema(v, doc) for k, v in schema.get("properties", {}).items()}
        return st.fixed_dictionaries({}, optional=props)
    if kind == "string":
        return texts | st.sampled_from(["API_KEY", "PAUSED", "COMPLETED,FAILED", "hello"])
    return json_values


@st.composite
def requests(draw, doc: dict, known: list[str]) -> tuple[str, str, dict, str]:
    ops = [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()]
    path, method, op = draw(st.sampled_from(ops))
    url = path
    params: dict[str, Any] = {}
    for param in op.get("parameters", []):
        if param["in"] == "path":
            if param["name"] == "execution_id":
                value = draw(st.sampled_from(known) | texts)
            elif param["name"] == "name" and path.startswith("/admin"):
                value = draw(st.sampled_from(["API_KEY", "a b", "x" * 300]) | texts)
            else:
                value = draw(names | texts)
            url = url.replace("{" + param["name"] + "}", quote(value, safe=""))
        elif draw(st.booleans()):
            value = draw(from_schema(param["schema"], doc) | texts)
            params[param["name"]] = str(value).lower() if isinstance(value, bool) else value
    kwargs: dict[str, Any] = {"params": params}
    body = op.get("requestBody", {}).get("content", {})
    if "application/json" in body:
        choice = draw(st.integers(0, 3))
        if choice == 0:
            kwargs["json"] = draw(from_schema(body["application/json"]["schema"], doc))
        elif choice == 1:
            kwargs["json"] = draw(json_values)
        elif choice == 2:
            kwargs["content"] = draw(st.binary(max_size=64))
    elif "multipart/form-data" in body:
        source = draw(
            st.sampled_from([API_WORKFLOWS, "x = (", "from flux import workflow\n"]) | st.text()
        )
        field = draw(st.sampled_from(["file", "file", "other"]))
        kwargs["files"] = {field: ("f.py", source.encode("utf-8", "surrogatepass"))}
    auth = draw(st.sampled_from([f"Bearer {TOKEN}"] * 6 + [None, "Bearer nope", "Basic x"]))
    return method.upper(), url, kwargs, auth


def test_fuzz_the_api_from_its_openapi_document(fuzzed):
    live, doc, known = fuzzed
    seen: dict[str, int] = {}

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data) -> None:
        method, url, kwargs, auth = data.draw(requests(doc, known))
        headers = {"Authorization": auth} if auth else {}
        with httpx.Client(base_url=live.url, timeout=20) as c:
            with c.stream(method, url, headers=headers, **kwargs) as r:
                body = (
                    r.read()
                    if not r.headers.get("content-type", "").startswith("text/event-stream")
                    else b"".join(r.iter_bytes())
                )
        status = r.status_code
        seen[str(status)] = seen.get(str(status), 0) + 1
        assert status < 500, (method, url, kwargs, status, body[:500])
        template = _template(doc, method, url)
        if template is None:  # a path parameter with a quoted '/' or so: no route
            assert status in (404, 405), (method, url, status)
            return
        documented = doc["paths"][template][method.lower()]["responses"]
        assert str(status) in documented, (method, url, status, body[:300])
        kind = r.headers.get("content-type", "")
        if status >= 400:
            check_schema(json.loads(body), {"$ref": "#/components/schemas/Error"}, doc)
        elif kind.startswith("application/json"):
            schema = documented[str(status)]["content"]["application/json"]["schema"]
            check_schema(json.loads(body), schema, doc)
        elif kind.startswith("text/event-stream"):
            datas = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
            assert datas and all(isinstance(json.loads(d), dict) for d in datas)

    one()
    # the fuzz reached both successes and the error statuses, not only 401s
    assert seen.get("200", 0) > 10 and seen.get("404", 0) > 0 and seen.get("400", 0) > 0, seen


def _template(doc: dict, method: str, url: str) -> str | None:
    path = url.split("?", 1)[0]
    for template, item in doc["paths"].items():
        if method.lower() not in item:
            continue
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and "%2F" not in path.upper():
            return template
    return None
