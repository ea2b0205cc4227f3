"""``ch.patched(name)`` and ``ch.deprecate_patch(name)``: changing a choreography's code without a
new version, while sessions that started before the change replay the old code path.

Temporal's model, made safe for code that several roles run::

    if ch.patched("express-shipping"):
        await ch.transaction(Warehouse, reserve_express, at_wh)   # the new code
    else:
        await ch.transaction(Warehouse, reserve_stock, at_wh)     # what old sessions did

**The rule.** Every role must take the same branch, or the roles' projections would disagree.
So the choice is made once per session, when the initiator creates it: the session takes the
new branch of a patch if the initiator's code knows the patch and every other role's code is
known (from its hello, see :mod:`accompanist.engine.versions`) to know it too. That set of
patch names is recorded with the session (``accompanist.engine.origin``) and travels to the
other roles with the envelopes that reach them, so a role that joins, or replays after an
upgrade, decides as the initiator did. A session created before the patch existed has an empty
set: it runs the old branch everywhere, before and after any role is upgraded. The central
interpreter runs new code: ``patched`` is True there.

**The journal.** In fault-tolerant mode a taken patch records a marker step (kind ``patch``,
named after the patch) at that point of the role's journal; a patch not taken records nothing
and takes no step number, so an old session's steps keep their numbers and the old path replays
exactly. When replaying, the marker decides: present at that step, True; another step there,
False.

**Deprecation.** Once no session that started before the patch is unfinished (``GET /versions``
tells), replace ``if ch.patched(name): new else: old`` by ``ch.deprecate_patch(name)`` followed
by the new code alone. ``deprecate_patch`` takes the marker step when a replayed journal has it
there (so sessions that took the patch replay without diverging) and does nothing otherwise.
Afterwards the call can go too, once those sessions have finished.

Patch names are string literals in the choreography's code, so a sidecar can tell its peers
which patches its code knows (:attr:`~accompanist.language.fingerprint.CodeFacts.patches`).
"""

from __future__ import annotations

from typing import Any

from accompanist.errors import DefinitionError

__all__ = ["check_patch_found", "check_patch_name"]


def check_patch_name(name: Any, operation: str) -> str:
    """``name`` if it can name a patch.

    Raises:
        DefinitionError: it is not a short, printable text without commas.
    """
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable() or "," in name:
        raise DefinitionError(f"{operation}: a patch name is a short printable text without commas, got {name!r}")
    return name


def check_patch_found(name: str, found: frozenset[str], operation: str, choreography: str) -> None:
    """Refuse a patch name the scan of the choreography's code did not find.

    A sidecar tells its peers which patches its code knows from that scan, and a session takes
    a patch only if every role's code knows it: a name the scan cannot see (one held in a
    variable or a constant) would be silently never taken. So it is an error at once, in the
    central interpreter as in the engine.

    Raises:
        DefinitionError: ``name`` is not among ``found``.
    """
    if name not in found:
        known = ", ".join(repr(n) for n in sorted(found)) or "none"
        raise DefinitionError(
            f"{operation}({name!r}) in choreography {choreography!r}: write the patch name as a string "
            f'literal in the call (ch.{operation}("name")), so that sidecars can tell each other which '
            f"patches their code knows; the names found in the code: {known}"
        )
