"""Robots on different networks, behind NATs, through base servers (husarnet_ros/testing/natlab.py).

Each robot is alone on its site's LAN (its discovery networks are that LAN only), so the only way it can
learn where another robot is, is its base servers. What must come out:

* both behind endpoint-independent-mapping NATs (port-restricted or full cone), or one of them full cone:
  a **direct** path, found by hole punching after the base introduced them;
* a symmetric NAT against anything that filters by the remote port: **tunnelled** through the base;
* in every case ``ping -6`` and a checksummed TCP transfer over the fc94 addresses work.

Then the base servers fail: the one in use is killed (clients move to the other within a bounded time,
relayed pairs resume through it, a direct pair's ping stream does not notice), then every base server is
gone (direct links go on), then one comes back empty (soft state: clients register again and relayed pairs
resume). Robots homed on different base servers still reach each other: each registers with every base
server it knows.
"""

from __future__ import annotations

import ipaddress
import itertools
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from husarnet_ros.core.base_client import UDP_RETRY_S
from husarnet_ros.testing.lab_base import LabBaseServer
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other
from husarnet_ros.testing.natlab import NatKind, NatLab, Site, router_ruleset
from husarnet_ros.testing.netlab import Host, Lab, parse_ping, wait_until
from husarnet_ros.testing.outage import ContinuousPing
from husarnet_ros.testing.transfer import tcp_transfer

from .conftest import DaemonFactory

pytestmark = pytest.mark.usefixtures("setup_accounts")

TRANSFER_BYTES = 2_000_000
SETTLE_S = 30.0  # a pair's path settles (relay first, then a punched direct path) well within this
# Failover: hello every 5 s, a base is down after 3 unanswered (1 s each): at most ~8 s plus scheduling.
FAILOVER_BOUND_S = 12.0


@dataclass
class Robot:
    name: str
    site: Site
    host: Host
    daemon: Daemon

    @property
    def address(self) -> str:
        return self.daemon.address


@dataclass
class World:
    lab: Lab
    net: NatLab
    bases: list[LabBaseServer]
    robots: dict[str, Robot]

    def logs(self) -> str:
        parts = [f"--- {r.name} ---\n{r.daemon.log_tail(30)}" for r in self.robots.values()]
        parts += [f"--- base {b.address} ---\n{b.log_tail(10)}" for b in self.bases]
        return "\n".join(parts)


def build(
    lab: Lab,
    daemon_factory: DaemonFactory,
    kinds: dict[str, NatKind],
    bases: int,
    before_start: Callable[[dict[str, Robot], list[LabBaseServer]], None] | None = None,
) -> World:
    net = NatLab(lab)
    servers = [LabBaseServer.start(net.public_host(f"base{i + 1}")) for i in range(bases)]
    robots = {}
    for name, kind in kinds.items():
        site = net.site(name, kind, robots=1)
        host = site.robots[0]
        extra = ["--discovery-networks", site.lan_network]
        for server in servers:
            extra += ["--base-server", server.address]
        daemon = daemon_factory(host, f"robot-{name}", start=False, extra_args=extra)
        robots[name] = Robot(name, site, host, daemon)
    if before_start is not None:
        before_start(robots, servers)
    for robot in robots.values():
        robot.daemon.start(wait_ready=False)
    for robot in robots.values():
        robot.daemon.wait_ready()
    whitelist_each_other([robot.daemon for robot in robots.values()])
    return World(lab, net, servers, robots)


@pytest.fixture
def world_factory(lab: Lab, daemon_factory: DaemonFactory) -> Iterator[list[World]]:
    worlds: list[World] = []
    yield worlds
    for world in worlds:
        for server in world.bases:
            server.stop()
            server.remove_files()


def path_of(a: Robot, b: Robot) -> str | None:
    entry = a.daemon.peer(b.address)
    return None if entry is None else str(entry.get("path"))


def wait_path(a: Robot, b: Robot, path: str, timeout: float = SETTLE_S) -> None:
    wait_until(
        lambda: path_of(a, b) == path and path_of(b, a) == path,
        timeout,
        interval=0.2,
        what=f"{path} path between {a.name} and {b.name}",
    )


def ping_ok(a: Robot, b: Robot, count: int = 3) -> bool:
    return a.host.ping6(b.address, count=count, interval=0.2, deadline=count * 0.2 + 3).ok


def transfer_intact(a: Robot, b: Robot) -> bool:
    outcome = tcp_transfer(a.host, b.host, b.address, total_bytes=TRANSFER_BYTES, seconds=60)
    return all(stream.intact for stream in outcome)


