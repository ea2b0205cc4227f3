"""The model-based test: random choreographies on the session engine, under faults, checked
against the central interpreter.

Profiles:

- ``test_harness_sanity``: fault-free runs of what today's engine is known to handle; if
  this fails, suspect the harness first.
- ``test_model``: the default profile (both modes, every fault kind, ~90 s on 2 cores).
- ``test_model_long`` (``-m slow`` or ``ACCOMPANIST_MODEL_LONG=1``; skipped otherwise, so
  that ``pytest tests/model`` stays within the default budget): more seeds.
- ``test_model_seed``: ``ACCOMPANIST_MODEL_SEED=17`` (or ``17,40`` or ``100-120``) runs just
  those seeds, one at a time, and prints the full report of each (``-s``).

Environment: ``ACCOMPANIST_MODEL_SETTLE`` (seconds the sessions get to end once faults stop,
default 20), ``ACCOMPANIST_MODEL_CONCURRENCY`` (seeds run at once, default 8),
``ACCOMPANIST_MODEL_RUNS`` (seeds of the default profile, default 56),
``ACCOMPANIST_MODEL_PLAIN=1`` (with ``ACCOMPANIST_MODEL_SEED``: the sanity profile's seeds).

``-s`` prints one line per run. A failing profile lists its distinct failures (violation codes,
see ``tests/model/checks.py``) with their seeds, prints the full report (seed, how to
reproduce, choreography source, fault schedule, every role's record, stores, ledger) of one
seed per distinct failure, and writes every failing seed's report to
``$TMPDIR/accompanist-model-failures.txt``. Runs share one event loop, so timing differs from a
run alone; a seed's program and fault schedule do not.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from tests.model.explorer import RunResult, explore
from tests.model.report import full_report, summary_line
from tests.model.scenario import KINDS

SETTLE = float(os.environ.get("ACCOMPANIST_MODEL_SETTLE", "20"))
CONCURRENCY = int(os.environ.get("ACCOMPANIST_MODEL_CONCURRENCY", "8"))
RUNS = int(os.environ.get("ACCOMPANIST_MODEL_RUNS", "56"))
FEATURES = ("speak-first", "long", "tx-only-via-helper", "tx-via-helper", "uuid-key", "failure:abort", "failure:boom")


def _seeds(spec: str) -> list[int]:
    seeds: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if "-" in part[1:]:
            low, high = part.split("-", 1)
            seeds += range(int(low), int(high) + 1)
        elif part:
            seeds.append(int(part))
    return seeds


async def _explore_all(seeds: list[int], *, plain: bool = False, concurrency: int = CONCURRENCY) -> list[RunResult]:
    gate = asyncio.Semaphore(concurrency)

    async def one(seed: int) -> RunResult:
        async with gate:
            result = await explore(seed, settle=SETTLE, plain=plain)
        print(summary_line(result), flush=True)
        return result

    return list(await asyncio.gather(*(one(s) for s in seeds)))


def _verdict(results: list[RunResult], shown: int = 4) -> str | None:
    """None if every run kept every invariant; else the distinct failures, with seeds, and
    the full reports of one seed per distinct failure (all of them written to a file)."""
    failing = [r for r in results if r.violations]
    if not failing:
        return None
    by_code: dict[str, list[int]] = defaultdict(list)
    for r in failing:
        for code in sorted({v.code for v in r.violations}):
            by_code[code].append(r.scenario.seed)
    lines = [f"{len(failing)} of {len(results)} seeds broke an invariant; distinct failures:"]
    lines += [f"  {code}: seeds {seeds}" for code, seeds in sorted(by_code.items())]
    path = Path(tempfile.gettempdir()) / "accompanist-model-failures.txt"
    path.write_text("\n\n".join(full_report(r) for r in failing) + "\n")
    lines.append(f"full reports of every failing seed: {path}")
    picked: list[RunResult] = []
    for code in sorted(by_code):
        r = next(r for r in failing if r.scenario.seed == by_code[code][0])
        if r not in picked and len(picked) < shown:
            picked.append(r)
    return "\n".join(lines) + "\n\n" + "\n\n".join(full_report(r) for r in picked)


def _coverage(results: list[RunResult]) -> list[str]:
    """What the profile failed to exercise (a mode, a fault kind that never fired, a feature)."""
    modes = {r.scenario.mode for r in results}
    kinds = {k for r in results for k in r.scenario.kinds}
    fired = {a.kind for r in results for a in r.scenario.actions if a.fired_at is not None}
    fired |= {"code_change" for r in results for a in r.scenario.actions if a.code_change and a.fired_at is not None}
    features = {f for r in results for f in r.scenario.program.features}
    missing = [f"mode {m}" for m in ("default", "fault-tolerant") if m not in modes]
    missing += [f"fault kind {k}" for k in KINDS if k not in kinds]
    missing += [
        f"fault {k} never fired" for k in ("crash", "code_change", "cancel", "outage", "partition") if k not in fired
    ]
    missing += [f"feature {f}" for f in FEATURES if f not in features]
    return missing


async def test_harness_sanity() -> None:
    """Fault-free runs of programs today's engine handles end as the central run does."""
    results = await _explore_all(list(range(5000, 5048)), plain=True)
    verdict = _verdict(results)
    assert verdict is None, "the harness or the basic engine is broken:\n" + verdict


async def test_model() -> None:
    """The default profile: random choreographies in both modes under every fault kind."""
    results = await _explore_all(list(range(1, RUNS + 1)))
    assert not _coverage(results), f"the profile no longer covers: {_coverage(results)}"
    verdict = _verdict(results)
    assert verdict is None, verdict


@pytest.mark.slow
async def test_model_long(request: pytest.FixtureRequest) -> None:
    """More seeds (~3 min). Runs only when asked for: ``-m slow`` or ACCOMPANIST_MODEL_LONG=1."""
    markexpr = request.config.option.markexpr or ""
    if not ("slow" in markexpr and "not slow" not in markexpr) and os.environ.get("ACCOMPANIST_MODEL_LONG") != "1":
        pytest.skip("the long profile runs with -m slow or ACCOMPANIST_MODEL_LONG=1")
    results = await _explore_all(list(range(1000, 1250)))
    verdict = _verdict(results)
    assert verdict is None, verdict


@pytest.mark.skipif("ACCOMPANIST_MODEL_SEED" not in os.environ, reason="set ACCOMPANIST_MODEL_SEED to reproduce a run")
async def test_model_seed() -> None:
    plain = os.environ.get("ACCOMPANIST_MODEL_PLAIN") == "1"
    results = []
    for seed in _seeds(os.environ["ACCOMPANIST_MODEL_SEED"]):
        result = await explore(seed, settle=SETTLE, plain=plain)
        print(summary_line(result))
        print(full_report(result), flush=True)
        results.append(result)
    verdict = _verdict(results)
    assert verdict is None, verdict
