"""The paths the benchmark compares, each set up between the two namespaces of a fresh lab pair.

* raw veth — the underlay itself, no tunnel process;
* wireguard-go — Debian's userspace WireGuard, inner 198.19.0.1/.2, its default MTU (1420);
* wireguard-go MTU 9000 — the same with a 9000-byte tunnel MTU (the veth raised to fit the outer packets);
* husarnet_ros — the overlay daemon, fc94 addresses, each end's whitelist holding the other before it starts.

tinc, nebula and n2n live in ``peers``. Every setup function starts the tunnel's processes and returns
once the server answers a ping through it, with ``startup_s`` = seconds from starting the first process
to that first answer (configuration files and keys are made before, like a robot that is already set up).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from measure import first_reply

from husarnet_ros.core.constants import DEFAULT_UDP_PORT
from husarnet_ros.core.whitelist import Whitelist
from husarnet_ros.daemon.state import StateDir
from husarnet_ros.fileio import atomic_write_text
from husarnet_ros.testing.lab_base import LabBaseServer
from husarnet_ros.testing.lab_daemon import Daemon
from husarnet_ros.testing.netlab import Host, Lab, LabError, wait_until

WIREGUARD_PORT = 51820
PATH_UP_TIMEOUT = 30.0
JUMBO_MTU = 9000
# Outer headers of a WireGuard packet over IPv4: IP 20 + UDP 8 + WireGuard 32; the veth gets some slack.
JUMBO_UNDERLAY_MTU = JUMBO_MTU + 100


@dataclass
class Tunnel:
    """A way from client to server: the address to reach the server by and the processes doing the work."""

    name: str
    server_address: str
    interface: str
    tunnel_pids: list[int] = field(default_factory=list)
    mtu: int | None = None
    startup_s: float | None = None  # starting the processes -> first ping answered through the tunnel
    versions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # what else a path reports about itself
    stop: Callable[[], None] = lambda: None
    # The tunnel's own view of itself now, per end: counters, handshake times (bench/rekey.py).
    snapshot: Callable[[], dict[str, Any]] = dict


def interface_mtu(host: Host, ifname: str) -> int:
    return int(json.loads(host.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0]["mtu"])


def inner_address(tunnel_index: int, host_index: int) -> str:
    """Inner IPv4 address of host 1 (client) or 2 (server) in tunnel N's own 198.19.N.0/24."""
    return f"198.19.{tunnel_index}.{host_index}"


