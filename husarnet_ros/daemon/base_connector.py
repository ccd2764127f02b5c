"""The daemon's link to its base servers, run by the control loop (the only thread that touches it).

Each round it hands the base servers' messages (queued by the receive thread) to the sans-IO
``BaseClient``, runs its timers, sends what it queued, and acts on what it learned: the home base server
relays (the transport sends relayed datagrams there, and every wanted peer gets the relay as its
worst-ranked candidate), and a peer that has no direct path is asked for at the home base, whose answer
names the peer's candidates to both sides at once (hole punching).
"""

from __future__ import annotations

import collections

# getaddrinfo() encodes a name with the idna codec, imported on its first use: import it while the daemon can
# still read the Python installation, since `husarnet-ros base add` resolves after the privilege drop.
import encodings.idna  # noqa: F401
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from ..core.base_client import (
    DEFAULT_BASE_TCP_PORT,
    MAX_BASE_SERVERS,
    BaseClient,
    BaseLink,
    BaseState,
    parse_base_server,
)
from ..core.basewire import MAX_ENDPOINTS
from ..core.identity import Identity
from ..core.node import Node
from ..core.peer import Endpoint, PathKind
from .base_tcp import TcpBridge
from .transport import UdpTransport

log = logging.getLogger("husarnet_ros.daemon")

WANTED_PEERS_INTERVAL_S = 1.0  # relay offered and rendezvous asked for the wanted peers this often
RESOLVE_RETRY_S = 30.0  # a base server name that did not resolve is tried again this often


