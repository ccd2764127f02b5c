"""Tests of the NAT lab: each kind of router behaves as declared, and sites stay apart."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading

import pytest

from husarnet_ros.core.constants import DISCOVERY_GROUP_V4, DISCOVERY_GROUP_V6, DISCOVERY_PORT
from husarnet_ros.testing.natlab import NatKind, NatLab, Site
from husarnet_ros.testing.netlab import Host, Lab, LabError, list_netns

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AGENT_PORT = 3478  # public hosts' agents: a STUN-like reflector
ROBOT_PORT = 40000  # robots' agents; masquerade keeps it where the NAT preserves ports
AGENT_LIFETIME = 60.0  # seconds; agents exit by themselves even if nobody stops them
REPLY_TIMEOUT = 10.0  # seconds to wait for an agent's answer on stdout
QUIET_PERIOD = 1.0  # seconds an inbox waits for datagrams that must (or must not) arrive
DATAGRAMS = 3  # copies of each datagram sent, so a negative result is not one lost packet

# A UDP endpoint driven over stdin, one command a line; it answers on stdout. Any datagram
# "ask" gets back "seen IP:PORT" (its sender's address as seen here, like STUN), even while
# the agent waits for a command.
#   ask IP PORT              -> "seen IP:PORT" (how IP:PORT saw us) or "seen unanswered"
#   send IP PORT TEXT COUNT  -> sends COUNT datagrams 50 ms apart, then "sent"
#   inbox SECONDS            -> "got IP:PORT TEXT" for each other datagram received so far
#                               and within SECONDS, then "end"
UDP_AGENT = r"""
import os, select, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
deadline = time.monotonic() + float(sys.argv[2])
answers, inbox = {}, []

def say(*words):
    print(*words, flush=True)

def pump(seconds):
    end = min(time.monotonic() + seconds, deadline)
    while select.select([sock], [], [], max(0.0, end - time.monotonic()))[0]:
        data, (ip, port) = sock.recvfrom(2048)
        sender, text = f"{ip}:{port}", data.decode(errors="replace")
        if text == "ask":
            sock.sendto(f"seen {sender}".encode(), (ip, port))
        elif text.startswith("seen "):
            answers[sender] = text.split()[1]
        else:
            inbox.append((sender, text))

def ask(ip, port):
    sender = f"{ip}:{port}"
    answers.pop(sender, None)
    for _ in range(10):
        sock.sendto(b"ask", (ip, int(port)))
        pump(0.3)
        if sender in answers:
            return answers.pop(sender)
    return "unanswered"

say("ready")
pending = b""
while time.monotonic() < deadline:
    readable = select.select([sock, 0], [], [], max(0.0, deadline - time.monotonic()))[0]
    if sock in readable:
        pump(0)
    if 0 not in readable:
        continue
    chunk = os.read(0, 4096)
    if not chunk:
        break
    pending += chunk
    while b"\n" in pending:
        line, pending = pending.split(b"\n", 1)
        command, *args = line.decode().split()
        if command == "ask":
            say("seen", ask(*args))
        elif command == "send":
            for _ in range(int(args[3])):
                sock.sendto(args[2].encode(), (args[0], int(args[1])))
                pump(0.05)
            say("sent")
        elif command == "inbox":
            pump(float(args[0]))
            for sender, text in inbox:
                say("got", sender, text)
            inbox.clear()
            say("end")
"""

# `serve LIFETIME PORT...`: accept TCP connections on each PORT and answer "hi PORT"; "ready" once listening.
# `connect IP PORT TIMEOUT`: print "connected <what the server said>" or "failed <why>".
TCP_SCRIPT = r"""
import select, socket, sys, time
if sys.argv[1] == "serve":
    deadline = time.monotonic() + float(sys.argv[2])
    servers = {}
    for port in sys.argv[3:]:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", int(port)))
        server.listen()
        servers[server] = port
    print("ready", flush=True)
    while time.monotonic() < deadline:
        for server in select.select(list(servers), [], [], max(0.0, deadline - time.monotonic()))[0]:
            connection, _ = server.accept()
            connection.sendall(f"hi {servers[server]}".encode())
            connection.close()
else:
    try:
        with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=float(sys.argv[4])) as c:
            print("connected", c.recv(100).decode())
    except OSError as exc:
        print("failed", type(exc).__name__)
