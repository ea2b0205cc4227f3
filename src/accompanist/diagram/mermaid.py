"""Sequence diagrams in Mermaid: people would rather look at a session than read it.

``accompanist check`` draws a central run with :func:`mermaid_sequence`; ``accompanist diagram
--format mermaid`` draws a session that ran across sidecars with :func:`mermaid_session`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from accompanist.diagram.model import rows_of
from accompanist.inspection.view import SessionView
from accompanist.interpreters.central import TraceEvent
from accompanist.language.roles import Role

__all__ = ["mermaid_sequence", "mermaid_session"]

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


def _participants(names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    ids: dict[str, str] = {}
    lines = ["sequenceDiagram"]
    for index, name in enumerate(names):
        if _PLAIN_ID.match(name) and name not in _KEYWORDS:
            ids[name] = name
            lines.append(f"    participant {name}")
        else:
            ids[name] = f"p{index}"
            lines.append(f"    participant p{index} as {_text(name)}")
    return ids, lines


def mermaid_session(view: SessionView) -> str:
    """Render a session across its roles as a Mermaid ``sequenceDiagram``.

    A message is one arrow (``-)`` for a select, ``--x`` for one not received yet), a step at
    one role a note over it (failures marked ✗, compensations ↩, where it waits ⏳), and the
    outcome a note over every role.
    """
    ids, lines = _participants(view.roles)
    first, last = (ids.get(view.roles[0]), ids.get(view.roles[-1])) if view.roles else (None, None)
    for row in rows_of(view):
        src = ids.get(row.src, row.src)
        if row.kind == "arrow":
            arrow = {"select": "-)", "unreceived": "--x"}.get(row.style, "->>")
            lines.append(f"    {src}{arrow}{ids.get(row.dst or '', row.dst)}: {_text(row.text)}")
        elif row.kind == "outcome" and first is not None:
            span = first if first == last else f"{first},{last}"
            lines.append(f"    Note over {span}: {_text(row.text)}")
        else:
            lines.append(f"    Note over {src}: {_text(row.text)}")
    return "\n".join(lines) + "\n"


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
    ids, lines = _participants([r.name if isinstance(r, Role) else r for r in roles])
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
