"""The few rtnetlink requests that configure the overlay interface: MTU, queue length, address, up.

Written out by hand (as ``netwatch.py`` reads its messages) rather than through pyroute2: importing
pyroute2 took ~110 ms and 12-15 MB of the daemon's start-up and memory for three requests. Each request
asks for an acknowledgement and a refusal raises OSError with the kernel's errno.
"""

from __future__ import annotations

import os
import socket
import struct

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLMSG_ERROR = 0x2
_RTM_NEWLINK = 16
_RTM_NEWADDR = 20
_IFLA_MTU = 4
_IFLA_TXQLEN = 13
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_FLAGS = 8
_IFF_UP = 0x1

_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change mask
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_ATTRIBUTE = struct.Struct("=HH")  # length, type
_ERROR = struct.Struct("=i")


def _attribute(kind: int, value: bytes) -> bytes:
    size = _ATTRIBUTE.size + len(value)
    return _ATTRIBUTE.pack(size, kind) + value + bytes(-size % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attribute(kind, struct.pack("=I", value))


class Rtnetlink:
    """A NETLINK_ROUTE socket for requests; use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sequence = 0

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._sock.close()

    def set_link(
        self, index: int, *, mtu: int | None = None, txqlen: int | None = None, up: bool = False
    ) -> None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, _IFF_UP if up else 0, _IFF_UP if up else 0)
        if mtu is not None:
            body += _u32(_IFLA_MTU, mtu)
        if txqlen is not None:
            body += _u32(_IFLA_TXQLEN, txqlen)
        self._request(_RTM_NEWLINK, 0, body)

    def add_address(self, index: int, address: bytes, prefix_len: int, flags: int = 0) -> None:
        """Add an IPv6 address (16 bytes) to interface ``index``; ``flags``: IFA_F_* (e.g. NODAD)."""
        body = _IFADDRMSG.pack(socket.AF_INET6, prefix_len, flags & 0xFF, 0, index)
        body += _attribute(_IFA_LOCAL, address) + _attribute(_IFA_ADDRESS, address) + _u32(_IFA_FLAGS, flags)
        self._request(_RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, body)

    def _request(self, kind: int, flags: int, body: bytes) -> None:
        self._sequence += 1
        header = _HEADER.pack(
            _HEADER.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, self._sequence, 0
        )
        self._sock.sendto(header + body, (0, 0))
        while True:  # skip anything that is not the answer to this request
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, answer, _, sequence, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise OSError(0, "malformed netlink answer")
                if answer == _NLMSG_ERROR and sequence == self._sequence:
                    (error,) = _ERROR.unpack_from(data, offset + _HEADER.size)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return
                offset += (length + 3) & ~3