"""

# `recv GROUP PORT SECONDS`: join GROUP on eth0, print "ready", then "got <text>" or "timeout".
# `send GROUP PORT TEXT COUNT`: COUNT datagrams 50 ms apart, with a TTL (hop limit) of 8, so that
# only the routers' refusal to route multicast keeps them in their site.
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
        mreq = struct.pack("=4sii", socket.inet_aton(group), 0, ifindex)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print("ready", flush=True)
    s.settimeout(float(sys.argv[4]))
    try:
        print("got", s.recvfrom(1500)[0].decode(), flush=True)
    except socket.timeout:
        print("timeout", flush=True)
else:
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 8)
        dest = (group, port, 0, ifindex)
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=4sii", b"\0" * 4, 0, ifindex))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
        dest = (group, port)
    for _ in range(int(sys.argv[5])):
        s.sendto(sys.argv[4].encode(), dest)
        time.sleep(0.05)
"""


class LineReader:
    """The stdout lines of a lab process, read by a thread so waits can be bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next(self, timeout: float = REPLY_TIMEOUT) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise LabError(f"no output from {self.process.args!r} within {timeout} s") from None


class UdpAgent:
    """:data:`UDP_AGENT` running on a lab host."""

    def __init__(self, host: Host, port: int) -> None:
        self.host = host
        self.port = port
        self.process = host.popen(
            [sys.executable, "-c", UDP_AGENT, str(port), str(AGENT_LIFETIME)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.output = LineReader(self.process)
        assert self.output.next() == "ready", f"UDP agent on {host.label} did not start"

    @property
    def endpoint(self) -> str:
        return f"{self.host.ipv4}:{self.port}"

    def _command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def ask(self, endpoint: str) -> str:
        """How ``endpoint`` (an agent) sees this agent's address, or "unanswered"."""
        ip, port = endpoint.split(":")
        self._command(f"ask {ip} {port}")
        words = self.output.next(timeout=REPLY_TIMEOUT).split()
        assert words[0] == "seen", words
        return words[1]

    def send(self, endpoint: str, text: str, count: int = DATAGRAMS) -> None:
        ip, port = endpoint.split(":")
        self._command(f"send {ip} {port} {text} {count}")
        assert self.output.next() == "sent"

    def inbox(self, seconds: float = QUIET_PERIOD) -> set[tuple[str, str]]:
        """(sender, text) of the datagrams received so far and within ``seconds``."""
        self._command(f"inbox {seconds}")
        received = set()
        while (line := self.output.next(timeout=seconds + REPLY_TIMEOUT)) != "end":
            _, sender, text = line.split(" ", 2)
            received.add((sender, text))
        return received


def reflectors(hosts: list[Host]) -> list[UdpAgent]:
    return [UdpAgent(host, AGENT_PORT) for host in hosts]


def tcp_connect(host: Host, ip: str, port: int) -> str:
    result = host.run([sys.executable, "-c", TCP_SCRIPT, "connect", ip, str(port), "2"], timeout=15.0)
    return result.stdout.strip()


