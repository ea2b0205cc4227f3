"""The wire format: round trips, signatures, key rotation, and total decoding."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, FrameError
from accompanist.transport.frames import (
    DEFAULT_MAX_FRAME,
    Frame,
    FrameType,
    InvalidFrameError,
    KeyRing,
    Reason,
    decode_body,
    decode_frame,
    encode_frame,
    read_length,
)

K1 = b"1" * 32
K2 = b"2" * 32


def envelope(payload: bytes = b"hello", **changes: object) -> Envelope:
    env = Envelope("s-1", "order", 1, "client", "warehouse", 1, "value", payload, {"traceparent": "00-ab"})
    return msgspec.structs.replace(env, **changes)


def env_frame(corr: int = 7, **changes: object) -> Frame:
    return Frame(FrameType.ENVELOPE, corr, envelope(**changes))


def reason_of(excinfo: pytest.ExceptionInfo[InvalidFrameError]) -> Reason:
    return excinfo.value.reason


def raw_body(*fields: object) -> bytes:
    return msgspec.msgpack.encode(list(fields))


# --- round trips ---------------------------------------------------------------------------


def test_unsigned_round_trip_keeps_every_field() -> None:
    frame = env_frame()
    decoded = decode_frame(encode_frame(frame))
    assert decoded == frame
    assert decoded.mac == b""


@pytest.mark.parametrize("frame", [Frame(FrameType.ACK, 1), Frame(FrameType.REJECT, 2, info="no such choreography")])
def test_answers_round_trip_signed(frame: Frame) -> None:
    ring = KeyRing({"k1": K1})
    decoded = decode_frame(encode_frame(frame, ring=ring), ring=ring)
    assert (decoded.type, decoded.corr, decoded.info) == (frame.type, frame.corr, frame.info)
    assert len(decoded.mac) == 32


def test_length_prefix_is_big_endian_body_length() -> None:
    data = encode_frame(env_frame())
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4


def test_signing_stamps_the_current_key_id_and_splices_the_same_bytes_as_a_full_encode() -> None:
    ring = KeyRing({"k1": K1, "k2": K2}, current="k2")
    data = encode_frame(env_frame(), ring=ring)
    decoded = decode_frame(data, ring=ring)
    assert decoded.envelope is not None and decoded.envelope.auth == "k2"
    assert data[4:] == msgspec.msgpack.encode(decoded)


def test_unsigned_encoding_clears_a_stale_key_id() -> None:
    decoded = decode_frame(encode_frame(env_frame(auth="k9")))
    assert decoded.envelope is not None and decoded.envelope.auth == ""


# --- authentication ------------------------------------------------------------------------


def test_without_a_ring_a_signed_frame_is_accepted() -> None:
    data = encode_frame(env_frame(), ring=KeyRing({"k1": K1}))
    assert decode_frame(data).corr == 7


def test_unsigned_frame_is_rejected_by_a_keyed_receiver() -> None:
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(encode_frame(env_frame()), ring=KeyRing({"k1": K1}))
    assert reason_of(excinfo) is Reason.UNSIGNED


def test_wrong_key_is_rejected() -> None:
    data = encode_frame(env_frame(), ring=KeyRing({"k1": K1}))
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(data, ring=KeyRing({"k1": K2}))
    assert reason_of(excinfo) is Reason.BAD_MAC


def test_wrong_key_on_an_ack_is_rejected() -> None:
    data = encode_frame(Frame(FrameType.ACK, 3), ring=KeyRing({"k1": K1}))
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(data, ring=KeyRing({"k1": K2}))
    assert reason_of(excinfo) is Reason.BAD_MAC


def test_unknown_key_id_is_rejected() -> None:
    data = encode_frame(env_frame(), ring=KeyRing({"k7": K1}, current="k7"))
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(data, ring=KeyRing({"k1": K1}))
    assert reason_of(excinfo) is Reason.UNKNOWN_KEY


def test_tampering_with_any_byte_of_a_signed_frame_is_detected() -> None:
    ring = KeyRing({"k1": K1})
    data = encode_frame(env_frame(), ring=ring)
    for i in range(4, len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(FrameError):
            decode_frame(bytes(tampered), ring=ring)


def test_swapping_the_key_id_is_detected() -> None:
    ring = KeyRing({"k1": K1, "k2": K2}, current="k1")
    frame = decode_frame(encode_frame(env_frame(), ring=ring), ring=ring)
    assert frame.envelope is not None
    forged = msgspec.structs.replace(frame, envelope=msgspec.structs.replace(frame.envelope, auth="k2"))
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_body(msgspec.msgpack.encode(forged), ring=ring)
    assert reason_of(excinfo) is Reason.BAD_MAC


def test_short_mac_is_rejected() -> None:
    body = msgspec.msgpack.encode(Frame(FrameType.ACK, 1, mac=b"x" * 5))
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_body(body, ring=KeyRing({"k1": K1}))
    assert reason_of(excinfo) is Reason.BAD_MAC


def test_key_rotation_accepts_the_previous_key_and_signs_with_the_new_one() -> None:
    old_sender = KeyRing({"k1": K1})
    rotated = KeyRing({"k1": K1, "k2": K2}, current="k2")
    assert decode_frame(encode_frame(env_frame(), ring=old_sender), ring=rotated).corr == 7
    assert decode_frame(encode_frame(Frame(FrameType.ACK, 1), ring=rotated), ring=rotated).corr == 1
    # A receiver that has not learned k2 yet refuses frames signed with it, by name.
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(encode_frame(env_frame(), ring=rotated), ring=old_sender)
    assert reason_of(excinfo) is Reason.UNKNOWN_KEY


def test_answers_can_be_signed_with_the_key_of_the_envelope_they_answer() -> None:
    rotated = KeyRing({"k1": K1, "k2": K2}, current="k2")
    not_yet_rotated = KeyRing({"k1": K1})
    ack = encode_frame(Frame(FrameType.ACK, 1), ring=rotated, key_id="k1")
    assert decode_frame(ack, ring=not_yet_rotated).type == FrameType.ACK
    # A key id the ring does not hold falls back to the current key.
    fallback = encode_frame(env_frame(), ring=rotated, key_id="k9")
    decoded = decode_frame(fallback, ring=rotated)
    assert decoded.envelope is not None and decoded.envelope.auth == "k2"


@pytest.mark.parametrize(
    ("keys", "current", "match"),
    [({}, "k1", "empty"), ({"k1": K1}, "k2", "not in the key ring"), ({"k1": b"short"}, "k1", "at least 16")],
)
def test_bad_key_rings_are_config_errors(keys: dict[str, bytes], current: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        KeyRing(keys, current)


# --- total decoding ------------------------------------------------------------------------


def test_oversized_is_refused_from_the_prefix_alone() -> None:
    with pytest.raises(InvalidFrameError) as excinfo:
        read_length(struct.pack(">I", DEFAULT_MAX_FRAME + 1))
    assert reason_of(excinfo) is Reason.OVERSIZED
    assert read_length(struct.pack(">I", DEFAULT_MAX_FRAME)) == DEFAULT_MAX_FRAME


def test_max_frame_is_configurable_on_both_sides() -> None:
    big = env_frame(payload=b"x" * 2000)
    with pytest.raises(InvalidFrameError) as excinfo:
        encode_frame(big, max_frame=1000)
    assert reason_of(excinfo) is Reason.OVERSIZED
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(encode_frame(big), max_frame=1000)
    assert reason_of(excinfo) is Reason.OVERSIZED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Reason.TRUNCATED),
        (b"\x00\x00", Reason.TRUNCATED),
        (b"\x00\x00\x00\x00", Reason.EMPTY),
        (b"\x00\x00\x00\x10abc", Reason.TRUNCATED),
        (b"\x00\x00\x00\x01\xc1", Reason.MALFORMED),
        (b"\x00\x00\x00\x02\x95\xa5", Reason.MALFORMED),
        (b"\x00\x00\x00\x04\x92\xa1\xff\x01", Reason.MALFORMED),
    ],
)
def test_broken_framing(data: bytes, reason: Reason) -> None:
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(data)
    assert reason_of(excinfo) is reason


def test_trailing_bytes_after_a_frame_are_refused() -> None:
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_frame(encode_frame(Frame(FrameType.ACK, 1)) + b"x")
    assert reason_of(excinfo) is Reason.INVALID


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (raw_body("bogus", 1, None, "", b""), Reason.UNKNOWN_TYPE),
        (raw_body("ack", "one", None, "", b""), Reason.INVALID),
        (raw_body("ack", 1, None, "", "not-bytes"), Reason.INVALID),
        (raw_body("ack", 1, None, "", b"", "extra"), Reason.INVALID),
        (raw_body("ack"), Reason.INVALID),
        (raw_body("envelope", 1, None, "", b""), Reason.INVALID),
        (raw_body("ack", 1, ["s", "c", 1, "a", "b", 1, "value"], "", b""), Reason.INVALID),
        (raw_body("envelope", 1, ["s", "c", "v1", "a", "b", 1, "value"], "", b""), Reason.INVALID),
        (msgspec.msgpack.encode({"type": "ack", "corr": 1}), Reason.INVALID),
        (msgspec.msgpack.encode(42), Reason.INVALID),
        (b"\xc1", Reason.MALFORMED),
    ],
)
def test_bodies_that_are_not_frames(body: bytes, reason: Reason) -> None:
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_body(body)
    assert reason_of(excinfo) is reason
    assert str(excinfo.value).startswith(reason.value)


def test_invalid_frame_error_is_a_frame_error_with_a_readable_message() -> None:
    with pytest.raises(FrameError, match="unknown frame type 'bogus'"):
        decode_body(raw_body("bogus", 1, None, "", b""))


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=256), signed=st.booleans())
def test_random_bytes_only_ever_raise_frame_error(data: bytes, signed: bool) -> None:
    ring = KeyRing({"k1": K1}) if signed else None
    for attempt in (lambda: decode_frame(data, ring=ring), lambda: decode_body(data, ring=ring)):
        try:
            frame = attempt()
        except FrameError:
            continue
        assert isinstance(frame, Frame)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300),
    cut=st.integers(min_value=0, max_value=400),
    flip=st.integers(min_value=0, max_value=255),
)
def test_mutated_valid_frames_only_ever_raise_frame_error(data: bytes, cut: int, flip: int) -> None:
    ring = KeyRing({"k1": K1})
    valid = bytearray(encode_frame(env_frame(payload=data), ring=ring))
    valid[cut % len(valid)] ^= flip
    for candidate in (bytes(valid), bytes(valid[: cut % len(valid)])):
        for keyring in (ring, None):
            with contextlib.suppress(FrameError):
                decode_frame(candidate, ring=keyring)


@pytest.mark.parametrize("secret", [b"s" * 16, b"s" * 64, b"long" * 40])
def test_ring_mac_is_standard_hmac_sha256(secret: bytes) -> None:
    ring = KeyRing({"k1": secret})
    for data in (b"", b"x", b"frame" * 1000):
        assert ring.mac("k1", data) == hmac.new(secret, data, hashlib.sha256).digest()


def test_a_mac_in_a_non_canonical_encoding_is_refused() -> None:
    ring = KeyRing({"k1": K1})
    body = encode_frame(Frame(FrameType.ACK, 1), ring=ring)[4:]
    assert body[-34:-32] == b"\xc4\x20"
    bin16 = body[:-34] + b"\xc5\x00\x20" + body[-32:]  # same digest, as bin16
    assert decode_body(bin16).mac == body[-32:]
    with pytest.raises(InvalidFrameError) as excinfo:
        decode_body(bin16, ring=ring)
    assert reason_of(excinfo) is Reason.BAD_MAC
