"""The step model: what one role does, one numbered step at a time.

Projection turns a choreography into the local steps of one role. Every step has an index
within the session (counted at that role), a kind and a name. Message steps also carry their
``(src, dst, seq)`` identity. The fault-tolerant runtime journals steps by index and compares
a replay against the journal, so the step model is the contract between the interpreter and
the session engine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Step", "StepKind"]


class StepKind(enum.StrEnum):
    """What a step does."""

    SEND = "send"
    RECV = "recv"
    LOCAL = "local"
    NOW = "now"
    UUID = "uuid"
    RANDOM = "random"
    TX = "tx"
    SLEEP = "sleep"  # a durable timer: its journaled value is the deadline (UNIX seconds)
    DEADLINE = "deadline"  # a saga deadline at the initiator: the instant it cancels the session
    PATCH = "patch"  # a marker: the session takes a ch.patched branch (language/patches.py)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of one role's projection.

    Attributes:
        index: position of the step among this role's steps in the session (from 0).
        kind: what the step does.
        name: for ``local``/``tx`` the function or transaction name; for messages the peer role;
            for journaled helpers the helper name.
        src: sending role of a message step.
        dst: receiving role of a message step.
        seq: sequence number of the message on ``src -> dst`` within the session (from 1).
        msg_kind: ``value`` or ``select`` for message steps.
    """

    index: int
    kind: StepKind
    name: str
    src: str | None = None
    dst: str | None = None
    seq: int | None = None
    msg_kind: str = "value"

    @property
    def signature(self) -> str:
        """What must be equal between a run and its replay at this index."""
        if self.kind in (StepKind.SEND, StepKind.RECV):
            return f"{self.kind}({self.src}->{self.dst}#{self.seq} {self.msg_kind})"
        return f"{self.kind}({self.name})"
