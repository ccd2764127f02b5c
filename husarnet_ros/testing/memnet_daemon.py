"""Real daemon controllers on the in-memory network: the control API, the CLI and the ROS nodes tested
against the real ``NodeController`` (whitelist, hosts, status, ping, waits) without TUN or root.

``MemNetFleet`` owns a ``MemNet`` and a pump thread that drives it in real time (the node's owner, as the
daemon's control loop is), makes every node hear the others' LAN beacons, and hands node events to their
controllers. Each member has its own state directory (a real ``StateDir``) and an in-memory hosts file.
``serve()`` puts one member's controller behind the real ``ControlServer`` on a short socket path;
``served_fleet()`` does both: a fleet, its first member served, the others its connected peers.

A member's identity derives from its hostname unless the test gives one, so addresses (and the order in
which peers are listed) are the same on every run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nacl.signing import SigningKey

from ..api import PeerStatus
from ..core import beacon
from ..core import hosts as hosts_model
from ..core.address import format_address
from ..core.config import DEFAULT_INTERFACE
from ..core.constants import BEACON_INTERVAL, DEFAULT_UDP_PORT
from ..core.errors import HusarnetError
from ..core.identity import Identity, derive_address
from ..core.peer import Endpoint
from ..daemon.control import ControlServer
from ..daemon.log_ring import LogRing
from ..daemon.node_controller import NodeController, NodeInfo
from ..daemon.state import StateDir
from .memnet import MemNet

T = TypeVar("T")

PUMP_INTERVAL_S = 0.01
# How long connect() waits for two members to reach each other (about 30 ms when nothing is wrong).
CONNECT_TIMEOUT_S = 10.0


@functools.cache
def member_identity(hostname: str) -> Identity:
    """The identity of a member added without one: the first seed derived from its hostname whose key
    passes the address proof of work (about 1,300 tries, cached)."""
    for counter in range(1_000_000):
        seed = hashlib.sha256(f"memnet member {hostname} {counter}".encode()).digest()
        if derive_address(bytes(SigningKey(seed).verify_key)) is not None:
            return Identity.from_seed(seed)
    raise AssertionError("no valid seed found (impossible in practice)")


def member_address(hostname: str) -> str:
    """The overlay address a member added as ``hostname`` (without an identity) has, e.g. for fleet files
    written before the fleet exists."""
    return format_address(member_identity(hostname).address)


class HostsFileError(HusarnetError):
    """The in-memory hosts file was told to fail (a test of the rollback)."""


@dataclass
class MemoryHostsFile:
    """Where a member's managed hosts block goes; ``fail`` makes the next writes fail."""

    entries: list[hosts_model.HostEntry] = field(default_factory=list)
    fail: bool = False

    def set_entries(self, entries: list[hosts_model.HostEntry]) -> None:
        if self.fail:
            raise HostsFileError("the hosts file is not writable (test)")
        self.entries = list(entries)


