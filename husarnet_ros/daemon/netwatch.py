"""Notices when this host's links or addresses change (rtnetlink), so paths are re-checked at once.

A robot that moves between access points, gets a new DHCP lease or has a cable re-plugged would
otherwise wait for its peers' dead-path detection; with this, the daemon tells every peer where it is
now (an authenticated keepalive from the new source) the moment the kernel reports the change, and
sends its LAN beacons again.

A plain non-blocking netlink socket read to the end on every wake-up: only the message type and the
interface index are needed, and a reader that buffers messages internally (as pyroute2's does) would
leave some unseen by select() until the next change, seconds later.
"""

from __future__ import annotations

import contextlib
import socket
import struct

# linux/rtnetlink.h
_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100
_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_DELADDR = 16, 17, 20, 21
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG_INDEX = struct.Struct("=4xi")  # family, pad, type | index
_IFADDRMSG_INDEX = struct.Struct("=4xI")  # family, prefix length, flags, scope | index
_READ_SIZE = 65536
_MAX_READS = 64  # per wake-up: a storm of messages cannot hold the control loop


class NetworkWatch:
    """A netlink socket subscribed to link and address changes; ``fileno()`` goes into select()."""

    def __init__(self, ignored_interface: str) -> None:
        self._ignored = ignored_interface
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def changed(self) -> bool:
        """Read everything pending; True if a link or an address of another interface than the overlay
        changed (or messages were lost, which may have hidden one)."""
        changed = False
        for _ in range(_MAX_READS):
            try:
                data = self._sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ENOBUFS: the kernel dropped messages for us; assume the worst
                changed = True
                continue
            changed |= self._any_change(data)
        return changed

    def _any_change(self, data: bytes) -> bool:
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
            if length < _NLMSG_HEADER.size:
                return True  # malformed: do not trust the rest, re-check paths anyway
            body = offset + _NLMSG_HEADER.size
            index = None
            if kind in (_RTM_NEWLINK, _RTM_DELLINK) and body + _IFINFOMSG_INDEX.size <= len(data):
                (index,) = _IFINFOMSG_INDEX.unpack_from(data, body)
            elif kind in (_RTM_NEWADDR, _RTM_DELADDR) and body + _IFADDRMSG_INDEX.size <= len(data):
                (index,) = _IFADDRMSG_INDEX.unpack_from(data, body)
            if index is not None and self._interface(index) != self._ignored:
                return True
            offset += (length + 3) & ~3  # messages are 4-byte aligned
        return False

    @staticmethod
    def _interface(index: int) -> str | None:
        try:
            return socket.if_indextoname(index)
        except OSError:  # already gone: a change of ours too
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
