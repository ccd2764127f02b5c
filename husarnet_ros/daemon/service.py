"""The daemon: wires identity, TUN, sockets, discovery, the hosts helper and the control API
around the protocol core, drops privileges, and runs the control loop.

Start-up order matters: everything that needs root (TUN, netlink, binding sockets, spawning the
hosts helper) happens first, in the main thread, before any other thread exists; then every
capability is dropped (capabilities are per thread on Linux); only then do the data plane and the
control API threads start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..api import HostEntry as ApiHostEntry
from ..api import PeerStatus, PingReply, PingResult, Status, Whitelist
from ..core import hosts as hosts_model
from ..core.address import format_address, parse_overlay
from ..core.config import DaemonConfig
from ..core.constants import BEACON_INTERVAL
from ..core.errors import AddressError, HusarnetError
from ..core.node import Node, PeerDown, PeerUp, PongReceived
from ..core.peer import PathKind, Peer, format_endpoint
from .controller import Conflict, InvalidRequest, NotFound
from .dataplane import DataPlane, flush_outbox
from .discovery import Discovery
from .hosts_helper import HostsHelper
from .privileges import Account, blocked_directory, drop_all_capabilities, find_account
from .state import StateDir, StateError
from .transport import UdpTransport
from .tun import Tun

log = logging.getLogger("husarnet_ros.daemon")


class _RingLog(logging.Handler):
    """Keeps the latest log lines for `husarnet-ros logs` / the control API."""

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


class Daemon:
    """One running husarnet_ros node. Implements the control API's ``Controller`` protocol."""

    def __init__(self, config: DaemonConfig, ring: _RingLog | None = None) -> None:
        self.config = config
        self._ring = ring or _RingLog()
        self.state = StateDir(Path(config.state_dir))
        self.state.lock()
        self.identity = self.state.load_or_create_identity()
        self.acl = self.state.load_whitelist(default_enabled=config.whitelist_enabled)
        self.host_entries: list[hosts_model.HostEntry] = self.state.load_hosts()
        self.hostname = config.node_hostname
        self.lock = threading.Lock()
        self.started_mono = time.monotonic()
        self._wall_minus_mono = time.time() - self.started_mono
        self.node = Node(
            self.identity,
            self.acl.allows,
            wall_offset_ns=int(self._wall_minus_mono * 1e9),
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ping_waiters: dict[bytes, tuple[asyncio.AbstractEventLoop, asyncio.Future[float]]] = {}
        self._stop = threading.Event()
        self.ready = False
        self.tun: Tun | None = None
        self.transport: UdpTransport | None = None
        self.discovery: Discovery | None = None
        self.hosts_helper: HostsHelper | None = None
        self.dataplane: DataPlane | None = None

    # ------------------------------------------------------------------ lifecycle
    def setup_privileged(self) -> None:
        """Everything that needs root; runs in the main thread before any other thread exists."""
        cfg = self.config
        self.tun = Tun(cfg.interface, self.identity.address, cfg.mtu)
        self.transport = UdpTransport(cfg.udp_port)
        if cfg.discovery_enabled:
            self.discovery = Discovery(
                self.identity,
                self.hostname,
                self.transport.port,
                self.tun.name,
                tuple(cfg.discovery_networks),
            )
        self.hosts_helper = HostsHelper.start(Path(cfg.hosts_file))
        if self.host_entries:
            self._push_hosts()
        log.info(
            "interface %s up with %s/16, UDP port %d, hostname %s, whitelist %s",
            self.tun.name,
            format_address(self.identity.address),
            self.transport.port,
            self.hostname,
            "on" if self.acl.enabled else "off",
        )

    def unprivileged_account(self) -> Account | None:
        """The account to run as after set-up, or None to stay uid 0 (said why in the log)."""
        name = self.config.user
        if name in ("", "root"):
            log.info("configured to stay uid 0 (user %r); capabilities are dropped all the same", name)
            return None
        account = find_account(name)
        if account is None:
            log.warning(
                "user %r does not exist: staying uid 0 (no capabilities, but it still owns every root file); "
                "create it (useradd --system --no-create-home --shell /usr/sbin/nologin %s) or set user",
                name,
                name,
            )
            return None
        if account.uid == 0:
            return None
        # The state directory itself is given to the account; the way to it must be open already.
        blocked = blocked_directory(self.state.path.parent, account)
        if blocked is not None:
            log.warning(
                "user %s cannot reach the state directory %s (%s is closed to it): staying uid 0 "
                "without capabilities",
                name,
                self.state.path,
                blocked,
            )
            return None
        return account

    def start_threads(self) -> None:
        assert self.tun is not None
        assert self.transport is not None
        self.dataplane = DataPlane(
            self.node, self.tun.fd, self.transport, self.lock, self.wake, self.config.mtu
        )
        self.dataplane.start()
        self.ready = True

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def run_control_loop(self) -> None:
        """Timers, beacons and node events, until ``stop``."""
        assert self.transport is not None
        next_beacon = 0.0
        sockets = self.discovery.sockets() if self.discovery else []
        # select() takes file descriptors and socket objects alike.
        watched: list[Any] = [self._wake_r, *sockets]
        while not self._stop.is_set():
            now = time.monotonic()
            if self.discovery is not None and now >= next_beacon:
                self.discovery.send_beacons(int((now + self._wall_minus_mono) * 1e9))
                next_beacon = now + BEACON_INTERVAL
            with self.lock:
                self.node.tick(now)
                timeout = max(0.0, min(self.node.next_timer(now), next_beacon) - time.monotonic())
            flush_outbox(self.node, self.transport)
            self._drain_events()
            try:
                readable, _, _ = select.select(watched, [], [], min(timeout, 0.25))
            except InterruptedError:
                continue
            for fd in readable:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif self.discovery is not None:
                    got = self.discovery.receive(fd)
                    if got is not None:
                        beacon, endpoint = got
                        with self.lock:
                            self.node.learn_beacon(beacon, endpoint, time.monotonic())

    def _drain_events(self) -> None:
        events = self.node.events
        while events:
            try:
                event = events.popleft()
            except IndexError:
                return
            if isinstance(event, PeerUp):
                log.info(
                    "peer %s up, direct via %s",
                    format_address(event.address),
                    format_endpoint(event.endpoint),
                )
            elif isinstance(event, PeerDown):
                log.info("peer %s down (%s)", format_address(event.address), event.reason)
            elif isinstance(event, PongReceived):
                waiter = self._ping_waiters.pop(event.probe_id, None)
                if waiter is not None:
                    loop, future = waiter
                    loop.call_soon_threadsafe(_set_result, future, event.rtt_ms)

    def close(self) -> None:
        if self.dataplane is not None:
            self.dataplane.stopping = True
        for closer in (self.discovery, self.transport, self.tun):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        if self.hosts_helper is not None:
            with contextlib.suppress(Exception):
                self.hosts_helper.stop()
        with contextlib.suppress(Exception):
            self.state.unlock()

    # ------------------------------------------------------------------ status helpers
    def _wall(self, mono: float | None) -> float | None:
        return None if mono is None else mono + self._wall_minus_mono

    def _peer_status(self, peer: Peer) -> PeerStatus:
        path = peer.path
        if peer.current is not None and peer.current.confirmed:
            state = "established"
        elif peer.initiation is not None or peer.responder is not None or peer.current is not None:
            state = "handshaking"
        else:
            state = "idle"
        return PeerStatus(
            address=format_address(peer.address),
            hostname=peer.hostname or self._hostname_of(peer.address),
            path=path.value,
            endpoint=format_endpoint(peer.endpoint) if path is PathKind.DIRECT else None,
            base_server=None,
            rtt_ms=round(peer.rtt_ms, 3) if peer.rtt_ms is not None and path is not PathKind.NONE else None,
            last_handshake=self._wall(peer.last_handshake),
            last_seen=self._wall(peer.last_seen),
            rx_bytes=peer.rx_bytes,
            tx_bytes=peer.tx_bytes,
            whitelisted=peer.address in self.acl.addresses,
            state=state,
        )

    def _hostname_of(self, address: bytes) -> str | None:
        for entry in self.host_entries:
            if entry.address == address:
                return entry.hostname
        return None

    # ------------------------------------------------------------------ Controller protocol
    def status(self) -> Status:
        with self.lock:
            peers = [self._peer_status(p) for p in self.node.peers.values()]
            counters = dict(self.node.counters)
        # Whitelisted addresses never heard from are shown too: "is my robot there?" has an answer.
        known = {p.address for p in peers}
        for raw in sorted(self.acl.addresses):
            text = format_address(raw)
            if text not in known:
                peers.append(PeerStatus(address=text, hostname=self._hostname_of(raw), whitelisted=True))
        if self.discovery is not None:
            counters["beacons_received"] = self.discovery.received
            counters["beacons_rejected"] = self.discovery.rejected
        assert self.transport is not None
        return Status(
            address=format_address(self.identity.address),
            hostname=self.hostname,
            interface=self.tun.name if self.tun else self.config.interface,
            udp_port=self.transport.port,
            whitelist_enabled=self.acl.enabled,
            version=__version__,
            uptime_s=round(time.monotonic() - self.started_mono, 3),
            ready=self.ready,
            counters=counters,
            peers=sorted(peers, key=lambda p: (p.hostname or "~", p.address)),
        )

    def whitelist(self) -> Whitelist:
        return Whitelist(
            enabled=self.acl.enabled,
            addresses=[format_address(a) for a in sorted(self.acl.addresses)],
        )

    def whitelist_add(self, address: str) -> None:
        raw = _parse(address)
        if raw == self.identity.address:
            raise InvalidRequest("that is this node's own address")
        with self.lock:
            self.acl.add(raw)
            self.state.save_whitelist(self.acl)
            self.node.whitelist_changed(time.monotonic())
        self.wake()

    def whitelist_remove(self, address: str) -> None:
        raw = _parse(address)
        with self.lock:
            if raw not in self.acl.addresses:
                raise NotFound(f"{format_address(raw)} is not on the whitelist")
            self.acl.remove(raw)
            self.state.save_whitelist(self.acl)
        self.wake()

    def whitelist_set_enabled(self, enabled: bool) -> None:
        with self.lock:
            self.acl.enabled = enabled
            self.state.save_whitelist(self.acl)
            self.node.whitelist_changed(time.monotonic())
        log.info("whitelist %s", "enabled" if enabled else "disabled")
        self.wake()

    def hosts(self) -> list[ApiHostEntry]:
        return [ApiHostEntry(hostname=e.hostname, address=e.address_text) for e in self.host_entries]

    def hosts_add(self, hostname: str, address: str) -> None:
        try:
            entry = hosts_model.HostEntry.from_text(hostname, address)
        except (AddressError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from None
        with self.lock:
            entries = [e for e in self.host_entries if e.hostname != entry.hostname] + [entry]
            self._commit_hosts(entries)

    def hosts_remove(self, hostname: str) -> None:
        name = hostname.lower()
        with self.lock:
            if not any(e.hostname == name for e in self.host_entries):
                raise NotFound(f"no host entry named {hostname!r}")
            self._commit_hosts([e for e in self.host_entries if e.hostname != name])

    def _commit_hosts(self, entries: list[hosts_model.HostEntry]) -> None:
        entries = hosts_model.canonical_entries(entries)
        previous = self.host_entries
        self.host_entries = entries
        try:
            self._push_hosts()
        except HusarnetError as exc:
            self.host_entries = previous
            raise Conflict(f"could not update the hosts file: {exc}") from None
        self.state.save_hosts(entries)

    def _push_hosts(self) -> None:
        assert self.hosts_helper is not None
        self.hosts_helper.set_entries(self.host_entries)

    def resolve(self, name_or_address: str) -> str:
        text = name_or_address.strip()
        with contextlib.suppress(AddressError):
            return format_address(parse_overlay(text))
        name = text.lower()
        for entry in self.host_entries:
            if entry.hostname == name:
                return entry.address_text
        with self.lock:
            for peer in self.node.peers.values():
                if peer.hostname and peer.hostname.lower() == name:
                    return format_address(peer.address)
        raise NotFound(
            f"unknown host {text!r}: not an fc94 address, not in the hosts block, no peer of that name"
        )

    async def ping(self, address: str, count: int, interval_s: float, timeout_s: float) -> PingResult:
        raw = _parse(address)
        if raw == self.identity.address:
            raise InvalidRequest("cannot ping this node's own address through the overlay")
        if not self.acl.allows(raw):
            raise InvalidRequest(
                f"{format_address(raw)} is not on the whitelist (husarnet-ros whitelist add ...)"
            )
        loop = asyncio.get_running_loop()
        replies: list[PingReply] = []
        pending: list[tuple[int, asyncio.Future[float], float]] = []
        for seq in range(count):
            future: asyncio.Future[float] = loop.create_future()
            with self.lock:
                probe_id = self.node.ping(raw, time.monotonic())
                if probe_id is not None:
                    self._ping_waiters[probe_id] = (loop, future)
            if probe_id is None:
                self.wake()  # no session yet: the control loop starts a handshake
                future.set_result(-1.0)
            else:
                assert self.transport is not None
                flush_outbox(self.node, self.transport)
            pending.append((seq, future, loop.time()))
            if seq < count - 1:
                await asyncio.sleep(interval_s)
        for seq, future, sent in pending:
            remaining = max(0.0, sent + timeout_s - loop.time())
            try:
                rtt = await asyncio.wait_for(asyncio.shield(future), remaining)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                rtt = -1.0
            replies.append(PingReply(seq=seq, rtt_ms=round(rtt, 3) if rtt >= 0 else None))
        with self.lock:
            peer = self.node.peer(raw)
            path = peer.path if peer else PathKind.NONE
            endpoint = format_endpoint(peer.endpoint) if peer and path is PathKind.DIRECT else None
            hostname = (peer.hostname if peer else None) or self._hostname_of(raw)
        received = sum(1 for r in replies if r.rtt_ms is not None)
        return PingResult(
            address=format_address(raw),
            hostname=hostname,
            path=path.value,
            endpoint=endpoint,
            replies=replies,
            sent=count,
            received=received,
            loss=round(1 - received / count, 4),
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait_peer(self, address: str, timeout_s: float) -> bool:
        raw = _parse(address)
        deadline = time.monotonic() + timeout_s
        while self.node.path_of(raw) is PathKind.NONE:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def logs(self, limit: int) -> list[str]:
        return list(self._ring.lines)[-limit:]


def _set_result(future: asyncio.Future[float], value: float) -> None:
    if not future.done():
        future.set_result(value)


def _parse(address: str) -> bytes:
    try:
        return parse_overlay(address)
    except AddressError as exc:
        raise InvalidRequest(str(exc)) from None


def _configure_logging(level: str, ring: _RingLog) -> None:
    """Log to stderr (journald or the launch log picks it up) and into the ring the control API serves."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    root.addHandler(ring)
    if not any(isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in root.handlers):
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(stderr)


def run(config: DaemonConfig) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; returns the exit code."""
    from .control import ControlServer

    ring = _RingLog()
    _configure_logging(config.log_level, ring)
    daemon = Daemon(config, ring)
    control: ControlServer | None = None
    try:
        daemon.setup_privileged()
        control = ControlServer(daemon, str(config.control_socket))
        control.bind()  # still privileged: the socket's group needs CAP_CHOWN
        account = daemon.unprivileged_account()
        if account is not None:
            try:
                daemon.state.give_to(account.uid, account.gid)
            except StateError as exc:
                log.warning("%s: staying uid 0 without capabilities", exc)
                account = None
            else:
                control.give_to(account.uid)
        drop_all_capabilities(account)
        log.info("all capabilities dropped%s", f"; running as user {account.name}" if account else "")
        control.start()
        daemon.start_threads()
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.stop())
        log.info("ready; control API on %s", config.control_socket)
        daemon.run_control_loop()
        log.info("stopping")
        return 0
    finally:
        if control is not None:
            control.stop()
        daemon.close()
