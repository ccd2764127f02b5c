"""tinc 1.0 (``tincd``) at its defaults: router mode, RSA keys, its default cipher and digest.

Inner 198.19.2.0/24: the client is .1, the server .2 (its host file carries the underlay address, the
client's ``ConnectTo`` names it). Each end's ``tinc-up`` script gives the interface its address.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tunnels import (
    Tunnel,
    inner_address,
    process_tunnel,
    spawn,
)

from husarnet_ros.fileio import atomic_write_text
from husarnet_ros.testing.netlab import Host, Lab, run_command

TUNNEL_INDEX = 2
INTERFACE = "tinc0"
NAMES = ("client", "server")


def tinc(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
    hosts = (client, server)
    inner = [inner_address(TUNNEL_INDEX, 1), inner_address(TUNNEL_INDEX, 2)]
    confdirs = [workdir / f"tinc-{name}" for name in NAMES]
    for i, confdir in enumerate(confdirs):
        (confdir / "hosts").mkdir(parents=True)
        lines = [f"Name = {NAMES[i]}", f"Interface = {INTERFACE}"]
        if hosts[i] is client:
            lines.append(f"ConnectTo = {NAMES[1]}")
        atomic_write_text(confdir / "tinc.conf", "\n".join(lines) + "\n")
        up = f'#!/bin/sh\nip addr add {inner[i]}/24 dev "$INTERFACE"\nip link set "$INTERFACE" up\n'
        atomic_write_text(confdir / "tinc-up", up, mode=0o755)
        own = [f"Subnet = {inner[i]}/32"]
        if hosts[i] is server:
            own.insert(0, f"Address = {server.ipv4}")
        atomic_write_text(confdir / "hosts" / NAMES[i], "\n".join(own) + "\n")
        # Key generation (RSA, tinc's default size) appends the public key to hosts/<own name>.
        run_command(["tincd", "--config", str(confdir), "--generate-keys"], input="")
    for i, confdir in enumerate(confdirs):
        other = NAMES[1 - i]
        atomic_write_text(confdir / "hosts" / other, (confdirs[1 - i] / "hosts" / other).read_text())
    logs = [confdir / "tincd.log" for confdir in confdirs]
    started_at = time.time()

    def start(i: int) -> subprocess.Popen[Any]:
        argv = [
            "tincd",
            "--config",
            str(confdirs[i]),
            "--no-detach",
            f"--pidfile={confdirs[i] / 'tincd.pid'}",
        ]
        return spawn(hosts[i], argv, logs[i])

    # The server first (as in the other paths), so that it is usually listening when the client first
    # connects: tinc waits seconds before it tries a refused connection again.
    server_process = start(1)
    ordered = [start(0), server_process]
    return process_tunnel(
        "tinc", client, inner[1], INTERFACE, ordered, logs, started_at, ["tincd", "--version"]
    )
