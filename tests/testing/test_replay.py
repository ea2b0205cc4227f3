"""``accompanist export`` and ``accompanist replay``: a recorded session replays on unchanged
code, and a changed step is reported at the step where code and record part."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from accompanist.cli import app as cli
from accompanist.store.sqlite import SQLiteStore
from accompanist.testing import Cluster, Ledger, export_session, load_export, replay_session
from tests.testing.sample import app as shop_app
from tests.testing.sample import make_shop


def _record(tmp_path: Path, *, declined: bool = False) -> str:
    """Run one session of the shop saga on SQLite stores; return its id."""
    return asyncio.run(_run(tmp_path, declined))


async def _run(tmp_path: Path, declined: bool) -> str:
    stores = {role: SQLiteStore(tmp_path / f"{role}.db", role=role) for role in ("shop", "bank")}
    async with Cluster(make_shop(Ledger(), declined=declined), stores=stores) as c:
        sid = await c.start_session("shop", "book")
        records = await c.settle(sid)
    assert {r.status for r in records.values() if r} == {"compensated" if declined else "completed"}
    return sid


def test_unchanged_code_replays_and_changed_code_diverges(tmp_path: Path) -> None:
    sid = _record(tmp_path)
    runner = CliRunner()
    export = tmp_path / "shop.json"
    done = runner.invoke(cli, ["export", sid, "--store", f"sqlite:///{tmp_path / 'shop.db'}", "-o", str(export)])
    assert done.exit_code == 0, done.output
    data = json.loads(export.read_text())
    assert data["role"] == "shop" and data["record"]["status"] == "completed"
    assert [e["name"] for e in data["journal"]][:2] == ["reserve", "make_shop.<locals>.price"]

    same = runner.invoke(cli, ["replay", sid, "--app", "tests.testing.sample:app", "--file", str(export)])
    assert same.exit_code == 0, same.output
    assert "replays: 5 of 5 recorded steps match (the end of the choreography)" in same.output

    changed = runner.invoke(cli, ["replay", sid, "--app", "tests.testing.sample:app_v2", "--file", str(export)])
    assert changed.exit_code == 1, changed.output
    assert (
        "DIVERGES at step 2: the record has send(shop->bank#1/value), the current code makes send(shop->bank#1/value)"
        not in changed.output
    )
    assert "DIVERGES at step 3" in changed.output and "shop->bank#2/value" in changed.output

    # The bank's side, read straight from its store (role read from the file), diverges too:
    # its first receive now gets the extra message, so its next step differs.
    bank = runner.invoke(
        cli, ["replay", sid, "--app", "tests.testing.sample:app_v2", "--store", f"sqlite:///{tmp_path / 'bank.db'}"]
    )
    assert bank.exit_code == 1 and "DIVERGES at step 1" in bank.output, bank.output


async def test_a_compensated_session_replays_as_recorded(tmp_path: Path) -> None:
    sid = await _run(tmp_path, True)
    store = SQLiteStore(tmp_path / "bank.db", role="bank")
    await store.open()
    try:
        recorded = await export_session(store, sid)
    finally:
        await store.close()
    report = await replay_session(load_export(recorded.to_json()), shop_app)
    assert report.ok and "the projection failed at step 1 as recorded: Abort: card declined" in report.ended, str(
        report
    )


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "accompanist-session/1", "role": 3}')
    runner = CliRunner()
    out = runner.invoke(cli, ["replay", "x", "--app", "tests.testing.sample:app", "--file", str(bad)])
    assert out.exit_code == 2 and "is not an accompanist session export" in out.output
    both = runner.invoke(cli, ["replay", "x", "--app", "tests.testing.sample:app"])
    assert both.exit_code == 2 and "exactly one of --store" in both.output
    missing = runner.invoke(cli, ["export", "nope", "--store", f"sqlite:///{tmp_path / 'none.db'}", "--role", "shop"])
    assert missing.exit_code == 2 and "no session nope" in missing.output
