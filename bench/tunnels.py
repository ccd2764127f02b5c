"""The paths the benchmark compares, each set up between the same two lab namespaces.

* raw veth — the underlay itself, no tunnel process;
* wireguard-go — Debian's userspace WireGuard, inner addresses 198.19.0.1/.2;
* husarnet_ros — the overlay daemon, fc94 addresses.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from husarnet_ros.fileio import atomic_write_text
from husarnet_ros.testing.lab_daemon import Daemon
from husarnet_ros.testing.netlab import Host, Lab, LabError

WIREGUARD_PORT = 51820
WIREGUARD_INNER = ("198.19.0.1", "198.19.0.2")  # inside 198.18.0.0/15, apart from the underlay /24
PATH_UP_TIMEOUT = 20.0


@dataclass
class Tunnel:
    """A way from client to server: the address to reach the server by and the processes doing the work."""

    name: str
    server_address: str
    interface: str
    tunnel_pids: list[int] = field(default_factory=list)
    mtu: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # setup phases, seconds
    stop: Callable[[], None] = lambda: None


def interface_mtu(host: Host, ifname: str) -> int:
    return int(json.loads(host.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0]["mtu"])


def wait_reachable(client: Host, address: str, what: str) -> None:
    """Ping until the path answers (the first packets may trigger a handshake); bounded."""
    deadline = time.monotonic() + PATH_UP_TIMEOUT
    while not client.ping(address, 1, deadline=1).ok:
        if time.monotonic() >= deadline:
            raise LabError(f"{what}: {address} does not answer pings from {client.netns}")


def raw_veth(client: Host, server: Host) -> Tunnel:
    return Tunnel("raw veth", server.ipv4, client.ifname, mtu=interface_mtu(client, client.ifname))


def wireguard_go(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
    """A wireguard-go tunnel between ``client`` and ``server`` over their underlay IPv4 addresses."""
    hosts = (client, server)
    # Interface names are unique per run: wireguard-go's control sockets live in the shared
    # /var/run/wireguard, whatever the namespace.
    names = [f"{lab.prefix}w{i}" for i in range(2)]
    keys = []
    for host in hosts:
        private = host.run(["wg", "genkey"]).stdout.strip()
        public = host.run(["wg", "pubkey"], input=private + "\n").stdout.strip()
        keys.append((private, public))
    env = os.environ | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
    processes = []
    for host, name in zip(hosts, names, strict=True):
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 (the child keeps it)
        processes.append(host.popen(["wireguard-go", name], env=env, stdout=log, stderr=subprocess.STDOUT))
        host.wait_interface(name)
    for i, (host, name) in enumerate(zip(hosts, names, strict=True)):
        peer = hosts[1 - i]
        key_file = workdir / f"{name}.key"
        atomic_write_text(key_file, keys[i][0] + "\n", mode=0o600)
        host.run(
            ["wg", "set", name, "listen-port", str(WIREGUARD_PORT), "private-key", str(key_file),
             "peer", keys[1 - i][1], "allowed-ips", f"{WIREGUARD_INNER[1 - i]}/32",
             "endpoint", f"{peer.ipv4}:{WIREGUARD_PORT}"]
        )  # fmt: skip
        host.run(["ip", "addr", "add", f"{WIREGUARD_INNER[i]}/24", "dev", name])
        host.run(["ip", "link", "set", name, "up"])
    wait_reachable(client, WIREGUARD_INNER[1], "wireguard-go")
    version = client.run(["wireguard-go", "--version"], check=False).stdout.strip()

    def stop() -> None:
        for process in processes:
            Lab.stop_process(process)

    return Tunnel(
        "wireguard-go",
        WIREGUARD_INNER[1],
        names[0],
        tunnel_pids=[process.pid for process in processes],
        mtu=interface_mtu(client, names[0]),
        versions={"wireguard-go": version},
        stop=stop,
    )


def husarnet_ros_overlay(client: Host, server: Host) -> Tunnel:
    """One husarnet-ros daemon per namespace, whitelisting each other, found by LAN discovery."""
    daemons = [Daemon.create(host, f"bench-{tag}") for host, tag in ((client, "a"), (server, "b"))]
    try:
        started = time.monotonic()
        for daemon in daemons:
            daemon.start(wait_ready=False)
        for daemon in daemons:
            daemon.wait_ready()
        ready = time.monotonic()
        addresses = [daemon.address for daemon in daemons]
        daemons[0].whitelist_add(addresses[1])
        daemons[1].whitelist_add(addresses[0])
        daemons[0].wait_peer(addresses[1], timeout=PATH_UP_TIMEOUT)
        wait_reachable(client, addresses[1], "husarnet_ros overlay")
        timings = {"daemons_ready_s": ready - started, "whitelisted_to_reachable_s": time.monotonic() - ready}
    except Exception:
        for daemon in daemons:
            print(f"--- log of {daemon.hostname} ({daemon.log_path}):\n{daemon.log_tail(40)}")
            daemon.stop()
        raise

    def stop() -> None:
        for daemon in daemons:
            daemon.stop()
            daemon.remove_files()

    return Tunnel(
        "husarnet_ros",
        addresses[1],
        daemons[0].interface,
        tunnel_pids=[daemon.pid for daemon in daemons],
        mtu=interface_mtu(client, daemons[0].interface),
        timings=timings,
        stop=stop,
    )


def make_workdir(lab: Lab) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-bench-", dir="/tmp"))
