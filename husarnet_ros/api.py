"""Models of the daemon's control API, shared by the server (daemon/control.py) and the client (client.py).

Every address in these models is an overlay address (fc94::/16) in canonical compressed text form: the
validators normalise whatever the caller wrote (``FC94:0::1`` becomes ``fc94::1``), so two spellings of one
address always compare equal.

Error messages quote what the user sent shortened (``quote_input``), and are bounded as a whole
(``bound_message``): an error must never echo a 10,000-character argument or a 50 MB body.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .core.address import format_address, parse_overlay
from .core.errors import AddressError
from .core.hosts import MAX_HOSTNAME_LENGTH, HostnameError, normalize_hostname

# The one place that knows where the control socket lives by default (daemon config, client, CLI, docs).
DEFAULT_CONTROL_SOCKET = Path("/run/husarnet-ros/control.sock")
MAX_UNIX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL
CONTROL_SOCKET_ENV = "HUSARNET_ROS_CONTROL_SOCKET"
# `husarnet-ros join` reads its code from here when none is given (the launch passes it so: no command line).
JOIN_CODE_ENV = "HUSARNET_ROS_JOIN_CODE"
API_PREFIX = "/v1"

# Limits of request parameters, so one request cannot tie up the daemon for long.
MAX_PING_COUNT = 1000
MIN_PING_INTERVAL_S = 0.01
MAX_PING_INTERVAL_S = 60.0
MIN_PING_TIMEOUT_S = 0.01
MAX_PING_TIMEOUT_S = 60.0
MAX_WAIT_TIMEOUT_S = 3600.0
MAX_LOG_LINES = 10_000

# A value the user gave, quoted in an error message, is cut to this many characters.
MAX_QUOTED_CHARS = 80
# An error message as a whole (it may quote several values, or come from an older daemon).
MAX_MESSAGE_CHARS = 400
# The longest text form of an IPv6 address is 45 characters; leave room for a scope or stray spaces.
_MAX_ADDRESS_CHARS = 64
_ELLIPSIS = "…"
_LONG_WORD = re.compile(rf"\S{{{MAX_QUOTED_CHARS + 1},}}")


def shorten(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis if it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def quote_input(text: str) -> str:
    """A value the user gave, quoted for an error message: ``'robot2'``, or ``'xxxx…'`` if it is long."""
    return repr(shorten(text))


def bound_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` made safe to show whatever it quotes: each word longer than MAX_QUOTED_CHARS (a value
    the user gave, most likely) is cut, keeping its last character (a closing quote); then the whole is cut
    in the middle to ``limit`` characters, since the start says what and the end usually why."""
    message = _LONG_WORD.sub(lambda word: word[0][: MAX_QUOTED_CHARS - 2] + _ELLIPSIS + word[0][-1], message)
    if len(message) <= limit:
        return message
    tail = limit // 3
    return message[: limit - tail - 1] + _ELLIPSIS + message[-tail:]


# How many validation errors one 422 answer lists (a body with 10,000 unknown keys has 10,000 of them).
MAX_LISTED_ERRORS = 5


def describe_validation_errors(errors: Sequence[Mapping[str, Any]], whole: str = "request") -> str:
    """One line naming each bad field of a request and why, e.g. "address: 'x' is not an IPv6 address", for
    the HTTP services (the daemon's control API, Websetup). ``errors`` are pydantic's; ``whole`` names a
    problem with the request as a whole. Never the rejected input itself (pydantic keeps it in ``input``):
    only field names, shortened since a client chooses the names of unknown fields too, and the validators'
    messages, which quote shortened."""
    parts = []
    for err in errors[:MAX_LISTED_ERRORS]:
        if err.get("type") == "json_invalid":
            parts.append("the request body is not valid JSON")
            continue
        if err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",):
            parts.append("the request needs a JSON body")
            continue
        loc = ".".join(shorten(str(p), 40) for p in err.get("loc", ()) if p != "body") or whole
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {message}")
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return "invalid request: " + "; ".join(parts)


def resolve_control_socket(explicit: str | None = None) -> str:
    """The control socket to use: an explicit path, else $HUSARNET_ROS_CONTROL_SOCKET, else the default."""
    if explicit:
        return explicit
    return os.environ.get(CONTROL_SOCKET_ENV) or str(DEFAULT_CONTROL_SOCKET)