# Endpoint-independent mappings on both sides (or full-cone filtering on one) can be punched; a symmetric NAT
# can only be reached by a full-cone peer, and otherwise needs the relay.
KINDS = {
    "a": NatKind.PORT_RESTRICTED,
    "b": NatKind.PORT_RESTRICTED,
    "c": NatKind.SYMMETRIC,
    "d": NatKind.ENDPOINT_INDEPENDENT,
    "e": NatKind.SYMMETRIC,
    "f": NatKind.UDP_BLOCKED,  # reaches the base over TCP 443 only: tunnelled with everyone
}
EXPECTED = {
    ("a", "b"): "direct",
    ("a", "c"): "tunnelled",
    ("a", "d"): "direct",
    ("a", "e"): "tunnelled",
    ("b", "c"): "tunnelled",
    ("b", "d"): "direct",
    ("b", "e"): "tunnelled",
    ("c", "d"): "direct",
    ("c", "e"): "tunnelled",
    ("d", "e"): "direct",
    ("a", "f"): "tunnelled",
    ("b", "f"): "tunnelled",
    ("c", "f"): "tunnelled",
    ("d", "f"): "tunnelled",
    ("e", "f"): "tunnelled",
}
# One checksummed transfer per pair, except for the TCP-only robot: one of its pairs is enough (they all take
# the same way, robot -> TCP -> base -> UDP -> robot), and each costs seconds.
TRANSFER_PAIRS = {pair for pair in EXPECTED if "f" not in pair} | {("a", "f")}


def test_nat_outcome_matrix(lab: Lab, daemon_factory: DaemonFactory, world_factory: list[World]) -> None:
    world = build(lab, daemon_factory, KINDS, bases=1)
    world_factory.append(world)
    robots = world.robots
    assert set(EXPECTED) == set(itertools.combinations(sorted(KINDS), 2))
    for robot in robots.values():
        robot.daemon.cli("wait", "base", "--timeout", "20", timeout=30)
        base = robot.daemon.status()["base"]
        transport = "tcp" if robot.site.kind is NatKind.UDP_BLOCKED else "udp"
        assert (base["address"], base["transport"], base["state"]) == (
            world.bases[0].address,
            transport,
            "registered",
        )
        # The base saw the router's public side, never the robot's private address.
        assert base["observed_endpoint"].split(":")[0] == robot.site.wan_ipv4
    try:
        # Direct pairs first: once they are direct, the tunnelled ones have had as long to punch, and failed.
        for (x, y), path in sorted(EXPECTED.items(), key=lambda item: item[1] != "direct"):
            wait_path(robots[x], robots[y], path)
        for (x, y), path in EXPECTED.items():
            a, b = robots[x], robots[y]
            assert path_of(a, b) == path == path_of(b, a), (x, y)
            entry = a.daemon.peer(b.address)
            assert entry is not None
            if path == "tunnelled":
                assert entry["base_server"] == world.bases[0].address
                assert entry["endpoint"] is None
            else:
                assert entry["base_server"] is None
                # A punched path goes to the other router's public address, never to a private one.
                assert entry["endpoint"].split(":")[0] == b.site.wan_ipv4
            assert entry["rtt_ms"] is not None
            assert ping_ok(a, b), (x, y)
            if (x, y) in TRANSFER_PAIRS:
                assert transfer_intact(a, b), (x, y)
    except BaseException:
        print(world.logs())
        raise
    status = world.bases[0].status()
    assert status["clients"] == len(KINDS)
    assert status["tcp_connections"] == 1  # the UDP-blocked robot's
    assert status["relayed_bytes"] > TRANSFER_BYTES  # the tunnelled transfers went through it


