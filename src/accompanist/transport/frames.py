"""The wire format between sidecars: length-prefixed, optionally signed msgpack frames.

A frame on the wire is a 4-byte big-endian body length followed by the body, the msgpack
encoding of a :class:`Frame`. The length comes first so a reader can refuse an oversized frame
*before* reading (or allocating) its body.

Authentication is an HMAC-SHA256 over the body as sent but with ``mac=b""``, keyed by a shared
secret from a :class:`KeyRing`. An envelope frame names its key in ``Envelope.auth``, which the
MAC covers, so keys can rotate: a sender signs with the ring's current key and a receiver
accepts any key its ring still holds. Ack and reject frames carry no envelope: they are signed
with the key of the envelope they answer and verified against each key of the ring, current
first (rings hold one or two keys, so this is cheap).

Every decoder here is total: whatever the bytes, it returns a :class:`Frame` or raises
:class:`InvalidFrameError` (a :class:`~accompanist.errors.FrameError`) whose ``reason`` is a
short stable word suitable as a metrics label. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from collections.abc import Mapping
from typing import Final

import msgspec

from accompanist.envelope import Envelope
from accompanist.errors import ConfigError, EnvelopeRejectedError, FrameError

__all__ = [
    "DEFAULT_KEY_ID",
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAC_SIZE",
    "MIN_KEY_BYTES",
    "Frame",
    "FrameType",
    "InvalidFrameError",
    "KeyRing",
    "Reason",
    "decode_body",
    "decode_frame",
    "encode_frame",
    "read_length",
    "readable_corr",
    "reject_info",
    "rejected",
]

HEADER_SIZE: Final = 4
MAC_SIZE: Final = 32
DEFAULT_MAX_FRAME: Final = 4 * 1024 * 1024
DEFAULT_KEY_ID: Final = "k1"
MIN_KEY_BYTES: Final = 16
_HEADER: Final = struct.Struct(">I")
_EMPTY_BIN: Final = b"\xc4\x00"  # msgpack bin8 of length 0
_MAC_HEADER: Final = b"\xc4\x20"  # msgpack bin8 of length 32

# Encoders and decoders hold no state between calls; sharing them avoids rebuilding their
# type-specialised tables on every frame.
_ENCODER: Final = msgspec.msgpack.Encoder()


class FrameType(enum.StrEnum):
    """What a frame is for."""

    ENVELOPE = "envelope"  # carries one envelope; the receiver answers ACK or REJECT
    ACK = "ack"  # the receiver's handler accepted the envelope with this corr id
    REJECT = "reject"  # the receiver refused it; ``info`` says why


class Reason(enum.StrEnum):
    """Why a frame was rejected; the keys of ``TransportStats.rejected``."""

    TRUNCATED = "truncated"  # the stream ended inside a frame
    OVERSIZED = "oversized"  # the length prefix exceeds the configured maximum
    EMPTY = "empty"  # a zero length prefix
    MALFORMED = "malformed"  # the body is not msgpack
    INVALID = "invalid"  # msgpack, but not a frame (wrong shape, wrong field types)
    UNKNOWN_TYPE = "unknown-type"  # a frame type this version does not know
    UNSIGNED = "unsigned"  # no MAC, but this side requires one
    UNKNOWN_KEY = "unknown-key"  # signed with a key id that is not in the ring
    BAD_MAC = "bad-mac"  # the MAC does not match
    WRONG_DST = "wrong-dst"  # the envelope is addressed to another role
    WRONG_SRC = "wrong-src"  # the envelope claims a role its connection's certificate does not name
    UNEXPECTED = "unexpected"  # a frame type that makes no sense in this direction
    HANDLER = "handler"  # the handler raised


class InvalidFrameError(FrameError):
    """One frame was refused; ``reason`` says why in one stable word.

    Attributes:
        reason: a :class:`Reason` value, used as the ``stats.rejected`` key and in logs.
        detail: what exactly was wrong, for people.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


_FRAME_TYPES: Final = frozenset(FrameType)


