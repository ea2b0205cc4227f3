"""What one seed runs: the program, the mode, the inputs and the fault schedule.

Every seed covers its *focus* (the fault kinds ``seed % len(FOCUS)`` names) and draws more at
random, so any run of consecutive seeds covers both modes and every fault kind.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from accompanist.engine.config import EngineConfig, Mode
from tests.model.faults import Action, NetFaults, draw_schedule
from tests.model.program import Effect, Program, Tx, draw_program, roles_used, span_of, walk

__all__ = ["FOCUS", "KINDS", "Scenario", "draw_scenario", "make_config"]

KINDS = ("crash", "code_change", "cancel", "outage", "net", "lossy", "partition", "failure")

FOCUS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (mode, frozenset(kinds))
    for mode, kinds in (
        ("default", ()),
        ("fault-tolerant", ()),
        ("fault-tolerant", ("crash",)),
        ("fault-tolerant", ("outage",)),
        ("fault-tolerant", ("net",)),
        ("fault-tolerant", ("partition",)),
        ("fault-tolerant", ("cancel",)),
        ("default", ("net",)),
        ("default", ("cancel",)),
        ("fault-tolerant", ("code_change",)),
        ("fault-tolerant", ("crash", "net", "outage", "partition")),
        ("default", ("lossy",)),
        ("fault-tolerant", ("crash", "failure")),
        ("fault-tolerant", ("crash", "cancel", "net")),
    )
)


def make_config(**settings: Any) -> EngineConfig:
    """An ``EngineConfig`` with those of ``settings`` this engine knows (newer engines know
    more: ``compensation``, ``outcome_query_after``), so the test runs on old and new."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    return EngineConfig(**{k: v for k, v in settings.items() if k in known})


@dataclass
class Scenario:
    seed: int
    mode: str
    kinds: frozenset[str]
    program: Program
    failure: str | None
    inputs: list[int]
    actions: list[Action]
    net: NetFaults | None
    compensation: str
    plain: bool = False

    @property
    def durable(self) -> bool:
        return self.mode == "fault-tolerant"

    @property
    def lossy(self) -> bool:
        """Default mode over a network that loses envelopes: only basic promises hold."""
        return not self.durable and self.net is not None and self.net.drop > 0

    def config(self) -> EngineConfig:
        common: dict[str, Any] = {
            # Small, so that long sessions exceed it: fault-tolerant mode must replay them.
            # Default mode keeps everything in memory and the bound fails a session by design,
            # so there it is the default bound.
            "buffer_limit": 8 if self.durable else 1024,
            "grace": 0.0,
            "retry_min": 0.01,
            "retry_max": 0.15,
            "prune_interval": 3600.0,
            "compensation": self.compensation,
            "outcome_query_after": 0.5,
        }
        if self.durable:
            return make_config(
                mode=Mode.FAULT_TOLERANT, receive_timeout=0.25, deliver_timeout=0.25, relay_interval=0.05, **common
            )
        return make_config(mode=Mode.DEFAULT, receive_timeout=0.5 if self.lossy else 5.0, **common)

    def describe(self) -> str:
        kinds = ",".join(sorted(self.kinds)) or "no faults"
        features = ",".join(sorted(self.program.features)) or "-"
        return (
            f"{self.mode}, {self.program.n} roles, {len(self.inputs)} session(s), faults: {kinds}; "
            f"program: {features}; compensation {self.compensation}"
        )


def draw_scenario(seed: int, *, plain: bool = False) -> Scenario:
    """The scenario of ``seed``; ``plain`` draws fault-free runs of features today's engine
    handles (the harness's own check)."""
    rng = random.Random(seed)
    if plain:
        mode = rng.choice(["default", "fault-tolerant"])
        kinds = frozenset({"failure"}) if rng.random() < 0.3 else frozenset()
    else:
        mode, focus = FOCUS[seed % len(FOCUS)]
        extra: set[str] = set()
        if mode == "fault-tolerant":
            for kind, p in (("crash", 0.25), ("outage", 0.2), ("net", 0.25), ("partition", 0.15), ("cancel", 0.1)):
                if rng.random() < p:
                    extra.add(kind)
        elif rng.random() < 0.2:
            extra.add("net")
        if rng.random() < 0.25:
            extra.add("failure")
        kinds = focus | extra
    # Today's engine runs the outcome round only for sagas, so a plain failure is an abort.
    failure = ("abort" if plain else rng.choice(["abort", "boom"])) if "failure" in kinds else None
    program = draw_program(rng, failure=failure, plain=plain)
    inputs = [rng.randint(-1000, 1000) for _ in range(1 if plain or rng.random() < 0.7 else 2)]
    roles = program.role_names
    schedule_kinds = set(kinds)
    if mode == "fault-tolerant" and "net" in kinds:
        schedule_kinds.add("lossy")  # fault-tolerant mode masks lost envelopes too
    span = span_of(program, mode == "fault-tolerant") * len(inputs)
    used = tuple(roles[i] for i in sorted(roles_used(program.ops) | {0}))
    calls: dict[str, int] = {}
    for op in walk(program.ops):
        if isinstance(op, (Effect, Tx)):
            calls[roles[op.role]] = calls.get(roles[op.role], 0) + 1
    actions, net = draw_schedule(rng, schedule_kinds, roles, len(inputs), span, used, calls)
    return Scenario(
        seed,
        mode,
        frozenset(kinds),
        program,
        failure,
        inputs,
        actions,
        net,
        rng.choice(["ordered", "parallel"]),
        plain,
    )
