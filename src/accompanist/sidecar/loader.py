"""Import ``MODULE:ATTR`` references the way uvicorn does (current directory first)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from accompanist.errors import ConfigError
from accompanist.language.choreography import App, Choreography

__all__ = ["load_app", "load_object"]


def load_object(reference: str) -> Any:
    """The object named by ``MODULE:ATTR`` (``ATTR`` may be dotted).

    Raises:
        ConfigError: malformed reference, module not importable, or attribute missing.
    """
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"invalid reference {reference!r}: expected MODULE:ATTR, e.g. myapp.choreographies:app")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def load_app(reference: str) -> App:
    """The ``ac.App`` named by ``MODULE:ATTR`` (a single choreography is wrapped in an App).

    Raises:
        ConfigError: the reference is bad or names something else.
    """
    obj = load_object(reference)
    if isinstance(obj, Choreography):
        return App(obj)
    if not isinstance(obj, App):
        raise ConfigError(f"{reference} is a {type(obj).__name__}, not an ac.App of choreographies")
    return obj
