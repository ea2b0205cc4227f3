"""The payload codec: exact round trips, registered types only, total decoding."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import msgspec
import pytest
from tests.properties.exact import same

from accompanist import CodecError, PayloadCodec


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Order:
    item: str
    at: Point
    color: Color
    tags: frozenset[str]
    cached: int = dataclasses.field(init=False, default=0)


class Money(msgspec.Struct, frozen=True):
    amount: decimal.Decimal
    currency: str


class Stray:
    """Not registered, not registrable."""


UTC_PLUS_5 = dt.timezone(dt.timedelta(hours=5, minutes=30))
VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**200),
    1.5,
    float("inf"),
    "text ✓",
    b"\x00\xff",
    bytearray(b"abc"),
    [],
    [1, "a", None],
    {},
    {"a": 1, 2: "b", None: [], 1.5: True},
    (),
    (1, (2, (3,))),
    {1, 2, 3},
    frozenset({"a", "b"}),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("3.14159265358979323846264338327950288"),
    decimal.Decimal("-0.00"),
    decimal.Decimal("1E+10"),
    dt.datetime(2024, 2, 29, 12, 30, 45, 123456),
    dt.datetime(2024, 2, 29, 12, 30, tzinfo=dt.UTC),
    dt.datetime(2024, 2, 29, 12, 30, tzinfo=UTC_PLUS_5),
    dt.date(1999, 12, 31),
    dt.time(23, 59, 59, 999999),
    dt.time(8, 0, tzinfo=dt.UTC),
    # UTC offsets with microseconds, which datetime.fromisoformat would drop
    dt.time(0, 0, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
    dt.datetime(2024, 1, 1, 3, 4, 5, 6, tzinfo=dt.timezone(-dt.timedelta(hours=3, microseconds=7))),
    dt.timedelta(days=-3, seconds=5, microseconds=7),
    {"nested": [(1, {2: frozenset({(3, "x")})}), {"when": dt.date(2020, 1, 1), "ids": {uuid.UUID(int=7)}}]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip_is_exact(value: Any) -> None:
    out = PayloadCodec().roundtrip(value)
    assert same(out, value), (out, value)  # Decimals keep sign and exponent, times their offset


def test_registered_types_round_trip() -> None:
    codec = PayloadCodec([Point, Order, Color, Level, Money])
    value = {
        "order": Order("book", Point(1, -2), Color.BLUE, frozenset({"gift"})),
        "level": Level.HIGH,
        "price": Money(decimal.Decimal("29.99"), "EUR"),
        "points": (Point(0, 0),),
    }
    out = codec.roundtrip(value)
    assert out == value
    assert type(out["order"].at) is Point and out["order"].color is Color.BLUE
    assert out["level"] is Level.HIGH and type(out["price"].amount) is decimal.Decimal
    assert set(codec.types) == {Point, Order, Color, Level, Money}


def test_pydantic_models_round_trip() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Customer(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str
        since: dt.date
        tags: list[str] = pydantic.Field(default_factory=list)

    codec = PayloadCodec([Customer])
    value = Customer(name="Ada", since=dt.date(1843, 1, 1), tags=["vip"])
    out = codec.roundtrip([value])
    assert out == [value] and type(out[0]) is Customer


def test_unregistered_class_names_type_and_path() -> None:
    with pytest.raises(CodecError) as info:
        PayloadCodec().encode({"order": [1, Stray()]})
    message = str(info.value)
    assert f"{__name__}.Stray" in message
    assert "value['order'][1]" in message


def test_unregistered_dataclass_gets_a_hint() -> None:
    with pytest.raises(CodecError, match=r"at value\.at.*types=\[Point\]"):
        PayloadCodec([Order]).encode(Order("book", Point(1, 2), Color.RED, frozenset()))


@pytest.mark.parametrize("bad", [object(), lambda: 1, {(1, 2): "tuple key"}, {Color.RED: 1}])
def test_unsendable_values(bad: Any) -> None:
    with pytest.raises(CodecError):
        PayloadCodec([Color]).encode(bad)


def test_only_payload_kinds_can_be_registered() -> None:
    with pytest.raises(CodecError, match="cannot register"):
        PayloadCodec([Stray])


def test_two_types_with_one_name_are_refused() -> None:
    def make() -> type:
        @dataclasses.dataclass
        class Twin:
            x: int

        return Twin

    with pytest.raises(CodecError, match="two payload types are named"):
        PayloadCodec([make(), make()])


def test_nesting_is_bounded() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(CodecError, match="nested deeper than 64"):
        PayloadCodec().encode(deep)


def test_unknown_registered_name_at_the_receiver() -> None:
    data = PayloadCodec([Point]).encode({"p": Point(1, 2)})
    with pytest.raises(CodecError, match=f"'{__name__}.Point', which this choreography did not register"):
        PayloadCodec().decode(data)


def test_rebuild_failure_is_a_codec_error() -> None:
    # A receiver running an older version of Point (one field fewer) under the same name.
    old_point = dataclasses.make_dataclass("Point", [("x", int)])
    old_point.__module__ = __name__
    data = PayloadCodec([Point]).encode(Point(1, 2))
    with pytest.raises(CodecError, match="cannot rebuild Point from payload.*unexpected keyword argument 'y'"):
        PayloadCodec([old_point]).decode(data)


def _ext(code: int, raw: bytes) -> bytes:
    return msgspec.msgpack.encode(msgspec.msgpack.Ext(code, raw))


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array of two with one item
        b"",
        _ext(99, b""),  # unknown extension
        _ext(1, b"\xc1"),  # tuple with garbage inside
        _ext(3, b"short"),  # UUID of the wrong length
        _ext(4, b"not a number"),  # Decimal
        _ext(7, b"yesterday"),  # datetime
        _ext(13, msgspec.msgpack.encode(["2024-01-01T00:00:00", 2, 0, 1])),  # offset beyond a day
        _ext(14, msgspec.msgpack.encode(["noon", 0, 0, 1])),  # time with offset
        _ext(10, msgspec.msgpack.encode([10**9, 0, 0])),  # timedelta out of range
        _ext(10, msgspec.msgpack.encode("x")),
        _ext(2, msgspec.msgpack.encode(42)),  # object without name and fields
        _ext(5, msgspec.msgpack.encode([[1]])),  # set of an unhashable
    ],
)
def test_garbage_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        PayloadCodec([Point]).decode(data)
