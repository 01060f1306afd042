"""flux.net.models: the API's typed models, their JSON, their generated schemas, and the routes,
client and console that use them.

The recorded answers below were taken from the builders these models replaced (views.summary,
listed, event_json, workflow_json and the routes' dict literals) on fixed records: the models'
JSON must match them byte for byte."""

from __future__ import annotations

import copy
import enum
import json
import typing
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.net import models as m
from flux.net.client import FluxClient, FluxClientError
from flux.net.models_schema import component_schemas, schema_of, type_schema, validate
from flux.net.openapi import spec
from flux.runtime import codec
from flux.runtime.events import ExecutionState
from flux.runtime.records import ExecutionRecord, StoredEvent, WorkflowRecord, Write
from tests.conftest_net import start_live

# ---------------------------------------------------------------------------- recorded answers

REC = ExecutionRecord(
    execution_id="e1",
    workflow_name="hello",
    workflow_version=2,
    parent_id="p0",
    input=codec.encode({"n": 21, "tags": ["a", "é"]}),
    output=codec.encode({"doubled": 42}),
    state=ExecutionState.COMPLETED,
    created_at=1767225600.5,
    updated_at=1767225601.25,
)
FAILED = ExecutionRecord(
    execution_id="e2",
    workflow_name="hello",
    input=codec.encode(None),
    output=codec.encode(ValueError("bad")),
    state=ExecutionState.FAILED,
    created_at=1767225600.0,
)
T0 = 1767225600.5
EVENTS = [
    StoredEvent("e1", 1, "WORKFLOW_STARTED", "hello", "hello", codec.encode({"n": 21}), T0),
    StoredEvent("e1", 2, "TASK_COMPLETED", "double#1", "double", codec.encode(42), 1767225601.0),
    StoredEvent("e1", 3, "WORKFLOW_COMPLETED", "hello", "hello", b"\xc1junk", 1767225601.25),
    StoredEvent("e1", 4, "WORKFLOW_COMPLETED", "hello", "hello", None, 1e20),
]

SUMMARY = (
    '{"workflow_name": "hello", "execution_id": "e1", "input": {"n": 21, "tags": ["a", "\\u00e9"]}'
    ', "output": {"doubled": 42}, "state": "COMPLETED"}'
)
SUMMARY_FAILED = (
    '{"workflow_name": "hello", "execution_id": "e2", "input": null, "output": {"type": '
    '"builtins.ValueError", "message": "bad", "traceback": ""}, "state": "FAILED"}'
)
LISTED = SUMMARY[:-1] + (
    ', "parent_id": "p0", "created_at": 1767225600.5, "updated_at": 1767225601.25}'
)
LISTED_FAILED = SUMMARY_FAILED[:-1] + (
    ', "parent_id": null, "created_at": 1767225600.0, "updated_at": 1767225600.0}'
)
EVENTS_JSON = (
    '[{"id": 1, "type": "WORKFLOW_STARTED", "source_id": "hello", "name": "hello", "value": '
    '{"n": 21}, "time": "2026-01-01T00:00:00.500000+00:00"}, {"id": 2, "type": "TASK_COMPLETED",'
    ' "source_id": "double#1", "name": "double", "value": 42, "time": '
    '"2026-01-01T00:00:01+00:00"}, {"id": 3, "type": "WORKFLOW_COMPLETED", "source_id": "hello",'
    ' "name": "hello", "value": "<undecodable: cannot decode 5 bytes: FormatError: >", "time": '
    '"2026-01-01T00:00:01.250000+00:00"}, {"id": 4, "type": "WORKFLOW_COMPLETED", "source_id": '
    '"hello", "name": "hello", "value": null, "time": null}]'
)
WF = WorkflowRecord("hello", 3, "async def hello(ctx): ...\n", "ab" * 32, 1767225600.25)
WORKFLOW = (
    '{"name": "hello", "version": 3, "source_hash": "' + "ab" * 32 + '", "created_at": '
    "1767225600.25}"
)
WORKFLOW_DETAIL = WORKFLOW[:-1] + ', "source": "async def hello(ctx): ...\\n", "versions": [1, 3]}'
WORKER_INFO = {
    "id": "w-1",
    "name": "api-test",
    "capacity": 4,
    "free": 3,
    "stopping": False,
    "connected_at": 1767225600.0,
    "last_heartbeat": None,
    "leases": [{"execution_id": "e1", "epoch": 2, "expires_in": 1.5}],
}


