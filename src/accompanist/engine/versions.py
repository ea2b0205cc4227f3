"""Which versions each peer serves, learnt from its hello, and the version a new session starts at.

During a rolling upgrade, sidecars run different code for a while. A session of a version one
role lacks would wait forever for that role (its envelopes refused as an unknown choreography).
So every sidecar says, in the ``hello`` it sends each peer at start, which versions of which
choreographies it serves (with their fingerprints and patch names); a peer that receives an
announcement answers with its own hello (a reply, never answered in turn), so both learn.

An initiator then starts a session without an explicit version at the highest version that it
and every other role of the choreography serve (see :meth:`PeerVersions.start_version`), and
refuses at once, with :class:`~accompanist.errors.VersionUnavailableError`, a version a role is
known to lack. A peer that never said hello (down since this sidecar started, or an older build
whose hello is empty) is *unknown*: an infrastructure fault never decides a business outcome,
so an unknown peer never causes a refusal; it is counted and logged instead.

The payload is msgpack (msgspec) of :class:`Hello`, with a ``format`` number: a hello with an
empty payload (an older build) or one that cannot be decoded tells nothing, and leaves what is
known of its sender as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from accompanist.envelope import Envelope, EnvelopeKind
from accompanist.errors import VersionUnavailableError
from accompanist.language.choreography import App, Choreography

__all__ = ["HELLO_FORMAT", "Hello", "PeerVersions", "Served", "served_by"]

HELLO_FORMAT = 1
"""The hello payload's format; a receiver decodes the fields it knows of any format."""


