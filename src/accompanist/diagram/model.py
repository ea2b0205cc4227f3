"""A session as the rows of a sequence diagram, whatever draws it (Mermaid, SVG, HTML).

Why a model of its own: the three renderers must show the same thing: a message as one arrow
from its sender to its receiver (drawn where it was sent), a local step or a transaction as a
note over its role, failures and compensations marked, where each role waits now, and the
outcome across every role. Deciding that once keeps them from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accompanist.inspection.view import SessionView, seconds

__all__ = ["Row", "rows_of"]

_MARKS = {"now": "now", "uuid": "uuid", "random": "random"}


@dataclass(frozen=True)
class Row:
    """One row of the diagram.

    Attributes:
        kind: ``arrow`` (src to dst), ``note`` (over src) or ``outcome`` (across every role).
        src: the sending role, or the role a note is over.
        dst: the receiving role of an arrow.
        text: what the row says (one line).
        style: ``message``, ``select``, ``unreceived``, ``local``, ``transaction``, ``failure``,
            ``stopped``, ``parked``, ``compensation``, ``waiting``, ``completed`` or ``failed``.
        detail: more, for a tooltip (times, seq, attempts).
        order: the position of the step in :attr:`SessionView.events` (-1: not a step).
    """

    kind: str
    src: str
    dst: str | None
    text: str
    style: str
    detail: str = ""
    order: int = -1


def _ms(value: float | None) -> str:
    return "" if value is None else (f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s")


def _detail(step: dict[str, Any], base: float | None) -> str:
    parts = [f"{step['kind']} {step['name']}"]
    start = seconds(step.get("started_at")) or seconds(step.get("ended_at"))
    if start is not None and base is not None:
        parts.append(f"at +{_ms((start - base) * 1e3)}")
    if step.get("duration_ms") is not None:
        parts.append(f"took {_ms(step['duration_ms'])}")
    if step.get("attempts") and step["attempts"] > 1:
        parts.append(f"{step['attempts']} attempts")
    if step.get("transaction"):
        parts.append(str(step["transaction"]))
    if step.get("clock") is not None:
        parts.append(f"clock {step['clock']}")
    if step.get("error"):
        parts.append(str(step["error"]))
    return " · ".join(parts)


def _clip(value: Any, limit: int = 40) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _note(order: int, role: str, step: dict[str, Any], base: float | None) -> Row:
    kind, name, value, state = step["kind"], step["name"], _clip(step.get("value")), step.get("state")
    detail = _detail(step, base)
    if state == "failed":
        return Row("note", role, None, f"✗ {name}: {step.get('error') or 'failed'}", "failure", detail, order)
    if state in ("stopped", "parked"):
        return Row("note", role, None, f"{name}: {state}", state, detail, order)
    if kind == "compensation":
        tries = f" ({step['attempts']} attempts)" if (step.get("attempts") or 0) > 1 else ""
        return Row("note", role, None, f"↩ compensate {name}{tries}", "compensation", detail, order)
    if kind == "transaction":
        status = step.get("transaction") or "committed"
        tries = f", {step['attempts']} attempts" if (step.get("attempts") or 0) > 1 else ""
        shown = f" = {value}" if value is not None else ""
        return Row("note", role, None, f"⛁ {name}{shown} ({status}{tries})", "transaction", detail, order)
    label = _MARKS.get(kind, name)
    return Row("note", role, None, f"{label} = {value}" if value is not None else label, "local", detail, order)


def _message(order: int, role: str, step: dict[str, Any], base: float | None, paired: bool) -> Row | None:
    state, value = step.get("state"), _clip(step.get("value"))
    select = step.get("message") == "select"
    text = (f"select {value}" if select else str(value)) if value is not None else f"#{step['seq']}"
    detail = _detail(step, base)
    if step["kind"] == "send":
        style = ("select" if select else "message") if paired else "unreceived"
        return Row("arrow", role, step["peer"], text if paired else f"{text} (not received yet)", style, detail, order)
    if paired:
        return None  # drawn with its send
    if state in ("stopped", "parked", "failed"):
        what = f"#{step['seq']} from {step['peer']}"
        return Row("note", role, None, f"waited for {what}: {state}", state, detail, order)
    return Row("arrow", str(step["peer"]), role, text, "select" if select else "message", detail, order)


def rows_of(view: SessionView) -> list[Row]:
    """The diagram rows of ``view``: its steps in causal order, where each role waits, the outcome."""
    base = view.started
    rows: list[Row] = []
    for order, event in enumerate(view.events):
        step = event.step
        if event.kind in ("send", "receive"):
            row = _message(order, event.role, step, base, event.pair is not None)
            if row is not None:
                rows.append(row)
        else:
            rows.append(_note(order, event.role, step, base))
    for role in view.roles:
        waiting = view.waiting.get(role)
        if waiting is not None:
            rows.append(Row("note", role, None, f"⏳ {waiting['text']}", "waiting", f"since {waiting.get('since')}"))
    status = view.status
    if status != "in progress" and view.records:
        failure = view.failure
        text = status
        if failure is not None and status != "completed":
            text = f"{status}: {failure['error_type']} at {failure['role']}: {failure['message']}"
        style = "completed" if status == "completed" else "failed"
        rows.append(
            Row("outcome", view.roles[0] if view.roles else "", None, text, style, f"roles agree: {view.agree}")
        )
    return rows
