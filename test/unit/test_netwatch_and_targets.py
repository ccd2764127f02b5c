"""Two small pieces that decide whether link-local paths survive a link flap: the sockaddr a link-local
endpoint becomes (its interface must be the scope *field*), and reading rtnetlink change messages."""

from __future__ import annotations

import socket
import struct

from husarnet_ros.daemon.netwatch import NetworkWatch
from husarnet_ros.daemon.transport import socket_target


def test_a_link_local_endpoint_carries_its_interface_as_the_scope_id() -> None:
    loopback = socket.if_nametoindex("lo")
    assert socket_target(("fe80::1%lo", 5582)) == ("fe80::1", 5582, 0, loopback)
    assert socket_target(("fe80::1%7", 5582)) == ("fe80::1", 5582, 0, 7)


def test_other_endpoints_keep_no_scope() -> None:
    assert socket_target(("198.18.0.10", 5582)) == ("::ffff:198.18.0.10", 5582, 0, 0)
    assert socket_target(("fd00:98::10", 5582)) == ("fd00:98::10", 5582, 0, 0)


def test_a_vanished_interface_is_no_crash() -> None:
    assert socket_target(("fe80::1%no-such-if0", 5582)) == ("fe80::1", 5582, 0, 0)


def _message(kind: int, index: int) -> bytes:
    if kind in (16, 17):  # ifinfomsg: family, pad, type, index, flags, change
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, 0, 0)
    else:  # ifaddrmsg: family, prefix length, flags, scope, index
        body = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, index)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_changes_of_other_interfaces_count_and_the_overlays_own_do_not() -> None:
    loopback = socket.if_nametoindex("lo")
    watch = NetworkWatch.__new__(NetworkWatch)
    watch._ignored = "lo"  # stands for the overlay interface here
    for kind in (16, 17, 20, 21):
        assert not watch._any_change(_message(kind, loopback))
        assert watch._any_change(_message(kind, 999_999))  # an interface already gone counts too
    assert watch._any_change(_message(20, loopback) + _message(21, 999_999))
    assert not watch._any_change(_message(2, 999_999))  # not a link or address message
    assert watch._any_change(struct.pack("=IHHII", 4, 16, 0, 0, 0))  # malformed: re-check anyway
