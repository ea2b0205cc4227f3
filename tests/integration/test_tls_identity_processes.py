"""TLS identities across real sidecar processes, with real certificates: the right identity
works, a stolen certificate cannot speak for another role (the forged ``failure`` of issue 10
is refused while the session goes on), a certificate of another CA is refused and counted, a
sidecar checks the role of the server it dials, and a sidecar given another role's
certificate refuses to start."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from examples.warehouse.cluster import wait_healthy

from accompanist.envelope import Envelope, EnvelopeKind, control_seq
from accompanist.errors import TransportError
from accompanist.failure import Failure
from accompanist.transport import TcpTransport, tls_contexts
from tests.integration.procs import ROOT, ProcessCluster, SidecarProcess, free_port

pytest.importorskip("cryptography")
from tests.support.pki import Authority, Identity  # noqa: E402

APP = "tests.faults.faultapp:app"
ROLES = ("a", "b", "c")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))).strip(",") == wanted:
            return float(match.group(2))
    return 0.0


async def metrics(cluster: ProcessCluster, role: str) -> str:
    status, text = await cluster.request("GET", role, "/metrics")
    assert status == 200
    return str(text)


async def poll(cluster: ProcessCluster, role: str, name: str, timeout: float = 30, **labels: str) -> float:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = metric(await metrics(cluster, role), name, **labels)
        if value > 0 or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    d = tmp_path_factory.mktemp("pki")
    ca, evil = Authority(d / "ca"), Authority(d / "evil", "evil")
    ids = {role: ca.issue(role, role) for role in ROLES}
    ids["evil-b"] = evil.issue("evil-b", "b")
    return ids


def client(identity: Identity, role: str, peer_address: tuple[str, int], *, ca: Path | None = None) -> TcpTransport:
    """A hand-made sidecar connection: what an attacker holding ``identity`` could open."""
    _, ctx = tls_contexts(identity.cert, identity.key, ca or identity.ca)
    return TcpTransport(role, ("127.0.0.1", 0), {"b": peer_address, "a": peer_address}, ssl_client=ctx)


def forged_failure(session_id: str) -> Envelope:
    """The failure envelope the initiator ``a`` would send ``b``, made by someone else."""
    return Envelope(
        session_id=session_id,
        choreography="pingpong",
        version=1,
        src="a",
        dst="b",
        seq=control_seq(EnvelopeKind.FAILURE),
        kind=EnvelopeKind.FAILURE,
        payload=Failure(role="a", step=None, transaction=None, error_type="Abort", message="forged").encode(),
    )


async def test_tls_identities_across_processes(tmp_path: Path, pki: dict[str, Identity]) -> None:
    args = {role: pki[role].args() for role in ROLES}
    env = {"FAULT_EFFECTS_DIR": str(tmp_path), "FAULT_PAUSE": "2"}
    async with ProcessCluster(ROLES, APP, tmp_path, args, **env) as c:
        # The right identities work.
        done = await c.start_session("a", "chain", 10)
        assert (done["status"], done["result"]) == ("completed", 14), done

        # c's key is stolen: its holder forges the failure the issue describes, claiming to be
        # the initiator a, while a session waits at b. b refuses it; the session completes.
        sid = (await c.start_session("a", "pingpong", 1, wait=False))["session_id"]
        await asyncio.sleep(0.5)  # a is inside its two-second step, b waits for it
        thief = client(pki["c"], "c", ("127.0.0.1", c["b"].peer_port))
        try:
            with pytest.raises(TransportError, match="wrong-src"):
                await thief.send(forged_failure(sid), timeout=10)
        finally:
            await thief.close()
        status, ended = await c.request("GET", "a", f"/sessions/{sid}")
        deadline = asyncio.get_running_loop().time() + 60
        while ended.get("status") == "running":
            assert asyncio.get_running_loop().time() < deadline, ended
            await asyncio.sleep(0.1)
            status, ended = await c.request("GET", "a", f"/sessions/{sid}")
        assert ended["status"] == "completed", ended
        assert (await c.session("b", sid) or {}).get("status") in ("completed", "finished")
        assert metric(await metrics(c, "b"), "accompanist_frames_rejected_total", reason="wrong-src") == 1

        # A certificate from another CA (it names b and trusts our public CA) is refused and counted.
        forger = client(pki["evil-b"], "b", ("127.0.0.1", c["a"].peer_port), ca=pki["a"].ca)
        try:
            with pytest.raises(TransportError):
                await forger.send(Envelope("x", "chain", 1, "b", "a", 1, "value", b"", {}), timeout=5)
        finally:
            await forger.close()
        in_bad = {"direction": "in", "reason": "bad-certificate"}
        assert await poll(c, "a", "accompanist_tls_handshakes_failed_total", **in_bad) == 1

        # A sidecar of role a whose address book sends "b" to c's port: it sees c's certificate,
        # hangs up and counts it, and nothing reaches c.
        misrouted = tmp_path / "misrouted"
        misrouted.mkdir()
        peers = {"a": free_port(), "b": c["c"].peer_port, "c": c["c"].peer_port}
        stray = SidecarProcess("a", APP, misrouted, args["a"], env, peers)
        stray.start()
        try:
            assert c.http is not None
            await wait_healthy(c.http, stray)
            async with c.http.post(f"{stray.api}/sessions", json={"choreography": "chain", "args": [1]}) as r:
                assert r.status == 202, await r.text()
            out_wrong = {"direction": "out", "reason": "wrong-role"}
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                async with c.http.get(f"{stray.api}/metrics") as r:
                    text = await r.text()
                if metric(text, "accompanist_tls_handshakes_failed_total", **out_wrong) >= 1:
                    break
                assert asyncio.get_running_loop().time() < deadline, text
                await asyncio.sleep(0.1)
        finally:
            await stray.terminate()
        assert metric(await metrics(c, "c"), "accompanist_frames_rejected_total", reason="wrong-dst") == 0


def test_a_sidecar_given_another_roles_certificate_refuses_to_start(tmp_path: Path, pki: dict[str, Identity]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "accompanist", "sidecar", "--app", APP, "--role", "b", "--listen", "127.0.0.1:0",
         *pki["a"].args()],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "does not name role 'b' (it names a)" in result.stderr, result.stderr