def normalize_overlay(text: str) -> str:
    """Canonical text of an overlay address; AddressError (a ValueError) if it is not one."""
    stripped = text.strip()
    if len(stripped) > _MAX_ADDRESS_CHARS:  # the core's message would quote all of it, twice
        raise AddressError(f"{quote_input(stripped)} is not an IPv6 address ({len(stripped)} characters)")
    return format_address(parse_overlay(text))


def validate_hostname(text: str) -> str:
    """The host name, lower-cased; HostnameError (a ValueError) if it is not a valid RFC 1123 name.

    Shared with the hosts file writer, so the API never accepts a name the hosts file would refuse.
    """
    name = text.strip()
    if len(name) > MAX_HOSTNAME_LENGTH:
        raise HostnameError(
            f"hostname {quote_input(name)} is {len(name)} characters long, at most {MAX_HOSTNAME_LENGTH} "
            "are allowed"
        )
    try:
        return normalize_hostname(text)
    except HostnameError as exc:
        # The core quotes the name (and a bad label) in full; a valid-length name is still 253 characters.
        message = str(exc)
        for value in (text, *name.lower().split(".")):
            if len(value) > MAX_QUOTED_CHARS:
                message = message.replace(repr(value), quote_input(value))
        raise HostnameError(message) from None


OverlayAddress = Annotated[str, AfterValidator(normalize_overlay)]
Hostname = Annotated[str, AfterValidator(validate_hostname)]
PeerPath = Literal["direct", "tunnelled", "none"]


class _Model(BaseModel):
    # Unknown fields are rejected so a typo in a request is an error, not a silent no-op.
    model_config = ConfigDict(extra="forbid")


# --- responses ---------------------------------------------------------------------------------------------


class PeerStatus(_Model):
    """One peer as the daemon sees it."""

    address: OverlayAddress
    hostname: str | None = None
    path: PeerPath = "none"
    endpoint: str | None = Field(
        default=None, description="underlay endpoint of a direct path, e.g. 198.18.0.2:5582"
    )
    base_server: str | None = Field(default=None, description="base server relaying a tunnelled path")
    rtt_ms: float | None = Field(default=None, description="latest authenticated round-trip time")
    max_datagram: int | None = Field(
        default=None,
        description="largest datagram a size probe showed the path to carry, when larger than the overlay "
        "MTU needs: TCP to this peer goes in segments that fill it (null: segments of the overlay's MSS)",
    )
    last_handshake: float | None = Field(
        default=None, description="unix time of the last completed handshake"
    )
    last_seen: float | None = Field(
        default=None, description="unix time anything authenticated was last received"
    )
    rx_bytes: int = 0
    tx_bytes: int = 0
    whitelisted: bool = False
    state: str = Field(default="idle", description="e.g. established, handshaking, idle")


class DataPlaneStatus(_Model):
    """Which kernel offloads the data plane negotiated at start (each falls back on its own)."""

    mtu: int = 0
    offload: bool = Field(default=False, description="offloads requested (daemon --offload)")
    tun_offload: bool = Field(default=False, description="TUN hands over and takes TCP segments up to 64 KB")
    tun_udp_offload: bool = Field(
        default=False, description="TUN takes runs of UDP datagrams as one packet (Linux 6.2+)"
    )
    udp_gso: bool = Field(default=False, description="several datagrams leave in one send (UDP_SEGMENT)")
    udp_gro: bool = Field(default=False, description="several datagrams arrive in one receive (UDP_GRO)")


class BaseServerStatus(_Model):
    """One configured base server as this daemon sees it."""

    address: str = Field(description="as configured, host:port")
    transport: str = Field(default="udp", description="udp or tcp")
    state: str = Field(description="connecting, registered or down")
    home: bool = Field(default=False, description="the one used for rendezvous and relay")
    rtt_ms: float | None = None
    observed_endpoint: str | None = Field(
        default=None, description="this node's endpoint as the base server sees it (its NAT's public side)"
    )