def dumps(obj: Any) -> str:
    return json.dumps(m.to_json(obj))


def test_models_give_the_recorded_answers_byte_for_byte():
    assert dumps(m.Execution.of(REC)) == SUMMARY
    assert dumps(m.Execution.of(FAILED)) == SUMMARY_FAILED
    detailed = json.loads(dumps(m.Execution.of(REC, EVENTS)))
    assert list(detailed) == [*json.loads(SUMMARY), "events"]
    assert json.dumps(detailed["events"]) == EVENTS_JSON
    assert dumps(m.ExecutionListItem.of(REC)) == LISTED
    assert dumps(m.ExecutionListItem.of(FAILED)) == LISTED_FAILED
    assert dumps([m.Event.of(e) for e in EVENTS]) == EVENTS_JSON
    page = dumps(m.ExecutionList.of([REC, FAILED], 7, 2, 4))
    assert page == f'{{"executions": [{LISTED}, {LISTED_FAILED}], "total": 7, "limit": 2, ' + (
        '"offset": 4}'
    )
    assert dumps(m.Workflow.of(WF)) == WORKFLOW
    versions = [attrs.evolve(WF, version=1), WF]
    assert dumps(m.WorkflowDetail.of(WF, versions)) == WORKFLOW_DETAIL
    assert json.loads(dumps(m.Worker.of(WORKER_INFO))) == WORKER_INFO
    assert list(json.loads(dumps(m.Worker.of(WORKER_INFO)))) == list(WORKER_INFO)
    stats = type("S", (), {"workers": 1, "capacity": 4, "leases": 1, "ready": 0})()
    assert dumps(m.Health.of(stats)) == (
        '{"status": "ok", "workers": 1, "capacity": 4, "leases": 1, "queued": 0}'
    )
    assert dumps(m.SecretName("K")) == '{"name": "K"}'
    assert dumps(m.SecretName("K", removed=True)) == '{"name": "K", "removed": true}'
    assert dumps(m.SecretValue("K", "v")) == '{"name": "K", "value": "v"}'
    assert dumps(m.Error("nope", "why")) == '{"error": "nope", "detail": "why"}'


def test_retry_links_sit_where_the_retry_routes_put_them():
    retry = attrs.evolve(REC, retry_of="e0")
    shown = json.loads(dumps(m.Execution.of(retry, EVENTS[:1], ["e3", "e4"])))
    assert list(shown) == [*json.loads(SUMMARY), "retry_of", "retried_by", "events"]
    assert (shown["retry_of"], shown["retried_by"]) == ("e0", ["e3", "e4"])
    assert dumps(m.ExecutionListItem.of(retry)) == LISTED[:-1] + ', "retry_of": "e0"}'
    assert "retried_by" not in m.Execution.of(REC, None, [])


def test_old_builders_are_the_models():
    from flux.net import views

    assert json.dumps(views.summary(REC)) == SUMMARY
    assert json.dumps(views.listed(FAILED)) == LISTED_FAILED
    assert isinstance(views.event_json(EVENTS[0]), m.Event)


def test_a_row_that_cannot_be_shown_says_so():
    class Broken:
        execution_id = "e9"
        workflow_name = "hello"
        state = ExecutionState.RUNNING

        @property
        def input(self):
            raise RuntimeError("torn row")

    row = m.to_json(m.ExecutionListItem.of(Broken()))  # type: ignore[arg-type]
    assert row["execution_id"] == "e9" and row["state"] == "RUNNING"
    assert row["input"] is None and row["error"] == "this execution cannot be shown: RuntimeError"


# ---------------------------------------------------------------------------- the models as dicts


def test_a_model_reads_as_attributes_and_as_its_json():
    x = m.Execution.of(REC, EVENTS[:2])
    assert x.state is ExecutionState.COMPLETED and x["state"] == "COMPLETED"
    assert x.events[1].source_id == "double#1" and x["events"][1]["source_id"] == "double#1"
    assert isinstance(x, dict) and "events" in x and "events" not in m.Execution.of(REC)
    assert x == json.loads(json.dumps(x)) and json.loads(json.dumps(x)) == m.to_json(x)
    assert type(m.to_json(x)["events"][0]) is dict  # plain data, no model left
    for mutate in (
        lambda: x.__setitem__("state", "FAILED"),
        lambda: x.pop("state"),
        lambda: x.update(state="FAILED"),
        lambda: x.clear(),
        lambda: x.setdefault("new", 1),
    ):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        x.state = ExecutionState.FAILED  # type: ignore[misc]
    assert x["state"] == "COMPLETED"
    twin = copy.deepcopy(x)
    assert twin == x and twin is not x and twin.events[0] == x.events[0]
    assert attrs.evolve(x, state=ExecutionState.FAILED)["state"] == "FAILED"


