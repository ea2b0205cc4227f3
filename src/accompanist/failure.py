"""Why a session failed, as structured fields that every role and every interpreter agree on.

A saga fails at one place: a transaction at some role aborted, a local step raised, an
operator cancelled. Roles learn of it at different times and some fail concurrently, so the
initiator chooses the one failure the session ends with and every participant records the
same :class:`Failure`; the API returns it field by field, and ``SessionFailedError.failure``
carries it in Python.
"""

from __future__ import annotations

import msgspec

from accompanist.errors import CodecError, TransactionFailedError

__all__ = ["Failure", "storable_text"]


def storable_text(text: str) -> str:
    """``text`` as every store and JSON can hold it: lone surrogates become ``?`` and NUL
    characters U+FFFD. An error message is outside data (an exception may quote anything), so
    it is made storable once, where the failure is made, not checked again at each commit."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """One failure of one session.

    Attributes:
        role: where it happened: the role whose transaction aborted or whose step raised (for a
            cancel, the role where the operator cancelled).
        step: that role's step index (counted the same way by every interpreter), or None when
            the failure belongs to no step (a cancel, a lost peer).
        transaction: the transaction's name when a commit failed, else None.
        error_type: the type name of the error (``Abort``, ``ValueError``,
            ``SessionCancelledError`` ...).
        message: the error's own message (an ``Abort``'s reason).
    """

    role: str
    step: int | None
    transaction: str | None
    error_type: str
    message: str

    def __post_init__(self) -> None:
        # Made by this process from an exception, or decoded from a peer: either way outside
        # text, which every record of the failure (its JSON, the session's error) must hold.
        for name in ("role", "transaction", "error_type", "message"):
            value = getattr(self, name)
            if value is not None:
                clean = storable_text(value)
                if clean is not value:
                    msgspec.structs.force_setattr(self, name, clean)

    @classmethod
    def of(cls, exc: BaseException, role: str, step: int | None) -> Failure:
        """The failure ``exc`` raised at ``role``'s ``step`` stands for."""
        if isinstance(exc, TransactionFailedError):
            return cls(
                role=exc.role, step=exc.step, transaction=exc.name, error_type=exc.error_type, message=exc.detail
            )
        failure = getattr(exc, "failure", None)
        if isinstance(failure, Failure):  # a SessionFailedError passing a failure on
            return failure
        return cls(role=role, step=step, transaction=None, error_type=type(exc).__name__, message=str(exc))

    def describe(self) -> str:
        """One line for logs and the ``error`` field: where, what, why."""
        where = f"role '{self.role}'"
        if self.step is not None:
            where += f", step {self.step}"
        if self.transaction is not None:
            where += f" (transaction {self.transaction})"
        return f"failed at {where}: {self.error_type}: {self.message}"

    def to_json(self) -> dict[str, object]:
        """The fields as a JSON object (the API's ``failure``)."""
        return msgspec.structs.asdict(self)

    def encode(self) -> bytes:
        """JSON bytes, as stored and as carried by envelopes."""
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Failure:
        """Read bytes made by :meth:`encode`.

        Raises:
            CodecError: they are not a failure record.
        """
        try:
            return msgspec.json.decode(data, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CodecError(f"unreadable failure record: {exc}") from exc
