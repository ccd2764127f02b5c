"""nebula at its defaults (MTU 1300, its default cipher), the server being the lighthouse.

A CA and one certificate per end come from ``nebula-cert``. Inner 198.19.3.0/24: the client is .1, the
server (lighthouse, UDP 4242) .2; the client finds it through ``static_host_map``. The firewall lets
everything through both ways (nebula's example config allows only ICMP in), so iperf3 can connect.
Configs are written as JSON, which nebula's YAML reader takes as it is.
"""

from __future__ import annotations

import json
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

TUNNEL_INDEX = 3
INTERFACE = "nebula0"
LIGHTHOUSE_PORT = 4242
NAMES = ("client", "server")
ALLOW_ALL = [{"port": "any", "proto": "any", "host": "any"}]


def nebula(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
    hosts = (client, server)
    inner = [inner_address(TUNNEL_INDEX, 1), inner_address(TUNNEL_INDEX, 2)]
    confdir = workdir / "nebula"
    confdir.mkdir()
    ca_crt, ca_key = confdir / "ca.crt", confdir / "ca.key"
    run_command(
        [
            "nebula-cert",
            "ca",
            "-name",
            f"bench {lab.prefix}",
            "-out-crt",
            str(ca_crt),
            "-out-key",
            str(ca_key),
        ]
    )
    configs = []
    for i, name in enumerate(NAMES):
        crt, key = confdir / f"{name}.crt", confdir / f"{name}.key"
        run_command(
            ["nebula-cert", "sign", "-ca-crt", str(ca_crt), "-ca-key", str(ca_key), "-name", name,
             "-ip", f"{inner[i]}/24", "-out-crt", str(crt), "-out-key", str(key)]
        )  # fmt: skip
        config = _config(
            ca_crt, crt, key, lighthouse=hosts[i] is server, lighthouse_inner=inner[1], server=server
        )
        path = confdir / f"{name}.yml"
        atomic_write_text(path, json.dumps(config, indent=2) + "\n")
        configs.append(path)
    logs = [confdir / f"{name}.log" for name in NAMES]
    started_at = time.time()
    server_process = spawn(server, ["nebula", "-config", str(configs[1])], logs[1])  # the lighthouse first
    ordered = [spawn(client, ["nebula", "-config", str(configs[0])], logs[0]), server_process]
    return process_tunnel(
        "nebula", client, inner[1], INTERFACE, ordered, logs, started_at, ["nebula", "-version"]
    )


def _config(
    ca: Path, crt: Path, key: Path, *, lighthouse: bool, lighthouse_inner: str, server: Host
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "pki": {"ca": str(ca), "cert": str(crt), "key": str(key)},
        "listen": {"host": "0.0.0.0", "port": LIGHTHOUSE_PORT if lighthouse else 0},
        "tun": {"dev": INTERFACE},
        "logging": {"level": "info"},
        "firewall": {"outbound": ALLOW_ALL, "inbound": ALLOW_ALL},
    }
    if lighthouse:
        config["lighthouse"] = {"am_lighthouse": True}
    else:
        config["static_host_map"] = {lighthouse_inner: [f"{server.ipv4}:{LIGHTHOUSE_PORT}"]}
        config["lighthouse"] = {"am_lighthouse": False, "hosts": [lighthouse_inner]}
    return config
