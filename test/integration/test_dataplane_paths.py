"""The data plane carries every kind of packet intact, with the kernel's offloads and without (issue 10).

Two robots on one LAN in three offload modes: both ``--offload``, both ``--no-offload``, and one of each (a
peer that lacks offloads: the wire carries one whole IPv6 packet per datagram either way, so they must
interoperate). Everything is checked where it arrives, in both directions: TCP (SHA-256 of seeded random
bytes; one stream and four), UDP datagrams from 1 byte to 60 KB (echoed and compared byte for byte), ICMPv6
echo beyond the MTU, IPv6 extension headers (Destination Options, Hop-by-Hop, Fragment), mixed MTUs, and a
link that loses, duplicates or reorders wire datagrams (husarnet_ros.testing.lossy_link; netem where the
kernel has it would do the same, but it must not be required: this project's own VMs lack it).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from husarnet_ros.core import wire
from husarnet_ros.core.constants import MIN_SIZE_PROBE
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other
from husarnet_ros.testing.lossy_link import lossy_link
from husarnet_ros.testing.netlab import Host, Lab, parse_ping, run_command
from husarnet_ros.testing.transfer import StreamOutcome, tcp_transfer, udp_burst, udp_echo

pytestmark = pytest.mark.integration

# What each robot is started with, robot-a's first: "mixed" is a peer without offloads.
MODES = {
    "offload": ("--offload", "--offload"),
    "no-offload": ("--no-offload", "--no-offload"),
    "mixed": ("--offload", "--no-offload"),
    "jumbo": ("--offload", "--offload"),
    "jumbo-mixed": ("--offload", "--no-offload"),
}
# Modes whose LAN carries jumbo frames (hosts and switch ports): the daemons find the path carries 9000-byte
# datagrams and send TCP in segments of several MSS (test_path_sized_segments.py), so everything here is
# checked with those too, the lossy link included; in jumbo-mixed, a robot without offloads takes them (it
# writes each segment, larger than hnet0's MTU, to its TUN as a whole packet). hnet0 keeps its MTU.
LAN_MTUS = {"jumbo": 9000, "jumbo-mixed": 9000}
MTU = 1350  # the daemon's default
IPV6_UDP_HEADERS = 40 + 8  # an ICMPv6 echo header is 8 bytes too
EXTENSION_HEADER = 8  # transfer.OPTION_HEADER
TRANSFER_BYTES = 32 * 1024 * 1024
SMALL_TRANSFER_BYTES = 8 * 1024 * 1024
OVERLAY_IFNAME = "hnet0"


@dataclass
class Robots:
    lab: Lab
    a: Daemon
    b: Daemon
    flags: dict[str, str]  # hostname -> --offload / --no-offload
    addresses: dict[str, str]
    lan_mtu: int = 1500

    def directions(self) -> list[tuple[Daemon, Daemon]]:
        return [(self.a, self.b), (self.b, self.a)]

    def address(self, daemon: Daemon) -> str:
        return self.addresses[daemon.hostname]

    def logs(self) -> str:
        """The daemons' log tails, for a failure message (a shared fixture's logs are not attached)."""
        return "".join(f"\n--- {d.hostname} ({d.log_path}):\n{d.log_tail(40)}" for d in (self.a, self.b))


@pytest.fixture(scope="module", params=list(MODES))
def robots(
    request: pytest.FixtureRequest, netns_available: None, husarnet_ros_available: None
) -> Iterator[Robots]:
    """Two robots on one LAN in one offload mode, shared by this module's tests of that mode (each pair takes
    seconds to start; pytest runs all tests of one mode together)."""
    flags = MODES[request.param]
    lab = Lab()
    daemons: list[Daemon] = []
    failed_before = request.session.testsfailed
    try:
        hostnames = ["robot-a", "robot-b"]
        hosts = lab.lan(2, hostnames)
        lan_mtu = LAN_MTUS.get(request.param)
        if lan_mtu is not None:
            switch = lab.switches[-1]
            for host, port in zip(hosts, switch.ports, strict=True):
                host.run(["ip", "link", "set", "dev", host.ifname, "mtu", str(lan_mtu)])
                run_command(["ip", "-n", switch.netns, "link", "set", "dev", port, "mtu", str(lan_mtu)])
        for host, hostname, flag in zip(hosts, hostnames, flags, strict=True):
            daemons.append(Daemon.create(host, hostname, extra_args=[flag]).start(wait_ready=False))
        for daemon in daemons:
            daemon.wait_ready()
        a, b = daemons
        addresses = whitelist_each_other(daemons)
        a.wait_path(addresses["robot-b"], "direct", timeout=20)
        b.wait_path(addresses["robot-a"], "direct", timeout=20)
        yield Robots(lab, a, b, {"robot-a": flags[0], "robot-b": flags[1]}, addresses, lan_mtu or 1500)
    finally:
        for daemon in daemons:
            daemon.stop()
        lab.close()
        if request.session.testsfailed == failed_before:
            for daemon in daemons:
                daemon.remove_files()


# --- checks -------------------------------------------------------------------------------------------------


def _assert_intact(outcomes: list[StreamOutcome], what: str, robots: Robots | None = None) -> None:
    broken = [o for o in outcomes if not o.intact]
    assert not broken, f"{what}: {broken}{robots.logs() if robots else ''}"


def _assert_echoed(results: list[dict[str, Any]], what: str, robots: Robots) -> None:
    broken = [r for r in results if not (r["echoed"] and r["intact"] and r["options_intact"])]
    assert not broken, f"{what}: {broken}{robots.logs()}"


def _ping_sizes(sender: Host, address: str, sizes: list[int]) -> list[str]:
    """Three echoes of each ICMPv6 payload size; what went wrong (an empty list: every reply came, intact)."""
    problems = []
    for size in sizes:
        argv = ["ping", "-6", "-n", "-c", "3", "-i", "0.05", "-W", "2", "-w", "10", "-s", str(size)]
        result = sender.run([*argv, "-p", "a5c3", address], check=False, timeout=30)
        ping = parse_ping(result.stdout + result.stderr)
        # iputils compares every reply's payload with what it sent and says "wrong data byte" if it differs.
        if not ping.ok or "wrong data" in result.stdout:
            problems.append(f"{size} bytes: {result.stdout}{result.stderr}")
    return problems


# --- TCP, UDP, ICMPv6, extension headers --------------------------------------------------------------------


@pytest.mark.parametrize("streams", [1, 4])
def test_tcp_arrives_intact_both_ways(robots: Robots, streams: int) -> None:
    for seed, (sender, receiver) in enumerate(robots.directions()):
        outcomes = tcp_transfer(
            sender.host, receiver.host, robots.address(receiver), total_bytes=TRANSFER_BYTES, streams=streams,
            seed=100 * streams + seed,
        )  # fmt: skip
        _assert_intact(outcomes, f"{sender.hostname} -> {receiver.hostname}", robots)


def test_tcp_with_a_destination_options_header_on_every_segment_arrives_intact(robots: Robots) -> None:
    """Segments whose TCP header does not start right after the IPv6 header (the kernel's large segments
    with it too): cut, sealed and joined like any others."""
    for seed, (sender, receiver) in enumerate(robots.directions()):
        outcomes = tcp_transfer(
            sender.host, receiver.host, robots.address(receiver), total_bytes=SMALL_TRANSFER_BYTES,
            dstopts=True, seed=300 + seed,
        )  # fmt: skip
        _assert_intact(outcomes, f"{sender.hostname} -> {receiver.hostname} with Destination Options", robots)


def test_udp_datagrams_of_every_size_arrive_intact_both_ways(robots: Robots) -> None:
    """From 1 byte to 60 KB: exactly one MTU, one byte over it (two fragments), many fragments."""
    sizes = [1, 100, MTU - IPV6_UDP_HEADERS, MTU - IPV6_UDP_HEADERS + 1, 8192, 60 * 1024]
    for seed, (client, server) in enumerate(robots.directions()):
        results = udp_echo(client.host, server.host, robots.address(server), sizes, seed=400 + seed)
        _assert_echoed(results, f"{client.hostname} <-> {server.hostname}", robots)


# Bursts as DDS sends a large sample (1250 B fragments back to back), small datagrams, the largest that fits
# one overlay packet, a run closed by a shorter datagram, and a lone one.
BURST_RUNS = [(600, 1250), (200, 100), (300, MTU - IPV6_UDP_HEADERS), (63, 700), (1, 300), (1, 4)]
# UDP may lose datagrams under load; on an idle lab link none are lost, and a loaded machine stays far above.
BURST_DELIVERED_AT_LEAST = 0.9


def _rx_packets(host: Host) -> int:
    return int(host.run(["cat", f"/sys/class/net/{OVERLAY_IFNAME}/statistics/rx_packets"]).stdout)


@pytest.mark.parametrize("gso", [False, True], ids=["sendto", "udp-segment"])
def test_udp_bursts_arrive_intact_and_go_up_in_runs(robots: Robots, gso: bool) -> None:
    """Thousands of datagrams sent back to back, one ``sendto`` each or 64 per ``UDP_SEGMENT`` send: each
    arrives intact and once (a run joined into one TUN write comes out as the very datagrams). Where both ends
    have offloads and the kernel takes UDP segmentation on the TUN, an application's UDP GSO send is cut by
    the sender's daemon, sealed per datagram, and the receiver hands each run to its TUN in one write."""
    kernel = _kernel_offloads(robots.a.host)
    sent = sum(count for count, _ in BURST_RUNS)
    for seed, (sender, receiver) in enumerate(robots.directions()):
        before = _rx_packets(receiver.host)
        outcome = udp_burst(
            sender.host, receiver.host, robots.address(receiver), BURST_RUNS, gso=gso, seed=500 + seed
        )
        written = _rx_packets(receiver.host) - before
        what = f"{sender.hostname} -> {receiver.hostname}: {outcome}, {written} TUN writes"
        assert outcome["corrupt"] == [], f"{what}{robots.logs()}"
        assert outcome["repeated"] == [], f"{what}{robots.logs()}"
        assert outcome["sent"] == sent
        assert int(str(outcome["intact"])) >= BURST_DELIVERED_AT_LEAST * sent, f"{what}{robots.logs()}"
        both_offload = all(robots.flags[d.hostname] == "--offload" for d in (sender, receiver))
        if gso and both_offload and kernel["tun_udp_offload"]:
            assert sender.status()["counters"].get("udp_gso_packets", 0) > 0, what
            assert written <= int(str(outcome["intact"])) / 4, what


