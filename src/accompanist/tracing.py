"""OpenTelemetry tracing: one trace per session across every sidecar, replay-safe.

Why: one session is spread over many sidecars, so seeing what it did means joining what each
of them saw. Every id here is derived from the session, not drawn at random: the trace id is
the session's (its UUID), a role's session span id is a hash of ``(session, role)``, and every
participant's session span is a child of the initiator's. So the spans of all sidecars join
into one trace without any lookup, and a sidecar that crashes and replays a session gives its
session span the same id again. Replayed steps emit no spans (one ``replay`` span says how many
steps were replayed), so a crash never inflates the telemetry.

Optional: with ``opentelemetry-sdk`` installed (``pip install 'accompanist[telemetry]'``) and
``OTEL_TRACES_EXPORTER`` set (``console``, ``otlp`` with ``opentelemetry-exporter-otlp``
installed, or ``none``), or a traces file given (``--traces-file``, one JSON span per line),
a sidecar exports its spans; ``OTEL_SERVICE_NAME`` names it (default ``accompanist-ROLE``).
Without them every hook is a no-op costing one attribute check.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from accompanist.errors import ConfigError

__all__ = ["Tracing", "session_span_id", "setup_tracing", "trace_id_of"]

_FORCED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("accompanist_ids", default=None)


def trace_id_of(session_id: str) -> int:
    """The session's trace id: its UUID, or a hash of an id the client chose."""
    hexed = session_id.replace("-", "")
    if len(hexed) == 32:
        try:
            return int(hexed, 16) or 1
        except ValueError:
            pass
    return int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=16).digest(), "big") or 1


def session_span_id(session_id: str, role: str) -> int:
    """The id of ``role``'s session span: the same in every process and after every replay."""
    return int.from_bytes(hashlib.blake2b(f"{session_id}/{role}".encode(), digest_size=8).digest(), "big") or 1


