"""The HTTP API's typed models: one frozen attrs class per JSON shape the API answers with.

The server builds every answer from the store's records with ONE builder per model (the ``of``
class methods below), returns ``json_response(to_json(model))``; the client parses answers
with ``from_json(data, Model)``; the OpenAPI document's component schemas are generated from
these classes (:mod:`flux.net.models_schema`); the console renders the same objects. So an
event, an execution or a worker has one shape everywhere.

A model is also a read-only ``dict`` of its own JSON (keys are the attribute names, snake_case;
values as JSON: enums as their values, nested models as dicts): ``execution.state`` is an
:class:`~flux.runtime.events.ExecutionState` and ``execution["state"]`` is ``"COMPLETED"``, so
code written against the API's plain JSON (``summary["output"]``, ``json.dumps(workers)``) keeps
working on models. ``to_json(obj)`` gives plain dicts and lists (no model classes left in them).

Adding a model (for a new route module)::

    @model
    class Schedule(Model):
        \"\"\"A schedule: this docstring is the schema's description.\"\"\"

        name: str = field("the schedule's name")
        next_run: float | None = field("Unix seconds; null when paused")
        runs: list[Run] = field("the latest runs, newest first")     # nested models: $ref
        note: str | None = field("only when ...", omit_none=True)     # key left out when None

then return ``json_response(to_json(Schedule(...)))`` from the route, describe the response in
the module's ``OPENAPI_PATHS`` with ``openapi.ref("Schedule")``, and list the class in the
module's ``OPENAPI_MODELS = (Schedule,)``: its schema, and those of the models and enums it
nests, are generated into ``components/schemas`` (``schema_of(cls)`` shows one).
``tests/test_models.py`` checks the JSON of every model (``MODELS`` and each route module's
``OPENAPI_MODELS``) against its own schema, and that it parses back. A plain ``@attrs.frozen``
class works too (``to_json``, ``from_json``, its schema; no ``omit_none``, no dict access):
subclass ``Model`` when the client returns it.
Types a field may have: ``str``, ``int``, ``float``, ``bool``, ``Any`` (any JSON value), an
``Enum``, another model, ``list[...]``, ``dict[str, ...]``, ``Literal[...]`` and ``X | None``.
``field(..., schema={...})`` adds JSON Schema keywords (``enum``, ``minimum``, ``const`` ...), a
class attribute ``SCHEMA_EXTRA: ClassVar[dict]`` keywords of the object itself.
"""

from __future__ import annotations

import enum
import functools
import logging
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn, TypeVar, dataclass_transform

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from flux.net.views import plain_value
from flux.runtime.events import ExecutionEventType, ExecutionState
from flux.runtime.records import ExecutionRecord, StoredEvent, WorkflowRecord

__all__ = [
    "MODELS",
    "Error",
    "ErrorValue",
    "Event",
    "Execution",
    "ExecutionList",
    "ExecutionListItem",
    "Health",
    "Lease",
    "Model",
    "SecretName",
    "SecretSet",
    "SecretValue",
    "Worker",
    "Workflow",
    "WorkflowDetail",
    "converter",
    "field",
    "from_json",
    "model",
    "to_json",
]

log = logging.getLogger("flux.server")

T = TypeVar("T")
M = TypeVar("M", bound="Model")

#: Metadata keys of :func:`field`.
DOC, OMIT_NONE, SCHEMA, REQUIRED = "flux_doc", "flux_omit_none", "flux_schema", "flux_required"