class Served(msgspec.Struct, frozen=True, kw_only=True):
    """One version of one choreography at the hello's sender."""

    fingerprint: str = ""
    patches: list[str] = []


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of a ``hello`` envelope.

    Attributes:
        format: :data:`HELLO_FORMAT` of the sender.
        reply: an answer to a hello (never answered in turn, so hellos do not loop).
        served: choreography name -> version -> what the sender serves of it.
    """

    format: int = HELLO_FORMAT
    reply: bool = False
    served: dict[str, dict[int, Served]] = {}


_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Hello] = msgspec.msgpack.Decoder(Hello)


def served_by(app: App) -> dict[str, dict[int, Served]]:
    """What ``app`` serves, as a hello says it."""
    out: dict[str, dict[int, Served]] = {}
    for c in app:
        # a deprecated patch is still known: its new code is the only code (ch.deprecate_patch)
        known = c.code.patches | c.code.deprecated
        out.setdefault(c.name, {})[c.version] = Served(fingerprint=c.fingerprint, patches=sorted(known))
    return out


class PeerVersions:
    """What this sidecar knows of its peers' versions; one per engine.

    Args:
        app: the choreographies this sidecar serves.
        role: the role it plays.
        log: where unknown peers and odd hellos are reported.
        on_unknown: called once per session started while a peer's versions were unknown.
    """

    def __init__(self, app: App, role: str, log: logging.Logger, on_unknown: Callable[[], None] | None = None) -> None:
        self._app = app
        self._role = role
        self._log = log
        self._on_unknown = on_unknown
        self._own = served_by(app)
        self._peers: dict[str, dict[str, dict[int, Served]]] = {}
        self._heard: dict[str, float] = {}
        self._warned_unknown: set[tuple[str, str]] = set()

    # -- hellos -------------------------------------------------------------------------------
    def hello(self, dst: str, *, reply: bool = False) -> Envelope:
        """This sidecar's hello to ``dst`` (an announcement, or the ``reply`` to one)."""
        payload = _ENCODER.encode(Hello(reply=reply, served=self._own))
        return Envelope(
            session_id="", choreography="", version=0, src=self._role, dst=dst, seq=0, kind=EnvelopeKind.HELLO,
            payload=payload,
        )  # fmt: skip

    def learn(self, envelope: Envelope) -> bool:
        """Take in a peer's hello; return whether to answer it with this sidecar's own hello.

        An announcement is answered (the peer may have started after this sidecar's own
        announcement, so it does not know this sidecar's versions); a reply is not.
        """
        if not envelope.payload:
            return True  # an older build (or a transport's stand-in): it tells nothing
        try:
            hello = _DECODER.decode(envelope.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log.warning("unreadable hello from role '%s' (%s): its versions stay unknown", envelope.src, exc)
            return False
        before = self._peers.get(envelope.src)
        self._peers[envelope.src] = hello.served
        self._heard[envelope.src] = time.time()
        if before != hello.served:
            listing = "; ".join(f"{n} v{','.join(map(str, sorted(vs)))}" for n, vs in sorted(hello.served.items()))
            self._log.info("role '%s' serves %s", envelope.src, listing or "nothing")
        return not hello.reply

    def peer(self, role: str) -> dict[str, dict[int, Served]] | None:
        """What ``role`` serves, or None when unknown (it never said hello with a payload)."""
        return self._peers.get(role)

    def heard_at(self, role: str) -> float | None:
        """UNIX time of ``role``'s last hello with a payload, or None."""
        return self._heard.get(role)

    def serves(self, role: str, name: str, version: int) -> bool | None:
        """Whether ``role`` serves ``name`` at ``version`` (None: unknown)."""
        known = self._peers.get(role)
        if known is None:
            return None
        return version in known.get(name, {})

    def fingerprint_at(self, role: str, name: str, version: int) -> str | None:
        """The fingerprint ``role`` said its code of ``name`` v``version`` has, if it said."""
        known = self._peers.get(role)
        served = None if known is None else known.get(name, {}).get(version)
        return served.fingerprint if served is not None and served.fingerprint else None

    def patches_everywhere(self, choreography: Choreography) -> frozenset[str]:
        """The patch names of ``choreography`` that every other role's code knows too (an
        unknown peer knows none), so a session may take their new branches everywhere."""
        names = set(choreography.code.patches | choreography.code.deprecated)  # both run the new code
        for role in self.others(choreography):
            known = self._peers.get(role)
            served = None if known is None else known.get(choreography.name, {}).get(choreography.version)
            names &= set(served.patches) if served is not None else set()
        return frozenset(names)

    # -- the start rule -----------------------------------------------------------------------
    def others(self, choreography: Choreography) -> list[str]:
        """The roles of ``choreography`` other than this sidecar's."""
        return [r.name for r in choreography.roles if r.name != self._role]

    def lacking(self, choreography: Choreography) -> dict[str, list[int]]:
        """Roles known not to serve ``choreography``'s version, with the versions they serve."""
        out: dict[str, list[int]] = {}
        for role in self.others(choreography):
            known = self._peers.get(role)
            if known is not None and choreography.version not in known.get(choreography.name, {}):
                out[role] = sorted(known.get(choreography.name, {}))
        return out

    def unknown(self, choreography: Choreography) -> list[str]:
        """Roles of ``choreography`` whose versions are unknown."""
        return [r for r in self.others(choreography) if r not in self._peers]

    def best(self, name: str) -> Choreography | None:
        """The highest version of ``name`` this sidecar initiates that no role is known to lack
        (None when every version is lacking somewhere, or none is served here)."""
        for choreography in self._candidates(name):
            if not self.lacking(choreography):
                return choreography
        return None

    def _candidates(self, name: str) -> list[Choreography]:
        found = [c for c in self._app if c.name == name and c.initiator.name == self._role]
        return sorted(found, key=lambda c: c.version, reverse=True)

    def start_version(self, name: str, version: int | None) -> Choreography:
        """The choreography a new session of ``name`` starts with, at this initiator.

        Without ``version``: the highest version this sidecar serves that no role is known to
        lack (a role whose versions are unknown does not hold a version back). With it: that
        version, unless a role is known to lack it.

        Raises:
            UnknownChoreographyError: this sidecar does not serve ``name`` (at ``version``).
            VersionUnavailableError: a role is known to lack the version (or, without
                ``version``, every version served here).
        """
        if version is not None:
            chosen = self._app.get(name, version)
            missing = self.lacking(chosen)
            if missing and chosen.initiator.name == self._role:
                raise VersionUnavailableError(name, [version], missing)
        else:
            candidates = self._candidates(name)
            if not candidates:
                return self._app.get(name)  # not the initiator (or unknown): the caller says so
            best = self.best(name)
            if best is None:
                missing = {}
                for c in candidates:
                    for role, has in self.lacking(c).items():
                        missing[role] = has
                raise VersionUnavailableError(name, [c.version for c in candidates], missing)
            chosen = best
        unknown = self.unknown(chosen)
        if unknown:
            if self._on_unknown is not None:
                self._on_unknown()
            for role in unknown:
                if (name, role) not in self._warned_unknown:
                    self._warned_unknown.add((name, role))
                    self._log.warning(
                        "starting %r v%d although role '%s' has not said which versions it serves "
                        "(down, or an older build): if it lacks v%d, the session waits for it",
                        name,
                        chosen.version,
                        role,
                        chosen.version,
                    )
        return chosen

    def known_roles(self) -> list[str]:
        """Peers that said which versions they serve."""
        return sorted(self._peers)