class Tracing:
    """The engine's tracer (or nothing): spans for sessions, steps and replays."""

    def __init__(self, tracer: Any | None, role: str, provider: Any | None = None) -> None:
        self.tracer = tracer
        self.role = role
        self.provider = provider
        self.open: dict[str, Any] = {}  # session id -> its session span, until the session ends here

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded (an exporter is configured)."""
        return self.tracer is not None

    def _start(
        self,
        name: str,
        trace: int,
        span: int | None,
        parent: int | None,
        attrs: dict[str, Any],
        start: float | None = None,
    ) -> Any:
        from opentelemetry import trace as otel

        context = None
        if parent is not None:
            parent_ctx = otel.SpanContext(trace, parent, is_remote=True, trace_flags=otel.TraceFlags(1))
            context = otel.set_span_in_context(otel.NonRecordingSpan(parent_ctx))
        token = _FORCED.set((trace, span) if span is not None else None)
        try:
            assert self.tracer is not None
            start_time = int(start * 1e9) if start else None
            return self.tracer.start_span(name, context=context, attributes=attrs, start_time=start_time)
        finally:
            _FORCED.reset(token)

    def session(
        self, session_id: str, choreography: str, version: int, initiator: str, start: float | None = None
    ) -> Any:
        """The role's session span (started once per process; the same id after a replay),
        beginning at ``start`` (UNIX seconds: when the session began here), or now."""
        span = self.open.get(session_id)
        if span is None and self.tracer is not None:
            trace = trace_id_of(session_id)
            parent = None if initiator == self.role else session_span_id(session_id, initiator)
            attrs = {
                "accompanist.session_id": session_id,
                "accompanist.role": self.role,
                "accompanist.choreography": choreography,
                "accompanist.version": version,
            }
            span = self._start(
                f"session {choreography} at {self.role}",
                trace,
                session_span_id(session_id, self.role),
                parent,
                attrs,
                start,
            )
            self.open[session_id] = span
        return span

    @contextlib.contextmanager
    def step(self, session_id: str, name: str, **attrs: Any) -> Iterator[Any]:
        """A child span of the session span (the caller skips replayed steps)."""
        parent = self.open.get(session_id)
        if parent is None:
            yield None
            return
        from opentelemetry import trace as otel

        context = otel.set_span_in_context(parent)
        assert self.tracer is not None
        fields = {f"accompanist.{k}": v for k, v in attrs.items() if v is not None}
        fields.setdefault("accompanist.role", self.role)
        fields.setdefault("accompanist.session_id", session_id)
        with self.tracer.start_as_current_span(name, context=context, attributes=fields) as span:
            yield span

    @contextlib.contextmanager
    def live_step(self, session_id: str, name: str, attempts: Callable[[], int] | None, **attrs: Any) -> Iterator[Any]:
        """:meth:`step` for a live step of the projection: a wait that ended in a park is marked
        ``accompanist.parked`` (a ``parked`` span follows), and ``attempts()`` (a commit's tries)
        is recorded as ``accompanist.attempts`` when the step is over."""
        with self.step(session_id, name, **attrs) as span:
            try:
                yield span
            except BaseException as exc:
                if span is not None and type(exc).__name__ == "Park":
                    span.set_attribute("accompanist.parked", True)
                raise
            finally:
                if span is not None and attempts is not None:
                    span.set_attribute("accompanist.attempts", attempts())

    def on_transition(
        self, session_id: str, session: tuple[str, int, str], created: float, before: tuple[str, float, Any], after: Any
    ) -> None:
        """A session's status changed (durably): a ``parked`` span when it leaves ``parked``
        (from the park to now, with the reason), and the role's session span ends with a
        terminal status. The session span is opened here when this process never ran the
        session (it waited for the outcome across a restart), from when the session began here.

        Args:
            session_id: the session.
            session: its choreography, version and initiator.
            created: when it began at this role (UNIX seconds).
            before: the status it leaves, since when (UNIX seconds), and its reason.
            after: ``(status, now, terminal)``.
        """
        status, now, terminal = after
        if before[0] != "parked" and not terminal:
            return
        self.session(session_id, *session, start=created)
        if before[0] == "parked":
            self.interval(session_id, "parked", before[1], now, reason=before[2])
        if terminal:
            self.end(session_id, status)

    def interval(self, session_id: str, name: str, start: float, end: float, **attrs: Any) -> None:
        """A child span of the session span covering ``start`` to ``end`` (UNIX seconds), for
        what is known only once it is over (a park, from its start to the resume)."""
        parent = self.open.get(session_id)
        if parent is None or self.tracer is None:
            return
        from opentelemetry import trace as otel

        fields = {f"accompanist.{k}": v for k, v in attrs.items() if v is not None}
        fields.setdefault("accompanist.role", self.role)
        fields.setdefault("accompanist.session_id", session_id)
        span = self.tracer.start_span(
            name, context=otel.set_span_in_context(parent), attributes=fields, start_time=int(start * 1e9)
        )
        span.end(end_time=int(max(end, start) * 1e9))

    def close(self) -> None:
        """Export what is still buffered (the engine stops)."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None

    def end(self, session_id: str, status: str) -> None:
        """The session ended at this role: its span ends with the outcome."""
        span = self.open.pop(session_id, None)
        if span is not None:
            span.set_attribute("accompanist.outcome", status)
            span.end()


def _id_generator() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class SessionIds(RandomIdGenerator):
        """Session spans get their derived ids; every other span a random one."""

        def generate_trace_id(self) -> int:
            forced = _FORCED.get()
            return forced[0] if forced is not None else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = _FORCED.get()
            return forced[1] if forced is not None else super().generate_span_id()

    return SessionIds()


def _file_exporter(path: str) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        """One JSON object per finished span, flushed at once (a SIGKILL loses no ended span)."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the exporter's life

        def export(self, spans: Any) -> Any:
            with self.lock:
                for span in spans:
                    ctx, parent = span.get_span_context(), span.parent
                    line = {
                        "name": span.name,
                        "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
                        "start": span.start_time,
                        "end": span.end_time,
                        "attributes": dict(span.attributes or {}),
                        "service": span.resource.attributes.get("service.name"),
                    }
                    self.file.write(json.dumps(line, default=str) + "\n")
                self.file.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self.lock:
                self.file.close()

    return JsonLinesExporter()


def setup_tracing(role: str, traces_file: str | None = None) -> Tracing:
    """A :class:`Tracing` configured from the standard ``OTEL_*`` variables and ``traces_file``.

    Raises:
        ConfigError: tracing is asked for but the SDK or the exporter is not installed, or
            ``OTEL_TRACES_EXPORTER`` names an exporter we do not know.
    """
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none") and not traces_file:
        return Tracing(None, role)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"tracing asked for, but the OpenTelemetry SDK is not installed ({exc}): "
            "pip install 'accompanist[telemetry]'"
        ) from None
    service = os.environ.get("OTEL_SERVICE_NAME") or f"accompanist-{role}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=_id_generator())
    if traces_file:
        provider.add_span_processor(SimpleSpanProcessor(_file_exporter(traces_file)))
    if exporter_name == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install opentelemetry-exporter-otlp-proto-http"
            ) from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name not in ("", "none"):
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported here: use console, otlp or none")
    return Tracing(provider.get_tracer("accompanist"), role, provider)
