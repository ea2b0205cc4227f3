"""A choreography's fingerprint: a short hash of the code a replay depends on.

A session replays against the code a sidecar runs now. If that code changed without a version
bump, a replay may diverge; the fingerprint lets a sidecar see it coming at start, before any
session replays (see :mod:`accompanist.engine.versions`).

What counts, for the choreography's function and every function its code reaches (the walk of
:mod:`accompanist.language.reach`: helpers it calls, nested functions, lambdas, choreographies
it calls with ``ch.call``): the bytecode, the constants (nested code objects recursively), the
names of globals, attributes, locals and free variables it uses; and the names of the saga
transactions it reaches. What does not count: line numbers, file names and docstrings (moving or
commenting code changes nothing), the bodies of transactions' commits and compensations (they
call services, which a replay skips), and functions of the standard library, of installed
packages and of Accompanist itself (their versions are the deployment's business). Bytecode is
specific to a Python minor version, so a new Python gives new fingerprints.

The same walk finds the names a choreography gives ``ch.patched("name")`` and
``ch.deprecate_patch("name")`` (string literals in its code; see
:mod:`accompanist.language.patches`).
"""

from __future__ import annotations

import dis
import hashlib
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from accompanist.language.reach import reach

__all__ = ["CodeFacts", "code_facts"]

_HEX = 12  # 48 bits: plenty to tell two deployed versions of one choreography apart
_PATCH_CALLS = frozenset({"patched", "deprecate_patch"})
_LIBRARY_DIRS = tuple(
    {p for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_paths().get(key))}
)


@dataclass(frozen=True)
class CodeFacts:
    """What the walk of a choreography's code found.

    Attributes:
        fingerprint: short hex sha256 of the code a replay depends on (see the module docstring).
        patches: the names given to ``ch.patched`` in the code.
        deprecated: the names given to ``ch.deprecate_patch`` in the code.
        functions: the qualified names of the functions covered, for the curious.
    """

    fingerprint: str
    patches: frozenset[str]
    deprecated: frozenset[str]
    functions: tuple[str, ...]


def code_facts(fn: Callable[..., Any]) -> CodeFacts:
    """Fingerprint ``fn`` (a choreography's function) and list its patches."""
    found = reach(fn)
    parts: dict[str, str] = {}
    patches: set[str] = set()
    deprecated: set[str] = set()
    for index, function in enumerate(found.functions):
        if index > 0 and _library(function):
            continue
        name = f"{function.__module__}.{function.__qualname__}"
        parts.setdefault(name, _code_hash(function))
        for code in _codes(function.__code__):
            for call, patch in _patch_names(code):
                (patches if call == "patched" else deprecated).add(patch)
    digest = hashlib.sha256()
    for name in sorted(parts):
        digest.update(f"fn {name} {parts[name]}\n".encode())
    for tx in sorted(found.transactions):
        digest.update(f"tx {tx}\n".encode())
    return CodeFacts(
        fingerprint=digest.hexdigest()[:_HEX],
        patches=frozenset(patches),
        deprecated=frozenset(deprecated),
        functions=tuple(sorted(parts)),
    )


def _library(fn: types.FunctionType) -> bool:
    """Whether ``fn`` belongs to the deployment rather than the app (not fingerprinted)."""
    root = (fn.__module__ or "").partition(".")[0]
    if root == "accompanist" or root in sys.stdlib_module_names:
        return True
    filename = fn.__code__.co_filename
    return any(filename.startswith(d) for d in _LIBRARY_DIRS) or "site-packages" in filename


def _code_hash(function: types.FunctionType) -> str:
    digest = hashlib.sha256()
    _feed(digest, function.__code__)
    return digest.hexdigest()


def _feed(digest: Any, code: types.CodeType) -> None:
    """The instructions with their resolved arguments: no line numbers (they live apart, in
    ``co_linetable``), no docstring (never loaded), no constant-table order."""
    digest.update(repr((code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount)).encode())
    for instruction in dis.get_instructions(code):
        value = instruction.argval
        if isinstance(value, types.CodeType):
            digest.update(f"{instruction.opname} <code>\n".encode())
            _feed(digest, value)
            continue
        digest.update(f"{instruction.opname} {_stable(value)}\n".encode())


def _stable(value: Any) -> str:
    """``repr`` that does not depend on the process (sets of strings hash differently per run)."""
    if isinstance(value, (frozenset, set)):
        return "{" + ", ".join(sorted(_stable(v) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_stable(v) for v in value) + ")"
    return repr(value)


def _patch_names(code: types.CodeType) -> Iterator[tuple[str, str]]:
    """``(call, name)`` for each ``x.patched("name")`` / ``x.deprecate_patch("name")`` in ``code``."""
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        if instruction.opname in ("LOAD_METHOD", "LOAD_ATTR") and instruction.argval in _PATCH_CALLS:
            for following in instructions[index + 1 : index + 4]:
                if following.opname == "LOAD_CONST" and isinstance(following.argval, str):
                    yield str(instruction.argval), following.argval
                    break


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)
