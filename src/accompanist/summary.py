"""Short, safe one-line summaries of values, for the steps of a session.

Why: a step's value may be a 5 MB blob or a class the reader's process does not know (a
post-mortem reads a store without the app). A summary is bounded in length and in the work it
takes, never raises, and never runs code from the value's bytes: codec bytes are decoded by the
choreography's codec when it is known, and otherwise leniently (an unregistered class shows as
its name and fields).
"""

from __future__ import annotations

import reprlib
from typing import Any

import msgspec

from accompanist.codec import PayloadCodec

__all__ = ["summarize", "summarize_bytes"]

_LIMIT = 80
_OBJECT_EXT = 2  # the codec's extension code for a registered class (name, fields)


def _repr() -> reprlib.Repr:
    shortened = reprlib.Repr()
    shortened.maxstring = 60
    shortened.maxother = 60
    shortened.maxlong = 40
    shortened.maxlist = shortened.maxtuple = shortened.maxset = shortened.maxdict = 6
    shortened.maxlevel = 3
    return shortened


_REPR = _repr()


def summarize(value: Any, limit: int = _LIMIT) -> str:
    """``value`` as at most ``limit`` characters of its ``repr`` (never raises)."""
    try:
        text = _REPR.repr(value)
    except Exception as exc:  # a user's __repr__ may fail: show that rather than fail
        text = f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Named:
    """A registered class the reader does not know: shown by its short name and fields."""

    def __init__(self, name: str, fields: Any) -> None:
        self.name = name.rsplit(".", 1)[-1]
        self.fields = fields

    def __repr__(self) -> str:
        if isinstance(self.fields, dict):
            inner = ", ".join(f"{k}={_REPR.repr(v)}" for k, v in list(self.fields.items())[:6])
            return f"{self.name}({inner})"
        return f"{self.name}({_REPR.repr(self.fields)})"


def _lenient(codec: PayloadCodec) -> msgspec.msgpack.Decoder[Any]:
    inner = msgspec.msgpack.Decoder()

    def hook(code: int, data: memoryview) -> Any:
        if code == _OBJECT_EXT:
            name, fields = inner.decode(bytes(data))
            return _Named(str(name), fields)
        return codec._ext_hook(code, data)  # the standard types, as the codec itself rebuilds them

    return msgspec.msgpack.Decoder(ext_hook=hook)


def summarize_bytes(data: bytes | None, codec: PayloadCodec | None = None, limit: int = _LIMIT) -> str | None:
    """A summary of codec bytes: decoded by ``codec`` if given, else leniently (never raises)."""
    if data is None:
        return None
    base = codec or PayloadCodec()
    try:
        return summarize(base.decode(data), limit)
    except Exception:  # an unregistered class: decode it leniently below
        pass
    try:
        return summarize(_lenient(base).decode(data), limit)
    except Exception:
        return f"<{len(data)} bytes>"