@pytest.mark.parametrize("header", ["dstopts", "hopopts"])
def test_udp_with_an_extension_header_arrives_intact_with_it(robots: Robots, header: str) -> None:
    """A Destination Options or Hop-by-Hop header (an option the receiver skips) arrives as sent, alone and
    beside a Fragment header: the echo comes back with the header the server received."""
    exact = MTU - IPV6_UDP_HEADERS - EXTENSION_HEADER
    sizes = [1, exact, exact + 1, 8192, 60 * 1024]
    for seed, (client, server) in enumerate(robots.directions()):
        results = udp_echo(
            client.host, server.host, robots.address(server), sizes, options=[header], seed=seed
        )
        _assert_echoed(results, f"{client.hostname} <-> {server.hostname} with {header}", robots)


def test_icmpv6_echo_up_to_and_beyond_the_mtu(robots: Robots) -> None:
    sizes = [56, MTU - IPV6_UDP_HEADERS, MTU - IPV6_UDP_HEADERS + 1, 8000, 60000]
    for sender, receiver in robots.directions():
        problems = _ping_sizes(sender.host, robots.address(receiver), sizes)
        assert not problems, f"{sender.hostname} -> {receiver.hostname}: {problems}{robots.logs()}"


# --- a lossy link -------------------------------------------------------------------------------------------

