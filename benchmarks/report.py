"""Print the README's benchmark tables (Markdown) from ``benchmarks/results/*.json``: the machine
each ran on, the measured values, and the targets of issues 9 and 13 beside them, met or not.

Why a script: the numbers in the README must be the ones in the JSON files, and a full run on
a quiet machine must be publishable without retyping anything::

    python benchmarks/run_all.py && python benchmarks/report.py > /tmp/tables.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "targets"]

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str, folder: Path) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    load = m.get("load_average_at_start", [])
    return (
        f"*{m.get('cpu')}, {m.get('cores')} cores, Python {m.get('python')}, {m.get('event_loop')}, "
        f"{m.get('date', '')}; at the start: load average {load[0] if load else '?'}, "
        f"fdatasync {m.get('fdatasync_ms_at_start', '?')} ms*"
    )


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _chain(data: dict[str, Any]) -> list[str]:
    lines = [
        "| N | d (ms) | mode | choreography p50 / p99 | orchestrator p50 / p99 | floor p50 | orch/chor | chor/floor "
        "| commits/session |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r.get('n')} | {r.get('d_ms')} | {r.get('mode')} | error: {r['error']} ||||||")
            continue
        lines.append(
            f"| {r['n']} | {r['d_ms']:g} | {r['mode']} | {r['chor_p50_ms']:.2f} / {r['chor_p99_ms']:.2f} "
            f"| {r['orch_p50_ms']:.2f} / {r['orch_p99_ms']:.2f} | {r['floor_p50_ms']:.2f} "
            f"| {r['orch_over_chor']:.2f}x | {r['chor_over_floor']:.2f}x | {_fmt(r.get('commits_per_session'))} |"
        )
    return lines


def _saga(data: dict[str, Any]) -> list[str]:
    lines = [
        "| system | in flight | p50 ms | p99 ms | orders/s | durable commits/order | verified | orders |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['concurrency']} | error: {r['error']} ||||||")
            continue
        commits = _fmt(r.get("commits_per_order"))
        if r.get("store_commits_per_order") is not None:
            commits += f" (stores: {_fmt(r['store_commits_per_order'])})"
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
            f"| {_fmt(r['throughput_per_s'], 1)} | {commits} | {r['verified']} | {r.get('orders')} |"
        )
    return lines


def _recovery(data: dict[str, Any]) -> list[str]:
    lines = [
        "| system | orders | completed | duplicates | outage cohort | recovery after the return (s) "
        "| restart took (s) | p50 before the outage (ms) | verified |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['system']} | error: {r['error']} ||||||||")
            continue
        lines.append(
            f"| {r['system']} | {r['orders']} | {r['completed']} | {r['duplicates']} "
            f"| {r['outage_cohort_completed']}/{r['outage_cohort']} | {_fmt(r['recovery_s'])} "
            f"| {_fmt(r['restart_to_ready_s'])} | {_fmt(r.get('p50_before_outage_ms'), 1)} | {r['verified']} |"
        )
    return lines


def _throughput(data: dict[str, Any]) -> list[str]:
    lines = ["| mode | store | sessions/s | p50 ms | commits/session |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['store']} | error: {r['error']} |||")
            continue
        lines.append(
            f"| {r['mode']} | {r['store']} | {_fmt(r['sessions_per_s'], 1)} | {_fmt(r['p50_ms'])} "
            f"| {_fmt(r.get('commits_per_session'))} |"
        )
    replay = data.get("replay") or {}
    if "replayed_s" in replay:
        lines.append("")
        lines.append(
            f"Replay: {replay['sessions']:,} unfinished sessions, SIGKILL, restart: healthy after "
            f"{replay['healthy_s']} s, all replayed after {replay['replayed_s']} s, then all completed (results "
            f"checked) in {replay['drained_s']} s."
        )
    elif replay:
        lines.append(f"\nReplay: error: {replay.get('error')}")
    return lines


Check = tuple[str, str, Callable[[dict[str, dict[str, Any]]], float | None], Callable[[float], bool], str]


def _row(data: dict[str, dict[str, Any]], name: str, **where: Any) -> dict[str, Any] | None:
    for r in (data.get(name) or {}).get("rows", []):
        if "error" not in r and all(r.get(k) == v for k, v in where.items()):
            return r
    return None


def _get(name: str, field: str, **where: Any) -> Callable[[dict[str, dict[str, Any]]], float | None]:
    def get(data: dict[str, dict[str, Any]]) -> float | None:
        r = _row(data, name, **where)
        return None if r is None or r.get(field) is None else float(r[field])

    return get


def _ratio(
    a: Callable[[dict[str, dict[str, Any]]], float | None], b: Callable[[dict[str, dict[str, Any]]], float | None]
) -> Callable[[dict[str, dict[str, Any]]], float | None]:
    def get(data: dict[str, dict[str, Any]]) -> float | None:
        x, y = a(data), b(data)
        return None if x is None or not y else x / y

    return get


def targets() -> list[Check]:
    """(issue, target, how to read the value, whether it is met, unit)."""
    ft, df = "fault-tolerant", "default"
    return [
        ("13", "chain N=5, d=9 ms: orchestrator/choreography (default) >= 1.85",
         _get("chain", "orch_over_chor", n=5, d_ms=9.0, mode=df), lambda v: v >= 1.85, "x"),
        ("13", "chain N=5, d=9 ms: orchestrator/choreography (fault-tolerant) >= 1.85",
         _get("chain", "orch_over_chor", n=5, d_ms=9.0, mode=ft), lambda v: v >= 1.85, "x"),
        ("13", "chain N=5, d=0: orchestrator/choreography (default) >= 0.9",
         _get("chain", "orch_over_chor", n=5, d_ms=0.0, mode=df), lambda v: v >= 0.9, "x"),
        ("9", "chain N=5, default: <= 2x the floor at d=0",
         _get("chain", "chor_over_floor", n=5, d_ms=0.0, mode=df), lambda v: v <= 2, "x"),
        ("9", "chain N=5, default: <= 1.04x the floor at d=9 ms",
         _get("chain", "chor_over_floor", n=5, d_ms=9.0, mode=df), lambda v: v <= 1.04, "x"),
        ("9", "chain N=5, fault-tolerant: <= 4x the floor at d=0",
         _get("chain", "chor_over_floor", n=5, d_ms=0.0, mode=ft), lambda v: v <= 4, "x"),
        ("9", "chain N=5, fault-tolerant: <= 1.10x the floor at d=9 ms",
         _get("chain", "chor_over_floor", n=5, d_ms=9.0, mode=ft), lambda v: v <= 1.10, "x"),
        ("13", "saga one at a time: Temporal p50 / Accompanist p50 >= 10",
         _ratio(_get("saga", "p50_ms", system="temporal", concurrency=1),
                _get("saga", "p50_ms", system="accompanist", concurrency=1)), lambda v: v >= 10, "x"),
        ("9, 13", "saga one at a time: Accompanist p50 below DBOS's (DBOS / Accompanist > 1)",
         _ratio(_get("saga", "p50_ms", system="dbos", concurrency=1),
                _get("saga", "p50_ms", system="accompanist", concurrency=1)), lambda v: v > 1, "x"),
        ("13", "saga at 16 in flight: Accompanist orders/s above Temporal's",
         _ratio(_get("saga", "throughput_per_s", system="accompanist", concurrency=16),
                _get("saga", "throughput_per_s", system="temporal", concurrency=16)), lambda v: v > 1, "x"),
        ("9", "saga at 16 in flight: Accompanist orders/s >= 1.5x DBOS's",
         _ratio(_get("saga", "throughput_per_s", system="accompanist", concurrency=16),
                _get("saga", "throughput_per_s", system="dbos", concurrency=16)), lambda v: v >= 1.5, "x"),
        ("9", "saga: durable commits (fsyncs) per order, one at a time, <= 8",
         _get("saga", "commits_per_order", system="accompanist", concurrency=1), lambda v: v <= 8, ""),
        ("9", "saga: fault-tolerant p50 <= 2x default mode's",
         _ratio(_get("saga", "p50_ms", system="accompanist", concurrency=1),
                _get("saga", "p50_ms", system="accompanist-default", concurrency=1)), lambda v: v <= 2, "x"),
        ("13", "recovery: outage cohort done within 2 s of the payment service's return",
         _get("recovery", "recovery_s", system="accompanist"), lambda v: v <= 2, " s"),
        ("9", "throughput: 3-role chain, fault-tolerant, SQLite FULL >= 1,000 sessions/s",
         _get("throughput", "sessions_per_s", mode=ft, store="sqlite FULL"), lambda v: v >= 1000, "/s"),
        ("9", "replay of 10,000 unfinished sessions <= 10 s",
         lambda d: (d.get("throughput") or {}).get("replay_10k_s"), lambda v: v <= 10, " s"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    data = {name: _load(name, args.results) for name in ("chain", "saga", "recovery", "throughput")}
    out: list[str] = []
    for name, table in (("chain", _chain), ("saga", _saga), ("recovery", _recovery), ("throughput", _throughput)):
        found = data[name]
        out += [f"#### {name}", ""]
        if found is None:
            out += [f"(no results/{name}.json yet)", ""]
            continue
        out += [_machine(found), "", *table(found), ""]
    out += ["#### Targets", "", "| issue | target | measured | met |", "|---|---|---|---|"]
    present = {k: v for k, v in data.items() if v is not None}
    for issue, text, get, ok, unit in targets():
        value = get(present)
        shown = "not measured" if value is None else f"{value:,.2f}{unit}"
        verdict = "" if value is None else ("met" if ok(value) else "**not met**")
        out.append(f"| {issue} | {text} | {shown} | {verdict} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