@m.model
class _Wrapper(m.Model):
    """A model holding a plain attrs class and a tuple."""

    inner: _RouteAnswer = m.field()
    pair: tuple[int, ...] = m.field()


def test_a_model_holding_a_plain_attrs_class_is_still_json():
    answer = _RouteAnswer(ExecutionState.FAILED, (3, 4), m.Error("a", "b"), [])
    wrapped = _Wrapper(answer, (1, 2))
    assert json.loads(json.dumps(wrapped)) == m.to_json(wrapped)
    assert wrapped["inner"]["state"] == "FAILED" and wrapped["pair"] == [1, 2]
    assert m.from_json(m.to_json(wrapped), _Wrapper).inner == answer


def test_a_field_may_not_hide_a_dict_method():
    with pytest.raises(TypeError, match="cannot be named items, keys"):

        @m.model
        class Page(m.Model):
            items: list[int] = m.field()
            keys: list[str] = m.field()

    with pytest.raises(TypeError, match="must subclass Model"):
        m.model(type("Plain", (), {}))


def test_from_json_round_trips_ignores_extra_keys_and_keeps_unknown_states():
    data = json.loads(LISTED)
    parsed = m.from_json({**data, "newer_field": 1}, m.ExecutionListItem)
    assert parsed == data and "newer_field" not in parsed
    assert parsed.state is ExecutionState.COMPLETED
    odd = m.from_json({**json.loads(SUMMARY), "state": "HIBERNATING"}, m.Execution)
    assert odd.state == "HIBERNATING" and odd["state"] == "HIBERNATING"
    with pytest.raises(Exception) as missing:
        m.from_json({"error": "x"}, m.Error)
    assert "detail" in repr(missing.value.exceptions)  # type: ignore[attr-defined]


@attrs.frozen
class _RouteAnswer:
    """A plain attrs class, as a new route module may write one."""

    state: ExecutionState
    pair: tuple[int, int]
    error: m.Error
    rows: list[m.Event]


def test_to_json_takes_plain_attrs_classes_too():
    answer = _RouteAnswer(ExecutionState.PAUSED, (1, 2), m.Error("a", "b"), [m.Event.of(EVENTS[1])])
    out = m.to_json([answer, {"nested": answer}])
    assert type(out[0]["state"]) is str and out[0]["state"] == "PAUSED"
    assert out[0]["pair"] == [1, 2] and type(out[0]["error"]) is dict
    assert out[1]["nested"]["rows"] == json.loads(EVENTS_JSON)[1:2]
    assert m.from_json(out[0], _RouteAnswer) == answer


# ---------------------------------------------------------------------------- schemas


def test_generated_schemas_describe_types_options_lists_enums_and_docs():
    s = schema_of(m.Execution)
    assert s["required"] == ["workflow_name", "execution_id", "input", "output", "state"]
    assert s["properties"]["state"] == {"$ref": "#/components/schemas/State"}
    assert s["properties"]["events"] == {  # left out rather than null: not nullable
        "type": "array",
        "items": {"$ref": "#/components/schemas/Event"},
        "description": "only with ?detailed=true",
    }
    assert schema_of(m.SecretName)["properties"]["removed"]["type"] == "boolean"
    assert schema_of(m.Worker)["properties"]["last_heartbeat"]["type"] == ["number", "null"]
    assert s["properties"]["input"] == {"description": "the workflow's input"}
    assert s["description"].startswith("An execution's summary")
    assert schema_of(m.Event)["properties"]["time"]["type"] == ["string", "null"]
    assert "WORKFLOW_PAUSED" in schema_of(m.Event)["properties"]["type"]["enum"]
    assert schema_of(m.SecretSet)["additionalProperties"] is False
    assert schema_of(m.ErrorValue)["required"] == ["type", "message"]
    assert schema_of(m.Health)["properties"]["status"]["const"] == "ok"
    assert type_schema(dict[str, int]) == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }
    assert type_schema(typing.Literal["a", "b"]) == {"enum": ["a", "b"]}
    with pytest.raises(TypeError, match="no JSON Schema"):
        type_schema(complex)
    every = component_schemas(m.MODELS)
    assert every["State"]["enum"] == [s.value for s in ExecutionState]
    assert set(every) == {c.__name__ for c in m.MODELS} | {"State"}


