"""What the node reports to the daemon (events), and what the data-plane threads hand to the control loop
(posted: the only way they pass on what they learn, see core/node.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .peer import Endpoint, Peer
from .session import Session

# --- events for the daemon (control loop -> daemon) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A session is established and its path answers."""

    address: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class PeerDown:
    """The peer's session is gone (expired, idle, not whitelisted, forgotten)."""

    address: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class PathLost:
    """The session lives, but its endpoint stopped answering: the node probes every candidate."""

    address: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The session's traffic now goes to ``endpoint`` (recovered, roamed or moved to a better endpoint)."""

    address: bytes
    endpoint: Endpoint
    reason: str


@dataclass(frozen=True, slots=True)
class DatagramSizeFound:
    """A size probe came back: TCP to this peer now goes in datagrams of up to ``size`` bytes (a change of
    endpoint starts over from the overlay's own segment size). ``size`` 0: a probe of the size in use went
    unanswered, and TCP is back to the overlay's segment size."""

    address: bytes
    endpoint: Endpoint
    size: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    address: bytes
    probe_id: bytes
    rtt_ms: float
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class InternalError:
    """A bug met while handling one input or one peer's timers: that one was skipped, the rest went on.

    The node never lets one bad event stop the others (the daemon logs this with its traceback); tests
    treat it as a failure (``testing.memnet`` raises it)."""

    where: str
    error: Exception


Event = PeerUp | PeerDown | PathLost | PathChanged | DatagramSizeFound | PongReceived | InternalError


# --- what the data-plane threads post to the control loop ----------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedsSession:
    peer: Peer
    packet: bytes


@dataclass(frozen=True, slots=True)
class EndpointSeen:
    """An authenticated frame on the current session came from ``endpoint`` (or arrived while the path was
    dead). ``probe``: it was a path probe, which alone never moves a working route."""

    peer: Peer
    session: Session
    endpoint: Endpoint
    probe: bool
    now: float


@dataclass(frozen=True, slots=True)
class PongSeen:
    peer: Peer
    session: Session
    probe_id: bytes
    endpoint: Endpoint
    now: float


@dataclass(frozen=True, slots=True)
class SessionWorks:
    """The first authenticated frame on a session this node initiated: the responder has the keys. ``probe``:
    it was a candidate probe, which shows only that the responder reaches us from ``endpoint``."""

    peer: Peer
    session: Session
    endpoint: Endpoint
    now: float
    probe: bool = False


Posted = NeedsSession | EndpointSeen | PongSeen | SessionWorks