class Frame(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One unit on the wire.

    ``type`` is kept a plain string in the schema so an unknown type is reported as such
    (``unknown-type``) instead of as a generic validation error.

    Attributes:
        type: a :class:`FrameType` value.
        corr: correlation id chosen by the sender of an envelope frame, echoed in its answer;
            0 on an envelope whose sender does not wait (at most once): it gets no answer.
        envelope: the envelope (envelope frames only).
        info: why the envelope was rejected (reject frames only).
        mac: HMAC-SHA256 of the frame encoded with ``mac=b""`` (empty when unsigned).
    """

    type: str
    corr: int
    envelope: Envelope | None = None
    info: str = ""
    mac: bytes = b""


_DECODER: Final[msgspec.msgpack.Decoder[Frame]] = msgspec.msgpack.Decoder(Frame)


class KeyRing:
    """Shared HMAC secrets by key id: sign with ``current``, accept any key in the ring.

    To rotate without dropping a frame: add the new key to every sidecar's ring, then make
    it current everywhere, then remove the old one. Answers are signed with the key of the
    envelope they answer, so a sidecar that switched early still talks to one that has not.

    Args:
        keys: key id -> secret (at least 16 bytes each).
        current: the id of the key new frames are signed with.

    Raises:
        ConfigError: the ring is empty, ``current`` is not in it, or a key is too short.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str = DEFAULT_KEY_ID) -> None:
        if not keys:
            raise ConfigError("the HMAC key ring is empty; pass keys=None to disable signing")
        if current not in keys:
            raise ConfigError(f"current key id '{current}' is not in the key ring {sorted(keys)}")
        for key_id, secret in keys.items():
            if not isinstance(secret, bytes) or len(secret) < MIN_KEY_BYTES:
                raise ConfigError(f"HMAC key '{key_id}' must be bytes of at least {MIN_KEY_BYTES} bytes")
        self.keys: dict[str, bytes] = dict(keys)
        self.current = current
        # HMAC per RFC 2104 with the padded-key hash states computed once per key: copying
        # them is C-speed, where hmac.new() re-derives them in Python on every frame.
        self._pads = {key_id: _pads(secret) for key_id, secret in self.keys.items()}
        # Try the current key first when a frame does not name its key.
        self.order = [current, *(k for k in self.keys if k != current)]

    def mac(self, key_id: str, data: bytes) -> bytes:
        """The HMAC-SHA256 of ``data`` under key ``key_id``."""
        inner_pad, outer_pad = self._pads[key_id]
        inner = inner_pad.copy()
        inner.update(data)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return outer.digest()


def _pads(secret: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    block = hashlib.sha256().block_size
    key = hashlib.sha256(secret).digest() if len(secret) > block else secret
    key = key.ljust(block, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key))


def _sign(frame: Frame, ring: KeyRing | None, key_id: str | None) -> bytes:
    """Encode ``frame``; with a ring, stamp the key id on its envelope and append the MAC."""
    if ring is not None and (key_id is None or key_id not in ring.keys):
        key_id = ring.current
    env = frame.envelope
    want_auth = key_id if ring is not None and key_id is not None else ""
    if env is not None and env.auth != want_auth:
        # The key id is inside the signed bytes, so a forger cannot swap it for a weaker key.
        frame = msgspec.structs.replace(frame, envelope=msgspec.structs.replace(env, auth=want_auth))
    if frame.mac:
        frame = msgspec.structs.replace(frame, mac=b"")
    unsigned = _ENCODER.encode(frame)
    if ring is None:
        return unsigned
    assert key_id is not None
    mac = ring.mac(key_id, unsigned)
    # ``mac`` is the last field, encoded as an empty bin (c4 00); splicing the digest in
    # (c4 20 + 32 bytes) equals a second full encode without paying for it.
    if unsigned.endswith(_EMPTY_BIN):
        return unsigned[:-2] + _MAC_HEADER + mac
    return _ENCODER.encode(msgspec.structs.replace(frame, mac=mac))  # pragma: no cover


def encode_frame(
    frame: Frame, *, ring: KeyRing | None = None, max_frame: int = DEFAULT_MAX_FRAME, key_id: str | None = None
) -> bytes:
    """Encode ``frame`` for the wire: length prefix + body, signed when ``ring`` is given.

    Args:
        frame: the frame; its ``mac`` is ignored and recomputed.
        ring: the sender's key ring, or None to send unsigned.
        key_id: sign with this key of the ring instead of the current one (answers use the
            key of the envelope they answer); ignored if the ring does not hold it.
        max_frame: the largest body allowed, so the sender learns before the receiver refuses.

    Raises:
        InvalidFrameError: ``oversized`` when the body exceeds ``max_frame``.
    """
    body = _sign(frame, ring, key_id)
    if len(body) > max_frame:
        raise InvalidFrameError(Reason.OVERSIZED, f"frame body of {len(body)} bytes exceeds max_frame {max_frame}")
    return _HEADER.pack(len(body)) + body


