"""Session identifiers: UUIDv7 text (time-ordered, 74 random bits)."""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["new_session_id"]


def new_session_id() -> str:
    """A fresh UUIDv7 as text: sortable by creation time, unguessable, 128 bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return str(uuid.UUID(int=value))
