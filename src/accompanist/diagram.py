"""Sequence diagrams of a run, in Mermaid: people would rather look at a session than read it.

``accompanist check`` draws a central run with :func:`mermaid_sequence`; the same function
draws a recorded session once its steps are turned into :class:`TraceEvent` records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from accompanist.interpreters.central import TraceEvent
from accompanist.language.roles import Role

__all__ = ["mermaid_sequence"]

_PLAIN_ID = re.compile(r"^[a-z][a-z0-9_]*$")
# Words Mermaid's sequence grammar would read as keywords if used as a participant id.
_KEYWORDS = frozenset(
    "activate actor alt and as autonumber box break create critical deactivate destroy else end left link "
    "links loop note of opt over par participant rect right title".split()
)
# Characters that would end a statement or start markup inside message text.
_ESCAPES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;", "\n": " ", "\r": " "}


def _text(value: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def _step_name(name: str) -> str:
    # "bookseller.<locals>.settle.<locals>.ship" reads better as "ship".
    return name.rsplit("<locals>.", 1)[-1]


def mermaid_sequence(roles: Sequence[Role | str], trace: Iterable[TraceEvent]) -> str:
    """Render a run as a Mermaid ``sequenceDiagram``.

    Participants appear in role order. A value message is ``src->>dst: value``, a select
    (a branch choice) is ``src-)dst: label``, and a local step (or ``now``/``uuid``/
    ``random``) is ``Note over role: name = value``. A multicast draws one arrow per receiver.

    Args:
        roles: the choreography's roles, in declaration order.
        trace: the events of the run, in order (``CentralRun.trace``).

    Returns:
        The diagram source, one statement per line, ending with a newline.
    """
    names = [r.name if isinstance(r, Role) else r for r in roles]
    ids: dict[str, str] = {}
    lines = ["sequenceDiagram"]
    for index, name in enumerate(names):
        if _PLAIN_ID.match(name) and name not in _KEYWORDS:
            ids[name] = name
            lines.append(f"    participant {name}")
        else:
            ids[name] = f"p{index}"
            lines.append(f"    participant p{index} as {_text(name)}")
    for event in trace:
        src = ids.get(event.src, event.src)
        if not event.dsts:
            label = event.name if event.kind == "local" else event.kind
            lines.append(f"    Note over {src}: {_text(_step_name(label))} = {_text(event.value)}")
            continue
        arrow = "-)" if event.kind == "select" else "->>"
        for dst in event.dsts:
            lines.append(f"    {src}{arrow}{ids.get(dst, dst)}: {_text(event.value)}")
    return "\n".join(lines) + "\n"
