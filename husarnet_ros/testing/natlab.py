"""A NAT lab: an "internet" of public hosts, and sites whose robots sit behind NAT routers.

Built on :class:`~husarnet_ros.testing.netlab.Lab` (which owns and removes every namespace
and process)::

    with Lab() as lab:
        net = NatLab(lab)
        base = net.public_host("base1")
        site = net.site("a", NatKind.PORT_RESTRICTED, robots=2)
        robot = site.robots[0]

Topology and addressing (all IPv4, inside the project's 198.18.0.0/15):

* the internet: a switch namespace (``<prefix>-in``) with a bridge, 198.18.100.0/24.
  198.18.100.1 is left unused; public hosts get .2, .3, ... (up to .99) in the order they
  are made; the router of site N has its WAN interface ``wan0`` at 198.18.100.(100+N).
* site N (1, 2, ... in the order sites are made): a router namespace (``<prefix>-rN``)
  holding the site's LAN bridge ``lan0`` at 198.18.N.1/24, with robot i at 198.18.N.(10+i)
  and a default route via 198.18.N.1. Robots and public hosts are ordinary lab hosts
  (``<prefix>-h<k>``, interface ``eth0``).

The LAN 198.18.0.0/24 of ``lab.lan()`` is not used here, so both kinds of network can share
a lab. Nobody gets a global IPv6 address (``Host.ipv6`` is empty): the NAT is IPv4 only and
routers do not forward IPv6; link-local IPv6 works within a LAN. Routers do not route
multicast, so multicast stays within its site (robots of one site share a bridge, so it
does reach them all).

Each router filters and translates with one nftables table (``natlab_<prefix>``); the
behaviours follow RFC 4787's terms:

* :attr:`NatKind.NONE` — plain routing: the robots' own addresses are reachable from the
  internet (every public host and every other router has a route to the site's LAN).
* :attr:`NatKind.ENDPOINT_INDEPENDENT` — "full cone": a robot keeps its source port where
  it is free, one mapping serves every destination, and UDP from *any* public host to a
  mapped port reaches the robot (the router learns mappings from outbound datagrams and
  forwards inbound ones to their owner; a mapping unused for :data:`MAPPING_TIMEOUT` is
  forgotten). Works for several robots, since mappings are keyed by public port. UDP only:
  inbound TCP passes only as replies, as with the kinds below.
* :attr:`NatKind.PORT_RESTRICTED` — same mapping, but inbound traffic passes only as a
  reply to what the robot sent to that address and port (conntrack): two such sites
  can hole-punch.
* :attr:`NatKind.SYMMETRIC` — every new destination gets a new, random public port
  (``fully-random``), inbound only as replies: hole punching between two of them fails.
* :attr:`NatKind.UDP_BLOCKED` — a strict firewall: only TCP to port 443 leaves the site,
  no UDP at all; inbound only as replies.

Routers drop unsolicited packets addressed to themselves before conntrack keeps an entry
for them: a kept entry would occupy the public port a robot's mapping needs, and Linux would
then map the robot to another port (breaking hole punching on an otherwise well-behaved NAT).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from husarnet_ros.testing.netlab import HOST_ADDRESS_OFFSET, Host, Lab, LabError, Switch, run_command

INTERNET_NETWORK = ipaddress.IPv4Network("198.18.100.0/24")
PUBLIC_HOST_OFFSET = 2  # public host k gets 198.18.100.(2+k)
MAX_PUBLIC_HOSTS = 98  # .2 .. .99; .100 and up belong to routers
ROUTER_WAN_OFFSET = 100  # the router of site N is 198.18.100.(100+N)
MAX_SITES = 99  # site N uses 198.18.N.0/24, N = 1..99 (198.18.100.0/24 is the internet)
MAX_ROBOTS_PER_SITE = 50
ROUTER_LAN_OFFSET = 1  # the router of site N is 198.18.N.1 on its LAN
SITE_PREFIX_LENGTH = 24

INTERNET_SWITCH_SUFFIX = "in"
WAN_IFNAME = "wan0"
LAN_IFNAME = "lan0"  # the LAN bridge inside the router namespace
BRIDGE_IFNAME = "br0"  # the bridge inside the internet switch namespace

# An endpoint-independent router forgets a mapping this long after its last outbound datagram
# (the same as conntrack's timeout for a UDP flow that has seen replies).
MAPPING_TIMEOUT = "120s"


class NatKind(enum.Enum):
    """How a site's router treats traffic between its LAN and the internet (see the module docstring)."""

    NONE = "none"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"


