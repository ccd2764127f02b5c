"""The peer named in a service request (address and/or hostname), checked before the daemon is asked.

Pure: the whitelist node turns an ``InvalidPeerRequest`` into ``success=false`` and its message, so a
malformed request never raises out of a service callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api import MAX_PING_TIMEOUT_S, MIN_PING_TIMEOUT_S, normalize_overlay
from ..core.errors import AddressError, HusarnetError
from ..core.hosts import HostnameError, normalize_hostname

# Longer input is not an address nor a hostname; cut it so a message never echoes a megabyte back.
_MAX_ECHO = 80
# The daemon's default reply timeout, used when a Ping request gives zero or less.
DEFAULT_PING_TIMEOUT_S = 2.0


class InvalidPeerRequest(HusarnetError, ValueError):
    """A service request whose peer cannot be understood; the message says why, for the caller."""


def _echo(text: str) -> str:
    return repr(text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "...")


@dataclass(frozen=True)
class PeerTarget:
    """A peer as the caller named it: canonical address and/or lower-case hostname."""

    address: str | None
    hostname: str | None

    def describe(self) -> str:
        if self.address and self.hostname:
            return f"{self.address} ({self.hostname})"
        return self.address or self.hostname or "?"


def parse_peer_target(address: str, hostname: str) -> PeerTarget:
    """Check the ``address`` / ``hostname`` fields of a request; InvalidPeerRequest when malformed."""
    address, hostname = address.strip(), hostname.strip()
    if not address and not hostname:
        raise InvalidPeerRequest("give the peer's overlay address (fc94::/16), its hostname, or both")
    canonical: str | None = None
    if address:
        if len(address) > _MAX_ECHO:
            raise InvalidPeerRequest(f"address {_echo(address)} is too long to be an IPv6 address")
        try:
            canonical = normalize_overlay(address)
        except AddressError as exc:
            hint = "" if ":" in address else " (to name the peer, use the hostname field)"
            raise InvalidPeerRequest(f"invalid address: {exc}{hint}") from None
    name: str | None = None
    if hostname:
        try:
            name = normalize_hostname(hostname)
        except HostnameError as exc:
            if ":" in hostname and len(hostname) <= _MAX_ECHO:
                raise InvalidPeerRequest(
                    f"invalid hostname: {_echo(hostname)} looks like an IPv6 address: use the address field"
                ) from None
            text = str(exc) if len(hostname) <= _MAX_ECHO else f"hostname {_echo(hostname)} is too long"
            raise InvalidPeerRequest(f"invalid hostname: {text}") from None
    return PeerTarget(canonical, name)


def ping_timeout(timeout_s: float) -> float:
    """The reply timeout of a Ping request: zero or less is the default; out of range is refused."""
    if math.isnan(timeout_s):
        raise InvalidPeerRequest("timeout_s must be a number, got NaN")
    if timeout_s <= 0:
        return DEFAULT_PING_TIMEOUT_S
    if timeout_s < MIN_PING_TIMEOUT_S or timeout_s > MAX_PING_TIMEOUT_S:
        raise InvalidPeerRequest(
            f"timeout_s must be between {MIN_PING_TIMEOUT_S:g} and {MAX_PING_TIMEOUT_S:g} s "
            f"(or 0 for the default {DEFAULT_PING_TIMEOUT_S:g} s), got {timeout_s:g}"
        )
    return timeout_s