def spawn(
    host: Host, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[Any]:
    """Start ``argv`` in ``host``'s namespace with its output in ``log``; the lab stops it on cleanup."""
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return host.popen(
            list(argv), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def processes_alive(processes: Sequence[subprocess.Popen[Any]], logs: Sequence[Path]) -> Callable[[], None]:
    """A check that raises, with the logs' tails, once one of ``processes`` has exited."""

    def check() -> None:
        for process in processes:
            if process.poll() is not None:
                tails = "\n".join(f"--- {log}:\n{log_tail(log)}" for log in logs)
                raise LabError(f"{process.args!r} exited with {process.returncode}\n{tails}")

    return check


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_started(
    client: Host, address: str, started_at: float, what: str, check: Callable[[], None] | None = None
) -> float:
    """Seconds from ``started_at`` (``time.time()``) to the first answered ping; raises if processes die."""
    return first_reply(client, address, started_at, PATH_UP_TIMEOUT, check=check, what=what)


def stopper(processes: Sequence[subprocess.Popen[Any]]) -> Callable[[], None]:
    def stop() -> None:
        for process in processes:
            Lab.stop_process(process)

    return stop


def process_tunnel(
    name: str,
    client: Host,
    server_address: str,
    interface: str,
    processes: Sequence[subprocess.Popen[Any]],
    logs: Sequence[Path],
    started_at: float,
    version_argv: list[str],
    details: dict[str, Any] | None = None,
) -> Tunnel:
    """The Tunnel of a peer made of ``processes`` started at ``started_at``, once the first ping through it is
    answered (its start-up time); stops them if it never is."""
    try:
        startup = wait_started(client, server_address, started_at, name, processes_alive(processes, logs))
    except Exception:
        stopper(processes)()
        raise
    return Tunnel(
        name,
        server_address,
        interface,
        tunnel_pids=[process.pid for process in processes],
        mtu=interface_mtu(client, interface),
        startup_s=startup,
        versions={name: tool_version(version_argv)},
        details=details or {},
        stop=stopper(processes),
    )


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


# --- the paths ------------------------------------------------------------------------------------------


def raw_veth(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
    return Tunnel(
        "raw veth", server.ipv4, client.ifname, mtu=interface_mtu(client, client.ifname), startup_s=None
    )


def wireguard_go(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
    """wireguard-go at its defaults (MTU 1420) over the underlay IPv4 addresses, inner 198.19.0.0/24."""
    return _wireguard_go("wireguard-go", 0, lab, client, server, workdir, mtu=None)


def set_underlay_mtu(hosts: Sequence[Host], mtu: int) -> None:
    """The MTU of each host's end of the lab's veth."""
    for host in hosts:
        host.run(["ip", "link", "set", "dev", host.ifname, "mtu", str(mtu)])


def wireguard_go_jumbo(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
    """wireguard-go with a 9000-byte tunnel MTU, inner 198.19.1.0/24; the veth carries 9100-byte frames.

    The lab is this path's own, so the larger veth MTU lasts only for this measurement.
    """
    set_underlay_mtu((client, server), JUMBO_UNDERLAY_MTU)
    tunnel = _wireguard_go("wireguard-go MTU 9000", 1, lab, client, server, workdir, mtu=JUMBO_MTU)
    tunnel.details["underlay_mtu"] = JUMBO_UNDERLAY_MTU
    return tunnel


def husarnet_ros_jumbo(
    lab: Lab, client: Host, server: Host, workdir: Path, daemon_args: Sequence[str] = ()
) -> Tunnel:
    """The husarnet_ros daemons at their defaults on the same jumbo underlay as ``wireguard_go_jumbo`` (veth
    MTU 9100): wireguard-go's 9000-byte figure compared on equal ground. ``hnet0`` keeps its MTU; what the
    larger underlay can change is only the size of the datagrams the daemons find the path to carry."""
    set_underlay_mtu((client, server), JUMBO_UNDERLAY_MTU)
    tunnel = husarnet_ros_overlay(lab, client, server, workdir, daemon_args)
    tunnel.name = "husarnet_ros jumbo underlay"
    tunnel.details["underlay_mtu"] = JUMBO_UNDERLAY_MTU
    return tunnel


def _wireguard_go(
    label: str, index: int, lab: Lab, client: Host, server: Host, workdir: Path, mtu: int | None
) -> Tunnel:
    hosts = (client, server)
    inner = [inner_address(index, 1), inner_address(index, 2)]
    # Interface names are unique per run: wireguard-go's control sockets live in the shared
    # /var/run/wireguard, whatever the namespace.
    names = [f"{lab.prefix}w{i}" for i in range(2)]
    keys = []
    for host, name in zip(hosts, names, strict=True):
        private = host.run(["wg", "genkey"]).stdout.strip()
        public = host.run(["wg", "pubkey"], input=private + "\n").stdout.strip()
        atomic_write_text(workdir / f"{name}.key", private + "\n", mode=0o600)
        keys.append(public)
    env = os.environ | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
    logs = [workdir / f"{name}.log" for name in names]
    started_at = time.time()
    processes = [
        spawn(host, ["wireguard-go", name], log, env=env)
        for host, name, log in zip(hosts, names, logs, strict=True)
    ]
    try:
        for i, (host, name) in enumerate(zip(hosts, names, strict=True)):
            # Polled finely: the poll's step would otherwise show in the start-up time.
            wait_until(
                partial(host.interface_exists, name), 10.0, interval=0.01, what=f"{name} in {host.netns}"
            )
            peer, key = hosts[1 - i], workdir / f"{name}.key"
            host.run(
                ["wg", "set", name, "listen-port", str(WIREGUARD_PORT), "private-key", str(key),
                 "peer", keys[1 - i], "allowed-ips", f"{inner[1 - i]}/32",
                 "endpoint", f"{peer.ipv4}:{WIREGUARD_PORT}"]
            )  # fmt: skip
            host.run(["ip", "addr", "add", f"{inner[i]}/24", "dev", name])
            if mtu is not None:
                host.run(["ip", "link", "set", "dev", name, "mtu", str(mtu)])
            host.run(["ip", "link", "set", name, "up"])
        startup = wait_started(client, inner[1], started_at, label, processes_alive(processes, logs))
    except Exception:
        stopper(processes)()
        raise
    return Tunnel(
        label,
        inner[1],
        names[0],
        tunnel_pids=[process.pid for process in processes],
        mtu=interface_mtu(client, names[0]),
        startup_s=startup,
        versions={"wireguard-go": tool_version(["wireguard-go", "--version"])},
        stop=stopper(processes),
        snapshot=lambda: {
            end: wireguard_peer(host, name)
            for end, host, name in zip(("client", "server"), hosts, names, strict=True)
        },
    )


def wireguard_peer(host: Host, interface: str) -> dict[str, Any]:
    """The one peer of a wireguard-go interface as ``wg show dump`` tells it (handshake time, bytes)."""
    lines = host.run(["wg", "show", interface, "dump"]).stdout.splitlines()
    # Line 1 is the interface; each peer line: key, psk, endpoint, allowed-ips, handshake, rx, tx, keepalive.
    fields = lines[1].split("\t") if len(lines) > 1 else []
    if len(fields) < 7:
        return {}
    handshake = int(fields[4])
    return {
        "last_handshake": float(handshake) if handshake else None,
        "rx_bytes": int(fields[5]),
        "tx_bytes": int(fields[6]),
    }


def husarnet_ros_overlay(
    lab: Lab, client: Host, server: Host, workdir: Path, daemon_args: Sequence[str] = ()
) -> Tunnel:
    """One husarnet-ros daemon per namespace, each already whitelisting the other, found by LAN discovery."""
    daemons = [
        Daemon.create(host, f"bench-{tag}", extra_args=list(daemon_args))
        for host, tag in ((client, "a"), (server, "b"))
    ]
    addresses = [_prepare_state(daemon) for daemon in daemons]
    for daemon, other in ((daemons[0], addresses[1]), (daemons[1], addresses[0])):
        StateDir(daemon.state_dir).save_whitelist(Whitelist([other.packed]))

    def check() -> None:
        for daemon in daemons:
            if not daemon.running:
                raise LabError(f"daemon {daemon.hostname} exited:\n{daemon.log_tail(40)}")

    try:
        started_at = time.time()
        for daemon in daemons:
            daemon.start(wait_ready=False)
        startup = wait_started(client, str(addresses[1]), started_at, "husarnet_ros", check)
        for daemon in daemons:
            daemon.wait_ready()
        status = daemons[0].status()
    except Exception:
        for daemon in daemons:
            print(
                f"--- log of {daemon.hostname} ({daemon.log_path}):\n{daemon.log_tail(40)}", file=sys.stderr
            )
            daemon.stop()
            daemon.remove_files()
        raise

    def stop() -> None:
        for daemon in daemons:
            daemon.stop()
            daemon.remove_files()

    return Tunnel(
        "husarnet_ros",
        str(addresses[1]),
        daemons[0].interface,
        tunnel_pids=[daemon.pid for daemon in daemons],
        mtu=interface_mtu(client, daemons[0].interface),
        startup_s=startup,
        versions={"husarnet_ros": str(status.get("version"))},
        details={"dataplane": status.get("dataplane"), "daemon_args": list(daemon_args)},
        stop=stop,
        snapshot=lambda: {
            end: _daemon_view(daemon) for end, daemon in zip(("client", "server"), daemons, strict=True)
        },
    )


RELAY_BASE_PORT = 5583  # the bench's base server: next to the server's daemon, on another port
_RELAY_TABLE = "bench_relay"


def husarnet_ros_relayed(
    lab: Lab,
    client: Host,
    server: Host,
    workdir: Path,
    daemon_args: Sequence[str] = (),
    *,
    tcp: bool = False,
) -> Tunnel:
    """The same two daemons, but every datagram between them goes through a base server's relay: it runs in
    the server's namespace (the pair has no third host), nftables drops daemon-to-daemon datagrams both
    ways, and discovery is pointed at a network nobody is on, so the base server is the only way. ``tcp``:
    the client cannot reach the base over UDP either, so its side of the relay runs over TCP."""
    base = LabBaseServer.start(server, RELAY_BASE_PORT)
    rules = [
        (client, f"udp dport {DEFAULT_UDP_PORT} ip daddr {server.ipv4} drop"),
        (server, f"udp sport {DEFAULT_UDP_PORT} udp dport {DEFAULT_UDP_PORT} drop"),
    ]
    if tcp:
        rules.append((client, f"udp dport {RELAY_BASE_PORT} drop"))
    for host in (client, server):
        lines = "\n ".join(rule for owner, rule in rules if owner is host)
        chain = f"chain out {{\n type filter hook output priority 0;\n {lines}\n}}"
        host.run(["nft", "-f", "-"], input=f"table inet {_RELAY_TABLE} {{\n{chain}\n}}\n")
    args = [*daemon_args, "--base-server", base.address, "--discovery-networks", "198.19.255.0/24"]
    try:
        tunnel = husarnet_ros_overlay(lab, client, server, workdir, args)
    except Exception:
        base.stop()
        base.remove_files()
        raise
    path = (tunnel.snapshot()["client"]["peer"] or {}).get("path")
    transport = _base_transport(tunnel)
    if path != "tunnelled" or transport != ("tcp" if tcp else "udp"):
        tunnel.stop()
        base.stop()
        raise LabError(f"the relayed path is {path!r} over {transport!r}, not what was set up")
    stop_daemons = tunnel.stop

    def stop() -> None:
        stop_daemons()
        base.stop()
        base.remove_files()

    assert base.process is not None
    tunnel.name = "husarnet_ros relayed over TCP" if tcp else "husarnet_ros relayed"
    tunnel.tunnel_pids.append(base.process.pid)  # the relay's CPU counts too
    tunnel.stop = stop
    tunnel.details["base_server"] = base.address
    return tunnel


def _base_transport(tunnel: Tunnel) -> str | None:
    """How the client daemon reaches its base server (udp or tcp), once the TCP fallback settled."""

    def settled() -> str | None:
        base = tunnel.snapshot()["client"].get("base") or {}
        return base.get("transport") if base.get("state") == "registered" else None

    return wait_until(settled, 20.0, interval=0.2, what="the client's base server link")


def _daemon_view(daemon: Daemon) -> dict[str, Any]:
    """The daemon's counters and its one peer's entry (state, last handshake, bytes), from ``status``."""
    status = daemon.status()
    peers = status.get("peers", [])
    return {
        "counters": status.get("counters", {}),
        "peer": peers[0] if peers else None,
        "base": status.get("base"),
    }


def _prepare_state(daemon: Daemon) -> ipaddress.IPv6Address:
    """The daemon's identity, made before it starts (as on a robot already set up); its overlay address."""
    identity = StateDir(daemon.state_dir).load_or_create_identity()
    return ipaddress.IPv6Address(identity.address)


def make_workdir(lab: Lab) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-bench-", dir="/tmp"))
