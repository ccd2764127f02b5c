"""An in-memory ``Controller`` for tests of the control API, the client, the CLI and the ROS nodes.

It behaves like the daemon at the API boundary (validation, NotFound, normalised addresses) without any
networking. ``serve_fake()`` runs it behind the real ``ControlServer`` on a short temporary socket path.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..api import HostEntry, PeerStatus, PingReply, PingResult, Status, Whitelist, normalize_overlay
from ..core.errors import AddressError
from ..daemon.control import ControlServer
from ..daemon.controller import InvalidRequest, NotFound

OWN_ADDRESS = "fc94::1"
# Polling step of the fake waits; only how quickly a wait notices a change, never asserted on.
_POLL_S = 0.01


@dataclass
class FakeController:
    address: str = OWN_ADDRESS
    hostname: str = "robot1"
    ready: bool = True
    whitelist_enabled: bool = True
    peers: dict[str, PeerStatus] = field(default_factory=dict)
    allowed: list[str] = field(default_factory=list)
    host_entries: dict[str, str] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[object, ...]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_peer(self, peer: PeerStatus) -> None:
        with self._lock:
            self.peers[peer.address] = peer

    def status(self) -> Status:
        with self._lock:
            peers = [
                p.model_copy(update={"whitelisted": p.address in self.allowed}) for p in self.peers.values()
            ]
            return Status(
                address=self.address,
                hostname=self.hostname,
                interface="hnet0",
                udp_port=5582,
                whitelist_enabled=self.whitelist_enabled,
                version="0.0-fake",
                uptime_s=12.5,
                ready=self.ready,
                counters=dict(self.counters),
                peers=peers,
            )

    def whitelist(self) -> Whitelist:
        with self._lock:
            return Whitelist(enabled=self.whitelist_enabled, addresses=list(self.allowed))

    def whitelist_add(self, address: str) -> None:
        with self._lock:
            self.calls.append(("whitelist_add", address))
            if address not in self.allowed:
                self.allowed.append(address)

    def whitelist_remove(self, address: str) -> None:
        with self._lock:
            self.calls.append(("whitelist_remove", address))
            if address not in self.allowed:
                raise NotFound(f"{address} is not on the whitelist")
            self.allowed.remove(address)

    def whitelist_set_enabled(self, enabled: bool) -> None:
        with self._lock:
            self.calls.append(("whitelist_set_enabled", enabled))
            self.whitelist_enabled = enabled

    def hosts(self) -> list[HostEntry]:
        with self._lock:
            return [HostEntry(hostname=h, address=a) for h, a in sorted(self.host_entries.items())]

    def hosts_add(self, hostname: str, address: str) -> None:
        with self._lock:
            self.calls.append(("hosts_add", hostname, address))
            self.host_entries[hostname] = address

    def hosts_remove(self, hostname: str) -> None:
        with self._lock:
            self.calls.append(("hosts_remove", hostname))
            if hostname not in self.host_entries:
                raise NotFound(f"no host entry named {hostname}")
            del self.host_entries[hostname]

    def resolve(self, name_or_address: str) -> str:
        with contextlib.suppress(AddressError):
            return normalize_overlay(name_or_address)
        with self._lock:
            name = name_or_address.lower()
            if name in self.host_entries:
                return self.host_entries[name]
            if name == self.hostname:
                return self.address
            for peer in self.peers.values():
                if peer.hostname and peer.hostname.lower() == name:
                    return peer.address
        raise NotFound(f"unknown host name {name_or_address!r} (not in hosts entries nor a peer's hostname)")

    async def ping(self, address: str, count: int, interval_s: float, timeout_s: float) -> PingResult:
        self.calls.append(("ping", address, count, interval_s, timeout_s))
        if address == self.address:
            raise InvalidRequest("that is this daemon's own address")
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

    async def _poll(self, condition: object, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if callable(condition) and condition():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)

    async def wait_ready(self, timeout_s: float) -> bool:
        return await self._poll(lambda: self.ready, timeout_s)

    async def wait_peer(self, address: str, timeout_s: float) -> bool:
        def has_path() -> bool:
            peer = self.peers.get(address)
            return peer is not None and peer.path != "none"

        return await self._poll(has_path, timeout_s)

    def logs(self, limit: int) -> list[str]:
        with self._lock:
            return self.log_lines[-limit:]


def sample_peers() -> list[PeerStatus]:
    """A direct, a tunnelled and an unreachable peer, as the tests and demos expect them."""
    now = time.time()
    return [
        PeerStatus(
            address="fc94::2",
            hostname="robot2",
            path="direct",
            endpoint="198.18.0.2:5582",
            rtt_ms=0.42,
            last_handshake=now - 5,
            last_seen=now - 1,
            rx_bytes=1234,
            tx_bytes=5678,
            state="established",
        ),
        PeerStatus(
            address="fc94::3",
            hostname="robot3",
            path="tunnelled",
            base_server="198.18.0.100:5582",
            rtt_ms=21.5,
            last_handshake=now - 300,
            last_seen=now - 2,
            rx_bytes=10,
            tx_bytes=20,
            state="established",
        ),
        PeerStatus(address="fc94::4", hostname=None, path="none", state="handshaking"),
    ]


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