def multicast_reaches(sender: Host, receivers: list[Host], group: str) -> dict[str, str]:
    """Send to ``group`` from ``sender``; returns receiver label -> "got <text>" or "timeout"."""
    listeners = {
        host.label: LineReader(
            host.popen(
                [sys.executable, "-c", MULTICAST_SCRIPT, "recv", group, str(DISCOVERY_PORT), "2"],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        for host in receivers
    }
    for label, listener in listeners.items():
        assert listener.next() == "ready", f"multicast receiver on {label} did not start"
    sender.run([sys.executable, "-c", MULTICAST_SCRIPT, "send", group, str(DISCOVERY_PORT), "hello", "5"])
    return {label: listener.next() for label, listener in listeners.items()}


def build(lab: Lab, kind: NatKind, public_hosts: int = 3) -> tuple[Site, list[Host]]:
    net = NatLab(lab)
    hosts = [net.public_host(f"base{i + 1}") for i in range(public_hosts)]
    return net.site("a", kind), hosts


# --- the plan ----------------------------------------------------------------------------
def test_addressing_plan(lab: Lab) -> None:
    net = NatLab(lab)
    base1, base2 = net.public_host("base1"), net.public_host("base2")
    site_a = net.site("a", NatKind.PORT_RESTRICTED, robots=1)
    site_b = net.site("b", NatKind.SYMMETRIC, robots=2)

    assert [base1.ipv4, base2.ipv4] == ["198.18.100.2", "198.18.100.3"]
    assert [site_a.lan_network, site_b.lan_network] == ["198.18.1.0/24", "198.18.2.0/24"]
    assert [site_a.wan_ipv4, site_b.wan_ipv4] == ["198.18.100.101", "198.18.100.102"]
    assert [r.ipv4 for r in site_b.robots] == ["198.18.2.10", "198.18.2.11"]
    robot = site_a.robots[0]
    assert robot.ipv4 == "198.18.1.10"
    assert "default via 198.18.1.1" in robot.run(["ip", "-4", "route", "show", "default"]).stdout
    assert robot.addresses(6, "global") == []  # the lab is IPv4 NAT: no global IPv6 for robots
    assert robot.link_local().startswith("fe80:")
    assert all(name.startswith(f"{lab.prefix}-") and len(name) <= 15 for name in lab.namespaces)
    assert site_a.router.read_sysctl("net.ipv4.ip_forward") == "1"
    assert lab.prefix in site_a.nft_table
    site_a.router.run(["nft", "list", "table", "ip", site_a.nft_table])
    assert robot.ping(base1.ipv4, 1).ok


# --- one kind at a time --------------------------------------------------------------------
def test_none_shows_the_robots_own_address_and_lets_anyone_in(lab: Lab) -> None:
    site, hosts = build(lab, NatKind.NONE, public_hosts=2)
    robot = UdpAgent(site.robots[0], ROBOT_PORT)
    first, second = reflectors(hosts)

    assert robot.ask(first.endpoint) == robot.endpoint
    second.send(robot.endpoint, "unsolicited")
    assert robot.inbox() == {(second.endpoint, "unsolicited")}


def test_endpoint_independent_keeps_one_mapping_and_admits_any_host(lab: Lab) -> None:
    site, hosts = build(lab, NatKind.ENDPOINT_INDEPENDENT)
    robot = UdpAgent(site.robots[0], ROBOT_PORT)
    first, second, stranger = reflectors(hosts)

    mapped = robot.ask(first.endpoint)
    assert mapped == f"{site.wan_ipv4}:{ROBOT_PORT}"  # the robot's source port is kept
    assert robot.ask(second.endpoint) == mapped
    stranger.send(mapped, "from-a-stranger")  # it never heard from the robot
    assert robot.inbox() == {(stranger.endpoint, "from-a-stranger")}


def test_endpoint_independent_serves_several_robots(lab: Lab) -> None:
    net = NatLab(lab)
    first, stranger = reflectors([net.public_host("base1"), net.public_host("base2")])
    site = net.site("a", NatKind.ENDPOINT_INDEPENDENT, robots=2)
    robots = [UdpAgent(host, ROBOT_PORT) for host in site.robots]

    mapped = [robot.ask(first.endpoint) for robot in robots]
    assert len(set(mapped)) == 2  # both used port 40000: the second one got another public port
    for endpoint in mapped:
        stranger.send(endpoint, f"to-{endpoint}")
    for robot, endpoint in zip(robots, mapped, strict=True):
        assert robot.inbox() == {(stranger.endpoint, f"to-{endpoint}")}


def test_port_restricted_keeps_one_mapping_and_admits_only_replies(lab: Lab) -> None:
    site, hosts = build(lab, NatKind.PORT_RESTRICTED)
    robot = UdpAgent(site.robots[0], ROBOT_PORT)
    first, second, stranger = reflectors(hosts)
    first_other_port = UdpAgent(hosts[0], AGENT_PORT + 1)

    mapped = robot.ask(first.endpoint)
    assert mapped == f"{site.wan_ipv4}:{ROBOT_PORT}"
    assert robot.ask(second.endpoint) == mapped
    stranger.send(mapped, "unsolicited")
    first_other_port.send(mapped, "known-address-other-port")  # filtering depends on the port too
    assert robot.inbox() == set()

    # Once the robot has sent to the stranger, the stranger's datagrams are replies and pass.
    assert robot.ask(stranger.endpoint) == mapped
    stranger.send(mapped, "reply")
    assert robot.inbox() == {(stranger.endpoint, "reply")}


def test_symmetric_maps_each_destination_to_its_own_port(lab: Lab) -> None:
    site, hosts = build(lab, NatKind.SYMMETRIC, public_hosts=2)
    robot = UdpAgent(site.robots[0], ROBOT_PORT)
    first, second = reflectors(hosts)

    mapped = [robot.ask(first.endpoint), robot.ask(second.endpoint)]
    assert [endpoint.split(":")[0] for endpoint in mapped] == [site.wan_ipv4] * 2
    # Random ports: equal by chance with probability ~1/64512.
    assert mapped[0] != mapped[1]


def test_udp_blocked_lets_out_only_tcp_to_port_443(lab: Lab) -> None:
    site, hosts = build(lab, NatKind.UDP_BLOCKED, public_hosts=1)
    robot = site.robots[0]
    (public,) = reflectors(hosts)
    server = LineReader(
        hosts[0].popen(
            [sys.executable, "-c", TCP_SCRIPT, "serve", str(AGENT_LIFETIME), "443", "8443"],
            stdout=subprocess.PIPE,
            text=True,
        )
    )
    assert server.next() == "ready"

    agent = UdpAgent(robot, ROBOT_PORT)
    agent.send(public.endpoint, "udp-out")
    assert public.inbox() == set()
    assert agent.ask(public.endpoint) == "unanswered"
    assert tcp_connect(robot, hosts[0].ipv4, 443) == "connected hi 443"
    assert tcp_connect(robot, hosts[0].ipv4, 8443) == "failed TimeoutError"


# --- sites together ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind_a", "kind_b", "direct"),
    [
        (NatKind.PORT_RESTRICTED, NatKind.PORT_RESTRICTED, True),
        (NatKind.SYMMETRIC, NatKind.SYMMETRIC, False),
        (NatKind.PORT_RESTRICTED, NatKind.SYMMETRIC, False),
    ],
    ids=["restricted-restricted", "symmetric-symmetric", "restricted-symmetric"],
)
def test_hole_punching(lab: Lab, kind_a: NatKind, kind_b: NatKind, direct: bool) -> None:
    net = NatLab(lab)
    (rendezvous,) = reflectors([net.public_host("base1")])
    a = UdpAgent(net.site("a", kind_a).robots[0], ROBOT_PORT)
    b = UdpAgent(net.site("b", kind_b).robots[0], ROBOT_PORT)

    # Each learns its public endpoint from the rendezvous host, then both send to the other's.
    endpoint_a, endpoint_b = a.ask(rendezvous.endpoint), b.ask(rendezvous.endpoint)
    a.send(endpoint_b, "punch")  # dropped by B's router, but opens A's towards B
    b.send(endpoint_a, "from-b")
    a.send(endpoint_b, "from-a")

    if direct:
        assert a.inbox() == {(endpoint_b, "from-b")}
        assert b.inbox() == {(endpoint_a, "from-a")}
    else:
        assert a.inbox() == set()
        assert b.inbox() == set()


def test_robots_of_different_sites_cannot_reach_private_addresses(lab: Lab) -> None:
    net = NatLab(lab)
    base = net.public_host("base1")
    site_a = net.site("a", NatKind.PORT_RESTRICTED, robots=2)
    site_b = net.site("b", NatKind.SYMMETRIC, robots=1)
    (a0, a1), (b0,) = site_a.robots, site_b.robots

    assert a0.ping(a1.ipv4, 1).ok
    assert a0.ping(base.ipv4, 1).ok
    assert b0.ping(base.ipv4, 1).ok
    assert not a0.ping(b0.ipv4, 2).ok
    assert not b0.ping(a0.ipv4, 2).ok
    sender, receiver = UdpAgent(a0, ROBOT_PORT), UdpAgent(b0, ROBOT_PORT)
    sender.send(receiver.endpoint, "private")
    assert receiver.inbox() == set()


def test_a_site_without_nat_is_reachable_from_other_sites(lab: Lab) -> None:
    net = NatLab(lab)
    natted = net.site("a", NatKind.PORT_RESTRICTED)
    routed = net.site("b", NatKind.NONE)
    base = net.public_host("base1")  # made after the routed site: still gets its route

    assert natted.robots[0].ping(routed.robots[0].ipv4, 1).ok
    assert base.ping(routed.robots[0].ipv4, 1).ok
    assert not routed.robots[0].ping(natted.robots[0].ipv4, 2).ok


@pytest.mark.parametrize("group", [DISCOVERY_GROUP_V4, DISCOVERY_GROUP_V6], ids=["ipv4", "ipv6"])
def test_multicast_stays_in_its_site(lab: Lab, group: str) -> None:
    net = NatLab(lab)
    base = net.public_host("base1")
    site_a = net.site("a", NatKind.PORT_RESTRICTED, robots=2)
    site_b = net.site("b", NatKind.NONE, robots=1)
    a0, a1 = site_a.robots
    (b0,) = site_b.robots

    received = multicast_reaches(a0, [a1, b0, base], group)
    assert received == {a1.label: "got hello", b0.label: "timeout", base.label: "timeout"}


# --- cleanup ----------------------------------------------------------------------------------
def test_lab_close_removes_everything(lab: Lab) -> None:
    net = NatLab(lab)
    (public,) = reflectors([net.public_host("base1")])
    robot = UdpAgent(net.site("a", NatKind.ENDPOINT_INDEPENDENT).robots[0], ROBOT_PORT)
    assert robot.ask(public.endpoint) != "unanswered"

    lab.close()
    assert [name for name in list_netns() if name.startswith(f"{lab.prefix}-")] == []
    assert public.process.poll() is not None
    assert robot.process.poll() is not None
