"""The fake service the random choreographies act on, and the local functions they call.

The :class:`Ledger` is idempotent by key, as a real service called with an idempotency key
is: a repeated call with a key it has seen has no second effect. It also counts raw calls,
and records every effect with its *logical* identity (session, role, operation label, loop
iterations) so that an effect that reached the service twice under two different keys (a
uuid drawn again after a crash, a step index that moved) is visible.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import accompanist as ac
from tests.model.program import M, Tx

__all__ = ["Event", "Ledger", "local_functions", "make_transaction", "run_tx"]


@dataclass(frozen=True)
class Event:
    """One applied effect.

    Attributes:
        kind: ``effect`` (a local step's call), ``commit`` or ``undo`` (a compensation).
        session: the session id (``central`` for the central interpreter).
        role: where it ran.
        label: the operation (effect label or transaction name).
        logical: what it stands for, independent of keys: ``(label, iterations)`` for an
            effect, the occurrence for a transaction.
        key: the idempotency key the service saw.
        value: the commit's result, or the result a compensation was handed.
    """

    kind: str
    session: str
    role: str
    label: str
    logical: Any
    key: str
    value: Any = None


@dataclass
class Ledger:
    """The service's books: applied events in order, and raw calls by (kind, key)."""

    events: list[Event] = field(default_factory=list)
    raw: Counter[tuple[str, str]] = field(default_factory=Counter)
    seen: set[tuple[str, str]] = field(default_factory=set)
    ticks: list[Callable[[str], None]] = field(default_factory=list)

    def apply(self, event: Event) -> bool:
        """Apply ``event`` unless its key was seen; return whether it took effect."""
        self.raw[(event.kind, event.key)] += 1
        for tick in self.ticks:
            tick(event.role)
        if (event.kind, event.key) in self.seen:
            return False
        self.seen.add((event.kind, event.key))
        self.events.append(event)
        return True

    def of(self, session: str) -> list[Event]:
        return [e for e in self.events if e.session == session]

    def raw_of(self, session: str) -> dict[tuple[str, str], int]:
        return {k: n for k, n in self.raw.items() if k[1].startswith(session + "/")}


def _session_and_key(role: str, fallback: str) -> tuple[str, str]:
    key = ac.current_step()
    if key is None:  # the central interpreter hands out no step keys
        return "central", f"central/{role}/{fallback}"
    return key.session_id, str(key)


def local_functions(ledger: Ledger, names: tuple[str, ...]) -> dict[str, Any]:
    """The functions a rendered program calls, bound to ``ledger`` (its globals)."""

    def named(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        fn.__name__ = fn.__qualname__ = name  # the journal names local steps by qualname
        return fn

    def start(r: int) -> Callable[[], int]:
        return named(lambda: 10 * r + 1, f"start_r{r}")

    def step(label: str, op: str, k: int) -> Callable[[int], int]:
        def f(a: int) -> int:
            return {"add": a + k, "mul": a * k, "sub": a - k, "neg": -a, "mod": a % (abs(k) + 1)}[op] % M

        return named(f, f"{label}_{op}")

    def effect(label: str, r: int, iters: tuple[int, ...]) -> Callable[..., Any]:
        role = names[r]

        async def f(a: int, drawn: Any = None) -> int:
            await asyncio.sleep(0)
            session, key = _session_and_key(role, f"{label}{list(iters)}")
            if drawn is not None:  # the uuid drawn for it is the service's idempotency key
                key = f"{session}/{role}/uuid:{drawn}"
            ledger.apply(Event("effect", session, role, label, (label, iters), key))
            return (a * 7 + 13 + len(label)) % M

        return named(f, label)

    def boom(label: str) -> Callable[[int], int]:
        def f(a: int) -> int:
            raise ValueError(f"boom at {label}")

        return named(f, label)

    def absorb(a: int, b: int) -> int:
        return (a + 2 * b + 1) % M

    def parity(a: int) -> bool:
        return a % 2 == 0

    def label_of(a: int) -> str:
        return "even" if a % 2 == 0 else f"odd-{a % 7}"

    def absorb_label(a: int, label: str) -> int:
        return (a * 3 + len(label)) % M

    def from_label(label: str) -> int:
        return len(label) * 11

    def combine(a: int, *parts: int) -> int:
        return (a + sum((i + 2) * p for i, p in enumerate(parts))) % M

    def drift() -> int:
        return 0

    return {
        "start": start,
        "step": step,
        "effect": effect,
        "boom": boom,
        "absorb": absorb,
        "parity": parity,
        "label_of": label_of,
        "absorb_label": absorb_label,
        "from_label": from_label,
        "combine": combine,
        "drift": named(drift, "drift_v2"),
    }


def make_transaction(ledger: Ledger, op: Tx) -> ac.Transaction:
    """The saga transaction ``op`` stands for, acting on ``ledger``."""
    label = op.label

    async def commit(ctx: ac.TxContext, a: int) -> int:
        await asyncio.sleep(0)
        if op.flaky and ctx.attempt == 1:
            ledger.raw[("commit-attempt", ctx.idempotency_key)] += 1
            raise ConnectionError("service hiccup (retried)")
        if op.abort:
            ledger.raw[("commit-attempt", ctx.idempotency_key)] += 1
            raise ac.Abort(f"{label} declined")
        result = (a * 3 + len(label)) % M
        ledger.apply(Event("commit", ctx.session_id, ctx.role, label, ctx.occurrence, ctx.idempotency_key, result))
        return result

    async def undo(ctx: ac.TxContext, a: int, result: Any) -> None:
        await asyncio.sleep(0)
        if op.flaky_undo and ctx.attempt == 1:
            raise ConnectionError("service hiccup while compensating (retried)")
        ledger.apply(Event("undo", ctx.session_id, ctx.role, label, ctx.occurrence, ctx.idempotency_key, result))

    retry = ac.Retry(attempts=3, initial=0.01, maximum=0.05)
    if op.decorated:
        return ac.transaction(compensate=undo, name=label, retry=retry)(commit)
    return ac.Transaction(label, commit, undo, retry=retry)


async def run_tx(ch: ac.Choreo, role: ac.Role, tx: ac.Transaction, *args: ac.Located[Any]) -> ac.Located[Any]:
    """The helper coroutine a program passes its transactions to (it is handed to the
    program's ``define`` as an argument, so the choreography never names it as a global)."""
    return await ch.transaction(role, tx, *args)
