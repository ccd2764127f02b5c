"""A self-hosted control plane in a lab namespace: Dashboard, Websetup, base servers and the daemon that gives
Websetup its fc94 identity; robots that set it up and join with a code. For the end-to-end test and the demo.

The Dashboard listens on the server's underlay address; this process reaches its REST API through a
loopback port (``port_forward``), as a person's browser would. Robots' hosts files are bound over
``/etc/hosts`` in their namespaces (``ip netns exec`` mounts ``/etc/netns/<ns>/hosts``), so
``ping -6 robot-2`` resolves there as on a real robot.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from husarnet_ros.core.license import DEFAULT_WEBSETUP_PORT

from .lab_base import LabBaseServer
from .lab_daemon import Daemon, husarnet_ros_command, husarnet_ros_env, start_daemons
from .netlab import Host, Lab, LabError, wait_until
from .port_forward import PortForward

DASHBOARD_PORT = 8080
ADMIN = "admin"
START_TIMEOUT_S = 30.0
NETNS_ETC = Path("/etc/netns")


def bind_hosts_file(daemon: Daemon) -> Path:
    """Make ``daemon``'s hosts file the namespace's /etc/hosts for every later ``ip netns exec``; returns the
    directory to remove at the end."""
    folder = NETNS_ETC / daemon.host.netns
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "hosts"
    link.unlink(missing_ok=True)
    # A link, not a copy: the daemon's hosts helper replaces its file by rename, and each exec mounts anew.
    link.symlink_to(daemon.hosts_file)
    return folder


@dataclass
class ControlStack:
    """The server side, running in ``host``'s namespace."""

    lab: Lab
    host: Host
    workdir: Path
    daemon: Daemon
    bases: list[LabBaseServer]
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    token: str = ""
    process: subprocess.Popen[Any] | None = None
    websetup: subprocess.Popen[Any] | None = None
    forward: PortForward | None = None
    dashboard_port: int = DASHBOARD_PORT
    local_port: int = 0  # the loopback port on this machine that leads to the Dashboard (0: any free one)
    own_bases: bool = True  # the base servers are this stack's to stop
    websetup_in_dashboard: bool = False  # `dashboard serve --websetup` instead of a `websetup` process

    @classmethod
    def start(
        cls,
        lab: Lab,
        host: Host,
        *,
        base_ports: tuple[int, ...] = (5582, 5583),
        bases: list[LabBaseServer] | None = None,
        dashboard_port: int = DASHBOARD_PORT,
        local_port: int = 0,
        websetup_in_dashboard: bool = False,
    ) -> ControlStack:
        """Start it all on ``host``: base servers on ``base_ports`` there, or the running ``bases`` given."""
        own_bases = bases is None
        if bases is None:
            # Each its own TCP port too: two base servers on one host cannot both have 443.
            bases = [LabBaseServer.start(host, port, tcp_port=443 + i) for i, port in enumerate(base_ports)]
        workdir = Path(tempfile.mkdtemp(prefix=f"{host.netns}-dashboard-"))
        args = [arg for base in bases for arg in ("--base-server", base.address)]
        # Websetup's identity: a daemon like any robot's, but open to devices it does not know yet.
        # Its UDP port is not 5582: the base servers on this host have that one.
        daemon = Daemon.create(host, "websetup", extra_args=args, udp_port=5580)
        stack = cls(
            lab,
            host,
            workdir,
            daemon,
            bases,
            dashboard_port=dashboard_port,
            local_port=local_port,
            own_bases=own_bases,
            websetup_in_dashboard=websetup_in_dashboard,
        )
        daemon.start()
        daemon.cli("whitelist", "disable")
        stack.run_dashboard_cli("create-user", ADMIN, "--password-stdin", stdin=f"{stack.password}\n")
        stack.start_dashboard()
        created = stack.run_dashboard_cli("create-token", ADMIN, "lab", "--json")
        stack.token = str(json.loads(created.stdout)["token"])
        return stack

    # --- the Dashboard process ---------------------------------------------------------------------
    @property
    def server_address(self) -> str:
        """What a robot gives ``setup-server``."""
        return f"{self.host.ipv4}:{self.dashboard_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dashboard.log"

    def dashboard_argv(self, *args: str) -> list[str]:
        return [*husarnet_ros_command(), "dashboard", *args, "--data-dir", str(self.workdir / "data")]

    def run_dashboard_cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.host.exec_argv(self.dashboard_argv(*args)),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=husarnet_ros_env(),
        )
        if result.returncode != 0:
            raise LabError(f"husarnet-ros dashboard {args[0]}: {(result.stderr or result.stdout).strip()}")
        return result

    def start_dashboard(self) -> None:
        argv = self.dashboard_argv(
            "serve",
            "--listen",
            self.server_address,
            "--name",
            "lab fleet",
            "--public-url",
            f"http://{self.server_address}",
            *[arg for base in self.bases for arg in ("--base-server", base.address)],
            "--websetup-address",
            self.daemon.address,
            "--websetup-port",
            str(DEFAULT_WEBSETUP_PORT),
            *(["--websetup"] if self.websetup_in_dashboard else []),
        )
        with self.log_path.open("a") as log:
            self.process = self.lab.track(
                self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT, env=husarnet_ros_env())
            )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"the Dashboard exited ({self.process.returncode}):\n{self.log_tail()}")
            return self.host.tcp_listening(self.dashboard_port)

        wait_until(up, START_TIMEOUT_S, interval=0.1, what="the Dashboard")
        if self.websetup_in_dashboard:
            wait_until(
                lambda: self.host.tcp_listening(DEFAULT_WEBSETUP_PORT), START_TIMEOUT_S, what="Websetup"
            )
        elif self.websetup is None:
            self.start_websetup()
        if self.forward is None:
            target = (self.host.ipv4, self.dashboard_port)
            try:
                self.forward = PortForward(self.host.netns, target, self.local_port)
            except OSError:  # that loopback port is taken: any other will do
                self.forward = PortForward(self.host.netns, target)

    def start_websetup(self) -> None:
        """Websetup in a process of its own, on the server daemon's fc94 address, sharing the database."""
        argv = [
            *husarnet_ros_command(),
            "websetup",
            "--listen",
            f"[{self.daemon.address}]:{DEFAULT_WEBSETUP_PORT}",
            "--data-dir",
            str(self.workdir / "data"),
        ]
        with (self.workdir / "websetup.log").open("a") as log:
            self.websetup = self.lab.track(
                self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT, env=husarnet_ros_env())
            )

        def up() -> bool:
            if self.websetup is not None and self.websetup.poll() is not None:
                raise LabError(f"Websetup exited ({self.websetup.returncode})")
            return self.host.tcp_listening(DEFAULT_WEBSETUP_PORT)

        wait_until(up, START_TIMEOUT_S, interval=0.1, what="Websetup")

    def stop_dashboard(self) -> None:
        if self.process is not None:
            Lab.stop_process(self.process)
            self.process = None

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # --- the REST API, as a script would use it ----------------------------------------------------
    @property
    def url(self) -> str:
        """The Dashboard from this machine (a loopback port)."""
        if self.forward is None:
            raise LabError("the Dashboard is not running")
        return self.forward.url

    def api(self, method: str, path: str, body: Any = None, *, expect: int | None = 200) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = httpx.request(method, f"{self.url}/api/v1{path}", json=body, headers=headers, timeout=15)
        if expect is not None and answer.status_code != expect:
            raise LabError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json() if answer.content else None

    def create_network(self, name: str) -> tuple[int, str]:
        """A new network: its id and a join code."""
        network = self.api("POST", "/networks", {"name": name}, expect=201)
        return int(network["id"]), str(network["join_code"])

    def device_id(self, address: str) -> int:
        for device in self.api("GET", "/devices"):
            if device["address"] == address:
                return int(device["id"])
        raise LabError(f"no device {address} in the Dashboard")

    def close(self) -> None:
        if self.forward is not None:
            self.forward.close()
            self.forward = None
        self.stop_dashboard()
        if self.websetup is not None:
            Lab.stop_process(self.websetup)
            self.websetup = None
        self.daemon.stop()
        self.daemon.remove_files()
        if self.own_bases:
            for base in self.bases:
                base.stop()
                base.remove_files()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def self_hosted_fleet(
    lab: Lab, robots: Sequence[str], *, websetup_in_dashboard: bool = False
) -> Iterator[tuple[ControlStack, list[Daemon]]]:
    """One LAN: a server running the whole stack, and a daemon per name in ``robots`` (nothing set up yet,
    hosts files bound over /etc/hosts). Everything is stopped and removed afterwards, also on failure."""
    server, *robot_hosts = lab.lan(1 + len(robots), labels=["server", *robots])
    stack = ControlStack.start(lab, server, websetup_in_dashboard=websetup_in_dashboard)
    daemons: list[Daemon] = []
    folders: list[Path] = []
    try:
        daemons = start_daemons(robot_hosts, list(robots))
        folders = [bind_hosts_file(daemon) for daemon in daemons]
        yield stack, daemons
    finally:
        for daemon in daemons:
            daemon.stop()
            daemon.remove_files()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        stack.close()
