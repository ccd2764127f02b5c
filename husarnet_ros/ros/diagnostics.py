"""REP 107 diagnostics of the overlay, as pure functions of what the daemon said (no rclpy node here).

One ``diagnostic_msgs/DiagnosticStatus`` each for:

- ``husarnet: daemon`` — OK running; WARN running but not ready (interface or transport not up yet);
  ERROR not answering and never answered since this node started; STALE not answering after having
  answered (what the other statuses show is the last thing it said).
- ``husarnet: base server`` — OK "registered with ADDRESS over udp|tcp" (values base_server, state,
  transport, rtt_ms), or "no base server configured (LAN only)"; WARN when one is configured but none
  answers (direct links go on); STALE while the daemon does not answer.
- ``husarnet: peer <hostname or address>`` (hardware_id = the overlay address) — OK direct (with rtt);
  WARN tunnelled, or rtt above ``latency_warn_ms`` (strictly above: equal is OK); ERROR unreachable
  (path none: no confirmed session). Values: address, hostname, path, state, endpoint, base_server,
  rtt_ms, last_handshake, last_seen, rx_bytes, tx_bytes, whitelisted.

Peers that vanish: a peer that leaves the daemon's table (removed, or the daemon restarted) is reported
ERROR "gone" for ``GONE_HOLD_S`` seconds, then no more; if it comes back it is reported normally at once.
So a monitor sees the level change to ERROR instead of the status silently disappearing, and a peer
removed on purpose does not stay red forever (a diagnostic aggregator turns it STALE afterwards).
While the daemon does not answer, every last known peer (and every gone peer) is reported STALE.

``PeerTracker`` keeps the current and gone peers (time passed in, no clock inside);
``build_diagnostics(health, tracker, latency_warn_ms, now)`` returns the list of statuses.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from ..api import PeerStatus, Status

DAEMON_NAME = "husarnet: daemon"
BASE_NAME = "husarnet: base server"
PEER_NAME_PREFIX = "husarnet: peer "
# How long a peer that left the table is still reported (ERROR "gone") before it is dropped.
GONE_HOLD_S = 60.0

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE


@dataclass(frozen=True)
class DaemonHealth:
    """What the node knows about the daemon at one moment."""

    answering: bool
    ever_answered: bool
    socket_path: str
    # Why it does not answer (the client's message); empty when it answers.
    error: str = ""
    # The latest status it gave (the last one before an outage while it does not answer).
    status: Status | None = None


@dataclass
class PeerTracker:
    """The peers of the last table, and those that left it less than ``hold_s`` ago."""

    hold_s: float = GONE_HOLD_S
    current: dict[str, PeerStatus] = field(default_factory=dict)
    # address -> (last known state, unix time it was first missing)
    gone: dict[str, tuple[PeerStatus, float]] = field(default_factory=dict)

    def update(self, peers: Iterable[PeerStatus], now: float) -> None:
        """A fresh table from the daemon at unix time ``now``."""
        fresh = {p.address: p for p in peers}
        for address, peer in self.current.items():
            if address not in fresh:
                self.gone[address] = (peer, now)
        for address in fresh:
            self.gone.pop(address, None)
        self.gone = {a: (p, since) for a, (p, since) in self.gone.items() if now - since < self.hold_s}
        self.current = fresh


def level_name(level: bytes | int) -> str:
    value = level[0] if isinstance(level, bytes) else level
    return {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}.get(value, str(value))


def _status(
    level: bytes, name: str, message: str, hardware_id: str, values: dict[str, str]
) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )


def _time_text(seconds: float | None, now: float) -> str:
    if seconds is None:
        return "never"
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).isoformat(timespec="milliseconds")
    return f"{stamp} ({max(now - seconds, 0.0):.1f} s ago)"


def _rtt_text(rtt_ms: float | None) -> str:
    return "unknown" if rtt_ms is None or not math.isfinite(rtt_ms) else f"{rtt_ms:.3f}"


def peer_display_name(peer: PeerStatus) -> str:
    return PEER_NAME_PREFIX + (peer.hostname or peer.address)


def _peer_values(peer: PeerStatus, now: float) -> dict[str, str]:
    return {
        "address": peer.address,
        "hostname": peer.hostname or "",
        "path": peer.path,
        "state": peer.state,
        "endpoint": peer.endpoint or "",
        "base_server": peer.base_server or "",
        "rtt_ms": _rtt_text(peer.rtt_ms),
        "last_handshake": _time_text(peer.last_handshake, now),
        "last_seen": _time_text(peer.last_seen, now),
        "rx_bytes": str(peer.rx_bytes),
        "tx_bytes": str(peer.tx_bytes),
        "whitelisted": str(peer.whitelisted).lower(),
    }


def peer_level(peer: PeerStatus, latency_warn_ms: float) -> tuple[bytes, str]:
    """(level, message) of one peer in the table."""
    if peer.path == "none":
        return ERROR, f"unreachable ({peer.state})"
    rtt = peer.rtt_ms
    slow = rtt is not None and math.isfinite(rtt) and rtt > latency_warn_ms
    rtt_part = "rtt unknown" if rtt is None else f"rtt {rtt:.1f} ms"
    if slow:
        rtt_part = f"high latency: rtt {rtt:.1f} ms > {latency_warn_ms:g} ms"
    if peer.path == "tunnelled":
        via = f" via {peer.base_server}" if peer.base_server else ""
        return WARN, f"tunnelled{via}, {rtt_part}"
    return (WARN if slow else OK), f"direct, {rtt_part}"


def peer_diagnostic(peer: PeerStatus, latency_warn_ms: float, now: float) -> DiagnosticStatus:
    level, message = peer_level(peer, latency_warn_ms)
    return _status(level, peer_display_name(peer), message, peer.address, _peer_values(peer, now))


def gone_peer_diagnostic(peer: PeerStatus, gone_since: float, now: float) -> DiagnosticStatus:
    values = _peer_values(peer, now)
    values["gone_since"] = _time_text(gone_since, now)
    message = f"gone: no longer in the daemon's peer table (last path {peer.path})"
    return _status(ERROR, peer_display_name(peer), message, peer.address, values)


def stale_peer_diagnostic(peer: PeerStatus, now: float) -> DiagnosticStatus:
    message = f"no data: the daemon is not answering (last path {peer.path})"
    return _status(STALE, peer_display_name(peer), message, peer.address, _peer_values(peer, now))


def daemon_diagnostic(health: DaemonHealth) -> DiagnosticStatus:
    values = {"control_socket": health.socket_path}
    status = health.status
    if status is not None:
        values |= {
            "address": status.address,
            "hostname": status.hostname,
            "interface": status.interface,
            "udp_port": str(status.udp_port),
            "version": status.version,
            "ready": str(status.ready).lower(),
            "whitelist_enabled": str(status.whitelist_enabled).lower(),
        }
    hardware_id = status.address if status is not None else ""
    if not health.answering:
        values["error"] = health.error
        if health.ever_answered:
            return _status(STALE, DAEMON_NAME, "stopped answering", hardware_id, values)
        return _status(ERROR, DAEMON_NAME, "not answering", hardware_id, values)
    if status is None:
        return _status(WARN, DAEMON_NAME, "answering, but it gave no status yet", hardware_id, values)
    values["uptime_s"] = f"{status.uptime_s:.1f}"
    values |= {f"counter.{name}": str(count) for name, count in sorted(status.counters.items())}
    if not status.ready:
        return _status(
            WARN, DAEMON_NAME, "running, not ready (interface or transport not up)", hardware_id, values
        )
    return _status(OK, DAEMON_NAME, "running", hardware_id, values)


def base_diagnostic(health: DaemonHealth) -> DiagnosticStatus:
    values = {"base_server": "", "state": "none", "transport": ""}
    if not health.answering:
        values["state"] = "unknown"
        return _status(STALE, BASE_NAME, "unknown: the daemon is not answering", "", values)
    base = health.status.base if health.status is not None else None
    if base is None:
        return _status(OK, BASE_NAME, "no base server configured (LAN only)", "", values)
    values = {"base_server": base.address, "state": base.state, "transport": base.transport}
    if base.rtt_ms is not None:
        values["rtt_ms"] = f"{base.rtt_ms:.1f}"
    if base.state == "registered":
        return _status(OK, BASE_NAME, f"registered with {base.address} over {base.transport}", "", values)
    # Direct links go on without a base server; only peers on other networks are out of reach.
    return _status(WARN, BASE_NAME, f"no base server answers ({base.address}: {base.state})", "", values)


def build_diagnostics(
    health: DaemonHealth, tracker: PeerTracker, latency_warn_ms: float, now: float
) -> list[DiagnosticStatus]:
    """Every status to publish now; ``tracker`` must already hold the latest table when answering."""
    statuses = [daemon_diagnostic(health), base_diagnostic(health)]
    if not health.answering:
        known = [*tracker.current.values(), *(peer for peer, _ in tracker.gone.values())]
        statuses += [stale_peer_diagnostic(p, now) for p in sorted(known, key=_key)]
        return statuses
    statuses += [peer_diagnostic(p, latency_warn_ms, now) for p in sorted(tracker.current.values(), key=_key)]
    statuses += [
        gone_peer_diagnostic(p, since, now) for p, since in sorted(tracker.gone.values(), key=_gone_key)
    ]
    return statuses


def _key(peer: PeerStatus) -> str:
    return peer.address


def _gone_key(entry: tuple[PeerStatus, float]) -> str:
    return entry[0].address