def resolve(host: str, port: int) -> Endpoint | None:
    """The first address of ``host`` (IPv4 preferred: the sturdiest through NATs), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return (str(sockaddr[0]), port)
    return None


class BaseConnector:
    def __init__(
        self,
        node: Node,
        identity: Identity,
        transport: UdpTransport,
        servers: list[str],
        *,
        wanted_peers: Callable[[], Iterable[bytes]],
        local_endpoints: Callable[[], list[Endpoint]],
        now: float,
        tcp_port: int = DEFAULT_BASE_TCP_PORT,
    ) -> None:
        """``tcp_port``: the base servers' TCP port, used while UDP gets no answer (0: never TCP)."""
        self._node = node
        self._transport = transport
        self._wanted_peers = wanted_peers
        self.configured = [parse_base_server(text) for text in servers][:MAX_BASE_SERVERS]
        self.client = BaseClient(identity, lambda: local_endpoints()[:MAX_ENDPOINTS])
        # Filled by the receive thread (daemon/dataplane.py), drained here; the data plane reads `endpoints`.
        self.inbox: collections.deque[tuple[bytes, Endpoint]] = collections.deque()
        self.endpoints: frozenset[Endpoint] = frozenset()
        self._on_endpoints: Callable[[frozenset[Endpoint]], None] | None = None
        self._home: BaseLink | None = None
        self._home_endpoint: Endpoint | None = None
        self._tcp_port = tcp_port
        self._bridges: dict[str, TcpBridge] = {}  # base name -> TCP bridge (while UDP does not work)
        self._next_wanted = now
        self._next_resolve = now
        self._resolve(now)

    def set_servers(self, servers: list[str], now: float) -> None:
        """Use ``servers`` from now on (changed at run time): parsed and resolved again. A server that stays
        keeps its registration and RTT (``BaseClient.set_servers``), and stays home unless a kept one is
        clearly faster; a removed home hands over to the next registered one, or, with none left, the relay
        is withdrawn at once. ConfigError if one does not parse (nothing changes then)."""
        self.configured = [parse_base_server(text) for text in servers][:MAX_BASE_SERVERS]
        self._resolve(now)
        if not self.client.links and self._home is not None:
            self._home = None
            self._transport.set_relay(None)
            self._node.withdraw_relay()
            log.info("base servers: none configured any more; peers on other networks are unreachable")
        else:
            self._follow_home(now)

    def attach(self, on_endpoints: Callable[[frozenset[Endpoint]], None]) -> None:
        """The data plane wants the base servers' endpoints (relayed frames come only from them)."""
        self._on_endpoints = on_endpoints
        on_endpoints(self.endpoints)

    def _resolve(self, now: float) -> None:
        servers, missing = [], []
        for host, port in self.configured:
            endpoint = resolve(host, port)
            name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if endpoint is None:
                missing.append(name)
            else:
                servers.append((name, endpoint))
        if missing:
            log.warning(
                "base server %s: cannot resolve; trying again in %g s", ", ".join(missing), RESOLVE_RETRY_S
            )
        self.client.set_servers(servers, now)
        for name in [name for name in self._bridges if name not in {n for n, _ in servers}]:
            self._bridges.pop(name).close()
        self._publish_endpoints()
        self._next_resolve = now + RESOLVE_RETRY_S if missing else float("inf")

    def _publish_endpoints(self) -> None:
        endpoints = self.client.endpoints()
        if endpoints != self.endpoints:
            self.endpoints = endpoints
            if self._on_endpoints is not None:
                self._on_endpoints(endpoints)

    # ------------------------------------------------------------------ TCP fallback
    def _tend_bridges(self, now: float) -> None:
        """Open TCP where UDP gets no answer, hand it to the link once connected, and close it when the
        link is back on UDP or TCP failed too."""
        for link in self.client.links:
            bridge = self._bridges.get(link.name)
            if bridge is None:
                if link.tcp_wanted and self._tcp_port:
                    target = (link.udp_endpoint[0], self._tcp_port)
                    try:
                        self._bridges[link.name] = TcpBridge(link.name, target, self._transport.port)
                    except OSError as exc:
                        log.warning("base server %s: cannot open a TCP bridge: %s", link.name, exc)
                        self.client.tcp_failed(link, now)
                    else:
                        log.info(
                            "base server %s: no answer over UDP; trying TCP port %d",
                            link.name,
                            self._tcp_port,
                        )
                continue
            if bridge.state == "connected" and link.transport == "udp" and link.tcp_wanted:
                self.client.use_tcp(link, bridge.endpoint, now)
            elif bridge.state == "failed" or (link.transport == "tcp" and link.state is BaseState.DOWN):
                self._bridges.pop(link.name).close()
                self.client.tcp_failed(link, now)
            elif link.transport == "udp" and not link.tcp_wanted:
                log.info("base server %s: UDP answers again; TCP closed", link.name)
                self._bridges.pop(link.name).close()

    def close(self) -> None:
        for bridge in self._bridges.values():
            bridge.close()
        self._bridges.clear()

    # ------------------------------------------------------------------ the control loop's round
    def round(self, now: float) -> None:
        client, node = self.client, self._node
        if now >= self._next_resolve:
            self._resolve(now)
        while self.inbox:
            data, endpoint = self.inbox.popleft()
            client.receive(data, endpoint, now)
        client.tick(now)
        self._tend_bridges(now)
        self._publish_endpoints()
        self._follow_home(now)
        while client.peer_infos:
            info = client.peer_infos.popleft()
            node.learn_from_base(info.address, info.candidates, info.known and self._home is not None, now)
        if now >= self._next_wanted:
            self._next_wanted = now + WANTED_PEERS_INTERVAL_S
            if self._home is not None:
                for address in self._wanted_peers():
                    node.offer_relay(address, now)
                    if node.path_of(address) is not PathKind.DIRECT:
                        client.connect(address, now)
        self.flush()

    def flush(self) -> None:
        outbox, sendto = self.client.outbox, self._transport.sendto
        while outbox:
            endpoint, data = outbox.popleft()
            sendto(data, endpoint)

    def _follow_home(self, now: float) -> None:
        home = self.client.home
        endpoint = None if home is None else home.endpoint
        if home is self._home and endpoint == self._home_endpoint:
            return
        self._transport.set_relay(endpoint)  # also when the home moved between UDP and TCP
        self._home_endpoint = endpoint
        if home is self._home:
            if home is not None:
                log.info("base server %s: now over %s", home.name, home.transport)
            return
        before, self._home = self._home, home
        if home is None:
            self._node.withdraw_relay()
            log.warning(
                "no base server answers (%s): peers on other networks are unreachable until one does; "
                "direct links go on",
                ", ".join(link.name for link in self.client.links) or "none configured",
            )
        else:
            self._next_wanted = now  # offer the relay and ask for peers at once
            if before is None:
                log.info(
                    "base server %s: registered over %s (RTT %.1f ms)",
                    home.name,
                    home.transport,
                    home.rtt_ms or 0.0,
                )
            else:
                log.info(
                    "base server: now using %s over %s (was %s, %s)",
                    home.name,
                    home.transport,
                    before.name,
                    before.state.value,
                )

    def relay_lost(self, now: float) -> None:
        """A relayed path stopped answering: check the home base at once."""
        self.client.check_home(now)
        self.flush()

    def network_changed(self, now: float) -> None:
        self.client.network_changed(now)
        self._next_wanted = now  # and ask for the peers again: they learn our new endpoint
        self.flush()

    def next_timer(self, now: float) -> float:
        return min(self.client.next_timer(now), self._next_wanted if self._home is not None else float("inf"))

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        home = self.client.home
        return {
            "home": None if home is None else home.name,
            "servers": self.client.status(),
            "state": home.state.value
            if home is not None
            else (
                BaseState.CONNECTING.value
                if any(link.state is BaseState.CONNECTING for link in self.client.links)
                else BaseState.DOWN.value
                if self.client.links
                else "none"
            ),
        }
