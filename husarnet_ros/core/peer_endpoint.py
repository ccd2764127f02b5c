"""A peer's static endpoint, like WireGuard's ``Endpoint``: where a peer can be reached with no discovery and
no base server (a robot with a reachable address on another network).

Written ``host:port``, ``[IPv6]:port`` or ``host`` (port 5582, the daemon's default); the host is an IP
address or a DNS name. This module only parses and spells them one way: the daemon resolves names (at
apply time, and again every 30 s while they fail), so nothing here does I/O.

Used by the daemon's API and state directory (``husarnet-ros endpoint``) and by the fleet file
(``endpoint:`` / ``endpoints:`` of a robot).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .address import format_address, is_overlay, parse_overlay
from .constants import DEFAULT_UDP_PORT
from .errors import ConfigError

# core.peer.Endpoint, not imported: the CLI's client imports this module and must not load the protocol.
Endpoint = tuple[str, int]

DEFAULT_PEER_PORT = DEFAULT_UDP_PORT
# Limits: a few ways to reach one peer (its IPv4 and IPv6 addresses, a name), and a bound on the whole table
# (each one is a pinned candidate the node probes).
MAX_STATIC_ENDPOINTS_PER_PEER = 4
MAX_STATIC_ENDPOINTS = 1024
MAX_ENDPOINT_CHARS = 300  # a DNS name is at most 253 characters; longer input is cut in messages
# DNS labels of letters, digits, '-' and '_' (getaddrinfo looks those up), dots between them.
_DNS_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")
_ALL_DIGITS = re.compile(r"[0-9]+")


class EndpointError(ConfigError, ValueError):
    """A static endpoint that does not parse; the message quotes it and says what is wrong."""


@dataclass(frozen=True, order=True)
class PeerEndpoint:
    """A parsed static endpoint: ``host`` is an IP address in its compressed form or a lower-case DNS name."""

    host: str
    port: int

    @property
    def text(self) -> str:
        """The one spelling: ``host:port`` or ``[IPv6]:port``, the port always written."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_name(self) -> bool:
        """True for a DNS name (the daemon resolves it), False for an IP address."""
        return not is_ip(self.host)

    def address_endpoint(self) -> Endpoint | None:
        """The UDP endpoint of an IP address; None for a name (it needs resolving first)."""
        return None if self.is_name else (self.host, self.port)


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:59] + "…")


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _split(value: str, original: str) -> tuple[str, str]:
    """(host, port text) of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise EndpointError(f"endpoint {_quoted(original)}: expected [IPv6 address]:port")
        if rest == ":":
            raise EndpointError(f"endpoint {_quoted(original)}: empty port after ':'")
        return host, rest[1:]
    if value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text:
            raise EndpointError(f"endpoint {_quoted(original)}: empty port after ':'")
        return host, port_text
    if ":" in value:
        raise EndpointError(
            f"endpoint {_quoted(original)}: an IPv6 address with a port is written [address]:port "
            "(the brackets are needed)"
        )
    return value, ""


def _canonical_ip(host: str, original: str) -> str:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise EndpointError(f"endpoint {_quoted(original)}: {ip} is not the address of one host")
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local:
        raise EndpointError(
            f"endpoint {_quoted(original)}: a link-local address needs an interface; peers on the same "
            "link are found by discovery"
        )
    if isinstance(ip, ipaddress.IPv6Address) and is_overlay(ip.packed):
        raise EndpointError(
            f"endpoint {_quoted(original)}: {ip} is an overlay address; give the peer's underlay address"
        )
    return str(ip)


def parse_peer_endpoint(text: str) -> PeerEndpoint:
    """``host``, ``host:port``, ``[IPv6]:port`` (or a bare IPv6 address) -> PeerEndpoint; EndpointError if
    not. No lookup: a name stays a name."""
    value = text.strip()
    if not value:
        raise EndpointError("endpoint: empty (expected host:port, [IPv6]:port or host)")
    if len(value) > MAX_ENDPOINT_CHARS:
        raise EndpointError(f"endpoint {_quoted(value)}: too long ({len(value)} characters)")
    if ":" in value and not value.startswith("[") and value.count(":") > 1 and is_ip(value):
        host, port_text = value, ""  # a bare IPv6 address: the default port
    else:
        host, port_text = _split(value, text)
    if not host:
        raise EndpointError(f"endpoint {_quoted(text)}: no host")
    if port_text and not _ALL_DIGITS.fullmatch(port_text):
        raise EndpointError(f"endpoint {_quoted(text)}: port {_quoted(port_text)} is not a number")
    port = int(port_text) if port_text else DEFAULT_PEER_PORT
    if not 0 < port < 65536:
        raise EndpointError(f"endpoint {_quoted(text)}: port {port} is out of range 1-65535")
    if is_ip(host):
        return PeerEndpoint(_canonical_ip(host, text), port)
    if value.startswith("["):
        raise EndpointError(f"endpoint {_quoted(text)}: {_quoted(host)} in brackets is not an IPv6 address")
    name = host.lower().removesuffix(".")  # DNS names are case-insensitive: one endpoint, one spelling
    last_label = name.rpartition(".")[2]
    if not _DNS_NAME.fullmatch(name) or _ALL_DIGITS.fullmatch(last_label):
        raise EndpointError(
            f"endpoint {_quoted(text)}: {_quoted(host)} is neither an IP address nor a valid host name"
        )
    return PeerEndpoint(name, port)


def endpoint_name(text: str) -> str:
    """The one spelling of a static endpoint (``parse_peer_endpoint(text).text``); EndpointError if none."""
    return parse_peer_endpoint(text).text


class StaticEndpoint(BaseModel):
    """One static endpoint of one peer, as the control API lists it and the state directory keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    address: str = Field(description="the peer's overlay address (fc94::/16)", max_length=100)
    endpoint: str = Field(
        description="where it is reached: host:port or [IPv6]:port (host an IP address or a DNS name)",
        max_length=MAX_ENDPOINT_CHARS,
    )

    @field_validator("address")
    @classmethod
    def _canonical_address(cls, value: str) -> str:
        return format_address(parse_overlay(value))

    @field_validator("endpoint")
    @classmethod
    def _canonical_endpoint(cls, value: str) -> str:
        return endpoint_name(value)

    @property
    def key(self) -> tuple[str, str]:
        return (self.address, self.endpoint)


def check_limits(entries: list[StaticEndpoint]) -> None:
    """EndpointError when ``entries`` hold more than the per-peer or total limit."""
    if len(entries) > MAX_STATIC_ENDPOINTS:
        raise EndpointError(f"{len(entries)} static endpoints: at most {MAX_STATIC_ENDPOINTS} in all")
    per_peer: dict[str, int] = {}
    for entry in entries:
        per_peer[entry.address] = per_peer.get(entry.address, 0) + 1
        if per_peer[entry.address] > MAX_STATIC_ENDPOINTS_PER_PEER:
            raise EndpointError(
                f"peer {entry.address}: more than {MAX_STATIC_ENDPOINTS_PER_PEER} static endpoints"
            )
