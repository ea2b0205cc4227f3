"""What a session started with, at one role: the fingerprint of its code and its patches.

Kept in the session record's engine-owned ``seed`` bytes, after the 16 random bytes every seed
starts with, so no store schema changes and nothing stored before is touched: an old record's
seed is 16 bytes and has no origin (unknown). The seed is written once, with the record's first
commit, and never changes, which is the lifetime these facts need.

* ``fingerprint``: the code's (see :mod:`accompanist.language.fingerprint`) when the session
  started at this role; a sidecar that is about to replay it with other code says so at start
  (:mod:`accompanist.engine.upgrades`).
* ``patches``: the ``ch.patched`` names whose new branch the session takes, decided once by the
  initiator (the patches that it and every other role's code know) and carried to the other
  roles in the :data:`PATCHES_HEADER` of the envelopes that reach them, so every role takes the
  same branch (see :mod:`accompanist.language.patches`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import msgspec

__all__ = ["PATCHES_HEADER", "Origin", "origin_of", "patches_from_headers", "seed_with"]

PATCHES_HEADER = "accompanist-patches"
"""Envelope header: the session's patch names (comma-separated), when it has any."""

_RANDOM = 16
_MARK = b"acc:origin1"


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """What a session started with at one role (see the module docstring)."""

    fingerprint: str = ""
    patches: list[str] = []


_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Origin] = msgspec.msgpack.Decoder(Origin)


def seed_with(fingerprint: str, patches: Iterable[str] = ()) -> bytes:
    """A new session's seed: random bytes (``ch.uuid``/``ch.random`` derive from the seed), then
    the session's :class:`Origin`."""
    origin = Origin(fingerprint=fingerprint, patches=sorted(set(patches)))
    return os.urandom(_RANDOM) + _MARK + _ENCODER.encode(origin)


def origin_of(seed: bytes) -> Origin | None:
    """The origin kept in ``seed``, or None (a record made before origins were kept)."""
    if len(seed) <= _RANDOM + len(_MARK) or seed[_RANDOM : _RANDOM + len(_MARK)] != _MARK:
        return None
    try:
        return _DECODER.decode(seed[_RANDOM + len(_MARK) :])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def patches_from_headers(headers: Mapping[str, str]) -> list[str]:
    """The session's patch names an envelope carries (none when it carries none)."""
    text = headers.get(PATCHES_HEADER, "")
    return sorted({p for p in text.split(",") if p})
