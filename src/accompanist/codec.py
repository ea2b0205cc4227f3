"""The payload codec: exact, safe round trips of choreography values through msgpack.

Values crossing a process boundary are encoded with msgspec's msgpack, never pickle. Plain
JSON-like data passes as is; a few standard types (tuple, set, UUID, Decimal, datetime,
ints beyond 64 bits ...) travel as msgpack extension records so they come back as the same
type; dataclasses, msgspec Structs, pydantic models and enums travel by *registered name*
and are rebuilt only if the receiving choreography registered that name. Nothing else is accepted: an unknown
type is a ``CodecError`` at the sender, naming the type and where it sat in the value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from accompanist.errors import CodecError

__all__ = ["PayloadCodec"]

_TUPLE: Final = 1
_OBJECT: Final = 2
_UUID: Final = 3
_DECIMAL: Final = 4
_SET: Final = 5
_FROZENSET: Final = 6
_DATETIME: Final = 7
_DATE: Final = 8
_TIME: Final = 9
_TIMEDELTA: Final = 10
_BYTEARRAY: Final = 11
_BIGINT: Final = 12
_DATETIME_TZ: Final = 13
_TIME_TZ: Final = 14

_SCALARS: Final = (str, int, float, bool, type(None), bytes)
_MAX_DEPTH: Final = 64
# msgpack's own integers span int64 and uint64; Python ints beyond travel as an extension.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def _is_pydantic(cls: type) -> bool:
    return hasattr(cls, "model_validate") and hasattr(cls, "model_dump")


class PayloadCodec:
    """Encodes and decodes values for one choreography, knowing its registered types.

    Args:
        types: classes allowed to cross the wire (dataclasses, ``msgspec.Struct``s, pydantic
            models, enums). Each is known by its qualified name.

    Raises:
        CodecError: a type is not one of the supported kinds, or two types share a name.
    """

    def __init__(self, types: Iterable[type] = ()) -> None:
        self._by_name: dict[str, type] = {}
        self._by_type: dict[type, str] = {}
        for cls in types:
            self.register(cls)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ext_hook=self._ext_hook)

    def register(self, cls: type) -> None:
        """Allow ``cls`` to cross the wire under its qualified name."""
        if not isinstance(cls, type) or not (
            dataclasses.is_dataclass(cls)
            or issubclass(cls, msgspec.Struct)
            or issubclass(cls, enum.Enum)
            or _is_pydantic(cls)
        ):
            raise CodecError(
                f"cannot register {cls!r}: payload types must be dataclasses, msgspec Structs, "
                "pydantic models or enums"
            )
        name = f"{cls.__module__}.{cls.__qualname__}"
        other = self._by_name.get(name)
        if other is not None and other is not cls:
            raise CodecError(f"two payload types are named {name!r}")
        self._by_name[name] = cls
        self._by_type[cls] = name

    @property
    def types(self) -> tuple[type, ...]:
        """The registered payload types."""
        return tuple(self._by_type)

    def encode(self, value: Any) -> bytes:
        """Encode ``value``.

        Raises:
            CodecError: the value (or something inside it) has a type that cannot be sent.
        """
        try:
            return self._encoder.encode(self._to_wire(value, "value", 0))
        except CodecError:
            raise
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise CodecError(f"cannot encode value: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`encode`.

        Raises:
            CodecError: the bytes are malformed or name an unregistered type.
        """
        try:
            return self._decoder.decode(data)
        except CodecError:
            raise
        except (msgspec.DecodeError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            # ArithmeticError: a garbled Decimal (InvalidOperation) or timedelta (OverflowError).
            raise CodecError(f"cannot decode payload: {exc}") from exc

    def roundtrip(self, value: Any) -> Any:
        """What a receiver would get for ``value`` (used by the central interpreter)."""
        return self.decode(self.encode(value))

    # -- encoding -------------------------------------------------------------------------
    def _ext(self, code: int, inner: Any) -> msgspec.msgpack.Ext:
        return msgspec.msgpack.Ext(code, self._encoder.encode(inner))

    def _to_wire(self, value: Any, path: str, depth: int) -> Any:
        if type(value) in _SCALARS:
            if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
                return msgspec.msgpack.Ext(_BIGINT, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))
            return value
        if depth > _MAX_DEPTH:
            raise CodecError(f"value nested deeper than {_MAX_DEPTH} levels at {path}")
        d = depth + 1
        cls = type(value)
        if cls is list:
            return [self._to_wire(v, f"{path}[{i}]", d) for i, v in enumerate(value)]
        if cls is dict:
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if type(k) not in _SCALARS:
                    raise CodecError(f"dict key {k!r} at {path} must be str, int, float, bool or None")
                out[k] = self._to_wire(v, f"{path}[{k!r}]", d)
            return out
        if cls is tuple:
            return self._ext(_TUPLE, [self._to_wire(v, f"{path}[{i}]", d) for i, v in enumerate(value)])
        name = self._by_type.get(cls)
        if name is not None:
            return self._ext(_OBJECT, [name, self._fields_to_wire(value, path, d)])
        if isinstance(value, uuid.UUID):
            return msgspec.msgpack.Ext(_UUID, value.bytes)
        if isinstance(value, decimal.Decimal):
            return msgspec.msgpack.Ext(_DECIMAL, str(value).encode())
        if cls is set or cls is frozenset:
            items = [self._to_wire(v, f"{path}{{}}", d) for v in value]
            return self._ext(_SET if cls is set else _FROZENSET, items)
        if isinstance(value, (dt.datetime, dt.time)):
            return self._clock_to_wire(value)
        if isinstance(value, dt.date):
            return msgspec.msgpack.Ext(_DATE, value.isoformat().encode())
        if isinstance(value, dt.timedelta):
            return self._ext(_TIMEDELTA, [value.days, value.seconds, value.microseconds])
        if cls is bytearray:
            return msgspec.msgpack.Ext(_BYTEARRAY, bytes(value))
        hint = ""
        if dataclasses.is_dataclass(value) or isinstance(value, (msgspec.Struct, enum.Enum)) or _is_pydantic(cls):
            hint = "; register it with the choreography: @ac.choreography(..., types=[" + cls.__qualname__ + "])"
        raise CodecError(f"cannot send a value of type {cls.__module__}.{cls.__qualname__} at {path}{hint}")

    def _clock_to_wire(self, value: dt.datetime | dt.time) -> msgspec.msgpack.Ext:
        offset = value.utcoffset()
        is_datetime = isinstance(value, dt.datetime)
        if offset is None or not offset.microseconds:
            return msgspec.msgpack.Ext(_DATETIME if is_datetime else _TIME, value.isoformat().encode())
        # fromisoformat drops the microseconds of a UTC offset: send the offset apart.
        naive = value.replace(tzinfo=None).isoformat()
        code = _DATETIME_TZ if is_datetime else _TIME_TZ
        return self._ext(code, [naive, offset.days, offset.seconds, offset.microseconds])

    def _fields_to_wire(self, value: Any, path: str, depth: int) -> Any:
        if isinstance(value, enum.Enum):
            return self._to_wire(value.value, f"{path}.value", depth)
        if isinstance(value, msgspec.Struct):
            names: Iterable[str] = value.__struct_fields__
            raw = {n: getattr(value, n) for n in names}
        elif dataclasses.is_dataclass(value):
            raw = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        else:
            raw = dict(value.model_dump(mode="python", round_trip=True))
        return {k: self._to_wire(v, f"{path}.{k}", depth) for k, v in raw.items()}

    # -- decoding -------------------------------------------------------------------------
    def _ext_hook(self, code: int, data: memoryview) -> Any:
        raw = bytes(data)
        if code == _TUPLE:
            return tuple(self._decoder.decode(raw))
        if code == _OBJECT:
            name, fields = self._decoder.decode(raw)
            cls = self._by_name.get(name)
            if cls is None:
                raise CodecError(f"payload names type {name!r}, which this choreography did not register")
            return self._build(cls, fields)
        if code == _UUID:
            return uuid.UUID(bytes=raw)
        if code == _DECIMAL:
            return decimal.Decimal(raw.decode())
        if code == _SET:
            return set(self._decoder.decode(raw))
        if code == _FROZENSET:
            return frozenset(self._decoder.decode(raw))
        if code == _DATETIME:
            return dt.datetime.fromisoformat(raw.decode())
        if code == _DATE:
            return dt.date.fromisoformat(raw.decode())
        if code == _TIME:
            return dt.time.fromisoformat(raw.decode())
        if code in (_DATETIME_TZ, _TIME_TZ):
            naive, days, seconds, micros = self._decoder.decode(raw)
            zone = dt.timezone(dt.timedelta(days=days, seconds=seconds, microseconds=micros))
            parse = dt.datetime.fromisoformat if code == _DATETIME_TZ else dt.time.fromisoformat
            return parse(naive).replace(tzinfo=zone)
        if code == _TIMEDELTA:
            days, seconds, micros = self._decoder.decode(raw)
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == _BYTEARRAY:
            return bytearray(raw)
        if code == _BIGINT:
            return int.from_bytes(raw, "big", signed=True)
        raise CodecError(f"unknown extension code {code} in payload")

    @staticmethod
    def _build(cls: type, fields: Any) -> Any:
        try:
            if issubclass(cls, enum.Enum):
                return cls(fields)
            if _is_pydantic(cls):
                return cls.model_validate(fields)  # type: ignore[attr-defined]
            if not isinstance(fields, dict):
                raise TypeError("fields must be a map")
            return cls(**fields)
        except Exception as exc:
            raise CodecError(f"cannot rebuild {cls.__qualname__} from payload: {exc}") from exc
