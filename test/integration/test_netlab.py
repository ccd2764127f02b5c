"""Tests of the network-namespace lab itself: reachability, multicast, filtering, cleanup."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from husarnet_ros.core.constants import DISCOVERY_GROUP_V4, DISCOVERY_GROUP_V6, DISCOVERY_PORT
from husarnet_ros.testing.lab_daemon import Daemon
from husarnet_ros.testing.netlab import (
    OWNER_DIR,
    Host,
    Lab,
    LabError,
    cleanup_stale,
    list_netns,
    stale_prefixes,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TEST_PORT = 5599  # not the discovery port, so drop_multicast() drops it

# A tiny multicast endpoint: `recv GROUP PORT TIMEOUT` prints "ready", then "got <text>" or "timeout";
# `send GROUP PORT TEXT COUNT` sends COUNT datagrams 50 ms apart. Runs inside a lab namespace.
MULTICAST_SCRIPT = r"""
import socket, struct, sys, time
mode, group, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
v6 = ":" in group
ifindex = socket.if_nametoindex("eth0")
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if mode == "recv":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if v6 else "", port))
    if v6:
        mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", ifindex)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    else:
        mreq = struct.pack("=4sii", socket.inet_aton(group), 0, ifindex)  # struct ip_mreqn
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print("ready", flush=True)
    s.settimeout(float(sys.argv[4]))
    try:
        data, _ = s.recvfrom(1500)
        print("got", data.decode(), flush=True)
    except socket.timeout:
        print("timeout", flush=True)
else:
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        dest = (group, port, 0, ifindex)
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=4sii", b"\0" * 4, 0, ifindex))
        dest = (group, port)
    for _ in range(int(sys.argv[5])):
        s.sendto(sys.argv[4].encode(), dest)
        time.sleep(0.05)
