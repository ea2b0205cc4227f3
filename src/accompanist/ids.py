"""Session identifiers: UUIDv7 text (time-ordered, 74 random bits), and what an id may be."""

from __future__ import annotations

import os
import re
import time

__all__ = ["SESSION_ID_RULE", "new_session_id", "valid_session_id"]

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
SESSION_ID_RULE = "1-128 letters, digits and '._:-', starting with a letter or digit"


def new_session_id() -> str:
    """A fresh UUIDv7 as text: sortable by creation time, unguessable, 128 bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def valid_session_id(value: object) -> bool:
    """Whether ``value`` may name a session (what an API caller may choose, and what a peer's
    envelope must carry): see :data:`SESSION_ID_RULE`."""
    return isinstance(value, str) and _SESSION_ID.match(value) is not None