class _LockedOwner:
    """Runs node functions under the fleet's lock, which the pump holds while it drives the network."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock

    def call(self, fn: Callable[[], T], timeout_s: float = 5.0) -> T:
        if not self._lock.acquire(timeout=timeout_s):
            raise TimeoutError("the in-memory network is stuck")
        try:
            return fn()
        finally:
            self._lock.release()


@dataclass
class Member:
    hostname: str
    controller: NodeController
    endpoint: Endpoint
    hosts_file: MemoryHostsFile
    state_dir: Path
    ring: LogRing  # what `husarnet-ros logs` shows for this member: only what a test logs into it
    online: bool = True  # False: it hears nothing and sends nothing (a robot switched off)


class MemNetFleet:
    """Several NodeControllers on one MemNet, pumped in real time by a background thread."""

    def __init__(self) -> None:
        self.net = MemNet(now=time.monotonic())
        self.lock = threading.RLock()
        self.members: list[Member] = []
        self._workdir = Path(tempfile.mkdtemp(prefix="hr-memfleet-"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_beacon = 0.0
        self.pump_error: BaseException | None = None

    def add(
        self, hostname: str, identity: Identity | None = None, *, whitelist_enabled: bool = True
    ) -> NodeController:
        state_dir = self._workdir / hostname / "state"
        state_dir.parent.mkdir(parents=True)
        StateDir(state_dir).save_identity(identity or member_identity(hostname))
        return self._start(hostname, state_dir, MemoryHostsFile(), whitelist_enabled=whitelist_enabled)

    def restart(
        self, hostname: str, *, clock_set_back_s: float = 0.0, endpoint: Endpoint | None = None
    ) -> NodeController:
        """The member's daemon stops and starts again (a reboot): a new controller on the same state
        directory and hosts file, at the same endpoint. Whoever served the old controller serves a stopped
        daemon: serve the new one. ``clock_set_back_s``: its wall clock is that much behind after the reboot
        (a robot without a real-time clock, before NTP); ``endpoint``: it comes back at another address."""
        with self.lock:
            old = self.member(hostname)
            self.members.remove(old)
            self.net.nodes.pop(old.endpoint, None)
        return self._start(
            hostname,
            old.state_dir,
            old.hosts_file,
            endpoint=endpoint or old.endpoint,
            wall_minus_mono=time.time() - self.clock() - clock_set_back_s,
        )

    def _start(
        self,
        hostname: str,
        state_dir: Path,
        hosts_file: MemoryHostsFile,
        *,
        whitelist_enabled: bool = True,
        endpoint: Endpoint | None = None,
        wall_minus_mono: float | None = None,
    ) -> NodeController:
        """What the daemon does at start: identity, whitelist and hosts from the state directory."""
        state = StateDir(state_dir)
        ring = LogRing()
        controller = NodeController(
            state.load_or_create_identity(),
            state,
            state.load_whitelist(default_enabled=whitelist_enabled),
            state.load_hosts(),
            hosts_file,
            NodeInfo(hostname, DEFAULT_INTERFACE, DEFAULT_UDP_PORT),
            ring=ring,
            clock=self.clock,
            wall_minus_mono=wall_minus_mono,
        )
        with self.lock:
            endpoint = self.net.add_node(controller.node, endpoint)
            self.members.append(Member(hostname, controller, endpoint, hosts_file, state_dir, ring))
        controller.attach_owner(_LockedOwner(self.lock))
        controller.ready = True
        self.beacon_now()  # the others hear the new member at once, not up to BEACON_INTERVAL later
        return controller

    def member(self, hostname: str) -> Member:
        return next(m for m in self.members if m.hostname == hostname)

    def address(self, hostname: str) -> str:
        """The member's overlay address, as the API writes it."""
        return format_address(self.member(hostname).controller.identity.address)

    def peer(self, hostname: str, other: str) -> PeerStatus | None:
        """What ``hostname``'s status says about ``other`` (None: not listed at all)."""
        address = self.address(other)
        peers = self.member(hostname).controller.status().peers
        return next((p for p in peers if p.address == address), None)

    def path(self, hostname: str, other: str) -> str | None:
        peer = self.peer(hostname, other)
        return peer.path if peer is not None else None

    def connect(self, a: str, b: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Whitelist ``a`` and ``b`` on each other and wait until each has a direct path to the other."""
        self.member(a).controller.whitelist_add(self.address(b))
        self.member(b).controller.whitelist_add(self.address(a))
        self.beacon_now()
        if not self.wait(lambda: self.path(a, b) == self.path(b, a) == "direct", timeout_s):
            raise AssertionError(
                f"{a} and {b} found no direct path within {timeout_s:g} s "
                f"({a} says {self.path(a, b)}, {b} says {self.path(b, a)})"
            )

    def log(self, hostname: str, message: str, level: int = logging.INFO) -> None:
        """A line in the member's log, as the daemon's logging would put it there."""
        record = logging.LogRecord("husarnet_ros.daemon", level, __file__, 0, message, None, None)
        self.member(hostname).ring.handle(record)

    def beacon_now(self) -> None:
        """Every online member beacons at the pump's next step."""
        with self.lock:
            self._next_beacon = 0.0

    def clock(self) -> float:
        return time.monotonic()

    def set_online(self, hostname: str, online: bool) -> None:
        """Switch a member off (its datagrams and the others' to it are lost) or on again."""
        with self.lock:
            member = self.member(hostname)
            member.online = online
            if online:
                self.net.nodes[member.endpoint] = member.controller.node
            else:
                self.net.nodes.pop(member.endpoint, None)

    # ------------------------------------------------------------------ the pump
    def start(self) -> MemNetFleet:
        self._thread = threading.Thread(target=self._pump, name="memnet-pump", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                with self.lock:
                    now = self.clock()
                    if now >= self._next_beacon:
                        self._beacon_round(now)
                        self._next_beacon = now + BEACON_INTERVAL
                    self.net.step(now)
                    for member in self.members:
                        member.controller.keep_timestamp_floor(now)  # as the daemon's control loop does
                        events = member.controller.node.events
                        while events:
                            member.controller.on_event(events.popleft())
                self._stop.wait(PUMP_INTERVAL_S)
        except BaseException as exc:  # reported by close(): a test must not pass over a broken pump
            self.pump_error = exc

    def _beacon_round(self, now: float) -> None:
        """Every online member hears every other one's beacon, as on one LAN."""
        online = [m for m in self.members if m.online]
        for sender in online:
            identity = sender.controller.identity
            timestamp_ns = sender.controller.node.next_timestamp_ns(now)  # as the daemon's beacons
            data = beacon.decode(beacon.encode(identity, sender.hostname, DEFAULT_UDP_PORT, timestamp_ns))
            for receiver in online:
                if receiver is not sender:
                    receiver.controller.node.learn_beacon(data, sender.endpoint, now)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        shutil.rmtree(self._workdir, ignore_errors=True)
        if self.pump_error is not None:
            raise AssertionError(
                f"the in-memory network's pump failed: {self.pump_error!r}"
            ) from self.pump_error

    def __enter__(self) -> MemNetFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()


@contextlib.contextmanager
def serve(controller: NodeController) -> Iterator[str]:
    """``controller`` behind the real ControlServer; yields the socket path (short: under /tmp)."""
    directory = tempfile.mkdtemp(prefix="hr-ctl-", dir="/tmp")
    path = f"{directory}/control.sock"
    server = ControlServer(controller, path, group=None)
    server.start()
    try:
        yield path
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class ServedFleet:
    """A running fleet whose member ``hostname`` is served by the real ControlServer on ``socket_path``."""

    fleet: MemNetFleet
    hostname: str
    socket_path: str

    @property
    def controller(self) -> NodeController:
        return self.fleet.member(self.hostname).controller

    @property
    def address(self) -> str:
        return self.fleet.address(self.hostname)


@contextlib.contextmanager
def served_fleet(
    hostname: str = "robot1", peers: Sequence[str] = ("robot2",), *, connected: bool = True
) -> Iterator[ServedFleet]:
    """A fleet of ``hostname`` and ``peers``, ``hostname`` served; with ``connected``, each peer is on its
    whitelist (and it on theirs) with a direct path before the block starts."""
    with MemNetFleet() as fleet:
        controller = fleet.add(hostname)
        for peer in peers:
            fleet.add(peer)
            if connected:
                fleet.connect(hostname, peer)
        with serve(controller) as socket_path:
            yield ServedFleet(fleet, hostname, socket_path)
