"""What an operator needs to know during a rolling upgrade: changed code under unfinished
sessions, and which versions are still needed.

* **Changed code.** Each session records the fingerprint of the code it started with
  (:mod:`accompanist.engine.origin`). At start, before replaying, a sidecar compares it with
  the code it now has at the same name and version; sessions whose code changed without a
  version bump may diverge when they replay. It says so once per choreography version, on its
  log (naming the choreography, the version, both fingerprints and the sessions), in the
  ``accompanist_sessions_code_changed`` gauge, and in ``GET /versions``.
* **Versions still needed.** ``GET /versions`` (:func:`versions_report`) lists, per
  choreography, the versions served, the version a new session would start at (given what
  the peers said in their hellos), the unfinished sessions per version (an old version can be
  removed once none needs it), versions that unfinished sessions need but this sidecar does
  not serve (those sessions are blocked until the version is deployed again), and versions
  with unfinished sessions that a peer said it lacks (they wait until it serves them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from accompanist.engine.origin import origin_of
from accompanist.errors import UnknownChoreographyError
from accompanist.language.choreography import App
from accompanist.store.base import SessionRecord

if TYPE_CHECKING:
    from accompanist.engine.runs import Runs

__all__ = ["CodeChange", "code_changes", "stored_report", "versions_report", "warn_code_changes"]

_NAMED = 10  # sessions named in a warning; the rest are counted


class CodeChange(msgspec.Struct, frozen=True, kw_only=True):
    """Unfinished sessions of one choreography version whose code changed since they started.

    Attributes:
        choreography: its name.
        version: the version (unchanged, although the code changed).
        recorded: the fingerprint the sessions started with.
        current: the fingerprint of the code this sidecar runs now.
        sessions: the first :data:`_NAMED` session ids.
        count: how many sessions in all.
    """

    choreography: str
    version: int
    recorded: str
    current: str
    sessions: list[str]
    count: int

    def describe(self) -> str:
        """One line for the log."""
        more = f" and {self.count - len(self.sessions)} more" if self.count > len(self.sessions) else ""
        return (
            f"choreography {self.choreography!r} v{self.version} changed without a version bump "
            f"(fingerprint {self.recorded} -> {self.current}) under {self.count} unfinished session(s): "
            f"{', '.join(self.sessions)}{more}; their replay may diverge: deploy the old code again, or "
            "register the new code as a new version (or guard the change with ch.patched)"
        )


def code_changes(app: App, records: Iterable[SessionRecord]) -> list[CodeChange]:
    """The changed code under ``records`` (unfinished sessions), one entry per choreography
    version and recorded fingerprint; sessions without a recorded fingerprint are unknown and
    not listed, nor are those of versions not served here (they are blocked)."""
    found: dict[tuple[str, int, str], list[str]] = {}
    current: dict[tuple[str, int], str] = {}
    for record in records:
        origin = origin_of(record.seed)
        if origin is None or not origin.fingerprint:
            continue
        key = (record.choreography, record.version)
        if key not in current:
            try:
                current[key] = app.get(*key).fingerprint
            except UnknownChoreographyError:
                current[key] = ""
        now = current[key]
        if now and now != origin.fingerprint:
            found.setdefault((*key, origin.fingerprint), []).append(record.session_id)
    return [
        CodeChange(
            choreography=name,
            version=version,
            recorded=recorded,
            current=current[(name, version)],
            sessions=sorted(ids)[:_NAMED],
            count=len(ids),
        )
        for (name, version, recorded), ids in sorted(found.items())
    ]


def warn_code_changes(engine: Runs, records: Iterable[SessionRecord]) -> list[CodeChange]:
    """At start, before replaying: log and count changed code under unfinished sessions."""
    changes = code_changes(engine.app, records)
    for change in changes:
        engine.log.warning("%s", change.describe())
    engine.metrics.code_changed.set(sum(c.count for c in changes))
    return changes


async def versions_report(engine: Runs) -> dict[str, Any]:
    """The ``GET /versions`` answer (see the module docstring).

    Raises:
        StoreError: the store is failing.
    """
    unfinished = await engine.guard.once(engine.store.nonterminal_sessions)
    by_name: dict[str, dict[int, int]] = {}
    for record in unfinished:
        counts = by_name.setdefault(record.choreography, {})
        counts[record.version] = counts.get(record.version, 0) + 1
    changes = code_changes(engine.app, unfinished)
    served = engine.app.known()
    peers = engine.versions
    out: list[dict[str, Any]] = []
    for name in sorted(set(served) | set(by_name)):
        versions = served.get(name, [])
        counts = by_name.get(name, {})
        latest = engine.app.get(name) if versions else None
        initiates = latest is not None and latest.initiator.name == engine.role
        best = peers.best(name) if initiates else None
        roles = sorted({r.name for c in engine.app if c.name == name for r in c.roles} - {engine.role})
        out.append(
            {
                "choreography": name,
                "served": versions,
                "fingerprints": {str(v): engine.app.get(name, v).fingerprint for v in versions},
                "initiator": initiates,
                "next_version": best.version if best is not None else None,
                "unfinished": {str(v): n for v, n in sorted(counts.items())},
                "needed_not_served": sorted(v for v in counts if v not in versions),
                "peers_lacking": _lacking(engine, name, counts, roles),
                "peers": {role: _peer(engine, role, name) for role in roles},
                "code_changed": [msgspec.to_builtins(c) for c in changes if c.choreography == name],
            }
        )
    return {"role": engine.role, "choreographies": out}


def _lacking(engine: Runs, name: str, counts: dict[int, int], roles: list[str]) -> dict[str, list[str]]:
    """Versions with unfinished sessions here that a peer said it does not serve (those
    sessions wait until it does: started while it was unknown, or it was downgraded)."""
    out: dict[str, list[str]] = {}
    for version in sorted(counts):
        missing = [r for r in roles if engine.versions.serves(r, name, version) is False]
        if missing:
            out[str(version)] = missing
    return out


def _peer(engine: Runs, role: str, name: str) -> dict[str, Any]:
    known = engine.versions.peer(role)
    if known is None:
        return {"served": None, "fingerprints": {}}
    versions = known.get(name, {})
    return {
        "served": sorted(versions),
        "fingerprints": {str(v): s.fingerprint for v, s in sorted(versions.items())},
    }


def stored_report(role: str, records: Iterable[SessionRecord], app: App | None = None) -> dict[str, Any]:
    """What a store alone says (``accompanist versions --store``): the unfinished sessions per
    version and the fingerprints they started with; with ``app`` (the code about to be
    deployed), what it serves and the sessions whose code it changes."""
    unfinished = list(records)
    by_name: dict[str, dict[int, int]] = {}
    recorded: dict[str, dict[int, dict[str, int]]] = {}
    for record in unfinished:
        counts = by_name.setdefault(record.choreography, {})
        counts[record.version] = counts.get(record.version, 0) + 1
        origin = origin_of(record.seed)
        fingerprint = origin.fingerprint if origin is not None and origin.fingerprint else "unknown"
        prints = recorded.setdefault(record.choreography, {}).setdefault(record.version, {})
        prints[fingerprint] = prints.get(fingerprint, 0) + 1
    served = app.known() if app is not None else {}
    changes = code_changes(app, unfinished) if app is not None else []
    out: list[dict[str, Any]] = []
    for name in sorted(set(served) | set(by_name)):
        counts = by_name.get(name, {})
        versions = served.get(name, [])
        out.append(
            {
                "choreography": name,
                "served": versions if app is not None else None,
                "fingerprints": {str(v): app.get(name, v).fingerprint for v in versions} if app is not None else {},
                "unfinished": {str(v): n for v, n in sorted(counts.items())},
                "recorded_fingerprints": {str(v): fp for v, fp in sorted(recorded.get(name, {}).items())},
                "needed_not_served": sorted(v for v in counts if v not in versions) if app is not None else [],
                "code_changed": [msgspec.to_builtins(c) for c in changes if c.choreography == name],
            }
        )
    return {"role": role, "choreographies": out}