def test_base_server_failover_and_soft_state(
    lab: Lab, daemon_factory: DaemonFactory, world_factory: list[World]
) -> None:
    kinds = {"a": NatKind.PORT_RESTRICTED, "b": NatKind.PORT_RESTRICTED, "c": NatKind.SYMMETRIC}
    world = build(lab, daemon_factory, kinds, bases=2)
    world_factory.append(world)
    a, b, c = (world.robots[name] for name in "abc")
    try:
        wait_path(a, b, "direct")
        wait_path(a, c, "tunnelled")
        home = a.daemon.status()["base"]["address"]
        used, other = sorted(world.bases, key=lambda server: server.address != home)

        # A ping stream over the direct pair runs across the failure of the base server in use, and one over
        # the relayed pair (its path going dead makes a check the home base at once).
        pinging = a.host.popen(
            ["ping", "-6", "-c", "200", "-i", "0.05", "-W", "1", b.address],
            stdout=subprocess.PIPE,
            text=True,
        )
        relayed = ContinuousPing(a.host, c.address, interval=0.05, seconds=FAILOVER_BOUND_S + 10)
        time.sleep(0.5)
        killed_at = time.monotonic()
        killed_at_wall = time.time()
        used.kill()
        wait_until(
            lambda: a.daemon.status()["base"]["address"] == other.address,
            FAILOVER_BOUND_S,
            interval=0.1,
            what="failover to the second base server",
        )
        failover_s = time.monotonic() - killed_at
        # The relayed pair comes back through the second one.
        wait_until(lambda: ping_ok(a, c, count=1), 10.0, interval=0.1, what="relayed ping through base 2")
        relayed.stop()
        assert relayed.first_reply_after(killed_at_wall + failover_s) is not None
        print(
            f"failover to the second base server after {failover_s:.2f} s; "
            f"relayed traffic's longest gap {relayed.longest_gap():.2f} s"
        )
        assert path_of(a, c) == "tunnelled"
        assert (a.daemon.peer(c.address) or {}).get("base_server") == other.address
        out, _ = pinging.communicate(timeout=30)
        result = parse_ping(out)
        assert result.transmitted == 200
        assert result.received >= 197, out  # no gap beyond a few probes

        # Every base server gone: the direct link goes on, status says so.
        other.kill()
        wait_until(
            lambda: a.daemon.status()["base"]["state"] == "down",
            FAILOVER_BOUND_S,
            interval=0.2,
            what="base state down",
        )
        assert path_of(a, b) == "direct"
        assert ping_ok(a, b, count=10)
        assert transfer_intact(a, b)

        # One comes back with nothing (a restart): clients register again, the relayed pair resumes.
        used.restart()
        wait_until(lambda: used.status()["clients"] == 3, 20.0, interval=0.2, what="clients re-registered")
        wait_until(lambda: ping_ok(a, c, count=1), 20.0, interval=0.2, what="relayed ping after the restart")
        assert transfer_intact(c, a)
    except BaseException:
        print(world.logs())
        raise


def test_udp_blocked_robot_goes_tcp_then_back_to_udp_when_udp_works(
    lab: Lab, daemon_factory: DaemonFactory, world_factory: list[World]
) -> None:
    kinds = {"a": NatKind.PORT_RESTRICTED, "f": NatKind.UDP_BLOCKED}
    world = build(lab, daemon_factory, kinds, bases=1)
    world_factory.append(world)
    a, f = world.robots["a"], world.robots["f"]
    try:
        f.daemon.cli("wait", "base", "--timeout", "20", timeout=30)
        assert f.daemon.status()["base"]["transport"] == "tcp"
        wait_path(a, f, "tunnelled")
        assert ping_ok(a, f)
        # The site's firewall opens UDP (now an ordinary port-restricted NAT): within one UDP probe interval
        # the daemon is back on UDP, and the pair punches through to a direct path.
        site = f.site
        # In one nft transaction: between a separate delete and add, the router would have no rules at all,
        # and a punch probe from a arriving then would leave a conntrack entry on the public port f's mapping
        # needs, so f's NAT would pick another port and the punch could never meet (seen once, clean root).
        site.router.run(
            ["nft", "-f", "-"],
            input=f"delete table ip {site.nft_table}\n"
            + router_ruleset(site.nft_table, NatKind.PORT_RESTRICTED, site.lan_network),
        )
        wait_until(
            lambda: f.daemon.status()["base"]["transport"] == "udp",
            UDP_RETRY_S + 10,
            interval=0.2,
            what="back to UDP",
        )
        assert f.daemon.status()["base"]["state"] == "registered"
        wait_path(a, f, "direct")
        assert ping_ok(a, f)
        wait_until(
            lambda: world.bases[0].status()["tcp_connections"] == 0, 10, interval=0.2, what="TCP closed"
        )
    except BaseException:
        print(world.logs())
        raise


BLOCK_TABLE = "test_block"


def block(site: Site, server: LabBaseServer) -> None:
    """The site's router drops everything to ``server`` (a base this site cannot reach for a while)."""
    rule = f"ip daddr {server.host.ipv4} drop"
    chain = f"chain blocked {{\n type filter hook forward priority -10;\n {rule}\n}}"
    site.router.run(["nft", "-f", "-"], input=f"table ip {BLOCK_TABLE} {{\n{chain}\n}}\n")


