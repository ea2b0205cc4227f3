"""Testing your own choreography: interpreters, in-process clusters, fault exploration, replay.

``run_projected`` runs every role's projection concurrently without an engine;
:class:`Cluster` runs real sidecar engines in this process over a memory network, crashable
and restartable; :func:`explore` crashes and fails every step of a choreography in turn and
checks the saga invariants; :func:`virtual_clock` and :func:`run_virtual` make timeouts and
backoff take no wall time; :class:`Ledger` records effects to show which ran twice. The
``accompanist.testing.pytest_plugin`` module (loaded by pytest automatically) offers the
``cluster`` and ``explore`` fixtures. This layer sits above the engine: nothing below imports
it.
"""

from accompanist.testing.checks import CentralOutcome, ExploreError, ExploreReport, RunReport, Violation
from accompanist.testing.clock import run_virtual, virtual_clock, virtual_time_available
from accompanist.testing.cluster import Cluster, quick_config
from accompanist.testing.explore import explore, explore_async
from accompanist.testing.ledger import EffectLog, Ledger, LedgerEntry
from accompanist.testing.probe import Crash, Schedule, TxId
from accompanist.testing.projected import run_projected
from accompanist.testing.replay import ReplayReport, SessionExport, export_session, load_export, replay_session

__all__ = [
    "CentralOutcome",
    "Cluster",
    "Crash",
    "EffectLog",
    "ExploreError",
    "ExploreReport",
    "Ledger",
    "LedgerEntry",
    "ReplayReport",
    "RunReport",
    "SessionExport",
    "Schedule",
    "TxId",
    "Violation",
    "explore",
    "explore_async",
    "export_session",
    "load_export",
    "quick_config",
    "replay_session",
    "run_projected",
    "run_virtual",
    "virtual_clock",
    "virtual_time_available",
]
