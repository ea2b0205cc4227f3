"""The invariants the explorer checks for one session, once faults have stopped.

Each check returns :class:`Violation` values with a short stable ``code`` (the kind of bug)
and a detail that names roles, statuses and keys, so that a list of failing seeds groups
into distinct failures.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from accompanist.failure import Failure
from accompanist.testing.checks import Violation
from tests.model.ledger import Event

__all__ = ["CentralOutcome", "SessionView", "Violation", "check_session", "failure_fields", "FINAL"]

FINAL = frozenset({"completed", "compensated", "failed"})


@dataclass
class CentralOutcome:
    """What the central interpreter (the reference) did with one input.

    Attributes:
        ok: it returned a result.
        result: that result.
        status: when it failed: ``compensated`` (``SessionFailedError``) or ``failed`` (the
            original exception: nothing had committed).
        error: the exception's text.
        failing_role / failing_tx / message: the business failure that happened.
        roles: roles that took part (from the trace).
        effects / commits: logical effects and commits, to compare with the engine's.
    """

    ok: bool
    result: Any = None
    status: str | None = None
    error: str = ""
    failing_role: str | None = None
    failing_tx: str | None = None
    message: str | None = None
    roles: set[str] = field(default_factory=set)
    effects: set[tuple[Any, ...]] = field(default_factory=set)
    commits: set[tuple[Any, ...]] = field(default_factory=set)


@dataclass
class SessionView:
    """Everything known about one session of one run, as the checks need it."""

    index: int
    sid: str
    durable: bool
    lossy: bool
    initiator: str
    central: CentralOutcome
    records: dict[str, Any]
    result: Any
    settled: bool
    events: list[Event]
    raw: dict[tuple[str, str], int]
    cancels: list[Any]
    disturbed: set[str]
    ordered_compensation: bool
    divergence: dict[str, Any] | None = None
    live: set[str] = field(default_factory=set)  # roles where the session has a task now
    kind: str = ""  # "" for a detected saga, ":undetected-saga" or ":no-transactions" otherwise
    told: str = ""  # what the roles' stores hold of the session (inbox and unacked outbox), compactly


def failure_fields(record: Any) -> tuple[Any, ...] | None:
    """The structured failure of a record (role, step, transaction, error_type, message), or
    None when the engine has no such field yet or left it empty."""
    raw = getattr(record, "failure", None)
    if raw is None:
        return None
    failure = Failure.decode(raw) if isinstance(raw, (bytes, bytearray)) else raw
    return (failure.role, failure.step, failure.transaction, failure.error_type, failure.message)


_INFRA = ("BufferOverflowError", "ReceiveTimeoutError", "StoreError", "connection lost", "TransportError")


def cause(text: str | None) -> str:
    """The infrastructure error a failure reason names, or ``business``/``cancel``/``other``."""
    text = text or ""
    for name in _INFRA:
        if name in text:
            return "StoreError" if name == "connection lost" else name
    if "cancelled by an operator" in text:
        return "cancel"
    if "boom at" in text or "declined" in text:
        return "business"
    return "other"


def _statuses(v: SessionView) -> dict[str, str]:
    return {r: rec.status for r, rec in v.records.items() if rec is not None}


def _line(v: SessionView) -> str:
    return ", ".join(f"{r}={s}" for r, s in sorted(_statuses(v).items())) or "no records"


def check_session(v: SessionView) -> list[Violation]:
    out: list[Violation] = []
    statuses = _statuses(v)
    final = {s for s in statuses.values() if s in FINAL}
    if "completed" in final and final - {"completed"}:
        out.append(Violation("disagree" + v.kind, f"session {v.index}: terminal statuses differ: {_line(v)}"))
    if v.lossy:  # default mode over a lossy network promises little more than that
        out += _ledger_basics(v)
        return out
    if not v.settled:
        never = set(v.central.roles - set(statuses)) if v.central.ok else set()
        for rec in v.records.values():  # waiting for the first message of a role that never started
            found = re.search(r"envelope #1 from '(\w+)'", (rec.error or "") if rec is not None else "")
            if found and found.group(1) not in statuses:
                never.add(found.group(1))
        never = sorted(never)
        code = "stuck"
        orphans = sorted(r for r, st in statuses.items() if st in ("running", "compensating") and r not in v.live)
        if "diverged" in statuses.values():
            code = "stuck:diverged"
        elif never:
            code = "stuck:participant-never-started"
        elif orphans:  # the record says it runs, but no task runs it (nothing will retry it)
            code = "stuck:orphaned-record"
        elif any(rec is not None and rec.attempts >= 20 for rec in v.records.values()):
            code = "stuck:replay-loop"  # replayed again and again without getting further
        detail = f"session {v.index}: not terminal everywhere in time: {_line(v)}"
        if never:
            detail += f"; {never} took part centrally but never started"
        if orphans:
            detail += f"; no task runs the session at {orphans}"
        out.append(Violation(code, detail))
    elif len(set(statuses.values())) > 1 and not any(x.code.startswith("disagree") for x in out):
        out.append(Violation("disagree" + v.kind, f"session {v.index}: statuses differ: {_line(v)}"))
    outcome = next(iter(set(statuses.values()))) if len(set(statuses.values())) == 1 else None
    out += _failure_agreement(v)
    out += _ledger_basics(v)
    if outcome is not None and outcome in FINAL:
        out += _ledger_outcome(v, outcome)
    out += _expected_outcome(v, outcome)
    out += _cancel_rules(v, outcome)
    out += _divergence_rules(v)
    return out


def _failure_agreement(v: SessionView) -> list[Violation]:
    failed = {r: rec for r, rec in v.records.items() if rec is not None and rec.status in ("compensated", "failed")}
    if len(failed) < 2:
        return []
    structured = {r: failure_fields(rec) for r, rec in failed.items()}
    if any(f is not None for f in structured.values()):
        if len(set(structured.values())) > 1:
            lines = "; ".join(f"{r}: {f}" for r, f in sorted(structured.items()))
            return [Violation("failure-disagree", f"session {v.index}: roles record different failures: {lines}")]
        return []
    texts = {r: rec.error for r, rec in failed.items()}
    if len(set(texts.values())) > 1:
        lines = "; ".join(f"{r}: {t!r}" for r, t in sorted(texts.items()))
        return [Violation("failure-disagree", f"session {v.index}: roles give different reasons: {lines}")]
    return []


def _ledger_basics(v: SessionView) -> list[Violation]:
    out = []
    keys: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for e in v.events:
        if e.kind == "effect":
            keys[(e.role, e.label, e.logical[1])].add(e.key)
    for (role, label, iters), seen in sorted(keys.items(), key=str):
        if len(seen) > 1:
            out.append(
                Violation(
                    "effect-twice",
                    f"session {v.index}: effect {label} at {role} (iterations {iters}) reached the service under "
                    f"{len(seen)} different keys: {sorted(seen)}",
                )
            )
    commits = {e.key: e for e in v.events if e.kind == "commit"}
    for e in v.events:
        if e.kind == "undo" and e.key not in commits:
            out.append(Violation("undo-without-commit", f"session {v.index}: {e.key} compensated but never committed"))
        elif e.kind == "undo" and commits[e.key].value != e.value:
            out.append(
                Violation(
                    "undo-wrong-result",
                    f"session {v.index}: {e.key} compensated with result {e.value!r}, "
                    f"committed {commits[e.key].value!r}",
                )
            )
    for (kind, key), n in sorted(v.raw.items()):
        role = key.split("/")[1] if "/" in key else ""
        if kind in ("commit", "effect", "undo") and n > 1 and role not in v.disturbed:
            out.append(
                Violation(
                    f"{kind}-rerun",
                    f"session {v.index}: {kind} {key} was called {n} times though {role} never crashed "
                    "and its store never failed",
                )
            )
    return out


def _ledger_outcome(v: SessionView, outcome: str) -> list[Violation]:
    out = []
    commits = [e for e in v.events if e.kind == "commit"]
    undone = {e.key for e in v.events if e.kind == "undo"}
    if outcome == "completed":
        if undone:
            out.append(
                Violation("undo-on-completed", f"session {v.index}: completed, yet compensated {sorted(undone)}")
            )
        if v.central.ok:
            effects = {(e.role, e.label, e.logical[1]) for e in v.events if e.kind == "effect"}
            did = {(e.role, e.label, e.logical) for e in commits}
            for what, engine, central in (("effects", effects, v.central.effects), ("commits", did, v.central.commits)):
                if engine != central:
                    missing = sorted(central - engine, key=str)
                    extra = sorted(engine - central, key=str)
                    out.append(
                        Violation(
                            f"{what}-differ",
                            f"session {v.index}: completed, but its {what} differ from the central run's: "
                            f"missing {missing}, extra {extra}",
                        )
                    )
        return out
    left = [e.key for e in commits if e.key not in undone]
    if left:
        out.append(
            Violation("commit-not-compensated" + v.kind, f"session {v.index}: {outcome}, but {left} stay committed")
        )
    if outcome == "failed" and commits:
        out.append(
            Violation(
                "failed-but-committed" + v.kind,
                f"session {v.index}: status 'failed' (nothing committed) though {[e.key for e in commits]} committed",
            )
        )
    if v.ordered_compensation:
        by_role: dict[str, list[str]] = defaultdict(list)
        for e in v.events:
            if e.kind == "undo":
                by_role[e.role].append(e.key)
        for role, undos in by_role.items():
            order = [e.key for e in commits if e.role == role and e.key in undos]
            if undos != order[::-1]:
                out.append(Violation("undo-order", f"session {v.index}: {role} compensated {undos}, committed {order}"))
    return out


def _expected_outcome(v: SessionView, outcome: str | None) -> list[Violation]:
    clean = v.central.ok and not v.cancels and v.divergence is None
    init = v.records.get(v.initiator)
    out = []
    if v.central.ok and outcome == "completed" and v.result != v.central.result:
        out.append(
            Violation("result-mismatch", f"session {v.index}: result {v.result!r}, central {v.central.result!r}")
        )
    if clean and v.settled and outcome != "completed":
        errors = "; ".join(
            f"{r}: {rec.status} ({rec.error})" for r, rec in sorted(v.records.items()) if rec is not None
        )
        why = cause(init.error if init is not None else None)
        out.append(
            Violation(
                f"not-completed:{why}",
                f"session {v.index}: no business failure, no cancel, yet not completed everywhere: {errors}",
            )
        )
    if clean and outcome == "completed":
        missing = sorted(v.central.roles - {r for r, rec in v.records.items() if rec is not None})
        if missing:
            out.append(Violation("participant-missing", f"session {v.index}: {missing} took part centrally, no record"))
    if not v.central.ok and outcome == "completed":
        out.append(
            Violation("failure-ignored", f"session {v.index}: completed, but the central run failed: {v.central.error}")
        )
    if not v.central.ok and not v.cancels and init is not None and init.status in ("compensated", "failed"):
        fields = failure_fields(init)
        if fields is not None:
            role, _step, tx, _etype, message = fields
            if role != v.central.failing_role or tx != v.central.failing_tx or v.central.message not in message:
                why = cause(f"{_etype}: {message}")
                out.append(
                    Violation(
                        "failure-mismatch" if why in ("business", "other") else f"failure-mismatch:{why}",
                        f"session {v.index}: failure {fields}, expected role {v.central.failing_role}, "
                        f"transaction {v.central.failing_tx}, message {v.central.message!r}",
                    )
                )
        elif v.central.message not in (init.error or "") or f"'{v.central.failing_role}'" not in (init.error or ""):
            why = cause(init.error)
            out.append(
                Violation(
                    "failure-mismatch" if why in ("business", "other") else f"failure-mismatch:{why}",
                    f"session {v.index}: reason {init.error!r} does not name role {v.central.failing_role} "
                    f"and {v.central.message!r}",
                )
            )
    return out


_UNDECIDED = frozenset({"running", "parked", "finished", "diverged"})


def _cancel_rules(v: SessionView, outcome: str | None) -> list[Violation]:
    out = []
    for c in v.cancels:
        kind, _, detail = c.outcome.partition(":")
        if kind == "error":
            out.append(Violation("cancel-error", f"session {v.index}: cancel at {c.role} raised {detail}"))
        elif kind in ("decided", "refused") and outcome not in (None, "completed") and v.central.ok:
            out.append(
                Violation(
                    "cancel-mix",
                    f"session {v.index}: cancel at {c.role} was refused ({detail}) but the session ended {outcome}",
                )
            )
        elif kind == "returned" and detail == "completed":
            out.append(
                Violation(
                    "cancel-silently-lost",
                    f"session {v.index}: cancel at {c.role} returned a completed record instead of raising "
                    "OutcomeDecidedError",
                )
            )
        elif kind == "returned" and outcome == "completed" and not (c.role != "r0" and detail in _UNDECIDED):
            # A cancel at another role than the initiator that returns an undecided record was
            # forwarded to the initiator: a request, which loses if the outcome came first.
            out.append(
                Violation(
                    "cancel-mix",
                    f"session {v.index}: cancel at {c.role} was accepted (status {detail}) but the session completed",
                )
            )
    return out


def _divergence_rules(v: SessionView) -> list[Violation]:
    d = v.divergence
    if d is None:
        return []
    out = []
    role = d["role"]
    # Seen as a status, or (when the session was decided meanwhile, e.g. by a business
    # failure) as the notice the diverging role sent to the others.
    if not d["seen"] and f"{role}:diverged" not in v.told:
        out.append(
            Violation(
                "divergence-unreported",
                f"session {v.index}: {role} restarted with changed code over a journal of {d['journal']} steps, "
                f"but never showed 'diverged' (status then: {d['status_then']})",
            )
        )
    completed = sorted(r for r, s in d["others"].items() if s == "completed")
    if completed:
        out.append(
            Violation(
                "divergence-silent-completion" + v.kind,
                f"session {v.index}: {role} diverged while {completed} showed 'completed'",
            )
        )
    return out
