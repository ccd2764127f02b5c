"""Pure translation from the daemon's API models (husarnet_ros.api) to the ROS messages of husarnet_ros.

``peer_to_msg(PeerStatus) -> msg.Peer``, ``peers_to_msg(peers, stamp) -> msg.PeerArray``,
``status_to_msg(Status, stamp) -> msg.Status``, ``daemon_down_status(stamp) -> msg.Status``,
``unix_to_time(float | None) -> builtin_interfaces/Time``.

``peer_table_key`` and ``status_key`` give what makes a table or a status "changed" for the peers node:
everything except the stamps and the values that move with every packet or probe (rx/tx bytes,
last_seen, rtt). The periodic publication carries those; a path or endpoint change is published at once.

Conventions: a missing rtt is -1.0 (the message says negative = unknown); a missing time is the zero Time;
missing strings are empty. ``base_state`` is the state of the base server in use ("registered",
"connecting", "down"), "none" when the daemon has none configured and "unknown" when it does not answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from husarnet_ros.msg import Peer, PeerArray
from husarnet_ros.msg import Status as StatusMsg

from ..api import PeerPath, PeerStatus, Status

PATH_CODES: dict[str, int] = {
    "none": int(Peer.PATH_NONE),
    "direct": int(Peer.PATH_DIRECT),
    "tunnelled": int(Peer.PATH_TUNNELLED),
}
UNKNOWN_RTT_MS = -1.0
BASE_STATE_NONE = "none"
BASE_STATE_UNKNOWN = "unknown"
_UINT64_MAX = 2**64 - 1


def unix_to_time(seconds: float | None) -> Time:
    """builtin_interfaces/Time of a unix time; zero for None, negative or non-finite values."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return Time()
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:  # rounding up the last nanosecond
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return Time(sec=min(whole, 2**31 - 1), nanosec=nanos)


def path_code(path: PeerPath | str) -> int:
    """The Peer.PATH_* constant of an API path; PATH_NONE for anything unknown."""
    return PATH_CODES.get(path, PATH_CODES["none"])


def _counter(value: int) -> int:
    return min(max(value, 0), _UINT64_MAX)


def peer_to_msg(peer: PeerStatus) -> Peer:
    rtt = peer.rtt_ms
    return Peer(
        address=peer.address,
        hostname=peer.hostname or "",
        path=path_code(peer.path),
        endpoint=peer.endpoint or "",
        base_server=peer.base_server or "",
        rtt_ms=float(rtt) if rtt is not None and math.isfinite(rtt) and rtt >= 0 else UNKNOWN_RTT_MS,
        last_handshake=unix_to_time(peer.last_handshake),
        last_seen=unix_to_time(peer.last_seen),
        rx_bytes=_counter(peer.rx_bytes),
        tx_bytes=_counter(peer.tx_bytes),
        whitelisted=peer.whitelisted,
    )


def _sorted(peers: Iterable[PeerStatus]) -> list[PeerStatus]:
    # A stable order, so subscribers (and the change detection) do not see a reordering as a change.
    return sorted(peers, key=lambda p: p.address)


def peers_to_msg(peers: Iterable[PeerStatus], stamp: Time) -> PeerArray:
    return PeerArray(header=Header(stamp=stamp, frame_id=""), peers=[peer_to_msg(p) for p in _sorted(peers)])


def status_to_msg(status: Status, stamp: Time) -> StatusMsg:
    paths = [p.path for p in status.peers]
    return StatusMsg(
        header=Header(stamp=stamp, frame_id=""),
        address=status.address,
        hostname=status.hostname,
        daemon_running=True,
        base_server=status.base.address if status.base is not None else "",
        base_state=status.base.state if status.base is not None else BASE_STATE_NONE,
        base_transport=status.base.transport if status.base is not None else "",
        whitelist_enabled=status.whitelist_enabled,
        peers_total=len(paths),
        peers_direct=paths.count("direct"),
        peers_tunnelled=paths.count("tunnelled"),
    )


def daemon_down_status(stamp: Time, last: Status | None = None) -> StatusMsg:
    """The Status published while the daemon does not answer: daemon_running false, no peers.

    ``last`` (the last status the daemon gave) keeps the node's own address and hostname visible.
    """
    return StatusMsg(
        header=Header(stamp=stamp, frame_id=""),
        address=last.address if last else "",
        hostname=last.hostname if last else "",
        daemon_running=False,
        base_server="",
        base_state=BASE_STATE_UNKNOWN,
        base_transport="",
        whitelist_enabled=last.whitelist_enabled if last else False,
        peers_total=0,
        peers_direct=0,
        peers_tunnelled=0,
    )


def peer_table_key(peers: Iterable[PeerStatus]) -> tuple[tuple[Any, ...], ...]:
    """What must differ for the peer table to count as changed (not counters, last_seen or rtt)."""
    return tuple(
        (p.address, p.hostname, p.path, p.endpoint, p.base_server, p.whitelisted, p.state, p.last_handshake)
        for p in _sorted(peers)
    )


def status_key(message: StatusMsg) -> tuple[Any, ...]:
    """What must differ for a Status message to count as changed (everything but the header)."""
    return (
        message.address,
        message.hostname,
        message.daemon_running,
        message.base_server,
        message.base_state,
        message.base_transport,
        message.whitelist_enabled,
        message.peers_total,
        message.peers_direct,
        message.peers_tunnelled,
    )
