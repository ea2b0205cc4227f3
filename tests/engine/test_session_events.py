"""One structured log line per session event, the same fields at every role; JSON on request."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from accompanist.logs import SESSION_LOGGER, JsonFormatter
from accompanist.store.base import SessionStatus
from tests.engine.harness import cluster
from tests.engine.test_saga import DEFAULT, FT, Service, make_app
from tests.integration.procs import ROOT


def _events(caplog: pytest.LogCaptureFixture, sid: str) -> list[dict[str, object]]:
    found = []
    for record in caplog.records:
        fields = getattr(record, "accompanist", None)
        if record.name == SESSION_LOGGER and isinstance(fields, dict) and fields["session_id"] == sid:
            found.append(fields)
    return found


@pytest.mark.parametrize("config", [DEFAULT, FT], ids=["default", "fault-tolerant"])
async def test_a_compensated_saga_logs_its_start_and_one_outcome_per_role(
    config: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SESSION_LOGGER)
    svc = Service()
    async with cluster(make_app(svc), "abc", config=config) as c:  # type: ignore[arg-type]
        sid = await c["a"].start_session("three-then-risky", [-1])
        for role in "abc":
            assert (await c[role].wait(sid, 10)).status == SessionStatus.COMPENSATED
    events = _events(caplog, sid)
    starts = [e for e in events if e["event"] == "start"]
    assert [(e["role"], e["choreography"], e["version"]) for e in starts] == [("a", "three-then-risky", 1)]
    outcomes = [e for e in events if e["event"] == SessionStatus.COMPENSATED]
    assert sorted(str(e["role"]) for e in outcomes) == ["a", "b", "c"], events
    # The failure is named the same way at every role: who failed, with what.
    assert {(e["failed_role"], e["error_type"], e["error"]) for e in outcomes} == {
        ("c", "Abort", "cannot take -1")
    }, outcomes
    assert all(e["event"] != "replay" for e in events)


async def test_a_replay_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SESSION_LOGGER)
    svc = Service()
    async with cluster(make_app(svc), "ab", config=FT) as c:
        await c.stop("b")  # b is down: a's session waits for it
        sid = await c["a"].start_session("loop", [2])
        await c.stop("a")
        await c.start("a")  # a comes back and replays its unfinished session
        await c.start("b")
        assert (await c["a"].wait(sid, 10)).status == SessionStatus.COMPLETED
    replays = [e for e in _events(caplog, sid) if e["event"] == "replay"]
    assert [e["role"] for e in replays] == ["a"], replays


def test_the_json_format_puts_the_fields_at_the_top_level() -> None:
    record = logging.LogRecord(SESSION_LOGGER, logging.INFO, __file__, 1, "session %s parked", ("s1",), None)
    record.accompanist = {"event": "parked", "session_id": "s1", "role": "b"}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "session s1 parked" and line["level"] == "INFO"
    assert (line["event"], line["session_id"], line["role"]) == ("parked", "s1", "b")


def test_a_sidecar_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "accompanist", "sidecar", "--app", "examples.app:app", "--role", "buyer",
           "--log-format", "yaml"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "--log-format must be 'text' or 'json', got 'yaml'" in done.stderr
