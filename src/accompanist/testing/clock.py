"""Virtual time for tests: receive timeouts, parking, retries and backoff in milliseconds.

Why: a choreography that waits an hour for a message, or a saga whose commit retries with
backoff for minutes, should be testable in a unit test. The engine reads time through the
event loop (``asyncio.sleep``, ``asyncio.timeout``, ``loop.time()``) for every wait that
matters to a session, so an event loop whose clock jumps to the next scheduled timer whenever
every task is idle runs those waits at once, without changing their order. The well-kept
`looptime <https://pypi.org/project/looptime/>`_ library (the ``testing`` extra) does exactly
that; this module applies it to the running loop or to a fresh one.

Limits: ``looptime`` patches selector event loops (the standard asyncio loop), not uvloop.
Waits on real I/O (sockets, threads such as SQLite's writer) take real time, and the loop's
clock may jump while one is in progress: use the in-memory store and network with it, as
:class:`~accompanist.testing.Cluster` and :func:`~accompanist.testing.explore` do. A few
engine paths measure elapsed time with ``time.monotonic()`` instead of the loop's clock (the
relay's redelivery backoff, the outcome round's give-up, reachability); they keep working
under a virtual clock but wait in real time (milliseconds with
:func:`~accompanist.testing.quick_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from accompanist.errors import ConfigError

__all__ = ["poll_interval", "run_virtual", "virtual_clock", "virtual_time_available"]

T = TypeVar("T")


def _looptime() -> Any:
    try:
        import looptime
    except ModuleNotFoundError:
        return None
    return looptime


def virtual_time_available() -> bool:
    """Whether ``looptime`` is installed (``pip install 'accompanist[testing]'``)."""
    return _looptime() is not None


def poll_interval(real: float = 0.01, virtual: float = 1.0) -> float:
    """How long a test helper should sleep between two looks at a condition (at most): briefly
    in real time, but long on a virtual clock, where each sleep is a step of the clock that
    costs real work, and short steps would make an hour of virtual time cost many of them."""
    loop = asyncio.get_running_loop()
    return virtual if getattr(loop, "looptime_on", False) else real


def _require() -> Any:
    lib = _looptime()
    if lib is None:
        raise ConfigError("virtual time needs the looptime package: pip install 'accompanist[testing]'")
    return lib


@contextlib.asynccontextmanager
async def virtual_clock() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """Run the body on a virtual clock: the running loop's time jumps to its next timer
    whenever nothing is ready to run. The clock goes on from the loop's current time.

    Raises:
        ConfigError: ``looptime`` is not installed, or the running loop cannot be patched
            (uvloop).
    """
    lib = _require()
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.BaseEventLoop) or not hasattr(loop, "_selector"):
        raise ConfigError(f"virtual time needs a selector asyncio event loop, not {type(loop).__name__}")
    if isinstance(loop, lib.LoopTimeEventLoop) and loop.looptime_on:
        yield loop  # already virtual (e.g. a test marked @pytest.mark.looptime)
        return
    if not isinstance(loop, lib.LoopTimeEventLoop):
        lib.patch_event_loop(loop, start=loop.time(), _enabled=False)
    with lib.enabled(loop=loop, strict=True):
        yield loop


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a new event loop with a virtual clock (from plain code).

    Raises:
        ConfigError: ``looptime`` is not installed.
    """
    lib = _require()
    loop = lib.new_event_loop()
    try:
        asyncio.set_event_loop(loop)

        async def go() -> T:
            return await main()

        return loop.run_until_complete(go())  # type: ignore[no-any-return]
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
