"""Seeing a session, without processes: the causal merge of every role's steps, the three
diagram formats (escaping included), value summaries, and the inspection commands' parsing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from accompanist.cli.targets import load_cluster, parse_time
from accompanist.codec import PayloadCodec
from accompanist.diagram import mermaid_session, render_html, render_svg
from accompanist.errors import AccompanistError
from accompanist.inspection.listing import filter_sessions, session_counts
from accompanist.inspection.view import SessionView, build_view
from accompanist.summary import summarize, summarize_bytes

T0 = dt.datetime(2026, 12, 2, 20, 0, tzinfo=dt.UTC)


def _at(ms: float | None) -> str | None:
    return None if ms is None else (T0 + dt.timedelta(milliseconds=ms)).isoformat()


def _step(index: int, kind: str, name: str, start: float | None = None, **more: Any) -> dict[str, Any]:
    step = {
        "index": index, "kind": kind, "name": name, "peer": None, "seq": None, "message": None,
        "started_at": _at(start), "ended_at": _at(None if start is None else start + 1), "duration_ms": 1.0,
        "attempts": None, "transaction": None, "value": None, "error": None, "state": "done", "clock": None,
        "source": "memory",
    }  # fmt: skip
    step.update(more)
    return step


def _msg(index: int, kind: str, src: str, dst: str, seq: int, start: float | None, value: str) -> dict[str, Any]:
    peer = dst if kind == "send" else src
    return _step(index, kind, f"{src}->{dst} #{seq}", start, peer=peer, seq=seq, message="value", value=value)


def _record(role: str, status: str, failure: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "session_id": "s1", "choreography": "order", "version": 1, "role": role, "status": status,
        "failure": failure, "created_at": _at(0), "updated_at": _at(50),
    }  # fmt: skip


def _answer(role: str, steps: list[dict[str, Any]], waiting: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"roles": ["shop", "bank"], "steps": steps, "waiting": waiting, "role": role}


FAILURE = {"role": "bank", "step": 1, "transaction": "charge", "error_type": "Abort", "message": "no <money>"}


def _saga() -> SessionView:
    # The bank's clock runs 100 ms behind: its receive looks older than the shop's send.
    shop = [
        _step(0, "transaction", "reserve", 0, value="7", transaction="compensated", attempts=3),
        _msg(1, "send", "shop", "bank", 1, 5, "'card'"),
        _step(None, "compensation", "reserve", 40, attempts=1, transaction="compensated"),  # type: ignore[arg-type]
    ]
    bank = [
        _msg(0, "receive", "shop", "bank", 1, -90, "'card'"),
        _step(1, "transaction", "charge", -89, state="failed", error="Abort: no <money>", transaction="failed"),
    ]
    records = {"shop": _record("shop", "compensated", FAILURE), "bank": _record("bank", "compensated", FAILURE)}
    return build_view("s1", records, {"shop": _answer("shop", shop), "bank": _answer("bank", bank)})


def test_the_merge_puts_each_send_before_its_receive_whatever_the_clocks_say() -> None:
    view = _saga()
    order = [(e.role, e.step["kind"], e.step["name"]) for e in view.events]
    assert order == [
        ("shop", "transaction", "reserve"),
        ("shop", "send", "shop->bank #1"),
        ("bank", "receive", "shop->bank #1"),
        ("bank", "transaction", "charge"),
        ("shop", "compensation", "reserve"),
    ]
    assert view.events[1].pair == 2 and view.events[2].pair == 1
    assert (view.status, view.agree, view.roles) == ("compensated", "yes", ["shop", "bank"])


def test_steps_without_times_merge_by_causality_alone() -> None:
    shop = [_msg(0, "send", "shop", "bank", 1, None, "1"), _msg(1, "receive", "bank", "shop", 1, None, "2")]
    bank = [_msg(0, "receive", "shop", "bank", 1, None, "1"), _msg(1, "send", "bank", "shop", 1, None, "2")]
    records = {"shop": _record("shop", "running"), "bank": _record("bank", "finished")}
    view = build_view("s1", records, {"shop": _answer("shop", shop), "bank": _answer("bank", bank)})
    assert [(e.role, e.step["kind"]) for e in view.events] == [
        ("shop", "send"), ("bank", "receive"), ("bank", "send"), ("shop", "receive"),
    ]  # fmt: skip
    assert view.status == "in progress"


def test_mermaid_marks_failures_compensations_and_escapes() -> None:
    text = mermaid_session(_saga())
    assert text.splitlines() == [
        "sequenceDiagram",
        "    participant shop",
        "    participant bank",
        "    Note over shop: ⛁ reserve = 7 (compensated, 3 attempts)",
        "    shop->>bank: 'card'",
        "    Note over bank: ✗ charge: Abort: no #lt;money#gt;",
        "    Note over shop: ↩ compensate reserve",
        "    Note over shop,bank: compensated: Abort at bank: no #lt;money#gt;",
    ]


def test_svg_and_html_stand_alone_and_escape_what_the_sessions_carry() -> None:
    view = _saga()
    evil = "<script>alert(1)</script>"
    view.events[1].step["value"] = evil
    svg = render_svg(view)
    root = ET.fromstring(svg)  # well-formed XML
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts[:2] == ["shop", "bank"] and evil in texts  # shown as text, never as markup
    assert "<script>" not in svg
    page = render_html(view)
    assert page.startswith("<!DOCTYPE html>") and "<script>alert" not in page
    assert "src=" not in page and "href=" not in page and "@import" not in page  # nothing loaded


def test_waiting_roles_are_marked() -> None:
    shop = [_msg(0, "send", "shop", "bank", 1, 0, "1")]
    waiting = {"text": "waiting for #1 from 'bank'", "peer": "bank", "seq": 1, "since": _at(1)}
    records = {"shop": _record("shop", "running")}
    view = build_view("s1", records, {"shop": _answer("shop", shop, waiting)})
    assert view.roles == ["shop", "bank"]  # a peer nobody was asked about still has a lifeline
    lines = mermaid_session(view).splitlines()
    assert lines[-2:] == [
        "    shop--xbank: 1 (not received yet)",
        "    Note over shop: ⏳ waiting for #35;1 from 'bank'",
    ]
    assert 'class="row note waiting"' in render_svg(view)


@dataclasses.dataclass
class Parcel:
    weight: int
    label: str


def test_summaries_are_bounded_and_decode_what_the_reader_does_not_know() -> None:
    assert summarize("x" * 5_000_000).startswith("'xxxx") and len(summarize("x" * 5_000_000)) <= 80
    assert summarize({"a": [1, 2, 3]}) == "{'a': [1, 2, 3]}"
    data = PayloadCodec([Parcel]).encode(Parcel(3, "box"))
    assert summarize_bytes(data, PayloadCodec([Parcel])) == "Parcel(weight=3, label='box')"
    assert summarize_bytes(data) == "Parcel(weight=3, label='box')"  # a post-mortem without the app
    assert summarize_bytes(b"\xc1garbage") == "<8 bytes>"


def test_times_the_commands_take() -> None:
    now = T0.timestamp()
    assert parse_time("10m", now) == now - 600 and parse_time("2h", now) == now - 7200
    assert parse_time("2026-12-02T20:00") == now  # UTC unless it says otherwise
    assert parse_time("2026-12-02T21:00+01:00") == now
    with pytest.raises(AccompanistError, match="cannot read the time 'soon'"):
        parse_time("soon")


def test_the_cluster_file(tmp_path: Path) -> None:
    good = tmp_path / "c.toml"
    good.write_text('token = "t"\n[sidecars]\na = "http://x:1"\n[stores]\nb = "sqlite:///b.db"\n')
    assert load_cluster(good) == ({"a": "http://x:1"}, {"b": "sqlite:///b.db"}, "t")
    for text, message in (
        ("[sidecars]\na = 1\n", r"\[sidecars\] must map each role to a URL string"),
        ("colour = 1\n", "unknown key"),
        ("", "lists no"),
        ("[sidecars\n", "cannot read the cluster file"),
    ):
        good.write_text(text)
        with pytest.raises(AccompanistError, match=message):
            load_cluster(good)


def test_filters_and_counts() -> None:
    def rec(role: str, status: str, created: float, updated: float, name: str = "order") -> dict[str, Any]:
        return {**_record(role, status), "choreography": name, "created_at": _at(created), "updated_at": _at(updated)}

    sessions = {
        "old": {"a": rec("a", "completed", 0, 10), "b": rec("b", "completed", 0, 11)},
        "new": {"a": rec("a", "compensated", 1000, 1500), "b": rec("b", "running", 1000, 1400)},
        "other": {"a": rec("a", "failed", 500, 600, "refund"), "b": rec("b", "completed", 500, 600, "refund")},
    }
    assert [s for s, _ in filter_sessions(sessions)] == ["new", "other", "old"]
    assert [s for s, _ in filter_sessions(sessions, status="running")] == ["new"]
    assert [s for s, _ in filter_sessions(sessions, choreography="refund")] == ["other"]
    since = T0.timestamp() + 0.5
    assert [s for s, _ in filter_sessions(sessions, since=since)] == ["new", "other"]
    assert [s for s, _ in filter_sessions(sessions, until=since)] == ["other", "old"]
    assert session_counts(filter_sessions(sessions)) == {"completed": 1, "disagree": 1, "in progress": 1}