def test_the_openapi_document_uses_the_generated_schemas():
    doc = spec()
    generated = component_schemas(m.MODELS)
    for name, schema in generated.items():
        assert doc["components"]["schemas"][name] == schema, name
    text = json.dumps(doc)
    for name in generated:  # each is used (ErrorValue: by the descriptions of values)
        assert f'"#/components/schemas/{name}"' in text or name == "ErrorValue", name


def test_the_validator_can_fail():
    schemas = component_schemas(m.MODELS)
    good = json.loads(SUMMARY)
    assert validate(good, {"$ref": "#/components/schemas/Execution"}, schemas) == []
    bad = {**good, "state": "NOPE", "execution_id": 7}
    del bad["input"]
    errors = validate(bad, {"$ref": "#/components/schemas/Execution"}, schemas)
    assert len(errors) == 3 and any("missing 'input'" in e for e in errors)
    assert any("execution_id" in e and "string" in e for e in errors)
    ev = json.loads(EVENTS_JSON)[0]
    errors = validate({**ev, "id": 0}, schemas["Event"], schemas)
    assert errors == ["$.id: 0 is under the minimum 1"]
    assert validate({**ev, "id": True}, schemas["Event"], schemas)  # a bool is no integer
    secret = {"name": "a b", "value": "v", "extra": 1}
    assert len(validate(secret, schemas["SecretSet"], schemas)) == 2
    assert validate({"status": "down"}, schemas["Health"], schemas)[0].startswith("$: missing")


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids),
        max_leaves=6,
    )


