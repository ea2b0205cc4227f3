"""Three-party Diffie-Hellman: alice, bob and carol agree on one secret key.

Each party draws a private exponent, and the public values travel around a ring twice
(alice → bob → carol → alice): the first lap carries ``g**x``, the second ``g**(x*y)``. After
the second lap every party raises what it received to its own exponent and holds
``g**(a*b*c) mod p``; no private exponent and no key ever crosses the wire.

To prove agreement without revealing the key, bob and carol send a SHA-256 fingerprint of
theirs to alice (gathered with ``ch.fanin``), and the session's result at alice says whether
all three match.

Randomness is drawn with ``ch.uuid(role)``, a journaled helper: a replayed session gets the
same UUIDs back, hence the same exponents and the same key. Never call ``random`` or
``secrets`` directly in a choreography; the replay would diverge.

The group is the 2048-bit MODP group of RFC 3526 (generator 2). This is a teaching example:
a real deployment would authenticate the public values (plain DH is open to a
man-in-the-middle) and use a vetted library.
"""

from __future__ import annotations

import hashlib
import uuid

import accompanist as ac

__all__ = ["GENERATOR", "MODULUS", "Alice", "Bob", "Carol", "exponent_from", "fingerprint", "group_key_exchange"]

Alice, Bob, Carol = ac.roles("alice", "bob", "carol")
RING = (Alice, Bob, Carol)

MODULUS = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
"""The 2048-bit MODP prime of RFC 3526, section 3."""
GENERATOR = 2


def exponent_from(first: uuid.UUID, second: uuid.UUID) -> int:
    """A private exponent from two journaled UUIDs (244 random bits), never 0 or 1."""
    return (first.int << 128 | second.int) % (MODULUS - 3) + 2


def public_value(exponent: int) -> int:
    """``g**exponent mod p``: what a party may reveal on the first lap."""
    return pow(GENERATOR, exponent, MODULUS)


def raise_to(exponent: int, received: int) -> int:
    """``received**exponent mod p``: the second-lap value, or the final key."""
    return pow(received, exponent, MODULUS)


def fingerprint(key: int) -> str:
    """A SHA-256 fingerprint of a key: safe to share, useless to recover the key from."""
    return hashlib.sha256(key.to_bytes(256, "big")).hexdigest()


def summarize(fingerprints: dict[str, str]) -> dict[str, object]:
    """Alice's verdict: do all parties hold the same key?"""
    return {"agreed": len(set(fingerprints.values())) == 1, "fingerprints": fingerprints}


def after(role: ac.Role) -> ac.Role:
    """The next party in the ring."""
    return RING[(RING.index(role) + 1) % len(RING)]


async def draw_exponent(ch: ac.Choreo, role: ac.Role) -> ac.Located[int]:
    """Draw a private exponent at ``role`` from journaled randomness."""
    first = await ch.uuid(role)
    second = await ch.uuid(role)
    return await ch.locally(role, exponent_from, first, second)


@ac.choreography("group-key-exchange", roles=RING)
async def group_key_exchange(ch: ac.Choreo) -> ac.Located[dict[str, object]]:
    """Agree on a shared key among alice, bob and carol; alice learns whether all agree."""
    exponents = await ch.fanout(RING, draw_exponent)

    held = {r: await ch.locally(r, public_value, exponents[r]) for r in RING}
    for _lap in range(2):
        # Pass what you hold to the next party; raise what you receive to your own exponent.
        # After two laps each party's value has all three exponents in it: the key.
        received = {after(r): await ch.comm(r, after(r), held[r]) for r in RING}
        held = {r: await ch.locally(r, raise_to, exponents[r], received[r]) for r in RING}
    keys = held

    async def report(ch: ac.Choreo, role: ac.Role) -> ac.Located[str]:
        mine = await ch.locally(role, fingerprint, keys[role])
        return mine if role == Alice else await ch.comm(role, Alice, mine)

    fingerprints = await ch.fanin(RING, Alice, report)
    return await ch.locally(Alice, summarize, fingerprints)
