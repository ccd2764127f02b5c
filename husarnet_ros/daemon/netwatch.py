"""Notices when this host's links or addresses change (netlink), so paths are re-checked at once.

A robot that moves between access points, gets a new DHCP lease or has a cable re-plugged would
otherwise wait for its peers' dead-path detection; with this, the daemon tells every peer where it is
now (an authenticated keepalive from the new source) the moment the kernel reports the change, and
sends its LAN beacons again.
"""

from __future__ import annotations

import contextlib
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

log = logging.getLogger(__name__)

_EVENTS = {"RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWADDR", "RTM_DELADDR"}


class NetworkWatch:
    """A netlink socket subscribed to link and address changes; ``fileno()`` goes into select()."""

    def __init__(self, ignored_interface: str) -> None:
        self._ignored = ignored_interface
        self._ipr = IPRoute()
        try:
            self._ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        except Exception:
            self._ipr.close()
            raise

    def fileno(self) -> int:
        return int(self._ipr.fileno())

    def changed(self) -> bool:
        """Read what is pending; True if a link or address of another interface than the overlay changed."""
        try:
            messages = self._ipr.get()
        except (BlockingIOError, InterruptedError):
            return False
        except Exception as exc:  # pyroute2 can fail to parse an odd message: treat it as a change
            log.debug("netlink read failed: %s", exc)
            return True
        for message in messages:
            if message.get("event") not in _EVENTS:
                continue
            index = message.get("index")
            try:
                name = socket.if_indextoname(index) if index else None
            except OSError:  # the interface is already gone: a change of ours too
                name = None
            if name != self._ignored:
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ipr.close()
