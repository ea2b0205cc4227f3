"""Reading the API's input: the JSON body, its fields and the query parameters, each failure
an :class:`ApiError` naming the field."""

from __future__ import annotations

import json
import math
import typing
from typing import Any

import msgspec
from aiohttp import web

from accompanist.language.choreography import Choreography
from accompanist.language.located import Located
from accompanist.sidecar.api_errors import ApiError

__all__ = ["MAX_DEPTH", "convert_args", "field", "flag", "json_object", "timeout_of", "too_deep"]

#: Deepest nesting of lists and objects accepted in a request body (400 ``too-deep`` beyond).
MAX_DEPTH = 64


def convert_args(choreography: Choreography, args: list[Any]) -> list[Any]:
    """Turn JSON arguments into the types the choreography declares (``Located[Order]``).

    Raises:
        ApiError: an argument does not fit its declared, registered type (``args[i]`` named).
    """
    hints = choreography.argument_types()
    if not hints:
        return args
    params = choreography.parameters
    registered = set(choreography.codec.types)
    out = []
    for index, (name, value) in enumerate(zip(params, args, strict=True)):
        target = hints.get(name)
        inner = typing.get_args(target)[0] if typing.get_origin(target) is Located and typing.get_args(target) else None
        if isinstance(inner, type) and inner in registered:
            try:
                if hasattr(inner, "model_validate"):
                    value = inner.model_validate(value)
                else:
                    value = msgspec.convert(value, inner, strict=False)
            except Exception as exc:
                raise ApiError(
                    "invalid-argument",
                    f"argument {index} ({name}) is not a valid {inner.__qualname__}: {exc}",
                    f"args[{index}]",
                ) from exc
        out.append(value)
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | dict):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (UTF-8, whatever charset the header claims).

    Raises:
        ApiError: not JSON, not an object, or nested too deeply (a larger body than
            ``MAX_BODY`` is refused by aiohttp before this reads it: 413).
    """
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise ApiError("too-deep", f"the request body nests deeper than {MAX_DEPTH} levels", "body") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError("invalid-json", f"request body is not valid JSON: {exc}", "body") from None
    if not isinstance(body, dict):
        raise ApiError("invalid-json", "request body must be a JSON object with 'choreography' and 'args'", "body")
    return body


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter (absent: false)."""
    value = request.query.get(name)
    if value is None:
        return False
    value = value.strip().lower()
    if value in ("1", "true", "yes", ""):  # a bare ?wait is true
        return True
    if value in ("0", "false", "no"):
        return False
    raise ApiError("invalid-query", f"query parameter {name!r} must be true or false, got {value!r}", name)


def timeout_of(request: web.Request) -> float | None:
    """``?timeout=S``: a finite, non-negative number of seconds, or None.

    Raises:
        ApiError: it is not.
    """
    if "timeout" not in request.query:
        return None
    text = request.query["timeout"]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(
            "invalid-query",
            f"query parameter 'timeout' must be a finite number of seconds >= 0, got {text!r}",
            "timeout",
        )
    return value


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str, required: bool = False) -> Any:
    """Body field ``name`` if present (None when absent or null), of type ``kind``.

    Raises:
        ApiError: it is required and absent, or not ``what`` (``bool`` is never an int here).
    """
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError("missing-field", f"field {name!r} ({what}) is required", name)
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ApiError("invalid-field", f"field {name!r} must be {what}, got {value!r}", name)
    if not isinstance(value, kind):
        raise ApiError("invalid-field", f"field {name!r} must be {what}, got {type(value).__name__}", name)
    return value
