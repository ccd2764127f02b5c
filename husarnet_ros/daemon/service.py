"""The daemon's lifecycle: set up what needs root, drop privileges, run, stop cleanly.

Three jobs live in their own modules: the protocol node's single owner (``control_loop``), the
control API's view of the node, state directory and hosts file (``node_controller``), and the hot path
(``dataplane``). This module only wires them together in the right order.

Start-up order matters: everything that needs root (TUN, netlink, binding sockets, spawning the hosts
helper) happens first, in the main thread, before any other thread exists; then every capability is
dropped (capabilities are per thread on Linux); only then do the data plane and the control API threads
start. The control loop then runs in the main thread until SIGTERM/SIGINT or a fatal error.

Start-up speed matters too (a robot's first packet waits for it): the data plane and the control loop start
before anything they do not need. Waiting for the hosts helper to come up, building the control API and
starting its server happen afterwards on a thread of their own (``_Rest``), while the first beacons and
handshakes already go out; the API's socket is bound while privileged, so a client that connects early
waits in its backlog instead of failing. That thread also imports the API's modules (FastAPI, uvicorn: the
largest part of the start-up) unless the account the daemon switches to cannot read them (an interpreter
under /root, say): then they are imported before the privileges go.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import logging
import os
import signal
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..api import DataPlaneStatus
from ..core.address import format_address
from ..core.base_client import base_server_name
from ..core.config import DaemonConfig
from ..core.errors import HusarnetError
from ..exit_with_parent import exit_with_parent_if_asked
from .base_connector import MAX_BASE_SERVERS, BaseConnector
from .control_loop import ControlLoop
from .control_socket import ControlSocket
from .controller import Controller
from .dataplane import DataPlane
from .discovery import Discovery
from .hosts_helper import HostsHelper
from .local_endpoints import local_endpoints
from .log_ring import LOG_FORMAT, LogRing
from .netwatch import NetworkWatch
from .node_controller import NodeController, NodeInfo
from .privileges import Account, blocked_directory, drop_all_capabilities, find_account
from .state import StateDir, StateError
from .transport import UdpTransport
from .tun import Tun

if TYPE_CHECKING:
    from .control import ControlServer
    from .control_plane import ControlPlane

log = logging.getLogger("husarnet_ros.daemon")


class DaemonFailed(HusarnetError):
    """The daemon stopped on a fatal error; the message says which."""


class Daemon:
    """One running husarnet_ros node: its state directory, devices, sockets and threads."""

    def __init__(self, config: DaemonConfig, ring: LogRing | None = None) -> None:
        self.config = config
        self.ring = ring or LogRing()
        self.state = StateDir(Path(config.state_dir))
        self.state.lock()
        try:
            self.identity = self.state.load_or_create_identity()
            self.acl = self.state.load_whitelist(default_enabled=config.whitelist_enabled)
            self.host_entries = self.state.load_hosts()
            self.saved_base_servers = self.state.load_base_servers()  # None: never changed at run time
            self.static_endpoints = self.state.load_static_endpoints()
        except BaseException:
            self.state.unlock()
            raise
        self.hostname = config.node_hostname
        self.wall_minus_mono = time.time() - time.monotonic()
        self.tun: Tun | None = None
        self.transport: UdpTransport | None = None
        self.discovery: Discovery | None = None
        self.netwatch: NetworkWatch | None = None
        self.hosts_helper: HostsHelper | None = None
        self.controller: NodeController | None = None
        self.loop: ControlLoop | None = None
        self.dataplane: DataPlane | None = None
        self.base: BaseConnector | None = None
        self.control_plane: ControlPlane | None = None

    # ------------------------------------------------------------------ lifecycle
    def setup_privileged(self) -> Controller:
        """Everything that needs root; runs in the main thread before any other thread exists. Returns
        what the control API serves."""
        cfg = self.config
        self.tun = Tun(cfg.interface, self.identity.address, cfg.mtu, offload=cfg.offload)
        self.transport = UdpTransport(cfg.udp_port, offload=cfg.offload)
        if cfg.discovery_enabled:
            self.discovery = Discovery(
                self.identity,
                self.hostname,
                self.transport.port,
                self.tun.name,
                tuple(cfg.discovery_networks),
            )
        try:
            self.netwatch = NetworkWatch(ignored_interface=self.tun.name)
        except Exception as exc:  # roaming still works, only later (dead-path detection instead)
            log.warning("cannot watch network changes (%s); paths recover by probing only", exc)
        self.hosts_helper = HostsHelper.spawn(Path(cfg.hosts_file))  # waited for later: finish_hosts_helper
        discovery = self.discovery
        self.controller = NodeController(
            self.identity,
            self.state,
            self.acl,
            self.host_entries,
            self.hosts_helper,
            NodeInfo(
                self.hostname,
                self.tun.name,
                self.transport.port,
                DataPlaneStatus(
                    mtu=cfg.mtu,
                    offload=cfg.offload,
                    tun_offload=self.tun.offload,
                    tun_udp_offload=self.tun.udp_offload,
                    udp_gso=self.transport.gso,
                    udp_gro=self.transport.gro,
                ),
            ),
            ring=self.ring,
            wall_minus_mono=self.wall_minus_mono,
            static_endpoints=self.static_endpoints,
            extra_counters=(
                (lambda: {"beacons_received": discovery.received, "beacons_rejected": discovery.rejected})
                if discovery is not None
                else None
            ),
        )
        # Always there, even with no base server (then it sends nothing and costs one idle check a round):
        # `husarnet-ros base add` may give it one at any time. The list saved by `base add|rm` wins.
        base_servers = list(dict.fromkeys(base_server_name(text) for text in cfg.base_servers))
        if self.saved_base_servers is not None:
            if self.saved_base_servers != base_servers:
                log.info(
                    "base servers: using the list saved in %s (changed with `husarnet-ros base`), not the "
                    "configured one",
                    self.state.base_servers_path,
                )
            base_servers = self.saved_base_servers
        base_servers = base_servers[:MAX_BASE_SERVERS]
        tun_name, port = self.tun.name, self.transport.port
        self.base = BaseConnector(
            self.controller.node,
            self.identity,
            self.transport,
            base_servers,
            wanted_peers=self.controller.wanted_peers,
            local_endpoints=lambda: local_endpoints(port, {tun_name}),
            now=time.monotonic(),
            tcp_port=cfg.base_tcp_port,
        )
        self.controller.base = self.base
        self.controller.base_server_names = base_servers
        self.loop = ControlLoop(
            self.controller.node,
            self.transport,
            self.controller.on_event,
            discovery=self.discovery,
            netwatch=self.netwatch,
            base=self.base,
            on_round=self.controller.upkeep,
        )
        self.controller.attach_owner(self.loop)
        log.info(
            "interface %s up with %s/16, UDP port %d, hostname %s, whitelist %s",
            self.tun.name,
            format_address(self.identity.address),
            self.transport.port,
            self.hostname,
            "on" if self.acl.enabled else "off",
        )
        log.info(
            "data plane: TUN offload %s (UDP %s), UDP GSO %s, UDP GRO %s",
            *(
                "on" if flag else "off"
                for flag in (self.tun.offload, self.tun.udp_offload, self.transport.gso, self.transport.gro)
            ),
        )
        return self.controller

    def finish_hosts_helper(self) -> None:
        """Wait for the hosts helper spawned in set-up, then write the saved entries (any thread; before the
        control API serves)."""
        assert self.hosts_helper is not None
        self.hosts_helper.wait_started()
        if self.host_entries:
            self.hosts_helper.set_entries(self.host_entries)

    def start_control_plane(self) -> None:
        """Apply the pinned license and the managed config, if any, and start the Websetup client (any thread;
        after the hosts helper is up, before the control API serves). StateError for a damaged file.
        Imported only now: the HTTP client is no part of what the first packet waits for."""
        from .control_plane import ControlPlane

        assert self.controller is not None
        self.control_plane = ControlPlane(self.state, self.controller)
        self.controller.control_plane = self.control_plane
        self.control_plane.start()

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
        assert self.loop is not None
        assert self.controller is not None
        self.dataplane = DataPlane(
            self.controller.node,
            self.tun,
            self.transport,
            self.loop.wake,
            self.loop.fail,
            nice=self.config.data_plane_nice,
        )
        if self.base is not None:
            self.dataplane.base_inbox = self.base.inbox
            self.base.attach(self.dataplane.set_base_endpoints)
        self.dataplane.start()
        self.controller.ready = True

    def run(self) -> None:
        """The control loop, in this thread, until ``stop``; DaemonFailed if it ended on a fatal error."""
        assert self.loop is not None
        self.loop.run()
        if self.loop.fatal_error is not None:
            raise DaemonFailed(f"the daemon stopped: {self.loop.fatal_error}")

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()

    def close(self) -> None:
        if self.control_plane is not None:
            with contextlib.suppress(Exception):
                self.control_plane.stop()
        if self.dataplane is not None:
            self.dataplane.stopping = True
        for closer in (self.base, self.netwatch, self.discovery, self.transport, self.tun, self.loop):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        if self.hosts_helper is not None:
            with contextlib.suppress(Exception):
                self.hosts_helper.stop()
        with contextlib.suppress(Exception):
            self.state.unlock()


def _configure_logging(level: str, ring: LogRing) -> None:
    """Log to stderr (journald or the launch log picks it up) and into the ring the control API serves."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    root.addHandler(ring)
    if not any(isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in root.handlers):
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(stderr)