"""


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""


def multicast_delivery(sender: Host, receivers: list[Host], group: str, port: int) -> dict[str, str]:
    """Send a few datagrams from ``sender`` to ``group``; returns receiver label -> what it printed."""
    listeners = {
        host.label: host.popen(
            [sys.executable, "-c", MULTICAST_SCRIPT, "recv", group, str(port), "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for host in receivers
    }
    for label, process in listeners.items():
        assert _readline(process, 10.0) == "ready", f"receiver on {label} did not start"
    sender.run(
        [sys.executable, "-c", MULTICAST_SCRIPT, "send", group, str(port), f"from-{sender.label}", "10"]
    )
    return {label: _readline(process, 10.0) for label, process in listeners.items()}


def test_lan_hosts_reach_each_other_over_v4_v6_and_link_local(lab: Lab) -> None:
    hosts = lab.lan(3)
    assert [h.ipv4 for h in hosts] == ["198.18.0.10", "198.18.0.11", "198.18.0.12"]
    assert [h.ipv6 for h in hosts] == ["fd00:98::a", "fd00:98::b", "fd00:98::c"]
    for source in hosts:
        for target in hosts:
            if target is source:
                continue
            assert source.ping(target.ipv4, 2).ok, f"{source.label} -> {target.ipv4}"
            assert source.ping6(target.ipv6, 2).ok, f"{source.label} -> {target.ipv6}"
            assert source.ping6(target.link_local(), 2).ok, f"{source.label} -> link-local of {target.label}"


def test_lan_bridge_floods_multicast(lab: Lab) -> None:
    lab.lan(2)
    assert lab.multicast_snooping(lab.switches[0]) is False


@pytest.mark.parametrize("group", [DISCOVERY_GROUP_V4, DISCOVERY_GROUP_V6], ids=["ipv4", "ipv6"])
def test_multicast_from_one_host_reaches_the_others(lab: Lab, group: str) -> None:
    a, b, c = lab.lan(3, labels=["a", "b", "c"])
    received = multicast_delivery(a, [b, c], group, TEST_PORT)
    assert received == {"b": "got from-a", "c": "got from-a"}


def test_drop_multicast_drops_and_counts_but_keeps_discovery_and_unicast(lab: Lab) -> None:
    a, b, c = lab.lan(3, labels=["a", "b", "c"])
    b.drop_multicast()
    assert b.multicast_drop_count() == 0

    received = multicast_delivery(a, [b, c], DISCOVERY_GROUP_V4, TEST_PORT)
    assert received == {"b": "timeout", "c": "got from-a"}
    assert b.multicast_drop_count() > 0

    discovery = multicast_delivery(a, [b], DISCOVERY_GROUP_V4, DISCOVERY_PORT)
    assert discovery == {"b": "got from-a"}
    assert a.ping6(b.ipv6, 2).ok  # neighbour discovery (ICMPv6 multicast) still works
    assert a.ping(b.ipv4, 2).ok

    b.allow_multicast()
    assert multicast_delivery(a, [b], DISCOVERY_GROUP_V4, TEST_PORT) == {"b": "got from-a"}


def test_pair_is_a_direct_veth(lab: Lab) -> None:
    a, b = lab.pair()
    assert a.ping(b.ipv4, 2).ok
    assert b.ping6(a.ipv6, 2).ok
    link = json.loads(a.run(["ip", "-j", "-d", "link", "show", "dev", "eth0"]).stdout)[0]
    assert link["linkinfo"]["info_kind"] == "veth"


def test_close_removes_namespaces_processes_and_owner_file() -> None:
    with Lab() as lab:
        hosts = lab.lan(2)
        lab.pair()
        sleeper = hosts[0].popen(["sleep", "300"])
        # A process the lab did not start itself but that lives in its namespace.
        hosts[1].run(["sh", "-c", "sleep 300 >/dev/null 2>&1 &"])
        stray = hosts[1].run(["ip", "netns", "pids", hosts[1].netns]).stdout.split()
        assert stray
        namespaces = list(lab.namespaces)
        assert set(namespaces) <= set(list_netns())
    assert not set(namespaces) & set(list_netns())
    assert sleeper.poll() is not None
    assert all(not Path(f"/proc/{pid}").exists() for pid in stray)
    assert not (OWNER_DIR / lab.prefix).exists()


def test_close_runs_when_the_body_fails() -> None:
    lab = Lab()

    def build_then_fail() -> None:
        with lab:
            lab.lan(2)
            raise RuntimeError("test body failed")

    with pytest.raises(RuntimeError):
        build_then_fail()
    assert not [name for name in list_netns() if name.startswith(lab.prefix)]


def test_cleanup_stale_removes_crashed_runs_only() -> None:
    crashed = Lab()
    crashed.lan(1)
    # Pretend the owner died: an exited process's PID with a start time that cannot match.
    gone = subprocess.run(["true"], check=True)
    assert gone.returncode == 0
    (OWNER_DIR / crashed.prefix).write_text(json.dumps({"pid": 2**22 + 1, "start_time": "0"}))
    with Lab() as alive:
        alive.lan(1)
        assert crashed.prefix in stale_prefixes()
        assert alive.prefix not in stale_prefixes()
        assert crashed.prefix in cleanup_stale()
        remaining = list_netns()
        assert not [name for name in remaining if name.startswith(crashed.prefix)]
        assert [name for name in remaining if name.startswith(alive.prefix)]
    crashed.close()  # nothing left to do, and no error


def test_bad_prefix_is_refused() -> None:
    with pytest.raises(LabError):
        Lab(prefix="robot")


def test_waits_are_bounded(lab: Lab) -> None:
    (host,) = lab.lan(1)
    with pytest.raises(LabError):
        host.wait_interface("nosuchif0", timeout=0.5)
    assert host.ping("198.18.0.99", 1, deadline=1).received == 0


def test_daemon_handle_runs_a_daemon_in_a_namespace(lab: Lab, daemon_factory: Callable[..., Daemon]) -> None:
    (host,) = lab.lan(1, labels=["robot-a"])
    daemon = daemon_factory(host, "robot-a")
    me = daemon.whoami()
    assert me["hostname"] == "robot-a"
    assert me["address"].startswith("fc94:")
    assert host.interface_exists("hnet0")
    first_address = me["address"]
    daemon.restart()
    assert daemon.address == first_address  # same state dir, same identity
    assert daemon.stop() is not None
    assert not daemon.running
