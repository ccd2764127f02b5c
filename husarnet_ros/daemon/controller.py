"""What the daemon must offer to the control API: the ``Controller`` protocol and the errors it may raise.

Threading contract (see daemon/control.py): the control server calls every method on its own event loop
thread, never two at the same time for the synchronous methods. Synchronous methods should return quickly
(in-memory state, a small file write); they are never called from the daemon's own threads by the server.
The coroutine methods (``ping``, ``wait_ready``, ``wait_peer``) run on the control server's loop too; if the
daemon's state lives on another event loop, hop there with ``daemon.control.run_on_loop(loop, coro)``.

Errors: raise the ``ControllerError`` subclasses below with a message meant for the user; the server turns
them into HTTP 400/404/409/422/502/503/507 with ``{"error": message}``. An ``AddressError`` counts as
InvalidRequest.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..api import BaseServerStatus, HostEntry, JoinInfo, LicenseInfo, PingResult, Status, Whitelist
from ..core.errors import HusarnetError
from ..core.peer_endpoint import StaticEndpoint


class ControllerError(HusarnetError):
    """A request the daemon refused; the message is shown to the user as is."""

    http_status = 400


class BadValue(ControllerError):
    """A value that is not even of the right form (e.g. a base server address that does not parse)."""

    http_status = 400


class NotFound(ControllerError):
    """Unknown host name, peer, whitelist entry, base server or static endpoint."""

    http_status = 404


class InvalidRequest(ControllerError):
    """A well-formed request that makes no sense (e.g. pinging our own address)."""

    http_status = 422


class Conflict(ControllerError):
    """The request contradicts current state (e.g. a host name already bound to another address)."""

    http_status = 409


class StorageError(ControllerError):
    """The change could not be saved (full disk, read-only state directory): nothing was changed."""

    http_status = 507


class NotReady(ControllerError):
    """The daemon cannot serve this yet (e.g. still bringing the interface up)."""

    http_status = 503


class Unreachable(ControllerError):
    """A server the daemon had to ask (a Dashboard's license.json, Websetup) did not answer usefully."""

    http_status = 502


@runtime_checkable
class Controller(Protocol):
    """The daemon's side of the control API.

    Addresses are canonical fc94::/16 text (``api.normalize_overlay``), both in arguments and results.
    """

    def status(self) -> Status:
        """Own address, hostname, interface, counters and every known peer."""
        ...

    def whitelist(self) -> Whitelist: ...

    def whitelist_add(self, address: str) -> None:
        """Allow ``address`` at once and persist it; adding a present address is not an error."""
        ...

    def whitelist_remove(self, address: str) -> None:
        """Forbid ``address`` at once (tearing down its session) and persist it; NotFound if absent."""
        ...

    def whitelist_set_enabled(self, enabled: bool) -> None:
        """Switch enforcement on or off at once and persist the choice."""
        ...

    def base_servers(self) -> list[BaseServerStatus]:
        """The base servers in use (the saved list, else the configured one), in order, with their state."""
        ...

    def base_add(self, address: str) -> None:
        """Use the base server ``address`` (``host[:port]``) at once and persist the list; adding one already
        there is not an error. BadValue if it does not parse, Conflict when the list is full."""
        ...

    def base_remove(self, address: str) -> None:
        """Stop using the base server ``address`` at once and persist the list; NotFound if absent."""
        ...

    def static_endpoints(self) -> list[StaticEndpoint]:
        """The peers' static endpoints (WireGuard's ``Endpoint``), in the order they were added."""
        ...

    def static_endpoint_add(self, address: str, endpoint: str) -> None:
        """Reach the peer ``address`` at ``endpoint`` (``host[:port]``) from now on, also after restarts;
        adding one already there is not an error. BadValue if either does not parse, InvalidRequest for this
        node's own address, Conflict when the peer or the table has its maximum."""
        ...

    def static_endpoint_remove(self, address: str, endpoint: str) -> None:
        """Stop using that static endpoint of the peer and persist the change; NotFound if absent."""
        ...

    def hosts(self) -> list[HostEntry]:
        """Entries of the managed block of the hosts file."""
        ...

    def hosts_add(self, hostname: str, address: str) -> None:
        """Add or re-point ``hostname`` (already validated and lower-cased) in the managed block."""
        ...

    def hosts_remove(self, hostname: str) -> None:
        """Remove ``hostname`` from the managed block; NotFound if absent."""
        ...

    def resolve(self, name_or_address: str) -> str:
        """An overlay address as is (normalised), else the address of a host entry or peer with that
        hostname; NotFound with a message naming the name otherwise."""
        ...

    async def ping(self, address: str, count: int, interval_s: float, timeout_s: float) -> PingResult:
        """Authenticated encrypted pings over the current path; a probe unanswered after ``timeout_s`` is a
        reply with ``rtt_ms=None``. Must return within about ``(count - 1) * interval_s + timeout_s``."""
        ...

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once the interface is up and the transport bound, False after ``timeout_s``."""
        ...

    async def wait_peer(self, address: str, timeout_s: float) -> bool:
        """True once ``address`` has a path other than "none", False after ``timeout_s``."""
        ...

    def logs(self, limit: int) -> list[str]:
        """The most recent ``limit`` log lines, oldest first."""
        ...


@runtime_checkable
class ControlPlaneController(Protocol):
    """The daemon's side of a self-hosted control plane (docs/CONTROL_PLANE.md, "Daemon side"): a controller
    the control API serves may offer it too; one that does not answers these routes with an error."""

    async def setup_server(self, address: str, fingerprint: str | None, replace: bool) -> LicenseInfo:
        """Fetch ``http://ADDR/license.json``, check and pin it, and apply it at once. BadValue for an ADDR or
        fingerprint that does not parse, Unreachable when the server gave no license, InvalidRequest for a
        document that is not a valid license, Conflict for another key than the pinned one."""
        ...

    async def join(self, code: str, hostname: str | None) -> JoinInfo:
        """Claim this device with a join code at the pinned Websetup and apply the config it answers."""
        ...

    async def wait_joined(self, timeout_s: float) -> bool:
        """True once the daemon holds a config from Websetup, False after ``timeout_s``."""
        ...
