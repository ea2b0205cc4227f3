"""What a choreography's code can reach: the saga transactions it may run.

A sidecar that restarts must be able to compensate a commit it logged before the crash,
which needs the transaction's compensation function again. The runtime registers every
transaction it sees run, and, so that a restarted sidecar knows them before any session
replays, this module walks a choreography's code: the globals and closure cells it names,
default arguments, nested functions, functions and choreographies it calls, attributes of
modules and objects it uses, the methods (static and class methods too) of the app's own
classes it names, and the items of lists, tuples and dicts among them. Python is
dynamic, so the walk can miss a transaction built at run time; the runtime then recovers it
by replaying the session (see the engine's registry).
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from accompanist.language.transaction import Transaction

__all__ = ["Reach", "reach"]

_MAX_DEPTH = 6
_MAX_ITEMS = 64


@dataclass
class Reach:
    """What the walk found.

    Attributes:
        transactions: every transaction object reachable from the code, by name.
        calls_transaction: whether some reachable code calls ``.transaction(...)`` (it runs a
            saga step, even if the transaction itself is passed in at run time).
        functions: every Python function walked, in the order met (the code a choreography's
            fingerprint covers, see :mod:`accompanist.language.fingerprint`).
    """

    transactions: dict[str, Transaction] = field(default_factory=dict)
    calls_transaction: bool = False
    functions: list[types.FunctionType] = field(default_factory=list)

    @property
    def saga(self) -> bool:
        """Whether the choreography may run saga transactions."""
        return self.calls_transaction or bool(self.transactions)


def reach(fn: Callable[..., Any]) -> Reach:
    """Walk ``fn``'s code and what it refers to (see the module docstring)."""
    found = Reach()
    seen: set[int] = set()
    _visit(fn, found, seen, 0)
    return found


def _visit(obj: Any, found: Reach, seen: set[int], depth: int) -> None:
    if depth > _MAX_DEPTH or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Transaction):
        found.transactions.setdefault(obj.name, obj)
        return
    inner = getattr(obj, "fn", None)  # a Choreography wraps its function
    if inner is not None and isinstance(inner, types.FunctionType) and not isinstance(obj, types.FunctionType):
        _visit(inner, found, seen, depth)
        return
    if isinstance(obj, types.MethodType):
        _visit(obj.__func__, found, seen, depth)
        _visit(obj.__self__, found, seen, depth + 1)
        return
    if isinstance(obj, functools.partial):
        for part in (obj.func, *obj.args, *obj.keywords.values()):
            _visit(part, found, seen, depth + 1)
        return
    if isinstance(obj, types.FunctionType):
        _visit_function(obj, found, seen, depth)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for item in list(obj)[:_MAX_ITEMS]:
            _visit(item, found, seen, depth + 1)
        return
    if isinstance(obj, dict):
        for item in list(obj.values())[:_MAX_ITEMS]:
            _visit(item, found, seen, depth + 1)
        return
    if isinstance(obj, type):  # a class of the app: its methods, static and class methods too
        if _app_class(obj):
            _visit_methods(obj, found, seen, depth)
        return
    if isinstance(obj, types.ModuleType) or obj is None or isinstance(obj, (str, bytes, int, float)):
        return
    # An object the code uses: its own attributes and its class's methods.
    for value in list(getattr(obj, "__dict__", {}).values())[:_MAX_ITEMS]:
        _visit(value, found, seen, depth + 1)
    _visit_methods(type(obj), found, seen, depth)


def _visit_methods(cls: type, found: Reach, seen: set[int], depth: int) -> None:
    for name, value in list(vars(cls).items())[:_MAX_ITEMS]:
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if not name.startswith("__") and isinstance(value, (types.FunctionType, Transaction)):
            _visit(value, found, seen, depth + 1)


def _app_class(cls: type) -> bool:
    """Whether ``cls`` is the app's own (not Python's, Accompanist's or an installed package's):
    only those are walked, so a reference to a library class does not walk the library."""
    root = (cls.__module__ or "").partition(".")[0]
    if root in ("accompanist", "builtins") or root in sys.stdlib_module_names:
        return False
    path = str(getattr(sys.modules.get(cls.__module__), "__file__", None) or "")
    return "site-packages" not in path and "dist-packages" not in path


def _visit_function(fn: types.FunctionType, found: Reach, seen: set[int], depth: int) -> None:
    found.functions.append(fn)
    cells: dict[str, Any] = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            cells[name] = cell.cell_contents
        except ValueError:  # an empty cell (assigned later)
            continue
    for default in (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()):
        _visit(default, found, seen, depth + 1)
    for code in _codes(fn.__code__):
        if "transaction" in code.co_names:
            found.calls_transaction = True
        for name in (*code.co_names, *code.co_freevars):
            if name in cells:
                target = cells[name]
            elif name in fn.__globals__:
                target = fn.__globals__[name]
            else:
                continue
            if isinstance(target, types.ModuleType):
                for attr in code.co_names:
                    _visit(getattr(target, attr, None), found, seen, depth + 1)
            else:
                _visit(target, found, seen, depth + 1)
    for value in cells.values():
        _visit(value, found, seen, depth + 1)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every code object nested in it (inner functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)
