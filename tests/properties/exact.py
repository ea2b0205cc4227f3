"""Exact equality for codec round trips: equal values are not enough, types must match too."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any


def same(a: Any, b: Any) -> bool:
    """Equal, of the very same types all the way down, with the same offsets and digits.

    ``1 == True == 1.0`` and ``Decimal("1.0") == Decimal("1")``, so plain ``==`` would let a
    codec that changes types or drops precision pass.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        return a == b and all(type(x) is type(next(y for y in b if y == x)) for x in a)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return bool(a == b) and a.utcoffset() == b.utcoffset() and a.isoformat() == b.isoformat()
    return bool(a == b)
