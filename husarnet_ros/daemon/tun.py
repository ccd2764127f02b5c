"""The overlay's TUN device: opened through /dev/net/tun, configured through rtnetlink.

With offloads requested, the device is opened with a virtio-net header on every read and write
(``IFF_VNET_HDR``) and told it may hand over TCP/IPv6 packets of up to 64 KB and leave checksums partial
(``TUNSETOFFLOAD``): the kernel then does one read where it did ~48. Where the kernel also takes UDP
segmentation offload (Linux 6.2+), it is offered too: the daemon then writes a run of equal UDP datagrams as
one packet, and must cut the UDP GSO packets an application sends (``UDP_SEGMENT``) itself. A kernel that
refuses gets the plain device (one IPv6 packet per read, nothing in front); ``offload`` and ``udp_offload``
say which one this is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct

from ..core.constants import OVERLAY_PREFIX_LEN
from ..core.errors import HusarnetError
from .in_use import in_use_message
from .rtnetlink import Rtnetlink

IFA_F_NODAD = 0x02  # linux/if_addr.h: the overlay address is unique by construction, skip DAD

# linux/if_tun.h
_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_TUN_F_CSUM = 0x01
_TUN_F_TSO6 = 0x04
_TUN_F_USO4 = 0x20
_TUN_F_USO6 = 0x40  # the kernel takes UDP segmentation only with both (tun.c: set_offload)
# Packets arrive as big as the kernel's TSO allows (64 KB, plus the virtio header); reads use this size.
OFFLOAD_READ_SIZE = 65536 + 256
# How many packets the kernel queues for the daemon before dropping: a 1 MB DDS message is ~800 packets,
# sent at once; the default (500) dropped the tail of every such burst.
TX_QUEUE_LEN = 8192


class TunError(HusarnetError):
    """The TUN device could not be created or configured."""


class Tun:
    """An L3 TUN device without packet info. ``offload``: every read and write carries a virtio-net header
    (core/offload.py) and reads may be TSO packets; ``udp_offload``: reads and writes may also be UDP GSO
    packets (``GSO_UDP_L4``); otherwise each read/write is one IPv6 packet."""

    def __init__(self, name: str, address: bytes, mtu: int, *, offload: bool = False) -> None:
        self.offload = False
        self.udp_offload = False
        fd = -1
        if offload:
            fd, name = _open(name, _IFF_TUN | _IFF_NO_PI | _IFF_VNET_HDR)
            self.udp_offload = _set_offload(fd, _TUN_F_CSUM | _TUN_F_TSO6 | _TUN_F_USO4 | _TUN_F_USO6)
            self.offload = self.udp_offload or _set_offload(fd, _TUN_F_CSUM | _TUN_F_TSO6)
            if not self.offload:  # an old kernel: the plain device below
                os.close(fd)
                fd = -1
        if fd < 0:
            fd, name = _open(name, _IFF_TUN | _IFF_NO_PI)
        self.fd = fd
        self.name = name
        try:
            configure_interface(self.name, address, mtu)
        except Exception:
            os.close(fd)
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _set_offload(fd: int, flags: int) -> bool:
    """Offer the kernel these offloads; False if it does not know one of them (EINVAL)."""
    try:
        fcntl.ioctl(fd, _TUNSETOFFLOAD, flags)
    except OSError:
        return False
    return True


def _open(name: str, flags: int) -> tuple[int, str]:
    """A file descriptor on the TUN device ``name`` (created if needed) and the name the kernel gave it."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(name, exc) from None
    try:
        answer = fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        raise _open_error(name, exc) from None
    return fd, answer[:16].rstrip(b"\0").decode()


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_error(name: str, exc: OSError) -> TunError:
    # EBUSY: a TUN device of that name is open in another process (Husarnet's daemon, another husarnet-ros
    # daemon); EINVAL: an interface of that name exists but is not a plain TUN device (TAP, veth, multiqueue).
    if exc.errno in (errno.EBUSY, errno.EINVAL) and _interface_exists(name):
        return TunError(in_use_message(f"interface {name}", "choose another interface name with --interface"))
    reason = exc.strerror or str(exc)
    return TunError(f"cannot create TUN device {name!r}: {reason} (needs root, CAP_NET_ADMIN, /dev/net/tun)")


def configure_interface(name: str, address: bytes, mtu: int) -> None:
    """Set MTU and queue length, add the overlay address as fc94::/16 (which installs the route) and bring
    the interface up."""
    text = str(ipaddress.IPv6Address(address))
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        raise TunError(f"interface {name} vanished while configuring it") from None
    try:
        with Rtnetlink() as netlink:
            netlink.set_link(index, mtu=mtu, txqlen=TX_QUEUE_LEN)
            netlink.add_address(index, address, OVERLAY_PREFIX_LEN, IFA_F_NODAD)
            netlink.set_link(index, up=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TunError(f"cannot configure {name} with {text}/{OVERLAY_PREFIX_LEN}: {reason}") from None