class LicenseInfo(_Model):
    """The Dashboard this daemon is set up with (its pinned license) and where its Websetup client stands."""

    name: str = Field(description="the installation's name, as its Dashboard shows it")
    installation_id: str
    fingerprint: str = Field(description="SHA256:... of the license key; compare it with the Dashboard's")
    dashboard_url: str
    base_servers: list[str] = Field(default_factory=list)
    websetup_address: OverlayAddress
    websetup_port: int
    valid_until: str = Field(description="UTC, e.g. 2026-12-01T00:00:00Z")
    expired: bool = Field(default=False, description="an expired license is kept but not applied")
    joined: bool = Field(default=False, description="the daemon holds a config from Websetup")
    managed_revision: int | None = Field(default=None, description="revision of the config it holds")
    dashboard_hostname: str | None = Field(default=None, description="this device's name in the Dashboard")
    websetup_state: str = Field(
        default="stopped", description="the Websetup client: connected, not claimed, backing off, stopped"
    )
    first_use: bool = Field(default=False, description="this answer pinned the key for the first time")
    replaced: bool = Field(default=False, description="this answer replaced a key pinned before")


class JoinInfo(_Model):
    """What a join did: who claimed the device and the config it got."""

    account: str
    network: str | None = None
    hostname: str
    revision: int
    peers: int = Field(description="addresses on the managed whitelist")


class Status(_Model):
    """The daemon's own state and all its peers."""

    address: OverlayAddress
    hostname: str
    interface: str
    udp_port: int
    whitelist_enabled: bool
    version: str
    uptime_s: float
    ready: bool = Field(default=True, description="interface up and transport bound")
    counters: dict[str, int] = Field(default_factory=dict, description="drop and error counters by reason")
    dataplane: DataPlaneStatus = Field(default_factory=DataPlaneStatus)
    base: BaseServerStatus | None = Field(
        default=None,
        description="the base server in use (the home), or the first configured while none answers",
    )
    base_servers: list[BaseServerStatus] = Field(
        default_factory=list, description="every configured base server"
    )
    peers: list[PeerStatus] = Field(default_factory=list)
    license: LicenseInfo | None = Field(default=None, description="the Dashboard set up (setup-server)")


class Whitelist(_Model):
    enabled: bool
    addresses: list[OverlayAddress]


class HostEntry(_Model):
    """One line of the managed block of the hosts file."""

    hostname: Hostname
    address: OverlayAddress


class PingReply(_Model):
    seq: int
    rtt_ms: float | None = Field(default=None, description="None when this probe timed out")


class PingResult(_Model):
    address: OverlayAddress
    hostname: str | None = None
    path: PeerPath
    endpoint: str | None = None
    base_server: str | None = None
    replies: list[PingReply]
    sent: int
    received: int
    loss: float = Field(description="fraction of probes lost, 0.0 .. 1.0")


class WaitResult(_Model):
    reached: bool


class LogLines(_Model):
    lines: list[str]


class ResolvedAddress(_Model):
    name: str
    address: OverlayAddress


class Health(_Model):
    """Answered without touching the controller: proves a daemon is alive on the socket."""

    ok: bool = True
    version: str


class ErrorBody(_Model):
    error: str


# --- requests ----------------------------------------------------------------------------------------------


class _Request(_Model):
    # Strict types: a request saying {"enabled": 0} or {"count": "3"} is a mistake, not a value to guess.
    model_config = ConfigDict(extra="forbid", strict=True)


class AddressRequest(_Request):
    address: OverlayAddress


class EnabledRequest(_Request):
    enabled: bool


class SetupServerRequest(_Request):
    """A Dashboard to set up with: where its license.json is served, and the key fingerprint to expect."""

    address: str = Field(min_length=1, max_length=300, description="host, host:port or [IPv6]:port")
    fingerprint: str | None = Field(
        default=None, max_length=100, description="SHA256:... the Dashboard shows"
    )
    replace: bool = Field(default=False, description="replace a pinned key (needs fingerprint)")


class JoinApiRequest(_Request):
    """Claim this device at the pinned Dashboard with a join code."""

    code: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    hostname: Hostname | None = None


class PingRequest(_Request):
    target: str = Field(min_length=1, max_length=253, description="overlay address or host name")
    count: int = Field(3, ge=1, le=MAX_PING_COUNT)
    interval_s: float = Field(1.0, ge=MIN_PING_INTERVAL_S, le=MAX_PING_INTERVAL_S)
    timeout_s: float = Field(2.0, ge=MIN_PING_TIMEOUT_S, le=MAX_PING_TIMEOUT_S)

    def worst_case_s(self) -> float:
        """How long the daemon may take to answer this request."""
        return (self.count - 1) * self.interval_s + self.timeout_s
