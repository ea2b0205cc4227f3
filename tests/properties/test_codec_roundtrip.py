"""Properties of the payload codec: any supported value comes back exactly, and any bytes at
all either decode or raise ``CodecError`` (never another exception)."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from accompanist import CodecError, PayloadCodec
from tests.properties.exact import same

CODEC = PayloadCodec()

timezones = (
    st.none() | st.just(dt.UTC) | st.builds(dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23)))
)
hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.datetimes(timezones=timezones)
    | st.dates()
    | st.times(timezones=timezones)
    | st.timedeltas()
)
leaves = hashable_leaves | st.binary(max_size=20).map(bytearray)
keys = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=10)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    hashable_tuples = st.lists(hashable_leaves, max_size=3).map(tuple)
    return (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
        | st.sets(hashable_leaves | hashable_tuples, max_size=4)
        | st.frozensets(hashable_leaves | hashable_tuples, max_size=4)
    )


values = st.recursive(leaves, containers, max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_every_supported_value_round_trips_exactly(value: Any) -> None:
    assert same(CODEC.roundtrip(value), value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        CODEC.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(-2, 16), st.binary(max_size=40) | values.map(CODEC.encode))
def test_any_extension_record_decodes_or_raises_codec_error(code: int, payload: bytes) -> None:
    # Well-formed msgpack around a payload meant for another extension code, or random bytes.
    with contextlib.suppress(CodecError):
        CODEC.decode(msgspec.msgpack.encode(msgspec.msgpack.Ext(code, payload)))