IMPAIRMENTS: dict[str, dict[str, Any]] = {
    "loss": {"loss": 0.02},
    "duplicate": {"duplicate": 0.02},
    "reorder": {"reorder": 0.25, "delay_ms": 1.0},
}

# The promise: a lost wire datagram costs the one inner segment it carried; the receiver delivers everything
# else, late ones and all. The inner TCP (SACK, RACK) then resends just that segment: one retransmission per
# loss. Retransmissions of segments the receiver already had (sent while a late datagram was still on its way)
# are counted apart: the receiver reports each with a D-SACK. TCP may send a segment more than once of its own
# accord: a retransmission that is lost again is a loss of its own (counted), a tail-loss probe or a
# retransmission timeout resends what is still in flight; allow as many of those as there were losses, and
# SLACK more for the connection's first and last round trips; and, as a D-SACK can go unreported (its ACK
# merged with another), one in UNREPORTED_LATE of the datagrams the link held back. Measured with 25 %
# reordering: on a quiet machine 0-2 % of the held-back datagrams went unreported, on a clean root running the
# whole suite once 15 % (274 of 1781). A datagram whose loss took its whole burst with it (a 64 KB TSO packet:
# ~48 segments), or late datagrams dropped instead of delivered (each then resent without a D-SACK: close to
# 100 % of those held back), would still go far beyond that.
RETRANSMISSIONS_PER_LOSS = 2
RETRANSMISSION_SLACK = 20
UNREPORTED_LATE = 4


