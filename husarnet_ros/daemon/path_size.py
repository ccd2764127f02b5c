"""How large a datagram the kernel would send to an endpoint without fragmenting it.

The node (core/node.py) probes a path with a padded datagram of this size before it cuts TCP into segments
that fill it; this is only the upper bound the local side knows: the route's interface MTU, or a smaller path
MTU the kernel learned from an ICMP "too big". A connected socket of the endpoint's family reports it
(``IP_MTU`` / ``IPV6_MTU``); nothing is sent.
"""

from __future__ import annotations

import socket

from ..core.peer import Endpoint
from .transport import socket_target

# linux/in.h and linux/in6.h; Python 3.11 names neither.
_IP_MTU = 14
_IPV6_MTU = 24
_IPV4_UDP_HEADERS = 20 + 8
_IPV6_UDP_HEADERS = 40 + 8


def interface_limit(endpoint: Endpoint) -> int:
    """The largest UDP payload of a datagram to ``endpoint`` (an address, as the transport names endpoints)
    that leaves unfragmented; 0 if the kernel cannot say (no route, an interface gone)."""
    host = endpoint[0]
    ipv4 = "." in host and ":" not in host
    try:
        with socket.socket(socket.AF_INET if ipv4 else socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            if ipv4:
                sock.connect(endpoint)
                mtu = sock.getsockopt(socket.IPPROTO_IP, _IP_MTU)
            else:
                sock.connect(socket_target(endpoint))
                mtu = sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU)
    except (OSError, ValueError):
        return 0
    return max(0, mtu - (_IPV4_UDP_HEADERS if ipv4 else _IPV6_UDP_HEADERS))
