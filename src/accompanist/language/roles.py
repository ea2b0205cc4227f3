"""Roles: the named participants of a choreography."""

from __future__ import annotations

import re
from dataclasses import dataclass

from accompanist.errors import DefinitionError

__all__ = ["Role", "roles"]

_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Role:
    """A participant of a choreography, named by a short lowercase identifier.

    Roles are values: compare them, put them in sets, pass them to ``ch.comm``. The same name
    means the same role, so a role is also how a sidecar is addressed on the network.
    """

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _ROLE_NAME.match(self.name):
            raise DefinitionError(
                f"invalid role name {self.name!r}: use a lowercase identifier "
                "(letters, digits, '_' or '-', starting with a letter, at most 63 characters)"
            )

    # Roles are compared and hashed at every step of every session; these skip the tuple the
    # generated methods build (a str caches its own hash).
    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if isinstance(other, Role):
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Role({self.name!r})"


def roles(*names: str) -> tuple[Role, ...]:
    """Create several roles at once: ``Buyer, Seller = ac.roles("buyer", "seller")``.

    Raises:
        DefinitionError: a name is invalid or given twice.
    """
    if not names:
        raise DefinitionError("roles() needs at least one role name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DefinitionError(f"duplicate role name {name!r} in roles()")
        seen.add(name)
    return tuple(Role(n) for n in names)
