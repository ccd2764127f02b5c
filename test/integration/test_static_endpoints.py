"""A static endpoint (WireGuard's ``Endpoint``) with no base server: a robot behind a port-restricted NAT
reaches a robot on a routed network by its address alone, keeps it across a restart, and forgets it when
removed."""

from __future__ import annotations

import pytest

from husarnet_ros.testing.lab_daemon import whitelist_each_other
from husarnet_ros.testing.natlab import NatKind, NatLab
from husarnet_ros.testing.netlab import Lab

from .conftest import DaemonFactory

pytestmark = pytest.mark.usefixtures("setup_accounts")

WAIT_S = 20  # bound of the waits that must succeed; never reached when nothing is wrong


def test_static_endpoint_reaches_a_routed_robot_across_a_nat_and_is_kept_and_removed(
    lab: Lab, daemon_factory: DaemonFactory
) -> None:
    net = NatLab(lab)
    site_b = net.site("b", NatKind.NONE)  # routed: B's own address is reachable from the internet
    site_a = net.site("a", NatKind.PORT_RESTRICTED)
    host_a, host_b = site_a.robots[0], site_b.robots[0]
    a = daemon_factory(
        host_a, "robot-a", start=False, extra_args=["--discovery-networks", site_a.lan_network]
    )
    b = daemon_factory(
        host_b, "robot-b", start=False, extra_args=["--discovery-networks", site_b.lan_network]
    )
    for daemon in (a, b):
        daemon.start(wait_ready=False)
    for daemon in (a, b):
        daemon.wait_ready()
    whitelist_each_other([a, b])
    b_address = b.address

    # No base server, no shared LAN: nothing tells either robot where the other is.
    assert a.cli("wait", "peer", b_address, "--timeout", "2", check=False).returncode == 1

    endpoint = f"{host_b.ipv4}:5582"
    added = a.cli("endpoint", "add", b_address, endpoint)
    assert added.stdout.strip() == f"added static endpoint {endpoint} of peer {b_address}"
    a.wait_peer(b_address, timeout=WAIT_S)
    entry = a.wait_path(b_address, "direct", timeout=WAIT_S)
    assert entry["endpoint"] == endpoint
    assert host_a.ping6(b_address, count=3, interval=0.2, deadline=5).ok
    # B answers through A's NAT at the endpoint it saw A's handshake come from (A's router).
    assert b.wait_path(a.address, "direct", timeout=WAIT_S)["endpoint"].startswith(f"{site_a.wan_ipv4}:")

    # Saved: after a restart A reaches B again with nothing given.
    a.restart()
    assert a.json("endpoint", "ls") == [{"address": b_address, "endpoint": endpoint}]
    a.wait_peer(b_address, timeout=WAIT_S)
    assert host_a.ping6(b_address, count=3, interval=0.2, deadline=5).ok

    assert a.json("endpoint", "rm", b_address, endpoint) == []
    assert a.json("endpoint", "ls") == []
