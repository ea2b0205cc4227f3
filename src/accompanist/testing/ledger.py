"""``Ledger``: a test double of the services' books, to see whether an effect happened twice.

Why: the runtime promises that a transaction's commit and compensation run *at least* once
and always with the same idempotency key; whether the *service* then acts once is the user's
side of the contract. :func:`accompanist.testing.explore` crashes sidecars between a service
call and its record, so that a call runs again; a ledger shows whether its effect was applied
again. Record every effect your commits, compensations and local steps apply::

    ledger = ac.testing.Ledger()

    async def release(ctx: ac.TxContext, item: str, reserved: int) -> None:
        if ledger.once(ctx, "release"):       # idempotent: a repeat under the key does nothing
            stock[item] += reserved

A repeat that ``record`` writes (``ledger.record(ctx, "release")`` on every call) is what
``explore`` reports as an effect applied twice. To plug your own service double instead, give
``explore`` any object with an ``entries_of(session_id)`` method returning
:class:`LedgerEntry` values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from accompanist.engine.stepkey import StepKey, current_step
from accompanist.language.transaction import TxContext

__all__ = ["EffectLog", "Ledger", "LedgerEntry"]


@dataclass(frozen=True)
class LedgerEntry:
    """One applied effect.

    Attributes:
        session_id: the session it belongs to.
        role: the role whose code applied it.
        key: the idempotency key it was applied under (a transaction's, or a local step's).
        label: what it was (``"reserve"``, ``"refund"``...).
        phase: ``commit``, ``compensate`` or ``local``.
        value: anything the caller wants to keep with it.
    """

    session_id: str
    role: str
    key: str
    label: str
    phase: str
    value: Any = None


class EffectLog(Protocol):
    """What :func:`accompanist.testing.explore` reads from a service double."""

    def entries_of(self, session_id: str) -> list[LedgerEntry]:
        """Every effect applied for ``session_id``, in order."""
        ...


@dataclass
class Ledger:
    """The effects the user's code applied, by idempotency key (see the module docstring)."""

    entries: list[LedgerEntry] = field(default_factory=list)
    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def record(self, where: TxContext | StepKey | None = None, label: str = "", value: Any = None) -> LedgerEntry:
        """Apply an effect unconditionally (as a service that ignores idempotency keys would).

        Args:
            where: the transaction's context, or a local step's key (default: the step running
                now, ``ac.current_step()``).
            label: what the effect is.
            value: kept with the entry.

        Raises:
            ValueError: no context given and no local step runs (outside a sidecar).
        """
        entry = self._entry(where, label, value)
        self.calls[(entry.key, entry.label, entry.phase)] += 1
        self.entries.append(entry)
        return entry

    def once(self, where: TxContext | StepKey | None = None, label: str = "", value: Any = None) -> bool:
        """Apply an effect unless one with the same key, label and phase was applied (as an
        idempotent service does); return whether it was applied now."""
        entry = self._entry(where, label, value)
        self.calls[(entry.key, entry.label, entry.phase)] += 1
        if any((e.key, e.label, e.phase) == (entry.key, entry.label, entry.phase) for e in self.entries):
            return False
        self.entries.append(entry)
        return True

    def entries_of(self, session_id: str) -> list[LedgerEntry]:
        """Every effect applied for ``session_id``, in order."""
        return [e for e in self.entries if e.session_id == session_id]

    def clear(self) -> None:
        """Forget everything (between two independent test cases)."""
        self.entries.clear()
        self.calls.clear()

    @staticmethod
    def _entry(where: TxContext | StepKey | None, label: str, value: Any) -> LedgerEntry:
        where = where if where is not None else current_step()
        if isinstance(where, TxContext):
            phase = "compensate" if where.compensating else "commit"
            return LedgerEntry(where.session_id, where.role, where.idempotency_key, label or where.name, phase, value)
        if isinstance(where, StepKey):
            return LedgerEntry(where.session_id, where.role, str(where), label, "local", value)
        raise ValueError("Ledger.record needs a TxContext or a StepKey (no local step is running)")
