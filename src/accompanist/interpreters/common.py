"""What both interpreters share: argument checks, the session result, sync-or-async entry."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from accompanist.errors import DefinitionError, ProjectionError, SessionFailedError, TransactionFailedError
from accompanist.failure import Failure
from accompanist.language.choreography import Choreography
from accompanist.language.located import ABSENT, Located, make_located
from accompanist.language.roles import Role
from accompanist.language.transaction import Transaction, TxContext, commit_with_retry, compensate_until_done

__all__ = ["Committed", "SagaLog", "check_args", "initiator_args", "maybe_sync", "session_result"]


def check_args(choreography: Choreography, args: Sequence[Any]) -> None:
    """Check the argument count against the choreography's signature.

    Raises:
        DefinitionError: too many or too few arguments.
    """
    if len(args) != choreography.arity:
        raise DefinitionError(
            f"choreography {choreography.name!r} takes {choreography.arity} argument(s), got {len(args)}"
        )


def initiator_args(choreography: Choreography, role: Role | None, args: Sequence[Any]) -> list[Located[Any]]:
    """The arguments as values located at the initiator (empty placeholders elsewhere)."""
    init = choreography.initiator
    here = role is None or role == init
    return [make_located((init,), a if here else ABSENT) for a in args]


def session_result(choreography: Choreography, returned: Any) -> Any:
    """The plain value the initiator receives as the session's result.

    Raises:
        ProjectionError: the choreography returned a value the initiator does not own.
    """
    if isinstance(returned, Located):
        init = choreography.initiator
        if init not in returned.owners:
            raise ProjectionError(
                init.name,
                tuple(sorted(r.name for r in returned.owners)),
                "session result",
                "a choreography must return a value located at its initiator (the first role)",
            )
        return returned._raw()
    return returned


def maybe_sync(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run the coroutine to completion when no event loop runs; otherwise return it to await.

    This lets ``ac.run_central(...)`` work in a plain script and ``await ac.run_central(...)``
    work inside async code.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    return factory()


@dataclass
class Committed:
    """A committed saga transaction, kept to compensate it if the saga fails.

    ``clock`` is the commit's Lamport time at its role: a commit that causally follows another
    (through messages) has a larger clock, so compensating in decreasing clock order undoes
    the saga in reverse causal order. ``settle``: only its intent is known (the sidecar stopped
    between the service call and recording its result), so the commit is run again with the
    same idempotency key, to learn its result, before it is compensated.
    """

    tx: Transaction
    args: list[Any]
    result: Any
    ctx: TxContext
    clock: int = 0
    settle: bool = False


class SagaLog:
    """The in-memory saga bookkeeping of the central and test interpreters: occurrence
    counters and committed transactions, compensated in reverse order on failure.

    ``failed_at`` is where the failing step ran (role, step index), recorded by the
    interpreter, so that the failure names the same role and step as the sidecars do.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.occurrences: dict[tuple[str, str], int] = {}
        self.committed: list[Committed] = []
        self.failed_at: tuple[str, int | None] | None = None

    async def commit(self, role: Role, tx: Transaction, args: list[Any], step: int) -> Any:
        """Commit ``tx`` at ``role``'s ``step`` (with retries) and remember it."""
        occurrence = self.occurrences.get((role.name, tx.name), 0)
        self.occurrences[(role.name, tx.name)] = occurrence + 1

        def ctx(attempt: int) -> TxContext:
            return TxContext(self.session_id, role.name, tx.name, occurrence, step, attempt)

        try:
            result = await commit_with_retry(tx, ctx, args)
        except TransactionFailedError as exc:
            if exc.uncertain:  # it may have taken effect: undo it too
                self.committed.append(Committed(tx, args, None, ctx(1), len(self.committed)))
            raise
        self.committed.append(Committed(tx, args, result, ctx(1), len(self.committed)))
        return result

    async def compensate(self) -> None:
        """Compensate everything committed, last first."""
        while self.committed:
            done = self.committed.pop()
            base = done.ctx

            def ctx(attempt: int, base: TxContext = base) -> TxContext:
                return dataclasses.replace(base, attempt=attempt, compensating=True)

            await compensate_until_done(done.tx, ctx, done.args, done.result)

    def failure(self, exc: BaseException, role: str) -> Failure:
        """The structured failure of ``exc``: where the failing step ran, or ``role`` (the
        initiator) when it came from no step."""
        where, step = self.failed_at if self.failed_at is not None else (role, None)
        return Failure.of(exc, where, step)

    async def fail(self, exc: BaseException, role: str) -> NoReturn:
        """Compensate (if anything committed) and raise: a ``SessionFailedError`` with status
        ``compensated`` for a saga, the original error otherwise."""
        if not self.committed and not isinstance(exc, TransactionFailedError):
            raise exc
        await self.compensate()
        failure = self.failure(exc, role)
        raise SessionFailedError(
            self.session_id, failure.role, failure.describe(), "compensated", failure=failure
        ) from exc
