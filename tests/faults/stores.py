"""The end-of-campaign check every fault campaign makes on every sidecar's store."""

from __future__ import annotations

from collections.abc import Mapping

from accompanist.store.url import open_store

__all__ = ["store_problems"]


async def store_problems(urls: Mapping[str, str]) -> list[str]:
    """Open each role's store (``role -> URL``, sidecars stopped) and report what is left
    over: unacknowledged outbox rows and sessions that never reached a terminal status."""
    problems: list[str] = []
    for role, url in urls.items():
        store = open_store(url, role)
        await store.open()
        try:
            counts = await store.counts()
            if counts.outbox_unacked:
                problems.append(f"{role}: {counts.outbox_unacked} outbox rows unacknowledged")
            nonterminal = await store.nonterminal_sessions()
            if nonterminal:
                problems.append(f"{role}: {len(nonterminal)} sessions not terminal: {nonterminal[:3]}")
        finally:
            await store.close()
    return problems
