"""What both interpreters share: argument checks, the session result, sync-or-async entry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from accompanist.errors import DefinitionError, ProjectionError
from accompanist.language.choreography import Choreography
from accompanist.language.located import ABSENT, Located, make_located
from accompanist.language.roles import Role

__all__ = ["check_args", "initiator_args", "maybe_sync", "session_result"]


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