def read_length(header: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Parse a length prefix and check it before any of the body is read.

    Raises:
        InvalidFrameError: ``truncated`` (fewer than 4 bytes), ``empty`` or ``oversized``.
    """
    if len(header) < HEADER_SIZE:
        raise InvalidFrameError(Reason.TRUNCATED, f"length prefix has {len(header)} of {HEADER_SIZE} bytes")
    (length,) = _HEADER.unpack_from(header)
    if length == 0:
        raise InvalidFrameError(Reason.EMPTY, "zero-length frame")
    if length > max_frame:
        raise InvalidFrameError(Reason.OVERSIZED, f"length prefix {length} exceeds max_frame {max_frame}")
    return int(length)


def _verify(frame: Frame, body: bytes, ring: KeyRing) -> None:
    if not frame.mac:
        raise InvalidFrameError(Reason.UNSIGNED, f"unsigned {frame.type} frame, but this side requires HMAC")
    # The MAC is the last field; as a 32-byte bin8 (c4 20 + digest) it is the last 34 bytes of
    # the body. Swapping in an empty bin (c4 00) yields exactly the bytes the sender signed,
    # without re-encoding (which would also demand a byte-identical encoder on both sides).
    if len(frame.mac) != MAC_SIZE:
        raise InvalidFrameError(Reason.BAD_MAC, f"MAC has {len(frame.mac)} bytes, expected {MAC_SIZE}")
    if body[-MAC_SIZE - 2 : -MAC_SIZE] != _MAC_HEADER:
        raise InvalidFrameError(Reason.BAD_MAC, "MAC is not the last field encoded as a 32-byte msgpack bin8")
    signed = body[: -MAC_SIZE - 2] + _EMPTY_BIN
    if frame.envelope is not None:
        key_id = frame.envelope.auth
        if key_id not in ring.keys:
            raise InvalidFrameError(Reason.UNKNOWN_KEY, f"signed with key id '{key_id}', not in the key ring")
        candidates = [key_id]
    else:
        candidates = ring.order
    for key_id in candidates:
        if hmac.compare_digest(ring.mac(key_id, signed), frame.mac):
            return
    raise InvalidFrameError(Reason.BAD_MAC, f"{frame.type} frame MAC does not verify (wrong shared key?)")


def decode_body(body: bytes, *, ring: KeyRing | None = None) -> Frame:
    """Decode and authenticate one frame body (without its length prefix).

    Without a ring, frames are accepted unsigned and a MAC, if present, is not checked.

    Raises:
        InvalidFrameError: for any body that is not a well-formed, well-signed frame.
    """
    if not body:
        raise InvalidFrameError(Reason.EMPTY, "zero-length frame")
    try:
        frame = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidFrameError(Reason.INVALID, f"not a frame: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports bad UTF-8 in a str as UnicodeDecodeError, not as DecodeError.
        raise InvalidFrameError(Reason.MALFORMED, f"body is not msgpack: {exc}") from None
    except Exception as exc:  # pragma: no cover - the decoder must be total whatever msgspec raises
        raise InvalidFrameError(Reason.MALFORMED, f"body is not decodable: {type(exc).__name__}: {exc}") from None
    if frame.type not in _FRAME_TYPES:
        raise InvalidFrameError(Reason.UNKNOWN_TYPE, f"unknown frame type {frame.type[:40]!r}")
    if (frame.type == FrameType.ENVELOPE) != (frame.envelope is not None):
        what = "without an envelope" if frame.envelope is None else "with an envelope"
        raise InvalidFrameError(Reason.INVALID, f"{frame.type} frame {what}")
    if ring is not None:
        _verify(frame, body, ring)
    return frame


def decode_frame(data: bytes, *, ring: KeyRing | None = None, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode exactly one complete frame (length prefix + body).

    Raises:
        InvalidFrameError: ``truncated`` if ``data`` is shorter than its prefix says,
            ``invalid`` if bytes follow the frame, or any reason of :func:`decode_body`.
    """
    length = read_length(data[:HEADER_SIZE], max_frame=max_frame)
    body = data[HEADER_SIZE:]
    if len(body) < length:
        raise InvalidFrameError(Reason.TRUNCATED, f"frame body has {len(body)} of {length} bytes")
    if len(body) > length:
        raise InvalidFrameError(Reason.INVALID, f"{len(body) - length} bytes after the frame")
    return decode_body(body, ring=ring)


def readable_corr(body: bytes) -> int | None:
    """The corr id of an envelope frame that failed authentication, if it can be read at all
    (the sender is then told why, unless it waits for no answer)."""
    try:
        frame = decode_body(body)
    except InvalidFrameError:
        return None
    return frame.corr if frame.type == FrameType.ENVELOPE else None


_REJECT_CODE: Final = re.compile(r"^\[([a-z][a-z0-9-]{0,39})(!?)\] ")


def reject_info(exc: BaseException) -> str:
    """The ``info`` of a reject frame for an envelope the handler refused with ``exc``.

    An :class:`EnvelopeRejectedError` puts its code first, ``[code] why`` (``[code!] why``
    when the refusal is for good), so the sender can tell a refusal that may pass from one
    that never will.
    """
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EnvelopeRejectedError) and exc.code:
        return f"[{exc.code}{'!' if exc.permanent else ''}] {text}"
    return text


def rejected(where: str, info: str, *, authenticated: bool) -> EnvelopeRejectedError:
    """The error a sender raises for a reject frame with ``info`` from ``where``.

    Only an authenticated reject can say "for good": an unverifiable one may come from anyone,
    and must never stop retries.
    """
    match = _REJECT_CODE.match(info)
    code, permanent = (match.group(1), match.group(2) == "!") if match else ("", False)
    return EnvelopeRejectedError(
        f"{where} rejected the envelope: {info}", code=code, permanent=permanent and authenticated
    )
