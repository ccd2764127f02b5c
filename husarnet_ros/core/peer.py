"""Per-peer state: where the peer can be reached, its sessions, handshake progress and latency."""

from __future__ import annotations

import collections
import enum
import ipaddress
from dataclasses import dataclass, field

from .handshake import InitiatorState, ResponderState
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


@dataclass(slots=True)
class Candidate:
    endpoint: Endpoint
    source: CandidateSource
    last_seen: float


def endpoint_rank(endpoint: Endpoint) -> int:
    """Preference among direct endpoints, lower is better.

    IPv4 LAN first, then global/ULA IPv6, then link-local.
    """
    host = endpoint[0]
    if "%" in host:
        return 2
    try:
        return 0 if ipaddress.ip_address(host).version == 4 else 1
    except ValueError:
        return 3


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
    endpoint: Endpoint | None = None  # where the current session's traffic goes
    current: Session | None = None
    previous: Session | None = None
    previous_expires: float = 0.0
    # handshake as initiator
    initiation: InitiatorState | None = None
    initiation_endpoint: Endpoint | None = None
    initiation_started: float = 0.0
    initiation_sent: float = 0.0
    confirm_bytes: bytes | None = None  # resent until the responder answers
    next_handshake_at: float = 0.0
    handshake_backoff: float = 0.0
    candidate_cursor: int = 0
    # handshake as responder
    responder: ResponderState | None = None
    responder_started: float = 0.0
    last_init_timestamp: int = -1  # highest verified initiation timestamp: older ones are replays
    # traffic wanting a session (appended by the data path, drained by the control path)
    pending: collections.deque[bytes] = field(
        default_factory=lambda: collections.deque(maxlen=32)
    )
    wants_session: bool = False
    # latency
    rtt_ms: float | None = None
    probes: dict[bytes, tuple[float, bool]] = field(default_factory=dict)  # id -> (sent at, on demand)
    next_probe_at: float = 0.0
    # statistics (monotonic times from the caller's clock)
    last_handshake: float | None = None
    last_seen: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0

    @property
    def path(self) -> PathKind:
        if self.current is not None and self.current.confirmed and self.endpoint is not None:
            return PathKind.DIRECT
        return PathKind.NONE

    def ordered_candidates(self) -> list[Endpoint]:
        return [
            c.endpoint
            for c in sorted(self.candidates.values(), key=lambda c: (endpoint_rank(c.endpoint), -c.last_seen))
        ]
