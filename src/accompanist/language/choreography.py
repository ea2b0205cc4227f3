"""Declaring choreographies: ``@ac.choreography`` and the ``App`` that groups them."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accompanist.codec import PayloadCodec
from accompanist.errors import DefinitionError, UnknownChoreographyError
from accompanist.language.fingerprint import CodeFacts, code_facts
from accompanist.language.lifecycle import Hook, Lifecycle
from accompanist.language.reach import reach
from accompanist.language.roles import Role
from accompanist.language.transaction import Transaction

if TYPE_CHECKING:
    from accompanist.language.choreo import Choreo

__all__ = ["App", "Choreography", "choreography"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")

ChoreographyFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, eq=False)
class Choreography:
    """A named, versioned choreography: the global program every role runs its part of.

    Create one with :func:`choreography`. Calling the object calls the underlying function,
    so a choreography can also be run as a sub-choreography with ``ch.call``.

    Attributes:
        name: the registered name; envelopes carry it so peers know what to run.
        version: the registered version; old versions stay registered to finish old sessions.
        roles: every role, the first being the initiator.
        fn: the ``async def`` body.
        codec: the payload codec with this choreography's registered types.
        saga: whether its code runs saga transactions (detected, or declared). Every session
            agrees on its outcome either way; this says only whether compensations are expected.
        transactions: the transactions found in its code, so a restarted sidecar can
            compensate a logged commit before any session replays.
    """

    name: str
    version: int
    roles: tuple[Role, ...]
    fn: ChoreographyFn
    codec: PayloadCodec = field(repr=False)
    saga: bool = False
    transactions: tuple[Transaction, ...] = field(default=(), repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def initiator(self) -> Role:
        """The first role: it receives the arguments and the session's result."""
        return self.roles[0]

    @property
    def arity(self) -> int:
        """How many arguments (after ``ch``) the choreography takes."""
        return len(self.parameters)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The names of its arguments (after ``ch``), read from its signature once."""
        found = self._cache.get("parameters")
        if found is None:
            params = list(inspect.signature(self.fn).parameters.values())[1:]
            found = self._cache["parameters"] = tuple(
                p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            )
        return found

    @property
    def code(self) -> CodeFacts:
        """Its fingerprint and patch names, from a walk of its code made once (on first use)."""
        found = self._cache.get("code")
        if found is None:
            found = self._cache["code"] = code_facts(self.fn)
        return found

    @property
    def fingerprint(self) -> str:
        """A short hash of the code its sessions replay (see :mod:`accompanist.language.fingerprint`)."""
        return self.code.fingerprint

    def argument_types(self) -> dict[str, Any]:
        """Its arguments' type hints, resolved once (on first use: they may name types the
        module defines after the choreography); empty when they cannot be resolved."""
        found = self._cache.get("hints")
        if found is None:
            try:
                found = typing.get_type_hints(self.fn)
            except Exception:
                found = {}
            self._cache["hints"] = found
        return found

    def role(self, name: str) -> Role:
        """The role called ``name``.

        Raises:
            DefinitionError: no such role in this choreography.
        """
        for r in self.roles:
            if r.name == name:
                return r
        raise DefinitionError(f"choreography {self.name!r} has no role {name!r}")

    def __call__(self, ch: Choreo, *args: Any) -> Awaitable[Any]:
        return self.fn(ch, *args)


def choreography(
    name: str,
    *,
    roles: Sequence[Role],
    version: int = 1,
    types: Iterable[type] = (),
    saga: bool | None = None,
) -> Callable[[ChoreographyFn], Choreography]:
    """Declare a choreography.

    Args:
        name: its registered name (letters, digits, ``_ . -``).
        roles: every role that may take part; the first is the initiator.
        version: its version; bump it when the code changes while sessions may be running.
        types: dataclasses, msgspec Structs, pydantic models or enums its messages carry.
        saga: whether it runs ``ch.transaction``; by default detected from its code (see
            :mod:`accompanist.language.reach`). Informational: every session agrees on its
            outcome, and every commit is compensable, whatever this says.

    Raises:
        DefinitionError: bad name, empty or duplicate roles, bad version, or a function that is
            not ``async def``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(f"invalid choreography name {name!r}")
    role_tuple = tuple(roles)
    if not role_tuple:
        raise DefinitionError(f"choreography {name!r} needs at least one role")
    for r in role_tuple:
        if not isinstance(r, Role):
            raise DefinitionError(f"choreography {name!r}: roles= must hold Role values, got {r!r}")
    names = [r.name for r in role_tuple]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DefinitionError(f"choreography {name!r}: duplicate role(s) {', '.join(dupes)}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DefinitionError(f"choreography {name!r}: version must be a positive integer, got {version!r}")
    codec = PayloadCodec(types)

    def decorate(fn: ChoreographyFn) -> Choreography:
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(
                f"choreography {name!r}: {getattr(fn, '__qualname__', fn)!r} must be an 'async def' function"
            )
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise DefinitionError(f"choreography {name!r}: the function must take the Choreo as first parameter")
        found = reach(fn)
        uses = found.saga if saga is None else saga
        return Choreography(
            name=name,
            version=version,
            roles=role_tuple,
            fn=fn,
            codec=codec,
            saga=uses,
            transactions=tuple(found.transactions.values()),
        )

    return decorate


class App:
    """The choreographies a sidecar serves, by ``(name, version)``, and its lifecycle hooks.

    ``@app.on_startup`` and ``@app.on_shutdown`` register ``async def hook(role: str)``
    functions that open and close a role's clients (see :mod:`accompanist.language.lifecycle`).

    Args:
        *choreographies: choreographies to serve; several versions of one name may be given.

    Raises:
        DefinitionError: the same name and version is given twice with different code.
    """

    def __init__(self, *choreographies: Choreography) -> None:
        self.lifecycle = Lifecycle()
        self._by_key: dict[tuple[str, int], Choreography] = {}
        for c in choreographies:
            if not isinstance(c, Choreography):
                raise DefinitionError(f"App() takes choreographies, got {c!r}")
            other = self._by_key.get((c.name, c.version))
            if other is not None and other is not c:
                raise DefinitionError(f"choreography {c.name!r} version {c.version} is registered twice")
            self._by_key[(c.name, c.version)] = c

    def on_startup(self, hook: Hook) -> Hook:
        """Run ``hook(role)`` when a sidecar (or a test interpreter) starts a role; a decorator.

        Hooks run in the order they were registered, before any session runs. One that raises
        fails the start (the shutdown hooks then still run).

        Raises:
            DefinitionError: ``hook`` is not an ``async def`` function.
        """
        return self.lifecycle.on_startup(hook)

    def on_shutdown(self, hook: Hook) -> Hook:
        """Run ``hook(role)`` when a role stops, after its last session step; a decorator.

        Hooks run in reverse order of registration, also after a failed start.

        Raises:
            DefinitionError: ``hook`` is not an ``async def`` function.
        """
        return self.lifecycle.on_shutdown(hook)

    def __iter__(self) -> Any:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def known(self) -> dict[str, list[int]]:
        """Registered versions by name."""
        out: dict[str, list[int]] = {}
        for name, version in sorted(self._by_key):
            out.setdefault(name, []).append(version)
        return out

    def get(self, name: str, version: int | None = None) -> Choreography:
        """The choreography ``name`` at ``version`` (the latest when ``None``).

        Raises:
            UnknownChoreographyError: no such name or version is registered.
        """
        if version is None:
            versions = [v for (n, v) in self._by_key if n == name]
            if not versions:
                raise UnknownChoreographyError(name, None, self.known())
            version = max(versions)
        found = self._by_key.get((name, version))
        if found is None:
            raise UnknownChoreographyError(name, version, self.known())
        return found