def _of_type(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a model field's type (for the property test below)."""
    if tp is Any:
        return _json_values()
    if tp is str:
        return st.text(max_size=8)
    if tp is int:
        return st.integers(min_value=1, max_value=2**40)
    if tp is float:
        return st.floats(min_value=0, max_value=2e9)
    if tp is bool:
        return st.booleans()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and attrs.has(tp):
        return instances(tp)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list:
        return st.lists(_of_type(args[0]), max_size=3)
    if typing.get_origin(tp) is dict:
        return st.dictionaries(st.text(max_size=5), _of_type(args[1]), max_size=3)
    if typing.get_origin(tp) is typing.Literal:
        return st.sampled_from(args)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() | _of_type(inner)
    raise AssertionError(f"no strategy for {tp!r}")


def _field_strategy(cls: type, f: attrs.Attribute) -> st.SearchStrategy[Any]:
    extra = f.metadata.get(m.SCHEMA) or {}
    if "enum" in extra:
        return st.sampled_from(extra["enum"])
    if "const" in extra:
        return st.just(extra["const"])
    if "pattern" in extra:
        return st.from_regex(r"\A\S{1,20}\Z")
    return _of_type(typing.get_type_hints(cls)[f.name])


def instances(cls: type) -> st.SearchStrategy[Any]:
    fields = {f.name: _field_strategy(cls, f) for f in attrs.fields(cls)}
    return st.builds(cls, **fields)


def every_model() -> tuple[type, ...]:
    """The API's models and those the route modules list (``OPENAPI_MODELS``)."""
    from flux.net.routes import route_modules

    listed = [cls for mod in route_modules() for cls in getattr(mod, "OPENAPI_MODELS", ())]
    return tuple(dict.fromkeys([*m.MODELS, *listed]))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_every_models_json_validates_against_its_own_schema(data):
    models = every_model()
    schemas = component_schemas(models)
    for cls in models:
        obj = data.draw(instances(cls), label=cls.__name__)
        out = m.to_json(obj)
        assert validate(out, schemas[cls.__name__], schemas) == [], (cls.__name__, out)
        assert m.from_json(json.loads(json.dumps(out)), cls) == obj


# ---------------------------------------------------------------------------- the routes


async def _settled(c: httpx.AsyncClient, eid: str, states: set[str]) -> dict:
    with trio.fail_after(20):
        while True:
            r = (await c.get(f"/executions/{eid}")).json()
            if r["state"] in states:
                return r
            await trio.sleep(0.02)


def _check(response: httpx.Response, model: Any, schema: dict, doc: dict) -> None:
    """The answer is the model's JSON byte for byte, and valid against its OpenAPI schema."""
    assert response.status_code == 200, response.text
    assert response.content == json.dumps(m.to_json(model)).encode()
    assert validate(response.json(), schema, doc["components"]["schemas"]) == []


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


@pytest.mark.trio
async def test_every_route_answers_its_models_json(nursery, tmp_path):
    live = await start_live(nursery, tmp_path)
    store = live.server.store
    async with httpx.AsyncClient(base_url=live.url) as c:
        doc = (await c.get("/openapi.json")).json()
        run = await c.post("/workflows/hello/run/sync?detailed=true", json=21)
        eid = run.json()["execution_id"]
        rec = await store.get_execution(eid)
        events = await store.load_events(eid)
        _check(run, m.Execution.of(rec, events), _ref("Execution"), doc)
        assert list(run.json()) == [*json.loads(SUMMARY), "events"]
        status = await c.get(f"/workflows/hello/status/{eid}")
        _check(status, m.Execution.of(rec), _ref("Execution"), doc)
        assert list(status.json()) == list(json.loads(SUMMARY))
        by_id = await c.get(f"/executions/{eid}?detailed=1")
        _check(by_id, m.Execution.of(rec, events), _ref("Execution"), doc)
        assert list(by_id.json()["events"][0]) == list(json.loads(EVENTS_JSON)[0])
        paused = (await c.post("/workflows/asker/run/sync", json=None)).json()
        cancelled = await c.post(f"/executions/{paused['execution_id']}/cancel")
        crec = await store.get_execution(paused["execution_id"])
        _check(cancelled, m.Execution.of(crec), _ref("Execution"), doc)
        page = await c.get("/executions?limit=5")
        records = await store.list_executions(limit=5)
        _check(page, m.ExecutionList.of(records, 2, 5, 0), _ref("ExecutionList"), doc)
        assert list(page.json()["executions"][0]) == list(json.loads(LISTED))
        wfs = await c.get("/workflows")
        saved = await store.list_workflows()
        _check(wfs, [m.Workflow.of(r) for r in saved], {"items": _ref("Workflow")}, doc)
        one = await c.get("/workflows/hello")
        detail = m.WorkflowDetail.of(
            await store.get_workflow("hello"), await store.list_workflow_versions("hello")
        )
        _check(one, detail, _ref("WorkflowDetail"), doc)
        assert list(one.json()) == list(json.loads(WORKFLOW_DETAIL))
        health = await c.get("/health")
        _check(health, m.Health.of(live.server.dispatcher.statistics()), _ref("Health"), doc)
        workers = await c.get("/workers")
        assert [w["name"] for w in workers.json()] == ["api-test"]
        assert list(workers.json()[0]) == list(WORKER_INFO)
        every = doc["components"]["schemas"]
        assert validate(workers.json(), {"items": _ref("Worker")}, every) == []
        assert m.from_json(workers.json(), list[m.Worker])[0].capacity == 4
        set_ = await c.post("/admin/secrets", json={"name": "API_KEY", "value": "s3cret-value"})
        _check(set_, m.SecretName("API_KEY"), _ref("SecretName"), doc)
        got = await c.get("/admin/secrets/API_KEY")
        _check(got, m.SecretValue("API_KEY", "s3cret-value"), _ref("SecretValue"), doc)
        gone = await c.delete("/admin/secrets/API_KEY")
        _check(gone, m.SecretName("API_KEY", removed=True), _ref("SecretName"), doc)
        missing = await c.get("/executions/nope")
        assert missing.status_code == 404
        assert missing.content == json.dumps(
            m.to_json(m.Error("execution-not-found", "no execution 'nope'"))
        ).encode()


@pytest.mark.trio
async def test_the_stream_sends_the_models_json(nursery, tmp_path):
    live = await start_live(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=live.url, timeout=20) as c:
        async with c.stream("POST", "/workflows/hello/run/stream", json=4) as r:
            data = [
                json.loads(line[6:]) async for line in r.aiter_lines() if line.startswith("data: ")
            ]
    eid = data[0]["execution_id"]
    events = await live.server.store.load_events(eid)
    assert data[1:-1] == [m.to_json(m.Event.of(e)) for e in events]
    final = await live.server.store.get_execution(eid)
    assert data[-1] == m.to_json(m.Execution.of(final)) and data[-1]["output"] == {"doubled": 8}


# ---------------------------------------------------------------------------- the client


@pytest.mark.trio
async def test_the_client_returns_the_models(nursery, tmp_path):
    live = await start_live(nursery, tmp_path)
    async with FluxClient(live.url) as c:
        done = await c.run("hello", 5, detailed=True)
        assert isinstance(done, m.Execution) and done.state is ExecutionState.COMPLETED
        assert done.output == {"doubled": 10} and done["output"] == {"doubled": 10}
        assert all(isinstance(e, m.Event) for e in done.events)
        assert done.events[-1].type == "WORKFLOW_COMPLETED"
        assert done == m.Execution.of(
            await live.server.store.get_execution(done.execution_id),
            await live.server.store.load_events(done.execution_id),
        )
        (row,) = await c.list_executions(workflow="hello")
        assert isinstance(row, m.ExecutionListItem) and row.parent_id is None
        assert isinstance((await c.get_workflow("hello")), m.WorkflowDetail)
        assert isinstance((await c.list_workflows())[0], m.Workflow)
        assert (await c.health()).status == "ok"
        (worker,) = await c.workers()
        assert isinstance(worker, m.Worker) and worker.name == "api-test"
        streamed = [x async for x in c.stream("hello", 1)]
        assert isinstance(streamed[0], m.Execution) and isinstance(streamed[1], m.Event)
        assert streamed[-1].state is ExecutionState.COMPLETED
        followed = [x async for x in c.follow(done.execution_id)]
        assert followed == done.events and isinstance(followed[0], m.Event)


@pytest.mark.trio
async def test_the_client_refuses_an_answer_of_the_wrong_shape(nursery):
    from quart import Response
    from quart_trio import QuartTrio

    from tests.test_client import serve_app

    app = QuartTrio("odd")

    @app.get("/executions/<eid>")
    async def odd(eid: str) -> Response:
        body = {"execution_id": eid, "state": "RUNNING", "output": None}
        return Response(json.dumps(body), mimetype="application/json")

    url = await nursery.start(serve_app, app)
    async with FluxClient(url) as c:
        with pytest.raises(FluxClientError) as bad:
            await c.get_execution("e1")
    assert bad.value.code == "bad-response"
    assert "execution 'e1' is not a Execution" in str(bad.value)
    assert "required field missing @ $.workflow_name" in str(bad.value)


# ---------------------------------------------------------------------------- the console


@pytest.mark.trio
async def test_the_console_shows_values_as_the_api_does(nursery, tmp_path):
    """A value naming a class the server cannot import is shown by its recorded fields on
    the page, exactly as the API shows it; nothing is imported to show it."""
    import sys

    live = await start_live(nursery, tmp_path, worker=False)
    store = live.server.store

    ghost = tmp_path / "ghost_models_of_a_worker.py"
    ghost.write_text("import attrs\n\n@attrs.frozen\nclass Order:\n    id: int\n    note: str\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import ghost_models_of_a_worker as ghostly  # type: ignore[import-not-found]

        value = codec.encode(ghostly.Order(7, "<b>bold</b>"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ghost_models_of_a_worker", None)
    ghost.unlink()  # the server cannot import it now: a worker's class
    rec = ExecutionRecord(execution_id="odd1", workflow_name="hello", input=codec.encode(None))
    done = StoredEvent("odd1", 1, "TASK_COMPLETED", "make#1", "make", value, 1767225600.0)
    await store.commit(Write("odd1", insert=rec, events=[done]))
    async with httpx.AsyncClient(base_url=live.url) as c:
        api = (await c.get(f"/executions/{rec.execution_id}?detailed=true")).json()
        page = (await c.get(f"/ui/executions/{rec.execution_id}")).text
    shown = api["events"][-1]["value"]
    assert shown == {"id": 7, "note": "<b>bold</b>"}
    assert "ghost_models_of_a_worker" not in sys.modules
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert "make#1" in page and "2026-01-01 00:00:00 UTC" in page