def unblock(site: Site) -> None:
    site.router.run(["nft", "delete", "table", "ip", BLOCK_TABLE])


def registered_with(robot: Robot) -> set[str]:
    return {s["address"] for s in robot.daemon.status()["base_servers"] if s["state"] == "registered"}


def test_robots_homed_on_different_base_servers_reach_each_other(
    lab: Lab, daemon_factory: DaemonFactory, world_factory: list[World]
) -> None:
    # a starts where only base 1 answers, c where only base 2 does: each makes that one its home. Then both
    # bases are reachable from both sites; the homes stay (neither is clearly faster), and the relayed pair
    # (port-restricted with symmetric) works both ways: a relays through base 1, c through base 2, each
    # reaching the other because every robot registers with every base it knows.
    def split(robots: dict[str, Robot], servers: list[LabBaseServer]) -> None:
        block(robots["a"].site, servers[1])
        block(robots["c"].site, servers[0])

    kinds = {"a": NatKind.PORT_RESTRICTED, "c": NatKind.SYMMETRIC}
    world = build(lab, daemon_factory, kinds, bases=2, before_start=split)
    world_factory.append(world)
    a, c = world.robots["a"], world.robots["c"]
    base1, base2 = (server.address for server in world.bases)
    try:
        wait_until(lambda: registered_with(a) == {base1}, 20, interval=0.2, what="a registered with base 1")
        wait_until(lambda: registered_with(c) == {base2}, 20, interval=0.2, what="c registered with base 2")
        unblock(a.site)
        unblock(c.site)
        both = {base1, base2}
        wait_until(lambda: registered_with(a) == both, 20, interval=0.2, what="a registered with both")
        wait_until(lambda: registered_with(c) == both, 20, interval=0.2, what="c registered with both")
        assert a.daemon.status()["base"]["address"] == base1
        assert c.daemon.status()["base"]["address"] == base2
        wait_path(a, c, "tunnelled")
        assert (a.daemon.peer(c.address) or {}).get("base_server") == base1
        assert (c.daemon.peer(a.address) or {}).get("base_server") == base2
        assert ping_ok(a, c, count=5)
        assert ping_ok(c, a, count=5)
        assert transfer_intact(a, c)
        for server in world.bases:  # each base relayed one direction
            assert server.status()["relayed_bytes"] > 0
    except BaseException:
        print(world.logs())
        raise


ROAMING_BOUND_S = 3.0  # functional bound, as in test_path_recovery; the measured gap is printed


def test_a_robot_behind_nat_that_changes_address_keeps_its_direct_link(
    lab: Lab, daemon_factory: DaemonFactory, world_factory: list[World]
) -> None:
    """Robot a (behind a port-restricted NAT) gets a new LAN address: its NAT mapping changes with it, and a
    direct peer that can still reach it (robot n, on a routed network) follows without a restart."""
    kinds = {"a": NatKind.PORT_RESTRICTED, "n": NatKind.NONE}
    world = build(lab, daemon_factory, kinds, bases=1)
    world_factory.append(world)
    a, n = world.robots["a"], world.robots["n"]
    try:
        wait_path(a, n, "direct")
        before = (n.daemon.peer(a.address) or {}).get("endpoint")
        ping = ContinuousPing(n.host, a.address, interval=0.02, seconds=12)
        time.sleep(1.0)
        site, host = a.site, a.host
        new_address = str(ipaddress.IPv4Address(host.ipv4) + 40)
        host.sysctl(f"net.ipv4.conf.{host.ifname}.promote_secondaries", 1)
        host.run(["ip", "addr", "add", f"{new_address}/24", "dev", host.ifname])
        host.run(["ip", "addr", "del", f"{host.ipv4}/24", "dev", host.ifname])
        host.run(["ip", "route", "replace", "default", "via", site.lan_gateway])
        changed_at = time.time()
        time.sleep(ROAMING_BOUND_S + 2.0)
        ping.stop()
        gap = ping.longest_gap()
        print(f"address change behind NAT: longest gap in traffic {gap:.2f} s")
        assert ping.first_reply_after(changed_at) is not None
        assert gap < ROAMING_BOUND_S
        assert path_of(n, a) == "direct"
        after = (n.daemon.peer(a.address) or {}).get("endpoint")
        print(f"robot n reaches robot a at {before} before, {after} after")
        assert after is not None
        assert after.split(":")[0] == site.wan_ipv4  # still through a's NAT, at whatever port it gave now
    except BaseException:
        print(world.logs())
        raise
