"""Real daemon controllers on the in-memory network: the control API, the CLI and the ROS nodes tested
against the real ``NodeController`` (whitelist, hosts, status, ping, waits) without TUN or root.

``MemNetFleet`` owns a ``MemNet`` and a pump thread that drives it in real time (the node's owner, as the
daemon's control loop is), makes every node hear the others' LAN beacons, and hands node events to their
controllers. Each member has its own state directory (a real ``StateDir``) and an in-memory hosts file.
``serve()`` puts one member's controller behind the real ``ControlServer`` on a short socket path.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..core import beacon
from ..core import hosts as hosts_model
from ..core.constants import BEACON_INTERVAL
from ..core.errors import HusarnetError
from ..core.identity import Identity
from ..core.peer import Endpoint
from ..daemon.control import ControlServer
from ..daemon.node_controller import NodeController, NodeInfo
from ..daemon.state import StateDir
from .memnet import MemNet

T = TypeVar("T")

PUMP_INTERVAL_S = 0.01


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
        state = StateDir(state_dir)
        if identity is not None:
            state.save_identity(identity)
        hosts_file = MemoryHostsFile()
        controller = NodeController(
            state.load_or_create_identity(),
            state,
            state.load_whitelist(default_enabled=whitelist_enabled),
            state.load_hosts(),
            hosts_file,
            NodeInfo(hostname, "hnet0", 5582),
            clock=self.clock,
        )
        with self.lock:
            endpoint = self.net.add_node(controller.node)
            self.members.append(Member(hostname, controller, endpoint, hosts_file, state_dir))
        controller.attach_owner(_LockedOwner(self.lock))
        controller.ready = True
        return controller

    def member(self, hostname: str) -> Member:
        return next(m for m in self.members if m.hostname == hostname)

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
            data = beacon.decode(beacon.encode(identity, sender.hostname, 5582, int((now + 1.7e9) * 1e9)))
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