def _python_readable_by(account: Account | None) -> bool:
    """Whether the daemon, once it runs as ``account`` (None: uid 0 without capabilities), can still reach the
    standard library and the control API's packages, so that they may be imported after the drop."""
    who = account or Account("root", 0, 0)
    places = [Path(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")]
    for package in ("fastapi", "uvicorn", "starlette", "pydantic"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            return False
        places.append(Path(spec.origin).parent)
    places.append(Path(__file__).parent)
    try:
        return all(blocked_directory(place, who) is None for place in places)
    except OSError:
        return False


class _Rest:
    """The rest of the start-up, on its own thread once the data plane runs: the hosts helper's readiness and
    the control API (its imports alone take longer than everything the first packet needs). A failure is as
    fatal as it was when this ran before the data plane: the daemon stops and exits non-zero saying why."""

    STOP_TIMEOUT_S = 15.0
    START_SWITCH_INTERVAL_S = 0.0005

    def __init__(self, daemon: Daemon, listening: ControlSocket) -> None:
        self._daemon = daemon
        self._listening = listening
        self._lock = threading.Lock()
        self._stopping = False
        self._server: ControlServer | None = None
        self._thread = threading.Thread(target=self._run, name="start-control-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        # This thread's imports hold the GIL for long stretches while the first handshakes want it: hand it
        # over sooner (5 ms by default) until the start-up is done.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.START_SWITCH_INTERVAL_S)
        try:
            self._start(self._daemon)
        finally:
            sys.setswitchinterval(switch_interval)
            gc.enable()  # off since the command started (cli/daemon.py)

    def _start(self, daemon: Daemon) -> None:
        assert daemon.controller is not None
        assert daemon.loop is not None
        try:
            daemon.finish_hosts_helper()
            daemon.start_control_plane()
            from .control import ControlServer

            server = ControlServer(daemon.controller, self._listening.path, listening=self._listening)
            with self._lock:
                if self._stopping:
                    return
                self._server = server
            server.start()
        except Exception as exc:
            daemon.loop.fail(str(exc) if isinstance(exc, HusarnetError) else f"{type(exc).__name__}: {exc}")
            return
        log.info("ready; control API on %s", self._listening.path)
        # Everything start-up made (imported modules, FastAPI's models) lives as long as the daemon: keep it
        # out of the cyclic garbage collector, whose full passes over it paused every thread for tens of
        # milliseconds (the overlay's p99 ping time). The hot path itself makes no cycles. No collection
        # first: it would hold the GIL ~50 ms just when the first handshakes run, to free ~2 % of the
        # objects (no measurable memory).
        gc.freeze()

    def stop(self) -> None:
        """Stop the control API (waiting for a start under way) and remove its socket."""
        with self._lock:
            self._stopping = True
        if self._thread.ident is not None:
            self._thread.join(self.STOP_TIMEOUT_S)
        if self._server is not None:
            self._server.stop()
        self._listening.remove()


def _lend_nice(nice: int) -> bool:
    """Give this (the main) thread the data plane's nice value when it is below 0. Threads inherit the nice
    value of the thread that creates them, and lowering it takes CAP_SYS_NICE, which is gone before any thread
    starts: so the data-plane threads, created by this thread, are born with it, and this thread takes 0 back
    afterwards (raising one's own value needs no privilege). Values from 0 up the threads set themselves.
    True if lent."""
    if nice >= 0:
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.warning("the data plane runs at normal priority: nice %d refused (%s)", nice, exc.strerror or exc)
        return False
    return True


def run(config: DaemonConfig) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; returns the exit code (0 after a clean stop).
    Errors it cannot start or go on with are HusarnetErrors whose message is the one line to show."""
    ring = LogRing()
    _configure_logging(config.log_level, ring)
    daemon = Daemon(config, ring)  # a state directory it cannot use is one error line, nothing else
    log.info("starting (pid %d)", os.getpid())
    control = ControlSocket(str(config.control_socket))
    rest: _Rest | None = None
    try:
        daemon.setup_privileged()
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
        if not _python_readable_by(account):
            importlib.import_module(".control", __package__)  # now, while it still can (see the module doc)
            importlib.import_module(".control_plane", __package__).preload_http_client()
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.stop())
        lent_nice = _lend_nice(config.data_plane_nice)
        drop_all_capabilities(account)
        log.info("all capabilities dropped%s", f"; running as user {account.name}" if account else "")
        # Started by a launch: end with it (only now: changing the uid clears the parent-death signal).
        if exit_with_parent_if_asked():
            log.info("will stop when the launch that started it exits")
        daemon.start_threads()
        if lent_nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 0)  # back: the data plane has it
        log.info("data plane running")
        rest = _Rest(daemon, control)
        rest.start()
        daemon.run()
        log.info("stopping")
        return 0
    finally:
        if rest is not None:
            rest.stop()
        else:
            control.remove()
        daemon.close()
        gc.enable()  # if start-up never got that far (cli/daemon.py turned it off)