def field(
    doc: str = "",
    *,
    omit_none: bool = False,
    schema: Mapping[str, Any] | None = None,
    required: bool | None = None,
    default: Any = attrs.NOTHING,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A model's field: ``doc`` is its description in the schema; ``omit_none`` leaves the key
    out of the JSON while the value is None (so it defaults to None and is not required);
    ``schema`` adds JSON Schema keywords; ``required`` overrides whether the schema requires the
    key (by default: every key that is always sent)."""
    if omit_none and default is attrs.NOTHING and factory is None:
        default = None
    metadata = {DOC: doc, OMIT_NONE: omit_none, SCHEMA: dict(schema or {}), REQUIRED: required}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


def _read_only(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(f"{type(self).__name__} is read-only: build a new one with attrs.evolve")


class Model(dict):  # type: ignore[type-arg]
    """The base of the API's models: an attrs class that is also the read-only dict of its
    JSON (see the module's docstring). Subclass it with :func:`model`."""

    __slots__ = ()

    def __attrs_post_init__(self) -> None:
        dict.update(self, _json_items(self))

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> Any:  # copy and deepcopy rebuild from the fields
        return (_rebuild, (type(self), attrs.asdict(self, recurse=False)))

    def __copy__(self: M) -> M:
        return self


def _rebuild(cls: type[M], fields: dict[str, Any]) -> M:
    return cls(**fields)


@dataclass_transform(frozen_default=True, field_specifiers=(field, attrs.field))
def model(cls: type[M]) -> type[M]:
    """Make ``cls`` (a :class:`Model` subclass) a frozen attrs class compared as its JSON."""
    if not issubclass(cls, Model):
        raise TypeError(f"{cls.__name__} must subclass Model")
    built = attrs.frozen(cls, eq=False, hash=False)
    clash = sorted(f.name for f in attrs.fields(built) if hasattr(dict, f.name))
    if clash:  # the attribute would hide the dict method (items, keys, values, get ...)
        raise TypeError(
            f"{cls.__name__}: a model's field cannot be named {', '.join(clash)} "
            "(a model is also a dict): pick another name"
        )
    return built


@attrs.frozen
class _Plan:
    """How a model class turns into JSON, worked out once per class from its annotations."""

    #: (name, omit while None, needs converting: may hold an enum, a tuple or a plain attrs)
    fields: tuple[tuple[str, bool, bool], ...]
    #: fields that may hold models (or lists of them): to_json copies those into plain dicts
    nested: tuple[str, ...]


@functools.cache
def _plan(cls: type) -> _Plan:
    hints = typing.get_type_hints(cls)
    fields, nested = [], []
    for f in attrs.fields(cls):
        kinds = set(_kinds(hints[f.name]))
        convert = bool(kinds & {"enum", "tuple", "attrs"})
        fields.append((f.name, bool(f.metadata.get(OMIT_NONE)), convert))
        if "model" in kinds:
            nested.append(f.name)
    return _Plan(tuple(fields), tuple(nested))


def _kinds(tp: Any) -> Iterator[str]:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        yield "enum"
    elif isinstance(tp, type) and issubclass(tp, Model):
        yield "model"
    elif isinstance(tp, type) and attrs.has(tp):  # a plain attrs class: converted to a dict
        yield "attrs"
    if typing.get_origin(tp) is tuple:
        yield "tuple"
    for arg in typing.get_args(tp):
        yield from _kinds(arg)


def _json_items(obj: Model) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, omit_none, convert in _plan(type(obj)).fields:
        value = getattr(obj, name)
        if value is None and omit_none:
            continue
        out[name] = _jsonish(value) if convert else value
    return out


def _jsonish(value: Any) -> Any:
    """A field's value as it sits in the model's dict (models stay: they are dicts)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonish(v) for v in value]
    if attrs.has(type(value)) and not isinstance(value, Model):
        return converter.unstructure(value)
    return value


def _plain(value: Any) -> Any:
    """Plain dicts and lists in place of models (``Any`` fields hold JSON data: kept as they
    are, so this costs one dict copy per model)."""
    if isinstance(value, Model):
        out = dict(value)
        for name in _plan(type(value)).nested:
            if name in out:
                out[name] = _plain(out[name])
        return out
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):  # a plain attrs class (not a Model): the converter's way
        return converter.unstructure(value)
    return value


# ---------------------------------------------------------------------------- the converter


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Model) and attrs.has(tp)


def _structure_state(value: Any, _: Any) -> ExecutionState | str:
    """A state; one this version does not know (a newer server's) stays its string."""
    try:
        return ExecutionState(value)
    except ValueError:
        return str(value)


#: The one converter of the API's models (server answers, client parsing).
converter = cattrs.Converter(forbid_extra_keys=False, unstruct_collection_overrides={tuple: list})
for _enum in (enum.Enum, enum.StrEnum, enum.IntEnum):  # before str and int in their MRO
    converter.register_unstructure_hook(_enum, lambda e: e.value)
converter.register_unstructure_hook_func(_is_model, _plain)
converter.register_structure_hook_factory(
    _is_model, lambda cl: make_dict_structure_fn(cl, converter)
)
converter.register_structure_hook(ExecutionState, _structure_state)


def to_json(obj: Any) -> Any:
    """``obj`` (a model or any attrs instance, or lists/dicts of them) as plain JSON-ready
    data."""
    return _plain(obj)


def from_json(data: Any, cls: Any) -> Any:
    """JSON data parsed into the model ``cls`` (or ``list[Model]`` ...). Extra keys are ignored
    (a newer server's); a missing or mistyped key raises (``cattrs`` ClassValidationError)."""
    return converter.structure(data, cls)


# ---------------------------------------------------------------------------- the models


@model
class Error(Model):
    """Every error answer."""

    error: str = field("a short code, e.g. workflow-not-found")
    detail: str = field("what went wrong, for a human")


@model
class ErrorValue(Model):
    """How an error appears as a value (the `output` of a FAILED execution, the `value` of a
    `*_FAILED` event): its type, its message and the traceback text recorded where it was
    raised (empty when none was recorded)."""

    type: str = field("qualified name, e.g. builtins.ValueError")
    message: str = field()
    traceback: str = field(default="", required=False)

    @classmethod
    def of(cls, value: Any) -> ErrorValue | None:
        """The error a shown value holds (``{"type", "message", ...}``), or None."""
        if isinstance(value, dict) and "type" in value and "message" in value:
            return cls(
                str(value.get("type")),
                str(value.get("message")),
                str(value.get("traceback") or ""),
            )
        return None


def _iso(ts: float) -> str | None:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat()
    except (OverflowError, OSError, ValueError, TypeError):
        return None


@model
class Event(Model):
    """One event of an execution's history."""

    id: int = field("sequence number (seq)", schema={"minimum": 1})
    type: str = field(schema={"enum": [t.value for t in ExecutionEventType]})
    source_id: str = field("call id, or the workflow name")
    name: str = field()
    value: Any = field("the event's value as JSON (decoded plain: no class is rebuilt)")
    time: str | None = field(schema={"format": "date-time"})

    @classmethod
    def of(cls, e: StoredEvent) -> Event:
        return cls(e.seq, e.type, e.call_id, e.name, plain_value(e.value), _iso(e.time))


@model
class Execution(Model):
    """An execution's summary (with its events when asked for)."""

    workflow_name: str = field()
    execution_id: str = field()
    input: Any = field("the workflow's input")
    output: Any = field(
        "the workflow's result when COMPLETED; an `ErrorValue` (type, message, traceback) "
        "when FAILED; the pause's name when PAUSED"
    )
    state: ExecutionState = field()
    retry_of: str | None = field(
        "the failed execution this one retries (only when it is a retry)", omit_none=True
    )
    retried_by: list[str] | None = field(
        "the retries of this execution, oldest first (only when any)", omit_none=True
    )
    events: list[Event] | None = field("only with ?detailed=true", omit_none=True)

    @classmethod
    def of(
        cls,
        record: ExecutionRecord,
        events: Sequence[StoredEvent] | None = None,
        retried_by: Sequence[str] = (),
    ) -> Execution:
        """The summary of ``record`` (with ``events`` when given; ``retried_by``: the ids of its
        retries, from ``store.retries_of``)."""
        return cls(
            record.workflow_name,
            record.execution_id,
            plain_value(record.input),
            plain_value(record.output),
            record.state,
            record.retry_of,
            list(retried_by) or None,
            None if events is None else [Event.of(e) for e in events],
        )


@model
class ExecutionListItem(Model):
    """One row of `GET /executions`: the summary, its parent and its times."""

    workflow_name: str = field()
    execution_id: str = field()
    input: Any = field()
    output: Any = field()
    state: ExecutionState = field()
    parent_id: str | None = field("the parent execution of a subworkflow")
    created_at: float = field("Unix seconds")
    updated_at: float = field("Unix seconds")
    retry_of: str | None = field(
        "the failed execution this one retries (only when it is a retry)", omit_none=True
    )
    error: str | None = field("only when this row cannot be shown: why", omit_none=True)

    @classmethod
    def of(cls, record: ExecutionRecord) -> ExecutionListItem:
        """The row of ``record``; a row that cannot be shown says so instead of failing the
        listing."""
        try:
            return cls(
                record.workflow_name,
                record.execution_id,
                plain_value(record.input),
                plain_value(record.output),
                record.state,
                record.parent_id,
                record.created_at,
                record.updated_at,
                record.retry_of,
            )
        except Exception as exc:
            log.exception("execution %s cannot be listed", getattr(record, "execution_id", "?"))
            return cls(
                getattr(record, "workflow_name", None),  # type: ignore[arg-type]
                getattr(record, "execution_id", None),  # type: ignore[arg-type]
                None,
                None,
                getattr(record, "state", None),  # type: ignore[arg-type]
                getattr(record, "parent_id", None),
                getattr(record, "created_at", None),  # type: ignore[arg-type]
                getattr(record, "updated_at", None),  # type: ignore[arg-type]
                getattr(record, "retry_of", None),
                f"this execution cannot be shown: {type(exc).__name__}",
            )


@model
class ExecutionList(Model):
    """One page of executions, newest first."""

    executions: list[ExecutionListItem] = field()
    total: int = field("matches, all pages together")
    limit: int = field()
    offset: int = field()

    @classmethod
    def of(
        cls, records: Sequence[ExecutionRecord], total: int, limit: int, offset: int
    ) -> ExecutionList:
        return cls([ExecutionListItem.of(r) for r in records], total, limit, offset)


@model
class Workflow(Model):
    """One version of a workflow."""

    name: str = field()
    version: int = field(schema={"minimum": 1})
    source_hash: str = field("sha256 of the source")
    created_at: float = field("Unix seconds")

    @classmethod
    def of(cls, r: WorkflowRecord) -> Workflow:
        return cls(r.name, r.version, r.source_hash, r.created_at)


@model
class WorkflowDetail(Model):
    """A version of a workflow (the latest, unless asked for another) with its source and the
    numbers of all its versions."""

    name: str = field()
    version: int = field(schema={"minimum": 1})
    source_hash: str = field("sha256 of the source")
    created_at: float = field("Unix seconds")
    source: str = field()
    versions: list[int] = field()

    @classmethod
    def of(cls, r: WorkflowRecord, versions: Sequence[WorkflowRecord]) -> WorkflowDetail:
        return cls(
            r.name, r.version, r.source_hash, r.created_at, r.source, [v.version for v in versions]
        )


@model
class Lease(Model):
    """An execution a worker holds."""

    execution_id: str = field()
    epoch: int | None = field()
    expires_in: float = field("seconds left")


@model
class Worker(Model):
    """A connected worker."""

    id: str = field()
    name: str = field()
    capacity: int = field()
    free: int = field()
    stopping: bool = field()
    connected_at: float = field("Unix seconds")
    last_heartbeat: float | None = field("Unix seconds")
    leases: list[Lease] = field()

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> Worker:
        """A worker from the dispatcher's ``workers_info()`` entry."""
        return cls(
            info["id"],
            info["name"],
            info["capacity"],
            info["free"],
            info["stopping"],
            info["connected_at"],
            info["last_heartbeat"],
            [Lease(x["execution_id"], x["epoch"], x["expires_in"]) for x in info["leases"]],
        )


@model
class Health(Model):
    """The server is up: its dispatcher's figures."""

    status: str = field(schema={"const": "ok"})
    workers: int = field("connected workers")
    capacity: int = field("their slots, all together")
    leases: int = field("executions running now")
    queued: int = field("executions waiting for a slot")

    @classmethod
    def of(cls, stats: Any) -> Health:
        """From the dispatcher's ``statistics()``."""
        return cls("ok", stats.workers, stats.capacity, stats.leases, stats.ready)


@model
class SecretSet(Model):
    """The body of `POST /admin/secrets`."""

    SCHEMA_EXTRA: ClassVar[dict[str, Any]] = {"additionalProperties": False}

    name: str = field(schema={"minLength": 1, "maxLength": 200, "pattern": r"^\S+$"})
    value: str = field("at most 64 KiB (UTF-8)")


@model
class SecretName(Model):
    """A secret that was set or removed (never its value)."""

    name: str = field()
    removed: bool | None = field("true when removed", omit_none=True)


@model
class SecretValue(Model):
    """A secret's value (the only answer that shows one)."""

    name: str = field()
    value: str = field()


#: Every model of the API's own routes (their schemas are generated into the OpenAPI document).
MODELS: tuple[type[Model], ...] = (
    Error,
    ErrorValue,
    Event,
    Execution,
    ExecutionListItem,
    ExecutionList,
    Workflow,
    WorkflowDetail,
    Lease,
    Worker,
    Health,
    SecretSet,
    SecretName,
    SecretValue,
)
