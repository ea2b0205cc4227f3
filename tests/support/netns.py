"""Hosts apart on one machine: Linux network namespaces on a bridge, an address each.

Each *host* is a network namespace with its own loopback and one veth pair whose other end
is enslaved to a bridge in the root namespace; the bridge has the first address of a /24
picked at random among those nobody uses here, so the test (in the root namespace) reaches
every host, and hosts reach each other, by address and only by address. Names carry a random
tag, so concurrent runs never meet, and everything is removed on exit, even after a failure.
Needs root and ``ip`` (iproute2); :func:`unavailable` says why not when it cannot work.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from types import TracebackType

__all__ = ["Network", "unavailable"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip``, refused), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"accp{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _free_subnet() -> str:
    used = _ip("-o", "-4", "addr").stdout + _ip("-4", "route").stdout
    rng = random.SystemRandom()
    for _ in range(200):
        prefix = f"10.{rng.randrange(64, 250)}.{rng.randrange(0, 256)}"
        if f"{prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 found for the test network")


class Network:
    """Namespaces named after ``hosts`` on one bridge; a context manager.

    Args:
        hosts: short host names; host ``i`` gets address ``10.x.y.(10 + i)``.
    """

    def __init__(self, hosts: list[str]) -> None:
        self.tag = f"acc{secrets.token_hex(3)}"
        self.bridge = f"{self.tag}br"
        self.subnet = _free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.hosts = {h: (f"{self.tag}-{h}", f"{self.subnet}.{10 + i}") for i, h in enumerate(hosts)}
        self._made: list[list[str]] = []  # undo commands, run in reverse order

    def address(self, host: str) -> str:
        """The host's address (reachable from the root namespace and every other host)."""
        return self.hosts[host][1]

    def namespace(self, host: str) -> str:
        """The host's namespace name."""
        return self.hosts[host][0]

    def run_in(self, host: str) -> list[str]:
        """The prefix that runs a command on ``host`` (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def __enter__(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(["link", "del", self.bridge])
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (ns, address) in enumerate(self.hosts.values()):
                outside, inside = f"{self.tag}v{i}", f"{self.tag}n{i}"
                _ip("netns", "add", ns)
                self._made.append(["netns", "del", ns])  # takes its end of the veth pair with it
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                self._made.append(["link", "del", outside])
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove every namespace, veth pair and the bridge made (missing ones are fine)."""
        while self._made:
            _ip(*self._made.pop(), check=False)

    def leftovers(self) -> list[str]:
        """Links and namespaces of this network still present (for the test's own check)."""
        links = [line for line in _ip("-o", "link").stdout.splitlines() if self.tag in line]
        spaces = [line for line in _ip("netns", "list").stdout.splitlines() if self.tag in line]
        return links + spaces

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
