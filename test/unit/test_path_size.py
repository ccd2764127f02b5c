"""daemon/path_size.py: the kernel's bound on a datagram's size towards an endpoint, asked without sending."""

from __future__ import annotations

from pathlib import Path

from husarnet_ros.daemon.path_size import interface_limit


def _loopback_mtu() -> int:
    return int(Path("/sys/class/net/lo/mtu").read_text())


def test_the_bound_is_the_route_interfaces_mtu_less_the_ip_and_udp_headers() -> None:
    assert interface_limit(("::1", 5582)) == _loopback_mtu() - 40 - 8
    # IPv4 caps a route's MTU at 65535 bytes (an IPv4 packet's length field); loopback's is larger.
    assert interface_limit(("127.0.0.1", 5582)) == min(_loopback_mtu(), 65535) - 20 - 8


def test_no_route_or_no_interface_is_zero_not_an_error() -> None:
    assert interface_limit(("fe80::1%no-such-if0", 5582)) == 0
    assert interface_limit(("fe80::1", 5582)) == 0  # link-local without an interface: no route
    assert interface_limit(("not an address", 5582)) == 0
