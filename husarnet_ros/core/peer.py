"""Per-peer state: where the peer can be reached, its sessions, handshake progress and latency.

Who writes what: everything here belongs to the control loop (the ``Node``'s control methods), except
the fields marked *send thread* or *receive thread*, which only that thread writes. The data-plane threads
read ``route`` (one immutable object, so they never see a session with another session's endpoint) and
otherwise post events to the control loop instead of changing anything.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
from dataclasses import dataclass, field

from .constants import PENDING_PACKETS_PER_PEER
from .handshake import InitiatorState
from .session import Session

# An underlay endpoint as the socket layer gives it: (host, port); link-local hosts carry "%ifname".
Endpoint = tuple[str, int]


class PathKind(enum.Enum):
    NONE = "none"
    DIRECT = "direct"
    TUNNELLED = "tunnelled"


class CandidateSource(enum.Enum):
    LAN = "lan"  # multicast beacon from a local-network address
    LINK_LOCAL = "link-local"  # beacon from an IPv6 link-local address
    STATIC = "static"  # configured by the user
    LEARNED = "learned"  # authenticated traffic arrived from it
    BASE = "base"  # a base server named it (the peer's NAT-observed or advertised local endpoint)
    RELAY = "relay"  # through the home base server's relay (see relay_endpoint)


@dataclass(slots=True)
class Candidate:
    endpoint: Endpoint
    source: CandidateSource
    last_seen: float  # last beacon naming it, or last authenticated frame from it
    verified_at: float | None = None  # last authenticated frame from it: the peer answers there


@dataclass(frozen=True, slots=True)
class Route:
    """Where the data plane sends a peer's traffic: a session and the endpoint it goes to, replaced as one.
    ``datagram_limit``: the largest datagram a size probe showed to reach the peer at this endpoint (0: none
    shown; TCP segments are then cut at the overlay's MSS)."""

    session: Session
    endpoint: Endpoint
    datagram_limit: int = 0


class ProbePurpose(enum.Enum):
    LATENCY = "latency"  # the periodic ping on the path in use
    LIVENESS = "liveness"  # traffic went unanswered: is the path still there?
    CANDIDATE = "candidate"  # another endpoint: does the peer answer there (recovery, or a better path)?
    ON_DEMAND = "on-demand"  # `husarnet-ros ping`
    DATAGRAM_SIZE = "datagram-size"  # a padded probe: does a datagram of ``Probe.size`` reach the peer?


@dataclass(frozen=True, slots=True)
class Probe:
    sent_at: float
    endpoint: Endpoint
    purpose: ProbePurpose
    size: int = 0  # DATAGRAM_SIZE: the datagram's size


# A relayed path is named like an endpoint so that the path machinery (candidates, probes, roaming) treats
# it like any other: the host is the peer's overlay address, the port 0 (which no UDP endpoint has). The
# transport sends such a datagram to the home base server, prefixed with the relay header.
RELAY_PORT = 0
RELAY_RANK = 9  # worse than every direct endpoint: used only while none answers


def relay_endpoint(address: bytes) -> Endpoint:
    return (str(ipaddress.IPv6Address(address)), RELAY_PORT)


def is_relay(endpoint: Endpoint) -> bool:
    return endpoint[1] == RELAY_PORT


def endpoint_rank(endpoint: Endpoint) -> int:
    """Preference among direct endpoints, lower is better: IPv4, then global/ULA IPv6, then IPv6 link-local.

    IPv4 first because on a LAN it is the sturdiest: a link-local path depends on the interface's scope and
    is unusable for the second or two of duplicate address detection after every link flap, while an IPv4
    LAN address answers as soon as the link is back. The node probes better-ranked candidates on every
    latency round and moves to one as soon as it answers (``Node._on_pong``), so this order is what a
    settled peer uses, whichever endpoint the handshake happened to take.
    """
    host = endpoint[0]
    if endpoint[1] == RELAY_PORT:
        return RELAY_RANK
    if "%" in host:
        return 2
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return 3
    if address.version == 4:
        return 0
    return 2 if address.is_link_local else 1


def format_endpoint(endpoint: Endpoint | None) -> str | None:
    if endpoint is None:
        return None
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(eq=False)
class Peer:
    """Everything the node knows about one overlay address."""

    address: bytes
    hostname: str | None = None
    public_key: bytes | None = None
    candidates: dict[Endpoint, Candidate] = field(default_factory=dict)
    # sessions: ``route.session`` is the one traffic uses; ``next`` is the initiator's new session during a
    # rekey, used only once the responder is known to have it; ``previous`` accepts frames still in flight.
    route: Route | None = None  # read by the data-plane threads
    next: Session | None = None
    previous: Session | None = None
    previous_expires: float = 0.0
    # handshake as initiator
    initiation: InitiatorState | None = None
    initiation_endpoints: list[Endpoint] = field(default_factory=list)
    initiation_started: float = 0.0
    initiation_sent: float = 0.0
    confirm_bytes: bytes | None = None  # resent until the responder answers on the new session
    confirm_endpoint: Endpoint | None = None
    confirm_sent: float = 0.0
    next_handshake_at: float = 0.0
    handshake_backoff: float = 0.0
    # freshness: only authenticated messages move these
    last_init_timestamp: int = -1  # newest authenticated init from this peer: older or equal ones are replays
    last_beacon_timestamp: int = -1  # newest beacon: older or equal ones are replays
    # traffic waiting for a session (at most PENDING_PACKETS_PER_PEER; the oldest are dropped)
    pending: collections.deque[bytes] = field(
        default_factory=lambda: collections.deque(maxlen=PENDING_PACKETS_PER_PEER)
    )
    wants_session: bool = False
    # path liveness
    path_alive: bool = False  # the route's endpoint answered recently; read by the receive thread
    path_epoch: int = 0  # bumped whenever the route or its liveness changes (see roam_posted)
    path_lost_at: float | None = None
    next_path_probe_at: float = 0.0
    path_probe_interval: float = 0.0
    liveness_pings: int = 0  # pings sent since traffic went unanswered
    next_liveness_ping_at: float = 0.0
    # latency
    rtt_ms: float | None = None
    probes: dict[bytes, Probe] = field(default_factory=dict)
    next_probe_at: float = 0.0
    next_size_probe_at: float = 0.0  # when to ask the kernel again how large a datagram the route may carry
    size_shown_at: float = 0.0  # when the last size probe that came back was sent
    # statistics (monotonic times from the caller's clock)
    last_handshake: float | None = None
    last_activity: float = 0.0  # last beacon, handshake or session: unpinned peers expire from this
    last_seen: float | None = None  # receive thread
    rx_bytes: int = 0  # receive thread
    tx_bytes: int = 0  # send thread
    tx_bytes_queued: int = 0  # packets queued before the session existed, sent by the control loop
    roam_posted: tuple[int, Endpoint] | None = None  # receive thread: last (path_epoch, endpoint) reported
    route_heard_at: float = (
        0.0  # receive thread (and route changes): last authenticated frame from the route's endpoint
    )
    # hole punching: after a base server named candidates, probe them every PUNCH_INTERVAL until then
    punch_until: float = 0.0
    next_punch_at: float = 0.0

    @property
    def current(self) -> Session | None:
        route = self.route
        return None if route is None else route.session

    @property
    def endpoint(self) -> Endpoint | None:
        route = self.route
        return None if route is None else route.endpoint

    @property
    def path(self) -> PathKind:
        route = self.route
        if route is not None and route.session.confirmed and self.path_alive:
            return PathKind.TUNNELLED if route.endpoint[1] == RELAY_PORT else PathKind.DIRECT
        return PathKind.NONE

    def sessions(self) -> list[Session]:
        return [s for s in (self.current, self.next, self.previous) if s is not None]

    def ordered_candidates(self) -> list[Endpoint]:
        """Best first: endpoints that answered before, then by rank, then most recently heard of."""
        return [
            c.endpoint
            for c in sorted(
                self.candidates.values(),
                key=lambda c: (c.verified_at is None, endpoint_rank(c.endpoint), -c.last_seen),
            )
        ]
