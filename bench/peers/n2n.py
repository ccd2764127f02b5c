"""n2n (Debian's 1.3: ``edge``, ``supernode``) at its defaults: a TAP interface, MTU 1400, its default cipher.

The supernode runs in the server's namespace on UDP 7654; both edges register with it (the server's edge
through its own underlay address) and then talk to each other. Inner 198.19.4.0/24: client .1, server .2.
The supernode's CPU counts as the tunnel's: it forwards packets until the edges reach each other directly.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from tunnels import (
    Tunnel,
    inner_address,
    process_tunnel,
    spawn,
)

from husarnet_ros.testing.netlab import Host, Lab

TUNNEL_INDEX = 4
INTERFACE = "n2n0"
SUPERNODE_PORT = 7654
COMMUNITY = "bench"


def n2n(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
    inner = [inner_address(TUNNEL_INDEX, 1), inner_address(TUNNEL_INDEX, 2)]
    logdir = workdir / "n2n"
    logdir.mkdir()
    # The key goes through the environment (N2N_KEY), not the command line that ps shows.
    env = os.environ | {"N2N_KEY": secrets.token_hex(16)}
    supernode_at = f"{server.ipv4}:{SUPERNODE_PORT}"
    logs = [logdir / name for name in ("edge-client.log", "edge-server.log", "supernode.log")]
    started_at = time.time()
    supernode = spawn(server, ["supernode", "-l", str(SUPERNODE_PORT)], logs[2])
    edges = [
        spawn(
            host, ["edge", "-d", INTERFACE, "-a", address, "-c", COMMUNITY, "-l", supernode_at], log, env=env
        )
        for host, address, log in ((server, inner[1], logs[1]), (client, inner[0], logs[0]))
    ]
    processes = [edges[1], edges[0], supernode]  # client edge, server edge, supernode
    return process_tunnel(
        "n2n",
        client,
        inner[1],
        INTERFACE,
        processes,
        logs,
        started_at,
        ["edge", "-h"],
        details={"supernode_pid_index": 2},
    )
