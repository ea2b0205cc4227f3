"""What the explorer prints: one line per run, and a full report for a failing seed."""

from __future__ import annotations

from typing import Any

from tests.model.checks import failure_fields
from tests.model.explorer import RunResult

__all__ = ["full_report", "summary_line", "reproduce"]


def reproduce(seed: int, plain: bool = False) -> str:
    env = "ACCOMPANIST_MODEL_PLAIN=1 " if plain else ""
    return f"{env}ACCOMPANIST_MODEL_SEED={seed} python -m pytest tests/model -k seed -s"


def summary_line(r: RunResult) -> str:
    sc = r.scenario
    outcomes = []
    for records in r.records:
        statuses = sorted({rec.status for rec in records.values() if rec is not None})
        outcomes.append("/".join(statuses) or "none")
    codes = sorted({v.code for v in r.violations})
    verdict = "ok" if not codes else "FAIL " + ",".join(codes)
    return (
        f"seed {sc.seed:>5}: {sc.describe()}; saga={'yes' if r.saga else 'no'} -> {' | '.join(outcomes) or '?'} "
        f"in {r.seconds:.1f}s (settle {r.settle_seconds:.1f}s): {verdict}"
    )


def _record(rec: Any, codec_decode: Any) -> str:
    if rec is None:
        return "no record"
    parts = [f"status={rec.status}", f"attempts={rec.attempts}"]
    if rec.error:
        parts.append(f"error={rec.error!r}")
    fields = failure_fields(rec)
    if fields is not None:
        parts.append(f"failure={fields}")
    if rec.result is not None:
        try:
            parts.append(f"result={codec_decode(rec.result)!r}")
        except Exception:  # a report must not fail on an odd value
            parts.append(f"result=<{len(rec.result)} bytes>")
    return " ".join(parts)


def full_report(r: RunResult) -> str:
    sc = r.scenario
    out = [
        f"=== model seed {sc.seed} === reproduce: {reproduce(sc.seed, sc.plain)}",
        f"scenario: {sc.describe()}; detected as a saga: {r.saga}",
        f"inputs: {sc.inputs}",
        f"run took {r.seconds:.1f}s, {r.settle_seconds:.1f}s of it waiting for the sessions to end",
        "",
        "violations:",
        *(f"  {v}" for v in r.violations),
        "",
        "fault schedule:",
        *(f"  {a}" for a in sc.actions),
        *([f"  {sc.net}"] if sc.net is not None else []),
        *(f"  {a}" for a in r.extra_cancels),
        *(["  (none)"] if not sc.actions and sc.net is None else []),
        "",
        "choreography:",
        *(f"  {line}" for line in r.source.splitlines()),
    ]
    if r.drift_source is not None:
        out += ["", "changed code deployed at restart (same name and version):"]
        out += [f"  {line}" for line in r.drift_source.splitlines() if "deployed change" in line]
    for i, central in enumerate(r.central):
        sid = r.sids[i] if i < len(r.sids) else "?"
        out += ["", f"session {i} ({sid}), input {sc.inputs[i]}:"]
        if central.ok:
            out.append(f"  central: result {central.result!r}, roles {sorted(central.roles)}")
        else:
            out.append(f"  central: {central.status}: {central.error}")
        if r.divergences and i < len(r.divergences) and r.divergences[i] is not None:
            out.append(f"  divergence: {r.divergences[i]}")
        records = r.records[i] if i < len(r.records) else {}
        for role in sc.program.role_names:
            out.append(f"  {role}: {_record(records.get(role), _decoder())}")
        if i < len(r.tasks):
            for role, text in sorted(r.tasks[i].items()):
                out.append(f"  {role} task: {text}")
        if i < len(r.mailboxes):
            for role, text in sorted(r.mailboxes[i].items()):
                out.append(f"  {role} store: {text}")
        if i < len(r.sids):
            events = r.ledger.of(r.sids[i])
            if events:
                out.append("  ledger (applied, in order):")
                for e in events:
                    value = f" value={e.value!r}" if e.value is not None else ""
                    out.append(f"    {e.kind:<6} {e.role} {e.label} {e.logical} key={e.key}{value}")
            raw = {k: n for k, n in r.ledger.raw_of(r.sids[i]).items() if n > 1}
            if raw:
                out.append(f"  repeated raw calls: {raw}")
    if r.errors_logged:
        out += ["", "errors logged by the engines:", *(f"  {line}" for line in r.errors_logged[:20])]
    return "\n".join(out)


def _decoder() -> Any:
    from accompanist.codec import PayloadCodec

    return PayloadCodec(()).decode
