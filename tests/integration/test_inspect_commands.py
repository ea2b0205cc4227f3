"""``accompanist sessions``, ``show`` and ``diagram`` against running sidecar processes and,
offline, against the stores they left behind (also through a cluster file)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.integration.procs import ROOT, ProcessCluster

FT = ["--mode", "fault-tolerant", "--receive-timeout", "5", "--store", "sqlite:///./{role}.db"]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "accompanist", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)


def _step_lines(output: str) -> list[str]:
    """The rows of the merged steps table, in the order printed."""
    table = output.split("steps, in causal order", 1)[1]
    return [line for line in table.splitlines() if line.startswith("│")]


def _check_compensated_steps(output: str) -> None:
    """The saga(5) session: b reserves, c refuses the charge, b compensates; in causal order."""
    lines = _step_lines(output)
    where = {name: next(i for i, line in enumerate(lines) if name in line) for name in ("reserve", "charge")}
    sends = [i for i, line in enumerate(lines) if "b->c #1" in line]
    assert len(sends) == 2 and sends[0] < sends[1] and "send" in lines[sends[0]], lines  # the send, then its receive
    assert where["reserve"] < sends[0] < where["charge"], lines
    assert "failed: Abort: charge" in lines[where["charge"]]  # the failure line has the rest
    undo = [line for line in lines if "compensation" in line]
    assert len(undo) == 1 and "reserve" in undo[0] and lines.index(undo[0]) > where["charge"], lines


async def test_sessions_show_and_diagram_across_sidecars_and_stores(tmp_path: Path) -> None:
    cluster = ProcessCluster(
        ["a", "b", "c"], "tests.faults.faultapp:app", tmp_path, FT, FAULT_EFFECTS_DIR=str(tmp_path)
    )
    async with cluster:
        ids = {}
        for n, outcome in ((1, "completed"), (5, "compensated")):
            status, body = await cluster.request(
                "POST", "a", "/sessions?wait=true", json={"choreography": "saga", "args": [n]}
            )
            assert status == 200 and body["status"] == outcome, body
            ids[outcome] = body["session_id"]
        for role in "bc":  # the participants learn the outcome a moment later
            for outcome, sid in ids.items():
                for _ in range(100):
                    seen = await cluster.session(role, sid)
                    if seen is not None and seen["status"] == outcome:
                        break
                    await asyncio.sleep(0.05)
        urls = [arg for role in "abc" for arg in ("--sidecar", cluster[role].api)]
        listing = _cli(tmp_path, "sessions", *urls)
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        assert "2 sessions: 1 compensated, 1 completed" in listing.stdout, listing.stdout
        for outcome, sid in ids.items():
            row = next(line for line in lines if sid in line)
            assert row.count(outcome) == 3 and "yes" in row, row  # every role, and they agree
        only = _cli(tmp_path, "sessions", *urls, "--status", "compensated")
        assert ids["compensated"] in only.stdout and ids["completed"] not in only.stdout
        recent = _cli(tmp_path, "sessions", *urls, "--since", "10m")
        assert all(sid in recent.stdout for sid in ids.values()), recent.stdout
        old = _cli(tmp_path, "sessions", *urls, "--until", "1h")
        assert "0 sessions" in old.stdout and ids["completed"] not in old.stdout, old.stdout
        bad_time = _cli(tmp_path, "sessions", *urls, "--since", "yesterday")
        assert bad_time.returncode == 2 and "cannot read the time 'yesterday'" in bad_time.stderr
        (tmp_path / "cluster.toml").write_text(
            "[sidecars]\n" + "".join(f'{role} = "{cluster[role].api}"\n' for role in "abc")
        )
        by_file = _cli(tmp_path, "sessions", "--cluster", "cluster.toml")
        assert by_file.returncode == 0 and all(sid in by_file.stdout for sid in ids.values()), by_file.stderr

        shown = _cli(tmp_path, "show", ids["compensated"], *urls)
        assert shown.returncode == 0, shown.stderr
        assert "failure: Abort at c (transaction charge, step 1): charge refuses 5" in shown.stdout, shown.stdout
        assert "roles agree: yes" in shown.stdout
        _check_compensated_steps(shown.stdout)

        mermaid = _cli(tmp_path, "diagram", ids["compensated"], *urls)
        assert mermaid.returncode == 0, mermaid.stderr
        assert mermaid.stdout.splitlines()[:5] == [
            "sequenceDiagram", "    participant a", "    participant b", "    participant c", "    a->>b: 5",
        ], mermaid.stdout  # fmt: skip
        assert "    Note over c: ✗ charge: Abort: charge refuses 5" in mermaid.stdout
        assert "    Note over b: ↩ compensate reserve" in mermaid.stdout
        assert mermaid.stdout.rstrip().endswith("Note over a,c: compensated: Abort at c: charge refuses 5")
        for fmt in ("svg", "html"):
            drawn = _cli(tmp_path, "diagram", ids["completed"], *urls, "--format", fmt, "-o", f"done.{fmt}")
            assert drawn.returncode == 0 and f"wrote done.{fmt}" in drawn.stderr, drawn.stderr
        svg = ET.parse(tmp_path / "done.svg").getroot()  # well-formed, standalone
        texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
        assert texts[:3] == ["a", "b", "c"] and texts.count("1") == 3 and "completed" in texts, texts
        page = (tmp_path / "done.html").read_text()
        assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "⛁ ship = 1 (committed)" in page
        assert "http://" not in page.replace("http://www.w3.org/2000/svg", ""), "nothing loaded from the network"

    # Offline, from the stores the sidecars left behind: the same steps (no times), the same picture.
    stores = [arg for role in "abc" for arg in ("--store", f"{role}=sqlite:///{tmp_path / f'{role}.db'}")]
    offline = _cli(tmp_path, "show", ids["compensated"], *stores)
    assert offline.returncode == 0, offline.stderr
    assert "roles agree: yes" in offline.stdout
    _check_compensated_steps(offline.stdout)
    (tmp_path / "stores.toml").write_text(
        "[stores]\n" + "".join(f'{role} = "sqlite:///{tmp_path / f"{role}.db"}"\n' for role in "abc")
    )
    again = _cli(tmp_path, "diagram", ids["compensated"], "--cluster", "stores.toml")
    # The same picture, but for a's receive that was never served: the store keeps only what happened.
    live = [line for line in mermaid.stdout.splitlines() if "waited for #35;1 from c: stopped" not in line]
    assert again.returncode == 0 and again.stdout.splitlines() == live, (again.stdout, mermaid.stdout)
    listed = _cli(tmp_path, "sessions", *stores)
    assert listed.returncode == 0 and "2 sessions: 1 compensated, 1 completed" in listed.stdout, listed.stdout
    missing = _cli(tmp_path, "show", "no-such-session", *stores)
    assert missing.returncode == 1 and "no sidecar or store knows session no-such-session" in missing.stderr
    bad = _cli(tmp_path, "sessions", "--store", "sqlite:///x.db")
    assert bad.returncode == 2 and "--store takes ROLE=STORE_URL" in bad.stderr
    (tmp_path / "empty.toml").write_text("colour = 'red'\n")
    wrong = _cli(tmp_path, "sessions", "--cluster", "empty.toml")
    assert wrong.returncode == 2 and "unknown key(s) colour" in wrong.stderr
