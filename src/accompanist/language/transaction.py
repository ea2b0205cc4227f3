"""Saga transactions: a commit that changes a service, and the compensation that undoes it.

::

    @ac.transaction(compensate=release_stock)
    async def reserve_stock(ctx: ac.TxContext, item: str) -> int: ...

    async def release_stock(ctx: ac.TxContext, item: str, result: int) -> None: ...

    reservation = await ch.transaction(Warehouse, reserve_stock, item_at_warehouse)

A commit fails the saga by raising :class:`~accompanist.errors.Abort` (or an exception type
listed in ``business_errors``) or by returning ``False``. Any other exception is an
infrastructure error (connection refused, timeout) and is retried with backoff. Every
participant then runs the compensations of the transactions it committed, in reverse order.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, overload

from accompanist.errors import Abort, DefinitionError, TransactionFailedError

__all__ = ["Retry", "Transaction", "TxContext", "commit_with_retry", "compensate_until_done", "transaction"]

Commit = Callable[..., Awaitable[Any]]
Compensate = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Retry:
    """How a commit is retried after an infrastructure error.

    Attributes:
        attempts: tries in all before the saga fails (compensations retry without limit).
        initial: first delay in seconds.
        maximum: largest delay.
        multiplier: growth of the delay per try.
    """

    attempts: int = 8
    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failed try (1-based)."""
        return float(min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1)))


@dataclass(frozen=True)
class TxContext:
    """What a commit or compensation knows about the step it runs.

    Attributes:
        session_id: the session.
        role: the role running the transaction.
        name: the transaction's name.
        occurrence: how many times this transaction ran before in this session at this role
            (transactions may run in loops).
        step: the step index at this role.
        attempt: 1 for the first try, then 2, 3 ... after infrastructure errors.
        compensating: True while the compensation runs.
        connection: with a SQL store, a database connection inside the transaction that also
            records the commit, for a business write that commits atomically with it
            (None when the store offers none).
    """

    session_id: str
    role: str
    name: str
    occurrence: int
    step: int
    attempt: int = 1
    compensating: bool = False
    connection: Any = None

    @property
    def idempotency_key(self) -> str:
        """``session_id/role/name/occurrence``: the same on every replay; pass it to the service
        so that a commit or compensation repeated after a crash has no second effect."""
        return f"{self.session_id}/{self.role}/{self.name}/{self.occurrence}"


class Transaction:
    """A named saga step: an async commit and an optional async compensation.

    Args:
        name: the name it is logged under (unique within a choreography).
        commit: ``async (ctx, *args) -> result``; ``False`` or ``Abort`` fails the saga.
        compensate: ``async (ctx, *args, result) -> None``; retried until it succeeds.
        retry: how infrastructure errors of the commit are retried.
        business_errors: exception types that mean "fail the saga", like ``Abort``.
        atomic: with a SQL store in fault-tolerant mode, run the commit and the compensation
            inside a store transaction and lend its connection as ``ctx.connection``, so the
            service's own write and the runtime's record of the step commit together (the
            service's tables then live in the sidecar's database).

    Raises:
        DefinitionError: a commit or compensation that is not ``async def``, or a name that
            is empty or cannot be stored (a NUL character, a lone surrogate).
    """

    def __init__(
        self,
        name: str,
        commit: Commit,
        compensate: Compensate | None = None,
        *,
        retry: Retry | None = None,
        business_errors: tuple[type[BaseException], ...] = (),
        atomic: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name or not name.isprintable():
            # It is part of every idempotency key and log row of the transaction; printable
            # text has no NUL and no lone surrogate, which no store could hold.
            raise DefinitionError(f"transaction name {name!r}: use non-empty printable text")
        if not inspect.iscoroutinefunction(commit):
            raise DefinitionError(f"transaction {name!r}: the commit must be an 'async def' function")
        if compensate is not None and not inspect.iscoroutinefunction(compensate):
            raise DefinitionError(f"transaction {name!r}: the compensation must be an 'async def' function")
        self.name = name
        self.commit = commit
        self.compensate = compensate
        self.retry = retry or Retry()
        self.business_errors: tuple[type[BaseException], ...] = (Abort, *business_errors)
        self.atomic = atomic
        self.__doc__ = commit.__doc__

    def __repr__(self) -> str:
        return f"Transaction({self.name!r})"

    async def __call__(self, ctx: TxContext, *args: Any) -> Any:
        """Call the commit directly (handy in unit tests of a service binding)."""
        return await self.commit(ctx, *args)


@overload
def transaction(fn: Commit, /) -> Transaction: ...


@overload
def transaction(
    fn: None = None,
    /,
    *,
    compensate: Compensate | None = None,
    name: str | None = None,
    retry: Retry | None = None,
    business_errors: tuple[type[BaseException], ...] = (),
    atomic: bool = False,
) -> Callable[[Commit], Transaction]: ...


def transaction(
    fn: Commit | None = None,
    /,
    *,
    compensate: Compensate | None = None,
    name: str | None = None,
    retry: Retry | None = None,
    business_errors: tuple[type[BaseException], ...] = (),
    atomic: bool = False,
) -> Transaction | Callable[[Commit], Transaction]:
    """Make an ``async def`` commit a :class:`Transaction`: ``@ac.transaction(compensate=undo)``.

    Args:
        fn: the commit (when used as ``@ac.transaction`` without arguments).
        compensate: the compensation, called with the commit's arguments and its result.
        name: the logged name (default: the function's qualified name).
        retry: retry policy for infrastructure errors of the commit.
        business_errors: exception types that fail the saga instead of being retried.
        atomic: commit with the store's connection as ``ctx.connection`` (see :class:`Transaction`).
    """

    def wrap(commit: Commit) -> Transaction:
        return Transaction(
            name or commit.__qualname__,
            commit,
            compensate,
            retry=retry,
            business_errors=business_errors,
            atomic=atomic,
        )

    return wrap(fn) if fn is not None else wrap


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Abort):
        return f"Abort: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _detail(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, Abort) else str(exc)


