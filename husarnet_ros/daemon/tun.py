"""The overlay's TUN device: created with pytun, configured through netlink (pyroute2)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket

import pytun
from pyroute2 import IPRoute

from ..core.constants import MAX_DATAGRAM, OVERLAY_PREFIX_LEN
from ..core.errors import HusarnetError
from .in_use import in_use_message

IFA_F_NODAD = 0x02  # linux/if_addr.h: the overlay address is unique by construction, skip DAD


class TunError(HusarnetError):
    """The TUN device could not be created or configured."""


class Tun:
    """An L3 TUN device without packet info: each read/write is one IPv6 packet."""

    def __init__(self, name: str, address: bytes, mtu: int) -> None:
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            raise _open_error(name, exc) from None
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        try:
            configure_interface(self.name, address, mtu)
        except Exception:
            self._dev.close()
            raise

    def read(self, size: int = MAX_DATAGRAM) -> bytes:
        return os.read(self.fd, size)

    def write(self, packet: bytes) -> None:
        os.write(self.fd, packet)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._dev.close()


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_error(name: str, exc: pytun.Error) -> TunError:
    # EBUSY: a TUN device of that name is open in another process (Husarnet's daemon, another husarnet-ros
    # daemon); EINVAL: an interface of that name exists but is not a plain TUN device (TAP, veth, multiqueue).
    if exc.errno in (errno.EBUSY, errno.EINVAL) and _interface_exists(name):
        return TunError(
            in_use_message(f"interface {name}", "choose another interface name with --interface")
        )
    reason = exc.strerror or str(exc)
    return TunError(f"cannot create TUN device {name!r}: {reason} (needs root, CAP_NET_ADMIN, /dev/net/tun)")


def configure_interface(name: str, address: bytes, mtu: int) -> None:
    """Set MTU, add the overlay address as fc94::/16 (which installs the route) and bring it up."""
    text = str(ipaddress.IPv6Address(address))
    try:
        with IPRoute() as ipr:
            links = ipr.link_lookup(ifname=name)
            if not links:
                raise TunError(f"interface {name} vanished while configuring it")
            index = links[0]
            ipr.link("set", index=index, mtu=mtu)
            ipr.addr("add", index=index, address=text, prefixlen=OVERLAY_PREFIX_LEN, IFA_FLAGS=IFA_F_NODAD)
            ipr.link("set", index=index, state="up")
    except TunError:
        raise
    except Exception as exc:  # pyroute2 raises NetlinkError and others
        raise TunError(f"cannot configure {name} with {text}/{OVERLAY_PREFIX_LEN}: {exc}") from None
