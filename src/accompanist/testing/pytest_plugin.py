"""The pytest plugin: ``cluster`` and ``explore`` fixtures for testing a choreography.

Installed with accompanist (entry point ``pytest11``), so any test suite gets them::

    async def test_order_survives_a_crash(cluster):
        async with cluster(order) as c:                 # one engine per role, in this process
            sid = await c.start_session(order, the_order)
            await c.crash("payment")
            await c.restart("payment")                   # replays from its store
            records = await c.settle(sid)
            assert {r.status for r in records.values() if r} == {"completed"}

    def test_order_under_every_fault(explore):
        explore(order, the_order, effects=ledger)       # fails the test with a readable trace

Why fixtures and not helpers alone: a failing exploration should read like a test failure
(the schedule, each role's outcome and the broken invariant, without a traceback into the
runtime), and a cluster a test forgot to close should not leak engines into the next test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import Any

import pytest

from accompanist.language.choreography import App, Choreography
from accompanist.testing.checks import ExploreError, ExploreReport
from accompanist.testing.cluster import Cluster
from accompanist.testing.explore import explore as _explore

__all__ = ["ClusterFactory", "Explorer", "cluster", "explore"]


class ClusterFactory:
    """Builds :class:`~accompanist.testing.Cluster` objects for one test (use each with
    ``async with``); the ones left running are reported at teardown."""

    def __init__(self) -> None:
        self.made: list[Cluster] = []

    def __call__(self, app: App | Choreography, **options: Any) -> Cluster:
        """A cluster of ``app``'s roles; ``options`` as for :class:`~accompanist.testing.Cluster`."""
        made = Cluster(app, **options)
        self.made.append(made)
        return made

    def left_running(self) -> list[str]:
        """Roles whose engines still run (a cluster used without ``async with``)."""
        return [role for c in self.made for role in c.engines]


class Explorer:
    """Calls :func:`accompanist.testing.explore` and turns a broken invariant into a test
    failure whose message is the first failing schedule's trace."""

    def __call__(self, target: Any, *args: Any, **options: Any) -> Any:
        """Explore ``target`` (sync from a plain test, awaitable from an async one)."""
        try:
            outcome = _explore(target, *args, **options)
        except ExploreError as exc:
            pytest.fail(str(exc.report), pytrace=False)
        if isinstance(outcome, ExploreReport):
            return outcome
        return self._awaited(outcome)

    async def _awaited(self, pending: Awaitable[ExploreReport]) -> ExploreReport:
        try:
            return await pending
        except ExploreError as exc:
            pytest.fail(str(exc.report), pytrace=False)


@pytest.fixture
def cluster() -> Iterator[ClusterFactory]:
    """A factory of in-process clusters: ``async with cluster(app) as c: ...``."""
    factory = ClusterFactory()
    yield factory
    left = factory.left_running()
    if left:
        pytest.fail(f"a cluster was left running (roles {left}): use it as 'async with cluster(app) as c'")


@pytest.fixture
def explore() -> Explorer:
    """``explore(choreography, *args, **options)``: see :func:`accompanist.testing.explore`."""
    return Explorer()