async def commit_with_retry(
    tx: Transaction,
    make_ctx: Callable[[int], TxContext],
    args: Sequence[Any],
    call: Callable[[TxContext], Awaitable[Any]] | None = None,
) -> Any:
    """Run ``tx``'s commit, retrying infrastructure errors by its retry policy.

    ``call(ctx)`` runs one attempt (default: the commit itself); the runtime passes one that
    wraps the commit in a store transaction for atomic transactions.

    Raises:
        TransactionFailedError: a business failure (``Abort``, a listed type, ``False``) or the
            retries were used up (then ``uncertain``: the commit may have taken effect).
    """
    attempt = 1
    while True:
        ctx = make_ctx(attempt)
        try:
            result = await (call(ctx) if call is not None else tx.commit(ctx, *args))
        except tx.business_errors as exc:
            raise TransactionFailedError(
                ctx.role, tx.name, ctx.step, _reason(exc), error_type=type(exc).__name__, detail=_detail(exc)
            ) from exc
        except Exception as exc:
            if attempt >= tx.retry.attempts:
                raise TransactionFailedError(
                    ctx.role,
                    tx.name,
                    ctx.step,
                    f"gave up after {attempt} attempts: {_reason(exc)}",
                    uncertain=True,
                    error_type=type(exc).__name__,
                    detail=f"gave up after {attempt} attempts: {exc}",
                ) from exc
            await asyncio.sleep(tx.retry.delay(attempt))
            attempt += 1
            continue
        if result is False:
            raise TransactionFailedError(
                ctx.role,
                tx.name,
                ctx.step,
                "the commit returned False",
                error_type="Abort",
                detail="the commit returned False",
            )
        return result


async def compensate_until_done(
    tx: Transaction,
    make_ctx: Callable[[int], TxContext],
    args: Sequence[Any],
    result: Any,
    *,
    on_error: Callable[[int, BaseException], None] | None = None,
    max_delay: float = 5.0,
    call: Callable[[TxContext], Awaitable[Any]] | None = None,
) -> None:
    """Run ``tx``'s compensation until it succeeds (backing off up to ``max_delay`` seconds).

    A compensation must eventually succeed: the saga's outcome depends on it, so giving up is
    not an option. ``on_error`` hears about every failed try; ``call(ctx)`` runs one try
    (default: the compensation itself).
    """
    if tx.compensate is None:
        return
    attempt = 1
    while True:
        try:
            ctx = make_ctx(attempt)
            await (call(ctx) if call is not None else tx.compensate(ctx, *args, result))
            return
        except Exception as exc:
            if on_error is not None:
                on_error(attempt, exc)
            await asyncio.sleep(min(max_delay, tx.retry.initial * tx.retry.multiplier ** min(attempt - 1, 30)))
            attempt += 1
