"""A stand-in ``Controller`` for the few tests the real one cannot serve.

The CLI, the client, the control API, the schema test and the ROS nodes are tested against the real daemon
controller (``daemon.node_controller.NodeController`` on the in-memory network: ``testing.memnet_daemon``).
This fake is for what that cannot give on demand:

- peers in states the real node does not reach in a test: a tunnelled path (without base servers), an RTT
  of 150 ms (the in-memory network answers in well under a millisecond). It reports the peers it is given
  (``add_peer``, before it is served), pings them with their own RTT, and resolves their hostnames;
- a controller for tests of the control server itself (socket life cycle, connection limits, threading),
  which never call it, or subclass it to block or to record where a call runs.

It keeps no whitelist, base servers, static endpoints or hosts entries: all are always empty, removals
answer NotFound, additions are refused. ``serve_fake()`` runs it behind the real ``ControlServer`` on a
short temporary socket path.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..api import (
    BaseServerStatus,
    HostEntry,
    PeerStatus,
    PingReply,
    PingResult,
    Status,
    Whitelist,
    normalize_overlay,
)
from ..core.errors import AddressError
from ..core.peer_endpoint import StaticEndpoint
from ..daemon.control import ControlServer
from ..daemon.controller import InvalidRequest, NotFound

OWN_ADDRESS = "fc94::1"
_KEEPS_NOTHING = (
    "the fake daemon keeps no whitelist, base servers, static endpoints or hosts entries "
    "(test with testing.memnet_daemon)"
)


@dataclass
class FakeController:
    address: str = OWN_ADDRESS
    hostname: str = "robot1"
    peers: dict[str, PeerStatus] = field(default_factory=dict)  # set before serving; read by the server

    def add_peer(self, peer: PeerStatus) -> None:
        self.peers[peer.address] = peer

    def status(self) -> Status:
        return Status(
            address=self.address,
            hostname=self.hostname,
            interface="hnet0",
            udp_port=5582,
            whitelist_enabled=True,
            version="0.0-fake",
            uptime_s=12.5,
            ready=True,
            counters={},
            peers=list(self.peers.values()),
        )

    def whitelist(self) -> Whitelist:
        return Whitelist(enabled=True, addresses=[])

    def whitelist_add(self, address: str) -> None:
        raise InvalidRequest(_KEEPS_NOTHING)

    def whitelist_remove(self, address: str) -> None:
        raise NotFound(f"{address} is not on the whitelist")

    def whitelist_set_enabled(self, enabled: bool) -> None:
        raise InvalidRequest(_KEEPS_NOTHING)

    def base_servers(self) -> list[BaseServerStatus]:
        return []

    def base_add(self, address: str) -> None:
        raise InvalidRequest(_KEEPS_NOTHING)

    def base_remove(self, address: str) -> None:
        raise NotFound(f"{address} is not a base server of this daemon")

    def static_endpoints(self) -> list[StaticEndpoint]:
        return []

    def static_endpoint_add(self, address: str, endpoint: str) -> None:
        raise InvalidRequest(_KEEPS_NOTHING)

    def static_endpoint_remove(self, address: str, endpoint: str) -> None:
        raise NotFound(f"{endpoint} is not a static endpoint of peer {address}")

    def hosts(self) -> list[HostEntry]:
        return []

    def hosts_add(self, hostname: str, address: str) -> None:
        raise InvalidRequest(_KEEPS_NOTHING)

    def hosts_remove(self, hostname: str) -> None:
        raise NotFound(f"no host entry named {hostname!r}")

    def resolve(self, name_or_address: str) -> str:
        with contextlib.suppress(AddressError):
            return normalize_overlay(name_or_address)
        for peer in self.peers.values():
            if peer.hostname and peer.hostname.lower() == name_or_address.lower():
                return peer.address
        raise NotFound(f"unknown host {name_or_address!r}")

    async def ping(self, address: str, count: int, interval_s: float, timeout_s: float) -> PingResult:
        """Every probe answered at once with the peer's own RTT (none on a peer without a path)."""
        peer = self.peers.get(address)
        if peer is None:
            raise NotFound(f"{address} is not a known peer")
        rtt = peer.rtt_ms if peer.path != "none" else None
        replies = [PingReply(seq=i + 1, rtt_ms=rtt) for i in range(count)]
        received = sum(r.rtt_ms is not None for r in replies)
        return PingResult(
            address=address,
            hostname=peer.hostname,
            path=peer.path,
            endpoint=peer.endpoint,
            base_server=peer.base_server,
            replies=replies,
            sent=count,
            received=received,
            loss=1.0 - received / count,
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        return True

    async def wait_peer(self, address: str, timeout_s: float) -> bool:
        """At once: its peers never change while it is served."""
        peer = self.peers.get(address)
        return peer is not None and peer.path != "none"

    def logs(self, limit: int) -> list[str]:
        return []


@contextlib.contextmanager
def serve_fake(controller: FakeController | None = None) -> Iterator[tuple[FakeController, str]]:
    """A FakeController served by the real ControlServer; yields (controller, socket path)."""
    fake = controller or FakeController()
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="hr-ctl-", dir="/tmp")
    path = f"{directory}/control.sock"
    server = ControlServer(fake, path, group=None)
    server.start()
    try:
        yield fake, path
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
