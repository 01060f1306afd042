"""Masking secret values in what is recorded (issue 9, item 13): ``redact_value`` on Python
values, ``redact_encoded`` on codec bytes (no class built)."""

from __future__ import annotations

import dataclasses
import timeit
from collections import namedtuple

import attrs
import pytest

from flux.runtime import codec
from flux.runtime.errors import TaskFailedError
from flux.runtime.secrets import MASK, holds_secret, redact_encoded, redact_value

SECRET = "tok-8d7f6e5d"


class Denied(Exception):
    def __init__(self, message: str, token: str):
        super().__init__(message)
        self.token = token


_STASH: list[str] = []


class Odd(Exception):
    """Its text comes from nowhere redaction can reach."""

    def __init__(self, secret: str):
        super().__init__()
        _STASH.append(secret)

    def __str__(self) -> str:
        return f"odd {_STASH[-1]}"


@attrs.frozen
class Creds:
    user: str
    token: str


@dataclasses.dataclass
class Box:
    items: list
    label: str = "x"


Pair = namedtuple("Pair", "a b")


def test_nothing_matching_returns_the_very_same_value():
    values = [
        None,
        1,
        "plain",
        b"bytes",
        {"a": [1, (2, 3), {"b": "c"}]},
        Creds("u", "t"),
        Box([1, 2]),
        ValueError("fine"),
    ]
    for value in values:
        assert redact_value(value, [SECRET]) is value
    assert redact_value({"a": SECRET}, []) == {"a": SECRET}
    assert redact_value({"a": SECRET}, [""]) == {"a": SECRET}


def test_every_occurrence_inside_strings_and_bytes_is_masked_recursively():
    value = {
        SECRET: [f"Bearer {SECRET}", (SECRET.encode(), 3), {SECRET, "other"}],
        "creds": Creds("me", SECRET),
        "box": Box([f"{SECRET}{SECRET}"]),
        "pair": Pair(SECRET, 1),
        "frozen": frozenset({SECRET}),
    }
    out = redact_value(value, [SECRET])
    assert SECRET not in repr(out) and SECRET.encode() not in codec.encode(out)
    assert out[MASK] == [f"Bearer {MASK}", (MASK.encode(), 3), {MASK, "other"}]
    assert out["creds"] == Creds("me", MASK) and isinstance(out["creds"], Creds)
    assert out["box"].items == [MASK + MASK] and isinstance(out["box"], Box)
    assert out["pair"] == Pair(MASK, 1) and type(out["pair"]) is Pair
    assert value["creds"].token == SECRET  # the original is untouched


def test_longer_secrets_are_masked_whole():
    assert redact_value("abc-abcdef", ["abc", "abcdef"]) == f"{MASK}-{MASK}"


def test_exceptions_keep_their_type_and_lose_the_secret_everywhere():
    try:
        try:
            raise KeyError(SECRET)
        except KeyError as inner:
            raise Denied(f"login failed with {SECRET}", SECRET) from inner
    except Denied as exc:
        error = exc
    error.add_note(f"note: {SECRET}")
    out = redact_value(error, [SECRET])
    assert type(out) is Denied and out is not error
    assert str(out) == f"login failed with {MASK}" and out.token == MASK
    assert out.__notes__ == [f"note: {MASK}"]
    assert isinstance(out.__cause__, KeyError) and SECRET not in str(out.__cause__)
    assert out.__traceback__ is error.__traceback__
    assert SECRET.encode() not in codec.encode(out)
    assert str(error) == f"login failed with {SECRET}"  # the original is untouched


def test_an_exception_whose_text_cannot_be_rebuilt_becomes_a_stand_in():
    out = redact_value(Odd(SECRET), [SECRET])
    assert isinstance(out, TaskFailedError) and SECRET not in str(out)
    assert out.type_name.endswith("Odd") and out.message == f"odd {MASK}"


def test_cycles_do_not_loop():
    value: list = [SECRET]
    value.append(value)
    out = redact_value(value, [SECRET])
    assert out[0] == MASK


@pytest.mark.parametrize(
    "value",
    [
        {"k": SECRET, "n": [1, SECRET * 2], "t": (SECRET,)},
        Creds("u", SECRET),
        Denied(f"bad {SECRET}", SECRET),
        ["x" * 1000 + SECRET + "y" * 1000],
    ],
    ids=["dict", "attrs", "exception", "long"],
)
def test_redact_encoded_masks_codec_bytes_without_building_classes(value):
    data = codec.encode(value)
    assert holds_secret(data, [SECRET])
    out = redact_encoded(data, [SECRET])
    assert SECRET.encode() not in out and not holds_secret(out, [SECRET])
    decoded = codec.decode(out, plain=True)
    assert MASK in repr(decoded) or MASK in str(decoded)


def test_redact_encoded_leaves_clean_bytes_alone_and_masks_what_does_not_parse():
    clean = codec.encode({"a": 1})
    assert redact_encoded(clean, [SECRET]) is clean
    assert redact_encoded(None, [SECRET]) is None
    broken = b"\xc1" + SECRET.encode()
    assert SECRET.encode() not in redact_encoded(broken, [SECRET])


def test_clean_values_cost_little():
    value = {"rows": [{"id": i, "name": f"row {i}", "tags": ["a", "b"]} for i in range(100)]}
    seconds = min(timeit.repeat(lambda: redact_value(value, [SECRET]), number=20, repeat=3)) / 20
    assert seconds < 0.005, seconds  # a walk, no copy: well under a millisecond here
    data = codec.encode(value)
    seconds = min(timeit.repeat(lambda: redact_encoded(data, [SECRET]), number=200, repeat=3))
    assert seconds / 200 < 0.0005  # a substring test