@dataclass
class Site:
    """A router and the robots on its LAN."""

    name: str
    index: int
    kind: NatKind
    router: Host  # router.ipv4 is its WAN (public) address
    lan_network: str  # e.g. "198.18.1.0/24"
    lan_gateway: str  # the router's LAN address, e.g. "198.18.1.1"
    nft_table: str  # the router's nftables table (family ip)
    robots: list[Host] = field(default_factory=list)

    @property
    def wan_ipv4(self) -> str:
        """The router's public address: what public hosts see as the source of NATed traffic."""
        return self.router.ipv4


def _add_bridge(netns: str, name: str) -> None:
    # Snooping off: the bridge floods every multicast group to every port, like a dumb switch.
    options = ["mcast_snooping", "0", "forward_delay", "0", "stp_state", "0"]
    run_command(["ip", "-n", netns, "link", "add", name, "type", "bridge", *options])
    run_command(["ip", "-n", netns, "link", "set", name, "up"])


def _add_bridge_port(netns: str, bridge: str, port: str, peer: Host, peer_ifname: str) -> None:
    """A veth pair: ``port`` on ``bridge`` in ``netns``, ``peer_ifname`` (down) in ``peer``'s namespace."""
    ns = ["ip", "-n", netns]
    run_command([*ns, "link", "add", port, "type", "veth", "peer", "name", peer_ifname, "netns", peer.netns])
    run_command([*ns, "link", "set", port, "master", bridge])
    run_command([*ns, "link", "set", port, "up"])


def _configure_interface(host: Host, ifname: str, address: str, prefix_length: int) -> None:
    host.run(["ip", "addr", "add", f"{address}/{prefix_length}", "dev", ifname])
    host.run(["ip", "link", "set", ifname, "up"])


def router_ruleset(table: str, kind: NatKind, lan_network: str) -> str:
    """The nftables table (family ip) that makes a router behave as ``kind``."""
    wan, lan = f'"{WAN_IFNAME}"', f'"{LAN_IFNAME}"'
    outbound = {
        NatKind.UDP_BLOCKED: [f"iifname {lan} oifname {wan} tcp dport 443 accept"],
    }.get(kind, [f"iifname {lan} oifname {wan} accept"])
    inbound = {
        NatKind.NONE: [f"iifname {wan} oifname {lan} accept"],
        NatKind.ENDPOINT_INDEPENDENT: [f"iifname {wan} oifname {lan} ct status dnat accept"],
    }.get(kind, [])
    forward = [
        "ct state established,related accept",
        # Robots of one site talk over the router's bridge; with br_netfilter loaded that
        # traffic passes this hook too.
        f"iifname {lan} oifname {lan} accept",
        *outbound,
        *inbound,
    ]
    # Unsolicited packets for the router itself are dropped here, before conntrack keeps an
    # entry that would take the public port a robot's mapping needs (see the module docstring).
    to_router = [
        f"iifname {wan} ct state established,related accept",
        f"iifname {wan} icmp type echo-request accept",
        f"iifname {wan} drop",
    ]
    chains = [
        _chain("input", "filter", "input", "filter", "accept", to_router),
        _chain("forward", "filter", "forward", "filter", "drop", forward),
    ]
    if kind is not NatKind.NONE:
        flags = " fully-random" if kind is NatKind.SYMMETRIC else ""
        masquerade = f"oifname {wan} ip saddr {lan_network} masquerade{flags}"
        chains.append(_chain("postrouting", "nat", "postrouting", "srcnat", "accept", [masquerade]))
    maps = []
    if kind is NatKind.ENDPOINT_INDEPENDENT:
        # Public port -> robot address and port, learnt after masquerade picked the public port.
        maps.append(
            "  map mappings {\n"
            "    type inet_service : ipv4_addr . inet_service\n"
            f"    flags dynamic, timeout; timeout {MAPPING_TIMEOUT};\n"
            "  }"
        )
        learn = (
            f"oifname {wan} meta l4proto udp ct direction original"
            " update @mappings { ct reply proto-dst : ct original ip saddr . ct original proto-src }"
        )
        chains.append(_chain("learn", "filter", "postrouting", "srcnat + 10", "accept", [learn]))
        deliver = f"iifname {wan} meta l4proto udp dnat ip addr . port to udp dport map @mappings"
        chains.append(_chain("deliver", "nat", "prerouting", "dstnat", "accept", [deliver]))
    body = "\n".join([*maps, *chains])
    return f"table ip {table} {{\n{body}\n}}\n"


def _chain(name: str, chain_type: str, hook: str, priority: str, policy: str, rules: list[str]) -> str:
    header = f"type {chain_type} hook {hook} priority {priority}; policy {policy};"
    lines = "".join(f"    {rule}\n" for rule in rules)
    return f"  chain {name} {{\n    {header}\n{lines}  }}"