def _counters(host: Host) -> dict[str, int]:
    """This namespace's TCP/UDP counters and the overlay interface's drops (everything that can lose a packet
    on the way besides the lossy link: a full socket buffer, a full TUN queue)."""
    snmp = host.run(["cat", "/proc/net/snmp", "/proc/net/netstat"]).stdout.splitlines()
    counters: dict[str, int] = {}
    for names, values in zip(snmp[::2], snmp[1::2], strict=True):
        kind = names.split(":")[0]
        counters.update(
            {f"{kind}{n}": int(v) for n, v in zip(names.split()[1:], values.split()[1:], strict=True)}
        )
    for line in host.run(["cat", "/proc/net/snmp6"]).stdout.splitlines():
        name, value = line.split()
        counters[name] = int(value)
    statistics = f"/sys/class/net/{OVERLAY_IFNAME}/statistics"
    for name in ("tx_dropped", "rx_dropped"):
        counters[name] = int(host.run(["cat", f"{statistics}/{name}"]).stdout)
    return counters


def _delta(before: dict[str, int], after: dict[str, int], *names: str) -> int:
    return sum(after[name] - before[name] for name in names)


def _mss_per_datagram(lan_mtu: int) -> int:
    """How many of the inner TCP's segments (MSS with timestamps: MTU - 40 - 32) one wire datagram carries on
    a LAN of ``lan_mtu`` (IPv4 endpoints, the daemon's first choice): one on ordinary LANs."""
    largest = lan_mtu - 20 - 8
    if largest < MIN_SIZE_PROBE:
        return 1
    return max(1, (largest - wire.SEGMENT_OVERHEAD - 32) // (MTU - 40 - 32))


@pytest.mark.parametrize("impairment", list(IMPAIRMENTS))
def test_a_lossy_link_costs_only_what_it_lost(robots: Robots, impairment: str) -> None:
    for seed, (sender, receiver) in enumerate(robots.directions()):
        what = f"{sender.hostname} -> {receiver.hostname} over a link with {IMPAIRMENTS[impairment]}"
        sent_before, received_before = _counters(sender.host), _counters(receiver.host)
        batches_before = receiver.status()["counters"].get("gro_batches", 0)
        with lossy_link(
            robots.lab, (sender.host, receiver.host), seed=seed + 1, **IMPAIRMENTS[impairment]
        ) as link:
            outcomes = tcp_transfer(
                sender.host, receiver.host, robots.address(receiver), total_bytes=SMALL_TRANSFER_BYTES,
                seed=500 + seed,
            )  # fmt: skip
        sent_after, received_after = _counters(sender.host), _counters(receiver.host)
        _assert_intact(outcomes, what, robots)
        counts = link.counts[link.impaired]
        assert counts["batches"] == 0, f"{what}: GSO batches crossed the link as one frame: {counts}"
        retransmitted = _delta(sent_before, sent_after, "TcpRetransSegs")
        needless = _delta(sent_before, sent_after, "TcpExtTCPDSACKRecvSegs")
        lost = (
            counts["dropped"] + counts["socket_drops"] + counts["send_errors"]
            + _delta(sent_before, sent_after, "tx_dropped")
            + _delta(received_before, received_after, "UdpRcvbufErrors", "Udp6RcvbufErrors", "rx_dropped")
        )  # fmt: skip
        batches = receiver.status()["counters"].get("gro_batches", 0) - batches_before
        print(
            f"{what}: {retransmitted} segments retransmitted ({needless} needlessly), {lost} lost; {counts}; "
            f"{batches} GRO batches received"
        )
        if impairment == "loss":
            assert counts["dropped"] > 0, (
                f"{what}: the link dropped nothing, so this proves nothing: {counts}"
            )
        # On a jumbo LAN a datagram carries a segment of several MSS (path-sized segments): its loss, or a
        # late one whose D-SACK went unreported, costs those, and TCP counts its retransmissions in MSS.
        per_datagram = _mss_per_datagram(robots.lan_mtu)
        bound = (
            RETRANSMISSIONS_PER_LOSS * lost * per_datagram
            + RETRANSMISSION_SLACK
            + counts["delayed"] // UNREPORTED_LATE * per_datagram
        )
        assert retransmitted - needless <= bound, (
            f"{what}: {retransmitted - needless} segments retransmitted that had not arrived, for {lost} "
            f"datagrams lost (at most {bound}): a loss cost more than its own segment{robots.logs()}"
        )


# --- what the daemon negotiated -----------------------------------------------------------------------------

KERNEL_OFFLOAD_PROBE = """
import fcntl, json, os, socket, struct
TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6 = 0x01, 0x04, 0x20, 0x40
UDP_SEGMENT, UDP_GRO = 103, 104
found = {}
for name, flags in (
    ("tun_offload", TUN_F_CSUM | TUN_F_TSO6),
    ("tun_udp_offload", TUN_F_CSUM | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6),
):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"hrprobe0", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        found[name] = True
    except OSError:
        found[name] = False
    finally:
        os.close(fd)
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
    for name, option, value in (("udp_gso", UDP_SEGMENT, 0), ("udp_gro", UDP_GRO, 1)):
        try:
            s.setsockopt(socket.IPPROTO_UDP, option, value)
            found[name] = True
        except OSError:
            found[name] = False
print(json.dumps(found))
"""


def _kernel_offloads(host: Host) -> dict[str, bool]:
    """What this kernel offers (TUN TCPv6 segmentation with checksums, TUN UDP segmentation, UDP GSO, UDP
    GRO), asked on its own."""
    found: dict[str, bool] = json.loads(host.run([sys.executable, "-c", KERNEL_OFFLOAD_PROBE]).stdout)
    return found


def test_status_says_which_offloads_were_negotiated(robots: Robots) -> None:
    kernel = _kernel_offloads(robots.a.host)
    for daemon in (robots.a, robots.b):
        asked = robots.flags[daemon.hostname] == "--offload"
        expected = {"mtu": MTU, "offload": asked} | {
            name: asked and offered for name, offered in kernel.items()
        }
        assert daemon.status().get("dataplane") == expected, (
            f"{daemon.hostname} ({robots.flags[daemon.hostname]})"
        )


# --- mixed MTUs --------------------------------------------------------------------------------------------

MIXED_MTUS = {"robot-a": 9000, "robot-b": 1350, "robot-c": 1280}
# robot-b without offloads in the mixed mode: it meets a robot with them on both sides
MIXED_MTU_FLAGS = {
    "offload": ("--offload", "--offload", "--offload"),
    "no-offload": ("--no-offload", "--no-offload", "--no-offload"),
    "mixed": ("--offload", "--no-offload", "--offload"),
}


@pytest.mark.parametrize("mode", list(MIXED_MTU_FLAGS))
def test_mixed_mtus_carry_tcp_and_large_pings_both_ways(lab: Lab, daemon_factory: Any, mode: str) -> None:
    """Three robots with MTUs 9000, 1350 and 1280, every pair both ways: each end sends what its own MTU
    allows and takes what the other sends (TCP agrees on the smaller MSS; a ping reply larger than the
    replier's MTU goes back in fragments; a 9000-byte packet crosses the 1500-byte LAN in underlay
    fragments)."""
    hostnames = list(MIXED_MTUS)
    daemons = [
        daemon_factory(host, name, start=False, extra_args=[flag, "--mtu", str(MIXED_MTUS[name])])
        for host, name, flag in zip(lab.lan(3, hostnames), hostnames, MIXED_MTU_FLAGS[mode], strict=True)
    ]
    for daemon in daemons:
        daemon.start(wait_ready=False)
    for daemon in daemons:
        daemon.wait_ready()
        mtu = daemon.host.run(["cat", f"/sys/class/net/{OVERLAY_IFNAME}/mtu"]).stdout.strip()
        assert mtu == str(MIXED_MTUS[daemon.hostname])
    addresses = whitelist_each_other(daemons)
    for seed, (sender, receiver) in enumerate(itertools.permutations(daemons, 2)):
        address = addresses[receiver.hostname]
        sender.wait_path(address, "direct", timeout=20)
        what = f"{sender.hostname} (MTU {MIXED_MTUS[sender.hostname]}) -> {receiver.hostname}"
        outcomes = tcp_transfer(
            sender.host, receiver.host, address, total_bytes=SMALL_TRANSFER_BYTES, seed=600 + seed
        )
        _assert_intact(outcomes, what)
        mtus = (MIXED_MTUS[sender.hostname], MIXED_MTUS[receiver.hostname])
        sizes = sorted({min(mtus) - IPV6_UDP_HEADERS, max(mtus) - IPV6_UDP_HEADERS, max(mtus) - 47, 20000})
        problems = _ping_sizes(sender.host, address, sizes)
        assert not problems, f"{what}: {problems}"
