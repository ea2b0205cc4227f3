"""Located values: data that lives at some roles and can be opened only there."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Generic, TypeVar

from accompanist.errors import ProjectionError
from accompanist.language.roles import Role

__all__ = ["Located"]

T = TypeVar("T")


class _Absent:
    """Marker for a located value at a role that does not own it (its projection is empty)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Final = _Absent()


class Located(Generic[T]):
    """A value located at one or more roles (its *owners*).

    Located values are opaque on purpose: there is no public ``.value``. Open one only inside
    ``ch.locally(role, fn, value)`` at a role that owns it, so a choreography cannot
    accidentally read data that lives on another machine. In a projected run, roles that do
    not own a value hold an empty placeholder with the same owners.
    """

    __slots__ = ("__owners", "__value")

    def __init__(self, owners: Iterable[Role], value: T | _Absent, _token: object = None) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError(
                "Located values are created by the choreography primitives " "(ch.locally, ch.comm ...), not directly"
            )
        self.__owners = frozenset(owners)
        self.__value = value

    @property
    def owners(self) -> frozenset[Role]:
        """The roles that own this value."""
        return self.__owners

    def __repr__(self) -> str:
        names = ",".join(sorted(r.name for r in self.__owners))
        return f"Located(at {names})"

    def __bool__(self) -> bool:
        raise ProjectionError(
            "<choreography>",
            _names(self.__owners),
            "bool()",
            "a Located value cannot decide a branch; share the decision with "
            "ch.broadcast(owner, value) or ch.cond(owner, value, body)",
        )

    def _open(self, role: Role, operation: str) -> T:
        if role not in self.__owners:
            raise ProjectionError(role.name, _names(self.__owners), operation)
        value = self.__value
        if isinstance(value, _Absent):  # pragma: no cover - the interpreters never do this
            raise ProjectionError(role.name, _names(self.__owners), operation, "value is not present here")
        return value

    def _present(self) -> bool:
        return not isinstance(self.__value, _Absent)

    def _raw(self) -> T | _Absent:
        return self.__value


_CONSTRUCT: Final = object()


def make_located(owners: Iterable[Role], value: Any) -> Located[Any]:
    """Create a located value (interpreters only)."""
    return Located(owners, value, _CONSTRUCT)


def _names(owners: frozenset[Role]) -> tuple[str, ...]:
    return tuple(sorted(r.name for r in owners))
