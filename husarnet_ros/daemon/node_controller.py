"""The daemon's side of the control API (``Controller``), over the protocol node, the state directory
and the hosts file.

It does no networking and needs no TUN device: the node is driven by whoever *owns* it (the daemon's
control loop, or a test's in-memory network), and every look at or change of the node goes through that
owner (``NodeOwner.call``), so the node keeps its single writer. The same class therefore runs in the
daemon and, unchanged, on ``testing.memnet`` in the tests of the CLI, the ROS nodes and the API schema.

Changes are persisted first and applied second: when the state directory cannot be written (a full
disk, a read-only file system), the request fails with a message naming the file, and nothing changed,
neither on disk nor in memory.

Threads: the control server calls the synchronous methods one at a time from its event loop; the
coroutine methods run on that loop too. ``on_event`` is called by the node's owner. Ping waiters belong
to the control server's loop: the owner hands pongs over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .. import __version__
from ..api import (
    BaseServerStatus,
    DataPlaneStatus,
    JoinInfo,
    LicenseInfo,
    PeerStatus,
    PingReply,
    PingResult,
    Status,
    Whitelist,
    quote_input,
)
from ..api import HostEntry as ApiHostEntry
from ..core import hosts as hosts_model
from ..core.address import format_address, parse_overlay
from ..core.base_client import base_server_name
from ..core.errors import AddressError, ConfigError, HusarnetError
from ..core.events import DatagramSizeFound
from ..core.identity import Identity
from ..core.node import (
    Event,
    InternalError,
    Node,
    PathChanged,
    PathLost,
    PeerDown,
    PeerUp,
    PongReceived,
)
from ..core.peer import CandidateSource, Endpoint, PathKind, Peer, format_endpoint, is_relay
from ..core.peer_endpoint import (
    MAX_STATIC_ENDPOINTS,
    MAX_STATIC_ENDPOINTS_PER_PEER,
    PeerEndpoint,
    StaticEndpoint,
    parse_peer_endpoint,
)
from ..core.whitelist import Whitelist as Acl
from .controller import BadValue, Conflict, InvalidRequest, NotFound, NotReady, StorageError
from .log_ring import LogRing
from .path_size import interface_limit
from .state import StateDir, StateError

if TYPE_CHECKING:
    from .base_connector import BaseConnector
    from .control_plane import ControlPlane

log = logging.getLogger("husarnet_ros.daemon")

T = TypeVar("T")

# How often the waits look again; only how quickly they notice, never asserted on.
WAIT_POLL_S = 0.05
# The state of a configured base server whose name did not resolve (yet: it is tried again every 30 s).
UNRESOLVED = "unresolved"
# What resolve() can look up: DNS labels of letters, digits, '-' and '_', dots between them.
# Static endpoints are checked against the node this often (re-given after a whitelist change forgot the
# peer); a name that did not resolve is looked up again after STATIC_RESOLVE_RETRY_S.
STATIC_CHECK_INTERVAL_S = 1.0
STATIC_RESOLVE_RETRY_S = 30.0
# The persisted timestamp floor runs this far ahead of the timestamps issued (renewed at half of it).
TIMESTAMP_LEASE_NS = 3600 * 10**9


class NodeOwner(Protocol):
    """Runs a function on the thread that owns the node and returns its result."""

    def call(self, fn: Callable[[], T], timeout_s: float = ...) -> T: ...


class HostsSink(Protocol):
    """Where the managed hosts block goes (the hosts helper process in the daemon)."""

    def set_entries(self, entries: list[hosts_model.HostEntry]) -> None: ...


@dataclass(frozen=True)
class NodeInfo:
    """What the status reports about this node besides its peers."""

    hostname: str
    interface: str
    udp_port: int
    dataplane: DataPlaneStatus = field(default_factory=DataPlaneStatus)


class NodeController:
    """Implements ``daemon.controller.Controller`` over a ``Node`` it creates."""

    def __init__(
        self,
        identity: Identity,
        state: StateDir,
        acl: Acl,
        host_entries: list[hosts_model.HostEntry],
        hosts_sink: HostsSink,
        info: NodeInfo,
        *,
        ring: LogRing | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_minus_mono: float | None = None,
        extra_counters: Callable[[], dict[str, int]] | None = None,
        static_endpoints: list[StaticEndpoint] | None = None,
    ) -> None:
        """``static_endpoints``: the saved ones (None: read from ``state``)."""
        self.identity = identity
        self.state = state
        # The whitelist the node obeys: local + managed. Replaced (never changed in place) on every change,
        # under the write lock: read by every thread. ``local_acl`` is what whitelist.json holds (changed by
        # `husarnet-ros whitelist`); ``managed_allowed`` what the control plane allows (Websetup and the
        # device's networks, never saved in whitelist.json).
        self.local_acl = acl
        self.managed_allowed: frozenset[bytes] = frozenset()
        self.acl = acl
        # Hosts entries: the local ones (hosts.json), the managed ones (the control plane's); a local name
        # wins over a managed one. Replaced, never changed in place, under the write lock.
        self.host_entries = host_entries
        self.managed_hosts: list[hosts_model.HostEntry] = []
        # Set by the daemon when it offers the control plane (setup-server, join); None in tests without it.
        self.control_plane: ControlPlane | None = None
        self.hosts_sink = hosts_sink
        self.info = info
        self._ring = ring or LogRing()
        self._clock = clock
        self._wall_minus_mono = time.time() - clock() if wall_minus_mono is None else wall_minus_mono
        self._extra_counters = extra_counters
        self.started_mono = clock()
        self.ready = False
        self._owner: NodeOwner | None = None
        self.base: BaseConnector | None = None  # set by the daemon (none on the in-memory network)
        # The base servers in use (canonical names, in order): set by the daemon at start, then only by
        # base_add/base_remove under the write lock; replaced, never changed in place.
        self.base_server_names: list[str] = []
        self._write_lock = threading.Lock()  # one whitelist or hosts change at a time (persist, then apply)
        # The peers' static endpoints, in the order added: set here, then only by static_endpoint_add/remove
        # under the write lock; both replaced together, never changed in place. The node's owner reads
        # ``_static_wanted`` (parsed once) in tend_static_endpoints.
        self.static_entries: list[StaticEndpoint] = []
        self._static_wanted: dict[tuple[bytes, str], PeerEndpoint] = {}
        self._set_static_endpoints(
            state.load_static_endpoints() if static_endpoints is None else static_endpoints
        )
        # Owned by the node's owner: what each static endpoint resolved to (as given to the node), and when
        # a name that did not resolve is looked up again.
        self._static_resolved: dict[tuple[bytes, str], Endpoint] = {}
        self._static_retry_at: dict[tuple[bytes, str], float] = {}
        self._next_static_check = 0.0
        self.node = Node(
            identity,
            self._allows,
            is_pinned=self._pinned,
            wall_offset_ns=int(self._wall_minus_mono * 1e9),
            timestamp_floor_ns=state.load_timestamp_floor(),
        )
        self.node.underlay_limit = interface_limit
        # Handshake and beacon timestamps must grow across restarts: a floor a lease ahead of the last one
        # issued is persisted before the node can pass it (keep_timestamp_floor), and read back at start.
        self._timestamp_lease_ns = 0
        self._floor_warned = False
        self.keep_timestamp_floor(clock())
        # No other thread has the node yet: the saved static endpoints of addresses are given to it now.
        self.tend_static_endpoints(clock())
        # Ping waiters: owned by the control server's event loop (see the module docstring).
        self._ping_loop: asyncio.AbstractEventLoop | None = None
        self._ping_waiters: dict[bytes, asyncio.Future[float]] = {}

    def keep_timestamp_floor(self, now: float) -> None:
        """Persist a new timestamp floor when the node's timestamps (or the wall clock) come near the last one
        persisted; called at start and by the node's owner every round. One small write every half hour."""
        reached = max(self.node.last_timestamp_ns, int((now + self._wall_minus_mono) * 1e9))
        if reached + TIMESTAMP_LEASE_NS // 2 <= self._timestamp_lease_ns:
            return
        lease = reached + TIMESTAMP_LEASE_NS
        try:
            self.state.save_timestamp_floor(lease)
        except StateError as exc:
            if not self._floor_warned:
                self._floor_warned = True
                log.warning(
                    "%s; after a restart with the clock set back, peers may refuse this node for a while",
                    exc,
                )
        self._timestamp_lease_ns = lease

    def upkeep(self, now: float) -> None:
        """The controller's share of each round of the node's owner (the daemon's control loop): persist the
        timestamp floor, give the node the static endpoints (resolving names)."""
        self.keep_timestamp_floor(now)
        if now >= self._next_static_check:
            self._next_static_check = now + STATIC_CHECK_INTERVAL_S
            self.tend_static_endpoints(now, resolve_names=True)

    def _allows(self, address: bytes) -> bool:
        return self.acl.allows(address)

    def _pinned(self, address: bytes) -> bool:
        return address in self.acl

    def attach_owner(self, owner: NodeOwner) -> None:
        self._owner = owner

    def _on_node(self, fn: Callable[[], T]) -> T:
        if self._owner is None:
            raise NotReady("the daemon is still starting")
        return self._owner.call(fn)

    def _wall(self, mono: float | None) -> float | None:
        return None if mono is None else mono + self._wall_minus_mono

    # ------------------------------------------------------------------ node events (owner's thread)
    def on_event(self, event: Event) -> None:
        if isinstance(event, PeerUp):
            log.info("peer %s up, %s", format_address(event.address), _path_text(event.endpoint))
        elif isinstance(event, PeerDown):
            log.info("peer %s down (%s)", format_address(event.address), event.reason)
        elif isinstance(event, PathLost):
            log.info(
                "peer %s: no answer via %s any more; probing its other endpoints",
                format_address(event.address),
                _path_text(event.endpoint),
            )
            if is_relay(event.endpoint) and self.base is not None:
                # The relay stopped answering: is the home base gone? Ask it now, not at the next keepalive,
                # so a dead base is noticed (and left for the next) in seconds.
                self.base.relay_lost(self._clock())
        elif isinstance(event, PathChanged):
            log.info(
                "peer %s: %s (%s)", format_address(event.address), _path_text(event.endpoint), event.reason
            )
        elif isinstance(event, DatagramSizeFound) and event.size == 0:
            log.warning(
                "peer %s: %s no longer answers a probe of the datagram size in use; TCP is back to segments "
                "of one MSS",
                format_address(event.address),
                _path_text(event.endpoint),
            )
        elif isinstance(event, DatagramSizeFound):
            log.info(
                "peer %s: %s carries %d-byte datagrams; TCP goes in segments of several MSS that fit them",
                format_address(event.address),
                _path_text(event.endpoint),
                event.size,
            )
        elif isinstance(event, PongReceived):
            loop = self._ping_loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the control server's loop is closed: nobody waits
                    loop.call_soon_threadsafe(self._deliver_pong, event.probe_id, event.rtt_ms)
        elif isinstance(event, InternalError):
            log.error("bug in %s (skipped; the daemon goes on)", event.where, exc_info=event.error)

    def _deliver_pong(self, probe_id: bytes, rtt_ms: float) -> None:
        future = self._ping_waiters.pop(probe_id, None)
        if future is not None and not future.done():
            future.set_result(rtt_ms)

    # ------------------------------------------------------------------ status
    def wanted_peers(self) -> list[bytes]:
        """Peers to introduce through a base server: the whitelist, or (whitelist off) every peer known."""
        acl = self.acl
        return list(acl.addresses) if acl.enabled else list(self.node.peers)

    def _peer_status(self, peer: Peer, home: str | None = None) -> PeerStatus:
        path = peer.path
        route = peer.route
        if route is not None and route.session.confirmed:
            state = "established" if peer.path_alive else "no path (probing)"
        elif peer.initiation is not None or route is not None or peer.next is not None:
            state = "handshaking"
        else:
            state = "idle"
        last_seen = max((t for t in (peer.last_seen, peer.last_handshake) if t is not None), default=None)
        return PeerStatus(
            address=format_address(peer.address),
            hostname=peer.hostname or self._hostname_of(peer.address),
            path=path.value,
            endpoint=format_endpoint(peer.endpoint) if path is PathKind.DIRECT else None,
            base_server=home if path is PathKind.TUNNELLED else None,
            rtt_ms=round(peer.rtt_ms, 3) if peer.rtt_ms is not None and path is not PathKind.NONE else None,
            max_datagram=route.datagram_limit if route is not None and route.datagram_limit else None,
            last_handshake=self._wall(peer.last_handshake),
            last_seen=self._wall(last_seen),
            rx_bytes=peer.rx_bytes,
            tx_bytes=peer.tx_bytes + peer.tx_bytes_queued,
            whitelisted=peer.address in self.acl,
            state=state,
        )

    def _hostname_of(self, address: bytes) -> str | None:
        for entry in self._effective_hosts():
            if entry.address == address:
                return entry.hostname
        return None

    def status(self) -> Status:
        def snapshot() -> tuple[list[PeerStatus], dict[str, int], list[dict[str, Any]]]:
            servers = self._base_links()
            home = next((str(s["address"]) for s in servers if s["home"]), None)
            counters = dict(self.node.counters)
            if self.base is not None:
                counters.update(self.base.client.counters)
            return [self._peer_status(p, home) for p in self.node.peers.values()], counters, servers

        peers, counters, servers = self._on_node(snapshot)
        base_servers = self._base_statuses(servers)
        in_use = next(
            (server for server in base_servers if server.home), base_servers[0] if base_servers else None
        )
        # Whitelisted addresses never heard from are shown too: "is my robot there?" has an answer.
        known = {p.address for p in peers}
        for raw in sorted(self.acl.addresses):
            text = format_address(raw)
            if text not in known:
                peers.append(PeerStatus(address=text, hostname=self._hostname_of(raw), whitelisted=True))
        if self._extra_counters is not None:
            counters.update(self._extra_counters())
        return Status(
            address=format_address(self.identity.address),
            hostname=self.info.hostname,
            interface=self.info.interface,
            udp_port=self.info.udp_port,
            whitelist_enabled=self.acl.enabled,
            version=__version__,
            uptime_s=round(self._clock() - self.started_mono, 3),
            ready=self.ready,
            counters=counters,
            dataplane=self.info.dataplane,
            base=in_use,
            base_servers=base_servers,
            peers=sorted(peers, key=lambda p: (p.hostname or "~", p.address)),
            license=self.control_plane.info() if self.control_plane is not None else None,
        )

    # ------------------------------------------------------------------ whitelist
    def whitelist(self) -> Whitelist:
        acl = self.acl  # local + managed: what the node obeys
        return Whitelist(enabled=acl.enabled, addresses=[format_address(a) for a in sorted(acl.addresses)])

    def _change_whitelist(self, changed: Acl, what: str) -> None:
        """Persist ``changed`` (the local whitelist), then make it part of the whitelist and tell the node; on
        a failed write, nothing changes at all."""
        try:
            self.state.save_whitelist(changed)
        except StateError as exc:
            raise StorageError(f"could not {what}: {exc}; nothing was changed") from None
        self.local_acl = changed
        self._apply_acl()

    def _apply_acl(self) -> None:
        """The node obeys local + managed from now on (under the write lock)."""
        local = self.local_acl
        self.acl = Acl(local.addresses | self.managed_allowed, local.enabled)
        now = self._clock()

        def apply() -> None:
            self.node.whitelist_changed(now)
            self.tend_static_endpoints(now)  # a peer allowed again gets its static endpoints at once

        self._on_node(apply)

    def whitelist_add(self, address: str) -> None:
        raw = _parse(address)
        if raw == self.identity.address:
            raise InvalidRequest("that is this node's own address")
        with self._write_lock:
            local = self.local_acl
            if raw in local:
                return
            self._change_whitelist(Acl([*local.addresses, raw], local.enabled), "save the whitelist")

    def whitelist_remove(self, address: str) -> None:
        raw = _parse(address)
        with self._write_lock:
            local = self.local_acl
            if raw not in local:
                if raw in self.managed_allowed:
                    raise Conflict(
                        f"{format_address(raw)} is allowed by the Dashboard this daemon is set up with "
                        "(its Websetup, or a network of this device): change it there"
                    )
                raise NotFound(f"{format_address(raw)} is not on the whitelist")
            remaining = [a for a in local.addresses if a != raw]
            self._change_whitelist(Acl(remaining, local.enabled), "save the whitelist")

    def whitelist_set_enabled(self, enabled: bool) -> None:
        with self._write_lock:
            local = self.local_acl
            if local.enabled == enabled:
                return
            self._change_whitelist(Acl(local.addresses, enabled), "save the whitelist")
        log.info("whitelist %s", "enabled" if enabled else "disabled")

    # ------------------------------------------------------------------ the control plane's entries
    def set_managed(self, allowed: frozenset[bytes], hosts: list[hosts_model.HostEntry]) -> None:
        """Make ``allowed`` and ``hosts`` the managed whitelist and hosts entries (the control plane saved
        them already, in managed.json). This node's own address is never an entry."""
        allowed = frozenset(a for a in allowed if a != self.identity.address)
        hosts = [h for h in hosts if h.address != self.identity.address]
        with self._write_lock:
            if allowed != self.managed_allowed:
                self.managed_allowed = allowed
                if self._owner is not None:
                    self._apply_acl()
                else:  # still starting: the node reads the whitelist when it starts
                    self.acl = Acl(self.local_acl.addresses | allowed, self.local_acl.enabled)
            if hosts != self.managed_hosts:
                previous = self.managed_hosts
                self.managed_hosts = hosts
                try:
                    self.hosts_sink.set_entries(self._effective_hosts())
                except HusarnetError as exc:
                    self.managed_hosts = previous
                    raise Conflict(f"could not update the hosts file: {exc}") from None

    def set_base_servers(self, names: list[str]) -> None:
        """Use exactly ``names`` (the license's base servers), saved like `husarnet-ros base add|rm` saves."""
        from .base_connector import MAX_BASE_SERVERS  # not at import: it brings the UDP transport along

        canonical = list(dict.fromkeys(_base_name(name) for name in names))[:MAX_BASE_SERVERS]
        with self._write_lock:
            if canonical != self.base_server_names:
                self._change_base_servers(canonical)
        log.info("base servers: %s", ", ".join(canonical))

    def _require_control_plane(self) -> ControlPlane:
        if self.control_plane is None:
            raise InvalidRequest("this daemon was started without the control plane (setup-server, join)")
        return self.control_plane

    async def setup_server(self, address: str, fingerprint: str | None, replace: bool) -> LicenseInfo:
        return await self._require_control_plane().setup_server(address, fingerprint, replace)

    async def join(self, code: str, hostname: str | None) -> JoinInfo:
        """Without a hostname, the device asks for this daemon's own (when it is a valid host name; else
        Websetup makes one up)."""
        if hostname is None:
            with contextlib.suppress(ValueError):  # HostnameError: a system hostname DNS would not take
                hostname = hosts_model.normalize_hostname(self.info.hostname)
        return await self._require_control_plane().join(code, hostname)

    async def wait_joined(self, timeout_s: float) -> bool:
        return await self._require_control_plane().wait_joined(timeout_s)

    # ------------------------------------------------------------------ base servers
    def _base_links(self) -> list[dict[str, Any]]:
        """The base links' status (on the node owner's thread: the control loop owns the BaseConnector)."""
        return self.base.client.status() if self.base is not None else []

    def _base_statuses(self, links: list[dict[str, Any]]) -> list[BaseServerStatus]:
        """Every base server in use, in order: its link's state, or "unresolved" while its name resolves to
        no address (the link exists only once it does)."""
        by_name = {str(link["address"]): link for link in links}
        return [
            BaseServerStatus.model_validate(by_name[name])
            if name in by_name
            else BaseServerStatus(address=name, state=UNRESOLVED)
            for name in self.base_server_names
        ]

    def base_servers(self) -> list[BaseServerStatus]:
        return self._base_statuses(self._on_node(self._base_links))

    def base_add(self, address: str) -> None:
        from .base_connector import MAX_BASE_SERVERS  # not at import: it brings the UDP transport along

        name = _base_name(address)
        with self._write_lock:
            if name in self.base_server_names:
                return
            if len(self.base_server_names) >= MAX_BASE_SERVERS:
                raise Conflict(
                    f"cannot add base server {name}: at most {MAX_BASE_SERVERS} are used; remove one first "
                    "(husarnet-ros base rm HOST[:PORT])"
                )
            self._change_base_servers([*self.base_server_names, name])
        log.info("base server %s added", name)

    def base_remove(self, address: str) -> None:
        name = _base_name(address)
        with self._write_lock:
            if name not in self.base_server_names:
                raise NotFound(f"{name} is not a base server of this daemon")
            self._change_base_servers([n for n in self.base_server_names if n != name])
        log.info("base server %s removed", name)

    def _change_base_servers(self, names: list[str]) -> None:
        """Persist ``names``, then use them; on a failed write nothing changes at all."""
        try:
            self.state.save_base_servers(names)
        except StateError as exc:
            raise StorageError(f"could not save the base servers: {exc}; nothing was changed") from None
        self.base_server_names = names
        base = self.base
        if base is not None:
            now = self._clock()
            self._on_node(lambda: base.set_servers(names, now))

    # ------------------------------------------------------------------ static endpoints
    def _set_static_endpoints(self, entries: list[StaticEndpoint]) -> None:
        self._static_wanted = {
            (parse_overlay(e.address), e.endpoint): parse_peer_endpoint(e.endpoint) for e in entries
        }
        self.static_entries = entries

    def static_endpoints(self) -> list[StaticEndpoint]:
        return list(self.static_entries)

    def static_endpoint_add(self, address: str, endpoint: str) -> None:
        entry = _static_entry(address, endpoint)
        if parse_overlay(entry.address) == self.identity.address:
            raise InvalidRequest("that is this node's own address")
        with self._write_lock:
            current = self.static_entries
            if entry in current:
                return
            if sum(1 for e in current if e.address == entry.address) >= MAX_STATIC_ENDPOINTS_PER_PEER:
                raise Conflict(
                    f"cannot add {entry.endpoint}: peer {entry.address} has {MAX_STATIC_ENDPOINTS_PER_PEER} "
                    "static endpoints already; remove one first "
                    "(husarnet-ros endpoint rm ADDRESS HOST[:PORT])"
                )
            if len(current) >= MAX_STATIC_ENDPOINTS:
                raise Conflict(
                    f"cannot add {entry.endpoint}: at most {MAX_STATIC_ENDPOINTS} static endpoints in all; "
                    "remove one first"
                )
            self._change_static_endpoints([*current, entry])
        log.info("static endpoint %s of peer %s added", entry.endpoint, entry.address)

    def static_endpoint_remove(self, address: str, endpoint: str) -> None:
        entry = _static_entry(address, endpoint)
        with self._write_lock:
            if entry not in self.static_entries:
                raise NotFound(f"{entry.endpoint} is not a static endpoint of peer {entry.address}")
            self._change_static_endpoints([e for e in self.static_entries if e != entry])
        log.info("static endpoint %s of peer %s removed", entry.endpoint, entry.address)

    def _change_static_endpoints(self, entries: list[StaticEndpoint]) -> None:
        """Persist ``entries``, then use them; on a failed write nothing changes at all."""
        try:
            self.state.save_static_endpoints(entries)
        except StateError as exc:
            raise StorageError(f"could not save the static endpoints: {exc}; nothing was changed") from None
        self._set_static_endpoints(entries)
        now = self._clock()

        def apply() -> None:
            self.tend_static_endpoints(now)
            self._next_static_check = now  # names are looked up in the next round, not in this API call

        self._on_node(apply)

    def tend_static_endpoints(self, now: float, resolve_names: bool = False) -> None:
        """Make the node's static candidates match the wanted static endpoints (on the node owner's thread).

        A removed one stops being pinned (kept while it is the path in use, like any path). A wanted one is
        given to the node while its peer is allowed (the node forgets a peer the whitelist drops, with its
        candidates: it gets them back once allowed again). Names are looked up only with ``resolve_names``
        (the owner's rounds, not API calls, so a slow DNS server never stalls the API), once they resolve,
        and again every STATIC_RESOLVE_RETRY_S while they do not."""
        node, wanted, resolved = self.node, self._static_wanted, self._static_resolved
        for key in [k for k in resolved if k not in wanted]:
            gone = resolved.pop(key)
            if not any(k[0] == key[0] and e == gone for k, e in resolved.items()):
                node.remove_static_endpoint(key[0], gone, now)
        for key in [k for k in self._static_retry_at if k not in wanted]:
            del self._static_retry_at[key]
        for key, spec in wanted.items():
            endpoint: Endpoint | None = resolved.get(key)
            if endpoint is None:
                endpoint = spec.address_endpoint()
                if endpoint is None:
                    if not resolve_names or now < self._static_retry_at.get(key, now):
                        continue
                    endpoint = self._resolve_static(key, spec, now)
                    if endpoint is None:
                        continue
                resolved[key] = endpoint
            address = key[0]
            if not self.acl.allows(address):
                continue
            peer = node.peer(address)
            candidate = peer.candidates.get(endpoint) if peer is not None else None
            if candidate is None or candidate.source is not CandidateSource.STATIC:
                node.add_static_endpoint(address, endpoint, now)

    def _resolve_static(self, key: tuple[bytes, str], spec: PeerEndpoint, now: float) -> Endpoint | None:
        from .base_connector import resolve  # not at import: it brings the UDP transport along

        endpoint = resolve(spec.host, spec.port)
        peer = format_address(key[0])
        if endpoint is None:
            self._static_retry_at[key] = now + STATIC_RESOLVE_RETRY_S
            log.warning(
                "static endpoint %s of peer %s: cannot resolve; trying again in %g s",
                spec.text,
                peer,
                STATIC_RESOLVE_RETRY_S,
            )
            return None
        self._static_retry_at.pop(key, None)
        log.info("static endpoint %s of peer %s is %s", spec.text, peer, format_endpoint(endpoint))
        return endpoint

    # ------------------------------------------------------------------ hosts
    def _effective_hosts(self) -> list[hosts_model.HostEntry]:
        """Local entries, and the managed ones whose names no local entry has."""
        local = self.host_entries
        names = {e.hostname for e in local}
        return hosts_model.canonical_entries(
            [*local, *(e for e in self.managed_hosts if e.hostname not in names)]
        )

    def hosts(self) -> list[ApiHostEntry]:
        return [ApiHostEntry(hostname=e.hostname, address=e.address_text) for e in self._effective_hosts()]

    def hosts_add(self, hostname: str, address: str) -> None:
        try:
            entry = hosts_model.HostEntry.from_text(hostname, address)
        except (AddressError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from None
        with self._write_lock:
            self._commit_hosts([e for e in self.host_entries if e.hostname != entry.hostname] + [entry])

    def hosts_remove(self, hostname: str) -> None:
        name = hostname.lower()
        with self._write_lock:
            if not any(e.hostname == name for e in self.host_entries):
                if any(e.hostname == name for e in self.managed_hosts):
                    raise Conflict(
                        f"host entry {hostname!r} comes from the Dashboard this daemon is set up with: "
                        "rename or remove the device there"
                    )
                raise NotFound(f"no host entry named {hostname!r}")
            self._commit_hosts([e for e in self.host_entries if e.hostname != name])

    def _commit_hosts(self, entries: list[hosts_model.HostEntry]) -> None:
        """Save the record, then rewrite the hosts file; if the hosts file cannot be written, the record is
        put back, so the two never disagree."""
        entries = hosts_model.canonical_entries(entries)
        previous = self.host_entries
        try:
            self.state.save_hosts(entries)
        except StateError as exc:
            raise StorageError(f"could not save the hosts record: {exc}; nothing was changed") from None
        names = {e.hostname for e in entries}
        try:
            self.hosts_sink.set_entries(
                hosts_model.canonical_entries(
                    [*entries, *(e for e in self.managed_hosts if e.hostname not in names)]
                )
            )
        except HusarnetError as exc:
            try:
                self.state.save_hosts(previous)
            except StateError as undo:
                log.error("could not restore the hosts record after a failed hosts file update: %s", undo)
            raise Conflict(f"could not update the hosts file: {exc}; nothing was changed") from None
        self.host_entries = entries

    # ------------------------------------------------------------------ names
    def resolve(self, name_or_address: str) -> str:
        text = name_or_address.strip()
        with contextlib.suppress(AddressError):
            return format_address(parse_overlay(text))
        name = text.lower()
        for entry in self._effective_hosts():
            if entry.hostname == name:
                return entry.address_text

        def by_peer_hostname() -> str | None:
            for peer in self.node.peers.values():
                if peer.hostname and peer.hostname.lower() == name:
                    return format_address(peer.address)
            return None

        found = self._on_node(by_peer_hostname)
        if found is not None:
            return found
        raise NotFound(
            f"unknown host {quote_input(text)}: not an fc94 address, not in the hosts block, "
            "no peer of that name"
        )

    # ------------------------------------------------------------------ ping and waits
    async def ping(self, address: str, count: int, interval_s: float, timeout_s: float) -> PingResult:
        raw = _parse(address)
        if raw == self.identity.address:
            raise InvalidRequest("cannot ping this node's own address through the overlay")
        if not self.acl.allows(raw):
            raise InvalidRequest(
                f"{format_address(raw)} is not on the whitelist (husarnet-ros whitelist add ...)"
            )
        loop = asyncio.get_running_loop()
        self._ping_loop = loop
        sent: list[tuple[bytes | None, asyncio.Future[float] | None, float]] = []
        try:
            for seq in range(count):
                probe_id = self._on_node(lambda: self.node.ping(raw, self._clock()))
                future = None
                if probe_id is not None:
                    future = self._ping_waiters[probe_id] = loop.create_future()
                sent.append((probe_id, future, loop.time()))
                if seq < count - 1:
                    await asyncio.sleep(interval_s)
            replies = []
            for seq, (_, future, at) in enumerate(sent):
                rtt = None
                if future is not None:
                    with contextlib.suppress(asyncio.TimeoutError):  # not the builtin one before 3.11
                        rtt = await asyncio.wait_for(
                            asyncio.shield(future), max(0.0, at + timeout_s - loop.time())
                        )
                # Numbered from 1, as `husarnet-ros ping` and ping(8) number their lines.
                replies.append(PingReply(seq=seq + 1, rtt_ms=round(rtt, 3) if rtt is not None else None))
        finally:
            # Probes that timed out (or a cancelled ping) leave no waiter behind.
            for probe_id, _, _ in sent:
                if probe_id is not None:
                    self._ping_waiters.pop(probe_id, None)

        def path_now() -> tuple[PathKind, str | None, str | None]:
            peer = self.node.peer(raw)
            path = peer.path if peer else PathKind.NONE
            endpoint = format_endpoint(peer.endpoint) if peer and path is PathKind.DIRECT else None
            return path, endpoint, peer.hostname if peer else None

        path, endpoint, hostname = self._on_node(path_now)
        received = sum(1 for r in replies if r.rtt_ms is not None)
        return PingResult(
            address=format_address(raw),
            hostname=hostname or self._hostname_of(raw),
            path=path.value,
            endpoint=endpoint,
            replies=replies,
            sent=count,
            received=received,
            loss=round(1 - received / count, 4),
        )

    @property
    def pending_pings(self) -> int:
        """Probes still waited for (none once every ping call returned)."""
        return len(self._ping_waiters)

    async def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(WAIT_POLL_S)
        return True

    async def wait_peer(self, address: str, timeout_s: float) -> bool:
        raw = _parse(address)
        deadline = time.monotonic() + timeout_s
        while self._on_node(lambda: self.node.path_of(raw)) is PathKind.NONE:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(WAIT_POLL_S)
        return True

    def logs(self, limit: int) -> list[str]:
        return self._ring.tail(limit)


def _base_name(address: str) -> str:
    """The canonical name of a base server the user typed; BadValue saying what is wrong otherwise."""
    try:
        return base_server_name(address)
    except ConfigError as exc:
        raise BadValue(str(exc)) from None


def _static_entry(address: str, endpoint: str) -> StaticEndpoint:
    """The static endpoint the user typed, in its one spelling; BadValue saying what is wrong otherwise."""
    try:
        peer = format_address(parse_overlay(address))
    except AddressError as exc:
        raise BadValue(str(exc)) from None
    try:
        return StaticEndpoint(address=peer, endpoint=parse_peer_endpoint(endpoint).text)
    except ConfigError as exc:
        raise BadValue(str(exc)) from None


def _path_text(endpoint: Endpoint) -> str:
    return (
        "tunnelled via the base server" if is_relay(endpoint) else f"direct via {format_endpoint(endpoint)}"
    )


def _parse(address: str) -> bytes:
    try:
        return parse_overlay(address)
    except AddressError as exc:
        raise InvalidRequest(str(exc)) from None
