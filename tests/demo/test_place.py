"""``python -m accompanist.demo.place``: orders placed on a boutique that already runs.

What ``deploy/k8s/place-orders.yaml`` runs in a cluster, run here against the demo's own
processes: it reaches the services only through ``BOUTIQUE_CART_ADDR`` and
``BOUTIQUE_FRONTEND_ADDR``, and says whether every order ended as its data calls for.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from accompanist.demo.cluster import Cluster


async def test_place_orders_through_a_running_boutique(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, mode="default")
    await cluster.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCOMPANIST_", "BOUTIQUE_"))}
        env |= {"BOUTIQUE_CART_ADDR": cluster.address("cart"), "BOUTIQUE_FRONTEND_ADDR": cluster.address("frontend")}
        command = [sys.executable, "-m", "accompanist.demo.place", "--orders", "4"]
        proc = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=300, check=False
        )
    finally:
        await cluster.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and lines[-1] == "4 of 4 orders ended as expected"
    assert sum(": completed in " in line for line in lines) == 3  # the fourth pays with an expired card
    assert sum(": compensated in " in line for line in lines) == 1


def test_place_says_which_addresses_are_missing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUTIQUE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "accompanist.demo.place"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "BOUTIQUE_CART_ADDR and BOUTIQUE_FRONTEND_ADDR" in proc.stderr
