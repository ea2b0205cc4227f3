"""The ``Choreo`` operations object: the core primitives and the batteries built on them.

A choreography receives a ``Choreo`` and never knows who runs it. The central interpreter
runs every role in one process; the projected interpreter runs one role and turns every
primitive into that role's local steps. Both subclass :class:`Choreo` and implement four
hooks (``_here``, ``_derive``, ``_run_local``, ``_transfer``); everything users call, core and
batteries alike, is written once here on top of those hooks, so the two interpreters cannot
drift apart.
"""

from __future__ import annotations

import abc
import datetime as dt
import inspect
import random as _random
import uuid as _uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from accompanist.errors import DefinitionError, ProjectionError
from accompanist.language.located import ABSENT, Located, make_located
from accompanist.language.patches import check_patch_name
from accompanist.language.roles import Role
from accompanist.language.steps import StepKind
from accompanist.language.timers import TimerOps
from accompanist.language.transaction import Transaction


class SubChoreography(Protocol):
    """What :meth:`Choreo.call` needs of a choreography (an ``ac.Choreography`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def roles(self) -> tuple[Role, ...]: ...

    @property
    def fn(self) -> Callable[..., Awaitable[Any]]: ...


__all__ = ["Choreo"]

T = TypeVar("T")
R = TypeVar("R")

LocalThunk = Callable[[], Awaitable[Any]]


def _fn_name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__)


class Choreo(TimerOps, abc.ABC):
    """The operations a choreography body uses.

    Core primitives: :meth:`locally`, :meth:`comm`, :meth:`broadcast`, :meth:`enclave`.
    Batteries: :meth:`cond`, :meth:`select`, :meth:`fanout`, :meth:`fanin`, :meth:`call`, the
    journaled helpers :meth:`now`, :meth:`uuid`, :meth:`random`, the durable timers
    :meth:`sleep`, :meth:`sleep_until`, :meth:`cancel_after` (see :mod:`accompanist.language.timers`),
    and :meth:`patched` / :meth:`deprecate_patch` for changing code under running sessions.

    Every role argument must be in the *census*: the roles of the choreography, or of the
    enclave being run.
    """

    def __init__(self, census: Sequence[Role], mapping: Mapping[Role, Role] | None = None) -> None:
        self._census = tuple(census)
        self._mapping: dict[Role, Role] = dict(mapping or {})

    # -- hooks each interpreter implements --------------------------------------------------
    @abc.abstractmethod
    def _here(self, role: Role) -> bool:
        """Whether this interpreter plays ``role`` (a real role, after mapping)."""

    @abc.abstractmethod
    def _derive(self, census: Sequence[Role], mapping: Mapping[Role, Role]) -> Choreo:
        """The same interpreter, same session, seen through a smaller census / role mapping."""

    @abc.abstractmethod
    async def _run_local(self, role: Role, kind: StepKind, name: str, thunk: LocalThunk) -> Any:
        """Run a local computation at ``role`` (which is here) as one step."""

    @abc.abstractmethod
    async def _transfer(self, src: Role, dsts: tuple[Role, ...], value: Located[Any], msg_kind: str) -> Located[Any]:
        """Move ``value`` from ``src`` to ``dsts`` (real roles); return it located at ``dsts``."""

    @abc.abstractmethod
    async def _run_tx(self, role: Role, tx: Transaction, args: list[Any]) -> Any:
        """Commit ``tx`` at ``role`` (which is here) as one step; return its result."""

    # -- view helpers ------------------------------------------------------------------------
    @property
    def census(self) -> tuple[Role, ...]:
        """The roles taking part in the current (sub-)choreography, in declaration order."""
        return self._census

    def _real(self, role: Role) -> Role:
        return self._mapping.get(role, role)

    def _check(self, role: Any, operation: str) -> Role:
        if not isinstance(role, Role):
            raise DefinitionError(f"{operation}: expected a Role, got {role!r}")
        if role not in self._census:
            names = ", ".join(r.name for r in self._census)
            raise DefinitionError(f"{operation}: role '{role.name}' is not in the census ({names})")
        return role

    def _check_located(self, value: Any, operation: str) -> Located[Any]:
        if not isinstance(value, Located):
            raise DefinitionError(
                f"{operation}: expected a Located value, got {type(value).__name__}; "
                "plain values are already known everywhere and need no communication"
            )
        return value

    # -- core primitives ---------------------------------------------------------------------
    async def locally(self, role: Role, fn: Callable[..., Any], *args: Located[Any]) -> Located[Any]:
        """Run ``fn`` at ``role`` on the unwrapped ``args``; the result is located at ``role``.

        ``fn`` may be sync or async. It runs only at ``role``; other roles skip it.

        Raises:
            DefinitionError: ``role`` is not in the census, or an argument is not a Located.
            ProjectionError: ``role`` does not own one of ``args``.
        """
        self._check(role, "locally")
        real = self._real(role)
        for a in args:
            self._check_located(a, "locally")
        if not self._here(real):
            return make_located((real,), ABSENT)
        values = [a._open(real, f"locally({_fn_name(fn)})") for a in args]

        async def thunk() -> Any:
            result = fn(*values)
            if inspect.isawaitable(result):
                result = await result
            return result

        value = await self._run_local(real, StepKind.LOCAL, _fn_name(fn), thunk)
        return make_located((real,), value)

    async def comm(self, src: Role, dst: Role | Sequence[Role], value: Located[T]) -> Located[T]:
        """Send ``value`` from ``src`` to ``dst`` (one role or a list: a multicast).

        Returns the value located at the receiver(s); ``src`` keeps its own copy.

        Raises:
            DefinitionError: a role outside the census, or ``src`` sending to itself.
            ProjectionError: ``src`` does not own ``value``.
        """
        return await self._comm(src, dst, value, "value", "comm")

    async def broadcast(self, src: Role, value: Located[T]) -> T:
        """Send ``value`` from ``src`` to every other role of the census; return it plainly.

        Use the result to decide a branch: every role now knows it.
        """
        self._check(src, "broadcast")
        self._check_located(value, "broadcast")
        real_src = self._real(src)
        others = [r for r in self._census if r != src]
        if not others:
            if self._here(real_src):
                return value._open(real_src, "broadcast")
            raise DefinitionError("broadcast in a census of one role that is not here")  # pragma: no cover
        loc = await self._comm(src, others, value, "value", "broadcast")
        if loc._present():
            raw = loc._raw()
            return raw  # type: ignore[return-value]
        return value._open(real_src, "broadcast")

    async def enclave(self, roles: Sequence[Role], fn: Callable[..., Awaitable[Any]], *args: Any) -> Located[Any]:
        """Run the sub-choreography ``fn(ch, *args)`` among ``roles`` only.

        Roles outside the enclave skip it entirely, so a choice broadcast inside reaches just
        the enclave. The result is located at the enclave's roles (or, when ``fn`` returns a
        ``Located``, that value as is).

        Raises:
            DefinitionError: an unknown role, an empty or duplicate role list, or a sync ``fn``.
        """
        members = self._members(roles, "enclave")
        if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "fn", None))):
            raise DefinitionError(f"enclave: {_fn_name(fn)} must be an 'async def' function")
        return await self._run_sub(members, dict(self._mapping), fn, args)

    async def transaction(self, role: Role, tx: Transaction, *args: Located[Any]) -> Located[Any]:
        """Run the saga step ``tx`` at ``role`` on the unwrapped ``args``.

        The commit runs once per session even across crashes (a replay returns the recorded
        result). If the saga fails later, anywhere, ``tx``'s compensation runs at ``role``.

        Raises:
            DefinitionError: ``tx`` is not a Transaction or ``role`` is not in the census.
            ProjectionError: ``role`` does not own one of ``args``.
            TransactionFailedError: the commit failed for good (the saga then compensates).
        """
        self._check(role, "transaction")
        if not isinstance(tx, Transaction):
            raise DefinitionError(
                f"transaction: expected an ac.Transaction (a function decorated with @ac.transaction), got {tx!r}"
            )
        real = self._real(role)
        for a in args:
            self._check_located(a, "transaction")
        if not self._here(real):
            return make_located((real,), ABSENT)
        values = [a._open(real, f"transaction({tx.name})") for a in args]
        return make_located((real,), await self._run_tx(real, tx, values))

    # -- batteries ---------------------------------------------------------------------------
    async def select(self, src: Role, dst: Role | Sequence[Role], label: Located[T]) -> Located[T]:
        """Tell ``dst`` which branch ``src`` chose (a ``select`` message carrying ``label``)."""
        return await self._comm(src, dst, label, "select", "select")

    async def cond(
        self,
        owner: Role,
        value: Located[T],
        body: Callable[[Choreo, T], Awaitable[R]],
        *,
        among: Sequence[Role] | None = None,
    ) -> Any:
        """Branch on a located value.

        ``owner`` shares ``value`` with the roles that need to know, then ``body(ch, value)``
        runs. Without ``among`` every census role is told and the body's result is returned
        as is. With ``among``, only ``owner`` and those roles take part (an enclave) and the
        result is located at them.
        """
        if among is None:
            choice = await self.broadcast(owner, value)
            return await body(self, choice)
        roles = [owner, *[r for r in among if r != owner]]

        async def inner(ch: Choreo) -> R:
            choice = await ch.broadcast(owner, value)
            return await body(ch, choice)

        return await self.enclave(roles, inner)

    async def fanout(
        self, roles: Sequence[Role], body: Callable[[Choreo, Role], Awaitable[Located[T]]]
    ) -> dict[Role, Located[T]]:
        """Run ``body(ch, role)`` for each role; each result is located at that role."""
        members = self._members(roles, "fanout")
        return {r: await body(self, r) for r in members}

    async def fanin(
        self,
        roles: Sequence[Role],
        dst: Role | Sequence[Role],
        body: Callable[[Choreo, Role], Awaitable[Located[T]]],
    ) -> Located[dict[str, T]]:
        """Run ``body(ch, role)`` for each role (each result located at ``dst``) and gather the
        results at ``dst`` as a dict keyed by role name."""
        members = self._members(roles, "fanin")
        dsts = self._members([dst] if isinstance(dst, Role) else dst, "fanin")
        real_dsts = tuple(self._real(d) for d in dsts)
        parts: dict[str, Any] = {}
        present = True
        for r in members:
            loc = self._check_located(await body(self, r), "fanin")
            missing = [d for d in real_dsts if d not in loc.owners]
            if missing:
                # Checked at every role, not just where the value is present, so both
                # interpreters fail the same way instead of the projection failing later.
                raise ProjectionError(
                    missing[0].name,
                    tuple(sorted(o.name for o in loc.owners)),
                    "fanin",
                    f"the body's result for role '{self._real(r).name}' must be located at the destination; "
                    "send it there with ch.comm",
                )
            present = present and loc._present()
            parts[self._real(r).name] = loc._raw()
        return make_located(real_dsts, parts if present else ABSENT)

    async def call(self, sub: SubChoreography, *args: Any, roles: Mapping[Role, Role] | None = None) -> Located[Any]:
        """Run the choreography ``sub`` as part of this one.

        Args:
            sub: the sub-choreography.
            *args: its arguments (located values, owned by the mapped roles that use them).
            roles: ``{sub_role: our_role}``; by default roles are matched by name.

        Raises:
            DefinitionError: a sub role has no counterpart here.
        """
        mapping: dict[Role, Role] = {}
        by_name = {r.name: r for r in self._census}
        for sub_role in sub.roles:
            ours = (roles or {}).get(sub_role) or by_name.get(sub_role.name)
            if ours is None:
                raise DefinitionError(f"call({sub.name}): sub role '{sub_role.name}' has no role mapped to it")
            self._check(ours, f"call({sub.name})")
            mapping[sub_role] = self._real(ours)
        if len(set(mapping.values())) != len(mapping):
            raise DefinitionError(f"call({sub.name}): two sub roles are mapped to the same role")
        return await self._run_sub(tuple(sub.roles), mapping, sub.fn, args)

    def patched(self, name: str) -> bool:
        """Whether this session runs the new code of the patch ``name`` (a string literal).

        True in sessions created once every role's code knows the patch, False in sessions
        created before: every role of a session answers alike, also when replaying after an
        upgrade (see :mod:`accompanist.language.patches`).

        Raises:
            DefinitionError: ``name`` is not a short printable text without commas.
        """
        return self._patch(check_patch_name(name, "patched"), deprecated=False)

    def deprecate_patch(self, name: str) -> None:
        """The patch ``name`` is now the only code: sessions that recorded it replay unchanged.

        Raises:
            DefinitionError: ``name`` is not a short printable text without commas.
        """
        self._patch(check_patch_name(name, "deprecate_patch"), deprecated=True)

    def _patch(self, name: str, *, deprecated: bool) -> bool:
        """Decide a patch (interpreters that journal override this): new code."""
        return True

    async def now(self, role: Role) -> Located[dt.datetime]:
        """The current UTC time at ``role``; journaled, so a replay returns the same instant.
        (The clock of :func:`~accompanist.language.timers.wall_clock`: on a virtual clock it
        moves with virtual time, as sleeps do.)"""
        return await self._helper(role, StepKind.NOW, lambda: dt.datetime.fromtimestamp(self._clock(), dt.UTC))

    async def uuid(self, role: Role) -> Located[_uuid.UUID]:
        """A fresh random UUID at ``role``; journaled, so a replay returns the same one."""
        return await self._helper(role, StepKind.UUID, _uuid.uuid4)

    async def random(self, role: Role) -> Located[float]:
        """A random float in [0, 1) at ``role``; journaled, so a replay returns the same one."""
        return await self._helper(role, StepKind.RANDOM, _random.random)

    # -- shared machinery --------------------------------------------------------------------
    def _members(self, roles: Sequence[Role], operation: str) -> tuple[Role, ...]:
        if isinstance(roles, Role):
            roles = [roles]
        members = tuple(self._check(r, operation) for r in roles)
        if not members:
            raise DefinitionError(f"{operation}: needs at least one role")
        if len(set(members)) != len(members):
            raise DefinitionError(f"{operation}: a role is listed twice")
        return members

    async def _comm(
        self, src: Role, dst: Role | Sequence[Role], value: Located[T], msg_kind: str, operation: str
    ) -> Located[T]:
        if (
            isinstance(dst, Role)
            and src.__class__ is Role
            and value.__class__ is Located
            and src != dst
            and src in self._census
            and dst in self._census
        ):
            # The common case (one receiver), checked cheaply: every role runs every comm of
            # its choreography, most of them without taking part.
            mapping = self._mapping
            if not mapping:
                return await self._transfer(src, (dst,), value, msg_kind)
            return await self._transfer(mapping.get(src, src), (mapping.get(dst, dst),), value, msg_kind)
        self._check(src, operation)
        dsts = self._members([dst] if isinstance(dst, Role) else dst, operation)
        if src in dsts:
            raise DefinitionError(f"{operation}: role '{src.name}' cannot send to itself")
        self._check_located(value, operation)
        real_src = self._real(src)
        real_dsts = tuple(self._real(d) for d in dsts)
        return await self._transfer(real_src, real_dsts, value, msg_kind)

    async def _run_sub(
        self,
        census: tuple[Role, ...],
        mapping: dict[Role, Role],
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> Located[Any]:
        reals = tuple(mapping.get(r, r) for r in census)
        if not any(self._here(r) for r in reals):
            return make_located(reals, ABSENT)
        result = await fn(self._derive(census, mapping), *args)
        if isinstance(result, Located):
            outside = sorted(r.name for r in result.owners if r not in reals)
            if outside:
                # Roles outside never run the body, so they could not learn of this value.
                raise DefinitionError(
                    f"{_fn_name(fn)}: returned a value located at {', '.join(outside)}, outside the roles "
                    f"that ran it ({', '.join(r.name for r in reals)}); return only values located at those roles"
                )
            return result
        return make_located(reals, result)

    async def _helper(self, role: Role, kind: StepKind, produce: Callable[[], Any]) -> Located[Any]:
        self._check(role, str(kind))
        real = self._real(role)
        if not self._here(real):
            return make_located((real,), ABSENT)

        async def thunk() -> Any:
            return produce()

        return make_located((real,), await self._run_local(real, kind, str(kind), thunk))
