"""A money transfer between two banks, committed in two phases.

The client asks to move ``amount`` from an account at ``bank_a`` to an account at ``bank_b``.
The client coordinates a two-phase commit:

0. The client names the transfer with ``ch.uuid`` (journaled, so a replay gets the same
   name), which lets a bank hold several transfers prepared at once.
1. **Prepare** ``bank_a``, in an *enclave* of client and bank_a: bank_b takes no part and
   sees nothing. bank_a holds the money if the balance covers it and votes yes or no.
2. ``ch.cond(..., among=[BankB])`` tells bank_b (and only bank_b) whether bank_a is
   prepared. If not, bank_b is never asked to prepare and the client records a no vote for
   it; otherwise bank_b prepares the credit (the target account must exist) and votes.
3. The client decides ``commit`` only if both voted yes, and ``ch.select``s the verdict to
   both banks, which apply it to their ledgers locally: commit makes the hold final, abort
   releases it. A bank with nothing prepared for that transfer ignores the verdict.

Ledgers are ordinary objects handed to :func:`make_transfer`, which builds a choreography
bound to them, so each test or service owns its state and nothing is global. The
choreography's result at the client is ``{"outcome": "committed" | "aborted", "votes": ...}``.

A production saga would make the banks' steps ``ch.transaction``\\ s so they survive crashes;
this example shows the shape of the protocol only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import accompanist as ac

__all__ = ["BankA", "BankB", "Client", "Ledger", "make_transfer"]

Client, BankA, BankB = ac.roles("client", "bank_a", "bank_b")


@dataclass
class Ledger:
    """One bank's accounts and the transfers it has prepared but not yet finished.

    Attributes:
        balances: account name -> balance.
        pending: transfer id -> the prepared change ``(account, delta)``.
        log: what the bank was asked to do, in order (for tests and curiosity).
    """

    balances: dict[str, int]
    pending: dict[str, tuple[str, int]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def prepare_debit(self, request: dict[str, object], account: str) -> bool:
        """Vote on taking the requested amount out of ``account``; hold it if the vote is yes."""
        amount = int(str(request["amount"]))
        self.log.append(f"prepare debit {account} {amount}")
        if amount <= 0 or self.balances.get(account, 0) < amount:
            return False
        self.balances[account] -= amount  # held: nobody else can spend it meanwhile
        self.pending[str(request["transfer"])] = (account, -amount)
        return True

    def prepare_credit(self, request: dict[str, object], account: str) -> bool:
        """Vote on putting the requested amount into ``account`` (it must exist)."""
        amount = int(str(request["amount"]))
        self.log.append(f"prepare credit {account} {amount}")
        if amount <= 0 or account not in self.balances:
            return False
        self.pending[str(request["transfer"])] = (account, amount)
        return True

    def finish(self, verdict: dict[str, str]) -> str:
        """Apply the coordinator's verdict to the change prepared for that transfer, if any."""
        decision = verdict["decision"]
        self.log.append(decision)
        prepared = self.pending.pop(verdict["transfer"], None)
        if prepared is not None:
            account, delta = prepared
            if decision == "commit" and delta > 0:
                self.balances[account] += delta
            elif decision == "abort" and delta < 0:
                self.balances[account] -= delta  # release the hold
        return decision


def make_request(transfer: uuid.UUID, amount: int) -> dict[str, object]:
    """What the client asks each bank to prepare."""
    return {"transfer": str(transfer), "amount": amount}


def tally(vote_a: bool, vote_b: bool) -> dict[str, bool]:
    """The coordinator's record of the prepare phase."""
    return {"bank_a": vote_a, "bank_b": vote_b}


def decide(request: dict[str, object], votes: dict[str, bool]) -> dict[str, str]:
    """The coordinator's rule: commit only if every bank voted yes."""
    return {"transfer": str(request["transfer"]), "decision": "commit" if all(votes.values()) else "abort"}


def report(verdict: dict[str, str], votes: dict[str, bool]) -> dict[str, object]:
    """The session's result at the client."""
    return {"outcome": "committed" if verdict["decision"] == "commit" else "aborted", "votes": votes}


def no_vote() -> bool:
    """The vote recorded for a bank that was never asked to prepare."""
    return False


def make_transfer(bank_a: Ledger, bank_b: Ledger, *, source: str, target: str) -> ac.Choreography:
    """Build the transfer choreography for these two ledgers and accounts.

    Args:
        bank_a: the ledger holding ``source``; only role ``bank_a`` touches it.
        bank_b: the ledger holding ``target``; only role ``bank_b`` touches it.
        source: the account debited at bank_a.
        target: the account credited at bank_b.
    """

    def debit(request: dict[str, object]) -> bool:
        return bank_a.prepare_debit(request, source)

    def credit(request: dict[str, object]) -> bool:
        return bank_b.prepare_credit(request, target)

    async def prepare_a(ch: ac.Choreo, request: ac.Located[dict[str, object]]) -> ac.Located[bool]:
        at_a = await ch.comm(Client, BankA, request)
        vote = await ch.locally(BankA, debit, at_a)
        return await ch.comm(BankA, Client, vote)

    @ac.choreography("bank-transfer", roles=(Client, BankA, BankB))
    async def transfer(ch: ac.Choreo, amount: ac.Located[int]) -> ac.Located[dict[str, object]]:
        request = await ch.locally(Client, make_request, await ch.uuid(Client), amount)
        vote_a = await ch.enclave([Client, BankA], prepare_a, request)

        async def prepare_b(ch: ac.Choreo, a_prepared: bool) -> ac.Located[bool]:
            if not a_prepared:
                return await ch.locally(Client, no_vote)  # no need to bother bank_b
            at_b = await ch.comm(Client, BankB, request)
            vote = await ch.locally(BankB, credit, at_b)
            return await ch.comm(BankB, Client, vote)

        vote_b = await ch.cond(Client, vote_a, prepare_b, among=[BankB])
        votes = await ch.locally(Client, tally, vote_a, vote_b)
        verdict = await ch.locally(Client, decide, request, votes)
        told = await ch.select(Client, [BankA, BankB], verdict)
        await ch.locally(BankA, bank_a.finish, told)
        await ch.locally(BankB, bank_b.finish, told)
        return await ch.locally(Client, report, verdict, votes)

    return transfer
