"""The travel booking example across four real sidecar processes (fault-tolerant, SQLite stores):
a car only where the hotel says so, no car left compensates everywhere, and the flight's sidecar
never receives the hotel's choice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.integration.procs import ProcessCluster

ROLES = ["client", "flight", "hotel", "car"]


async def test_travel_booking_across_sidecars(tmp_path: Path) -> None:
    args = ["--mode", "fault-tolerant", "--store", "sqlite:///./{role}.db"]
    async with ProcessCluster(ROLES, "examples.app:app", tmp_path, args) as cluster:
        trip = {"traveller": "ada", "city": "Lisbon", "nights": 3}
        near = await cluster.start_session("client", "trip", trip)
        assert (near["status"], near["result"]["car"]) == ("completed", None)
        far = await cluster.start_session("client", "trip", {**trip, "city": "Reykjavik"})
        assert far["status"] == "completed"
        assert far["result"]["car"] == "car-Reykjavik-1 at Lava Lodge, Route 41"
        none_left = await cluster.start_session("client", "trip", {**trip, "city": "Reykjavik"})
        assert none_left["status"] == "compensated"
        assert none_left["failure"]["role"] == "car" and none_left["failure"]["message"] == "no car left in Reykjavik"
        sessions = [near["session_id"], far["session_id"], none_left["session_id"]]
        for sid in sessions:  # every role that took part agrees
            statuses = {role: (await cluster.session(role, sid) or {}).get("status") for role in ROLES}
            assert len(set(statuses.values())) == 1, statuses
    # The flight's sidecar heard only from the client: the hotel's choice never reached it.
    with sqlite3.connect(tmp_path / "flight.db") as conn:
        senders = {
            src
            for (src,) in conn.execute(
                "SELECT DISTINCT src FROM acc_inbox WHERE kind = 'value' AND session_id IN (?, ?, ?)", sessions
            )
        }
    assert senders == {"client"}
    with sqlite3.connect(tmp_path / "car.db") as conn:
        told = {sid for (sid,) in conn.execute("SELECT DISTINCT session_id FROM acc_inbox WHERE src = 'hotel'")}
    assert told == set(sessions)  # the car rental was told each time, "no car" included
