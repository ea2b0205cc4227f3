"""The invariants :func:`accompanist.testing.explore` checks after each run, and its report.

Why these four: they are what a saga promises its users whatever crashes. Every role ends the
session the same way; a service sees each effect at most once per idempotency key (the
runtime repeats calls after crashes, the service must not repeat their effects); exactly the
transactions that committed are compensated when the saga fails; and the outcome is the one
the central interpreter, the reference semantics, gives for the same inputs and failures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from accompanist.errors import AccompanistError
from accompanist.store.base import SessionRecord
from accompanist.testing.ledger import LedgerEntry
from accompanist.testing.probe import Probe, Schedule

__all__ = ["CentralOutcome", "ExploreError", "ExploreReport", "RunReport", "Violation", "check_run"]


@dataclass(frozen=True)
class Violation:
    """One broken invariant: a short stable ``code`` and a detail naming roles and keys."""

    code: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.detail}"


@dataclass
class CentralOutcome:
    """What the central interpreter did with the same inputs and failing transaction."""

    ok: bool
    result: Any = None
    error: str = ""

    def __str__(self) -> str:
        return f"completed with {self.result!r}" if self.ok else f"failed: {self.error}"


@dataclass
class RunReport:
    """One explored run: its schedule, what every role ended with, and what broke."""

    number: int
    schedule: Schedule
    session_id: str = ""
    central: CentralOutcome | None = None
    statuses: dict[str, str] = field(default_factory=dict)
    result: Any = None
    errors: dict[str, str] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    effects: list[LedgerEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not self.violations

    def describe(self) -> str:
        """The run as a readable trace: schedule, reference, per-role outcome, what broke."""
        lines = [f"run {self.number}: {self.schedule}", f"  session {self.session_id}"]
        if self.central is not None:
            lines.append(f"  central interpreter: {self.central}")
        for role, status in self.statuses.items():
            why = f" ({self.errors[role]})" if self.errors.get(role) else ""
            lines.append(f"  {role}: {status}{why}")
        if self.statuses and all(s == "completed" for s in self.statuses.values()):
            lines.append(f"  result: {self.result!r}")
        lines += [f"  broken: {v}" for v in self.violations]
        if self.trace:
            lines.append("  what happened:")
            lines += [f"    {line}" for line in self.trace]
        if self.effects:
            lines.append("  effects recorded:")
            lines += [f"    {e.phase} {e.label!r} at {e.role} under {e.key}" for e in self.effects]
        return "\n".join(lines)


@dataclass
class ExploreReport:
    """Every run of one exploration; ``failures`` are the runs whose invariants broke."""

    choreography: str
    runs: list[RunReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[RunReport]:
        """Runs with a broken invariant, in the order they ran."""
        return [r for r in self.runs if not r.ok]

    @property
    def ok(self) -> bool:
        """Whether every run kept every invariant."""
        return not self.failures

    def __str__(self) -> str:
        head = f"explored {self.choreography!r}: {len(self.runs)} runs, {len(self.failures)} failed"
        notes = "".join(f"\n  note: {s}" for s in self.skipped)
        if self.ok:
            return head + notes
        return f"{head}{notes}\nfirst failing schedule:\n{self.failures[0].describe()}"


class ExploreError(AccompanistError):
    """An explored schedule broke an invariant; ``report`` holds every run."""

    def __init__(self, report: ExploreReport) -> None:
        self.report = report
        super().__init__(str(report))


def check_run(
    run: RunReport, records: dict[str, SessionRecord | None], probe: Probe, effects: list[LedgerEntry]
) -> list[Violation]:
    """The invariants of one run (see the module docstring)."""
    out: list[Violation] = []
    present = {role: r.status for role, r in records.items() if r is not None}
    outcome = next(iter(set(present.values()))) if len(set(present.values())) == 1 else None
    if outcome is None:
        line = ", ".join(f"{r}={s}" for r, s in present.items())
        out.append(Violation("outcome-disagree", f"the roles ended differently: {line}"))
    central = run.central
    if central is not None and outcome is not None:
        if central.ok and outcome != "completed":
            out.append(Violation("outcome-differs", f"ended {outcome}, but the central interpreter completed"))
        elif central.ok and run.result != central.result:
            out.append(
                Violation("result-differs", f"result {run.result!r}, the central interpreter's {central.result!r}")
            )
        elif not central.ok and outcome == "completed":
            out.append(Violation("outcome-differs", f"completed, but the central interpreter failed: {central.error}"))
    committed, compensated = set(probe.committed), set(probe.compensated)
    if outcome == "completed" and compensated:
        out.append(Violation("compensated-on-completed", f"completed, yet compensated {sorted(map(str, compensated))}"))
    if outcome in ("compensated", "failed", "cancelled"):
        missing, extra = committed - compensated, compensated - committed - set(probe.uncertain)
        if missing:
            out.append(Violation("not-compensated", f"{outcome}, but {sorted(map(str, missing))} stay committed"))
        if extra:
            out.append(Violation("compensated-uncommitted", f"compensated {sorted(map(str, extra))}, never committed"))
    applied = Counter((e.key, e.label, e.phase) for e in effects)
    for (key, label, phase), n in sorted(applied.items()):
        if n > 1:
            out.append(
                Violation(
                    "effect-twice",
                    f"the {phase} effect {label!r} was applied {n} times under the idempotency key {key} "
                    "(the call ran again after a crash and the service did not recognise the key)",
                )
            )
    return out