class NatLab:
    """The internet (a bridge with public hosts) and sites behind routers, inside one :class:`Lab`."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.switch = Switch(lab._add_netns(INTERNET_SWITCH_SUFFIX), bridge=BRIDGE_IFNAME)
        lab.switches.append(self.switch)
        _add_bridge(self.switch.netns, self.switch.bridge)
        self.public_hosts: list[Host] = []
        self.sites: list[Site] = []

    @property
    def nft_table(self) -> str:
        """The name of every router's nftables table: unique to the lab."""
        return f"natlab_{self.lab.prefix}"

    # --- the internet ---------------------------------------------------------------
    def public_host(self, label: str | None = None) -> Host:
        """A host on the internet: 198.18.100.2, .3, ... in the order they are made."""
        if len(self.public_hosts) >= MAX_PUBLIC_HOSTS:
            raise LabError(f"the internet has room for {MAX_PUBLIC_HOSTS} public hosts")
        address = INTERNET_NETWORK.network_address + PUBLIC_HOST_OFFSET + len(self.public_hosts)
        host = self.lab._new_host(label)
        host.ipv4 = str(address)
        self._plug_into_internet(host, host.ifname)
        for site in self._routed_sites():
            self._route_to(host, site)
        self.public_hosts.append(host)
        self.lab.hosts.append(host)
        return host

    def _plug_into_internet(self, host: Host, ifname: str) -> None:
        port = f"p{len(self.switch.ports)}"
        _add_bridge_port(self.switch.netns, self.switch.bridge, port, host, ifname)
        self.switch.ports.append(port)
        _configure_interface(host, ifname, host.ipv4, INTERNET_NETWORK.prefixlen)

    def _routed_sites(self) -> list[Site]:
        """Sites whose LAN is reachable from the internet (no NAT)."""
        return [site for site in self.sites if site.kind is NatKind.NONE]

    @staticmethod
    def _route_to(host: Host, site: Site) -> None:
        host.run(["ip", "route", "add", site.lan_network, "via", site.wan_ipv4])

    # --- sites ------------------------------------------------------------------------
    def site(self, name: str, kind: NatKind, robots: int = 1) -> Site:
        """Site N (the next number): a router of ``kind`` and ``robots`` robots on 198.18.N.0/24."""
        index = len(self.sites) + 1
        if index > MAX_SITES:
            raise LabError(f"the NAT lab has room for {MAX_SITES} sites")
        if not 0 <= robots <= MAX_ROBOTS_PER_SITE:
            raise LabError(f"a site has 0..{MAX_ROBOTS_PER_SITE} robots, not {robots}")
        lan = ipaddress.IPv4Network(f"198.18.{index}.0/{SITE_PREFIX_LENGTH}")
        router = Host(
            self.lab,
            f"{name}-router",
            self.lab._add_netns(f"r{index}"),
            ipv4=str(INTERNET_NETWORK.network_address + ROUTER_WAN_OFFSET + index),
            ipv6="",
            ifname=WAN_IFNAME,
        )
        site = Site(
            name=name,
            index=index,
            kind=kind,
            router=router,
            lan_network=str(lan),
            lan_gateway=str(lan.network_address + ROUTER_LAN_OFFSET),
            nft_table=self.nft_table,
        )
        self._plug_into_internet(router, WAN_IFNAME)
        _add_bridge(router.netns, LAN_IFNAME)
        _configure_interface(router, LAN_IFNAME, site.lan_gateway, lan.prefixlen)
        router.sysctl("net.ipv4.ip_forward", 1)
        router.run(["nft", "-f", "-"], input=router_ruleset(site.nft_table, kind, site.lan_network))
        for other in self._routed_sites():
            self._route_to(router, other)
        if kind is NatKind.NONE:
            for host in [*self.public_hosts, *(other.router for other in self.sites)]:
                self._route_to(host, site)
        self.sites.append(site)
        for _ in range(robots):
            self.add_robot(site)
        return site

    def add_robot(self, site: Site, label: str | None = None) -> Host:
        """One more robot on ``site``'s LAN: 198.18.N.(10+i), default route via the router."""
        position = len(site.robots)
        if position >= MAX_ROBOTS_PER_SITE:
            raise LabError(f"a site has at most {MAX_ROBOTS_PER_SITE} robots")
        robot = self.lab._new_host(label or f"{site.name}-robot{position}")
        lan = ipaddress.IPv4Network(site.lan_network)
        robot.ipv4 = str(lan.network_address + HOST_ADDRESS_OFFSET + position)
        _add_bridge_port(site.router.netns, LAN_IFNAME, f"p{position}", robot, robot.ifname)
        _configure_interface(robot, robot.ifname, robot.ipv4, lan.prefixlen)
        robot.run(["ip", "route", "add", "default", "via", site.lan_gateway])
        site.robots.append(robot)
        self.lab.hosts.append(robot)
        return robot
