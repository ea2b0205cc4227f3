"""Startup and shutdown hooks of an ``ac.App``: open a role's clients once, close them cleanly.

The code that calls a service (inside ``ch.locally`` or a transaction) needs a client: a gRPC
channel, an HTTP session, a connection pool. Opening one per call is slow, and one opened
lazily is never closed (aiohttp then warns "Unclosed client session" at every shutdown). So an
app registers hooks, and whatever runs a role runs them around its work::

    app = ac.App(checkout)

    @app.on_startup
    async def open_clients(role: str) -> None:
        await clients.open(role)  # only this role's service

    @app.on_shutdown
    async def close_clients(role: str) -> None:
        await clients.close(role)

A sidecar runs the startup hooks for its role, in the order they were registered, before its
engine starts (a recovered session may call a service at once), and the shutdown hooks in
reverse order after its engine stopped (no session still uses a client). ``ac.run_central``
and ``ac.testing.run_projected`` run them for every role when given ``app=``.

A startup hook that raises makes a failed start: the shutdown hooks then run all the same, in
reverse order, so whatever the earlier hooks opened is released; a shutdown hook must
therefore accept that its resource may never have been opened. A shutdown hook that raises
does not stop the others.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from accompanist.errors import DefinitionError, LifecycleError

__all__ = ["Hook", "Lifecycle"]

Hook = Callable[[str], Awaitable[None]]
"""A lifecycle hook: ``async def hook(role: str) -> None``, given the role being started or stopped."""

_log = logging.getLogger("accompanist.app")


def _name(hook: object) -> str:
    name = str(getattr(hook, "__qualname__", None) or getattr(hook, "__name__", None) or repr(hook))
    return name.rsplit("<locals>.", 1)[-1]  # "make_app.<locals>.open" reads better as "open"


def _check(hook: object, what: str) -> Hook:
    if not callable(hook):
        raise DefinitionError(f"{what}: expected an 'async def hook(role: str)', got {hook!r}")
    call = type(hook).__call__  # an object with an async __call__ is a hook too
    if not (inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(call)):
        raise DefinitionError(f"{what}: {_name(hook)!r} must be an 'async def' function taking the role name")
    return hook


class Lifecycle:
    """The startup and shutdown hooks of one app, and how to run them for a set of roles."""

    def __init__(self) -> None:
        self.startup: list[Hook] = []
        self.shutdown: list[Hook] = []

    def on_startup(self, hook: Hook) -> Hook:
        """Register ``hook`` to run when a role starts (decorator; returns ``hook``).

        Raises:
            DefinitionError: ``hook`` is not an ``async def`` function.
        """
        self.startup.append(_check(hook, "on_startup"))
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Register ``hook`` to run when a role stops (decorator; returns ``hook``).

        Raises:
            DefinitionError: ``hook`` is not an ``async def`` function.
        """
        self.shutdown.append(_check(hook, "on_shutdown"))
        return hook

    async def start(self, roles: Sequence[str]) -> None:
        """Run the startup hooks for each of ``roles`` (roles in order, hooks in order).

        Raises:
            LifecycleError: a hook raised; every shutdown hook has then run for every role
                that began starting, so nothing opened is left behind.
        """
        begun: list[str] = []
        for role in roles:
            begun.append(role)
            for hook in self.startup:
                try:
                    await hook(role)
                except Exception as exc:
                    error = LifecycleError("startup", _name(hook), role, exc)
                    await self.stop(begun, raise_errors=False)
                    raise error from exc

    async def stop(self, roles: Sequence[str], *, raise_errors: bool = True) -> None:
        """Run the shutdown hooks for each of ``roles``: roles and hooks in reverse order.

        Every hook runs even when an earlier one raised.

        Raises:
            LifecycleError: a hook raised (the first such error; each is also logged), unless
                ``raise_errors`` is false.
        """
        first: LifecycleError | None = None
        for role in reversed(roles):
            for hook in reversed(self.shutdown):
                try:
                    await hook(role)
                except Exception as exc:
                    error = LifecycleError("shutdown", _name(hook), role, exc)
                    _log.error("%s", error, exc_info=exc)
                    first = first or error
        if first is not None and raise_errors:
            raise first

    @contextlib.asynccontextmanager
    async def running(self, roles: Sequence[str]) -> AsyncIterator[None]:
        """Start ``roles`` on entry and stop them on exit (also when the body raises).

        Raises:
            LifecycleError: a startup hook failed (the body does not run), or a shutdown hook
                failed after a body that did not raise.
        """
        await self.start(roles)
        try:
            yield
        except BaseException:
            await self.stop(roles, raise_errors=False)
            raise
        await self.stop(roles)
