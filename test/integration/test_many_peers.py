"""One daemon and many peers at once: each gets a session of its own, and each one's packets through the
daemon's TUN are answered. The peers are simulated (``husarnet_ros.testing.swarm``: sans-IO nodes with their
own identities, addresses and sockets, in a second namespace)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.core.address import format_address
from husarnet_ros.core.constants import DEFAULT_UDP_PORT
from husarnet_ros.core.identity import Identity
from husarnet_ros.core.whitelist import Whitelist
from husarnet_ros.daemon.state import StateDir
from husarnet_ros.testing.lab_daemon import husarnet_ros_env
from husarnet_ros.testing.netlab import Lab
from husarnet_ros.testing.swarm import SwarmProcess, add_peer_addresses

pytestmark = pytest.mark.integration

PEERS = 16


def test_one_daemon_keeps_a_working_session_with_each_of_many_peers(
    lab: Lab, daemon_factory: Any, tmp_path: Path
) -> None:
    host, swarm_host = lab.lan(2, ["robot-a", "swarm"])
    daemon = daemon_factory(host, "robot-a", start=False)
    own = Identity.generate()
    peers = [Identity.generate() for _ in range(PEERS)]
    state = StateDir(daemon.state_dir)
    state.save_identity(own)
    state.save_whitelist(Whitelist(peer.address for peer in peers))
    daemon.start()
    add_peer_addresses(swarm_host, PEERS)
    swarm = SwarmProcess(
        swarm_host, tmp_path, peers, own.address, f"{host.ipv4}:{DEFAULT_UDP_PORT}", husarnet_ros_env(), 60
    )
    try:
        stats = swarm.read_until(lambda s: s["sessions"] == PEERS and s["answered"] == PEERS, 40)
        status = daemon.status()
    finally:
        swarm.stop()
    assert stats["peers"] == PEERS
    direct = {entry["address"] for entry in status["peers"] if entry["path"] == "direct"}
    assert direct == {format_address(peer.address) for peer in peers}
