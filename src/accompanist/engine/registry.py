"""Transactions by name, so a logged commit can be compensated without re-running its session.

The transaction log keeps each commit's name, arguments and result. To undo one after a
restart the engine needs the transaction's compensation again: it knows every transaction
that the choreographies' code reaches (found by ``accompanist.language.reach`` when they are
declared) and every one it has seen run since it started. A name it still does not know is
recovered by replaying the session's journal, which runs into the commit again.
"""

from __future__ import annotations

from accompanist.language.choreography import App
from accompanist.language.transaction import Transaction

__all__ = ["TransactionRegistry"]


class TransactionRegistry:
    """``(choreography, transaction name) -> Transaction`` for one engine's app."""

    def __init__(self, app: App) -> None:
        self._by_name: dict[tuple[str, str], Transaction] = {}
        for choreography in app:
            for tx in choreography.transactions:
                self._by_name.setdefault((choreography.name, tx.name), tx)

    def note(self, choreography: str, tx: Transaction) -> None:
        """Remember ``tx``: it just ran in a session of ``choreography``."""
        self._by_name.setdefault((choreography, tx.name), tx)

    def get(self, choreography: str, name: str) -> Transaction | None:
        """The transaction ``name`` of ``choreography``, if known."""
        return self._by_name.get((choreography, name))
