"""Typed, synchronous client of the daemon's control API (HTTP over its Unix socket).

Used by the CLI and by the ROS nodes::

    with ControlClient() as daemon:          # socket: arg > $HUSARNET_ROS_CONTROL_SOCKET > default
        for peer in daemon.peers():
            print(peer.address, peer.path, peer.rtt_ms)

Every failure is a ``ClientError``: ``DaemonUnavailable`` when nothing answers on the socket (the message
says how to start the daemon or point at another socket; ``SocketAccessDenied`` when the socket is not
ours to use), ``ControlError`` with the daemon's own message (and HTTP status) when it refused the request,
``NotFound`` when that status is 404 (unknown peer, host name, whitelist entry, base server or static
endpoint). Each call
has a timeout; long calls (ping, wait) extend it by the time they may legitimately take.

``wait_ready`` and ``wait_peer`` also wait for a daemon to answer at all: a script may start the daemon
and wait for it at once, or wait while a killed daemon's successor starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from .api import (
    API_PREFIX,
    CONTROL_SOCKET_ENV,
    MAX_UNIX_SOCKET_PATH_BYTES,
    BaseServerStatus,
    Health,
    HostEntry,
    JoinInfo,
    LicenseInfo,
    LogLines,
    PeerStatus,
    PingResult,
    ResolvedAddress,
    Status,
    WaitResult,
    Whitelist,
    bound_message,
    resolve_control_socket,
    shorten,
)
from .core.errors import HusarnetError
from .core.peer_endpoint import StaticEndpoint

DEFAULT_TIMEOUT_S = 5.0
# Added to the time a long call may take on the daemon's side, for the round trip and scheduling.
_LONG_CALL_MARGIN_S = 5.0
# One client's share of the daemon's 64 connections: long calls (ping, wait) each hold one; more wait.
_MAX_CONNECTIONS = 16
# An idle pooled connection is dropped after this, well before the daemon closes it (5 s), so a request is
# never sent on a connection the daemon is closing at that very moment.
_KEEPALIVE_EXPIRY_S = 2.0
# How often a wait asks again while no daemon answers (a daemon starts in about a second).
WAIT_RETRY_INTERVAL_S = 0.25
HTTP_NOT_FOUND = 404
# setup-server and join ask another server (license fetch 10 s, Websetup 15 s) and may restart a client.
_CONTROL_PLANE_CALL_S = 25.0
HTTP_SERVICE_UNAVAILABLE = 503

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_PEERS = TypeAdapter(list[PeerStatus])
_HOSTS = TypeAdapter(list[HostEntry])
_BASE_SERVERS = TypeAdapter(list[BaseServerStatus])
_STATIC_ENDPOINTS = TypeAdapter(list[StaticEndpoint])


class ClientError(HusarnetError):
    """The daemon could not be asked or refused: the message is meant for the user."""


class DaemonUnavailable(ClientError):
    """Nothing answers on the control socket."""

    def __init__(self, message: str, socket_path: str) -> None:
        super().__init__(message)
        self.socket_path = socket_path


class SocketAccessDenied(DaemonUnavailable):
    """The control socket cannot be used by this user, or its path cannot be a socket: waiting won't help."""


class ControlError(ClientError):
    """The daemon answered with an error; ``status`` is the HTTP status (404 unknown, 422 invalid, ...)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ControlError):
    """The daemon answered 404: no such peer, host name or whitelist entry."""

    def __init__(self, message: str) -> None:
        super().__init__(message, HTTP_NOT_FOUND)


class WaitTimedOut(ClientError):
    """A wait ran out of time before a daemon answered it (none running, or the peer's name unknown).

    The message is ``last_error``'s, the reason of the last attempt.
    """

    def __init__(self, last_error: ClientError) -> None:
        super().__init__(str(last_error))
        self.last_error = last_error


def _how_to_reach(socket_path: str) -> str:
    return (
        "start it with `husarnet-ros daemon`, or, if it listens elsewhere, give its socket with "
        f"--control-socket, ${CONTROL_SOCKET_ENV} or the ROS nodes' control_socket parameter"
    )


def _unavailable(socket_path: str) -> DaemonUnavailable:
    """Say why the socket did not answer, as precisely as the file system tells."""
    shown = shorten(socket_path)
    if len(os.fsencode(socket_path)) > MAX_UNIX_SOCKET_PATH_BYTES:
        return SocketAccessDenied(
            f"the control socket path {shown} is too long for a Unix socket "
            f"(at most {MAX_UNIX_SOCKET_PATH_BYTES} bytes)",
            socket_path,
        )
    try:
        exists = Path(socket_path).exists()
    except OSError as exc:  # e.g. a path component that is too long
        reason = f"cannot use the control socket {shown}: {exc.strerror or exc}"
        return SocketAccessDenied(reason, socket_path)
    if not exists:
        reason = f"daemon not running (no socket at {shown}): {_how_to_reach(socket_path)}"
    elif not os.access(socket_path, os.R_OK | os.W_OK):
        return SocketAccessDenied(
            f"permission denied on the control socket {shown}: run as root or as a member of the "
            "'husarnet' group",
            socket_path,
        )
    else:
        reason = f"daemon not running (nothing answers on {shown}): {_how_to_reach(socket_path)}"
    return DaemonUnavailable(reason, socket_path)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return bound_message(str(body["error"]))  # bounded by the daemon too, unless it is an old one
    text = response.text.strip().splitlines()[0] if response.text.strip() else response.reason_phrase
    return bound_message(f"daemon answered {response.status_code}: {text}")


def _is_retried_by_waits(exc: ClientError, retry_not_found: bool) -> bool:
    """Whether a wait should ask again: no daemon yet (or a stale socket), or one too busy to answer."""
    if isinstance(exc, SocketAccessDenied):
        return False
    if isinstance(exc, DaemonUnavailable):
        return True
    if isinstance(exc, NotFound):
        return retry_not_found
    return isinstance(exc, ControlError) and exc.status == HTTP_SERVICE_UNAVAILABLE


class ControlClient:
    """One connection pool to one daemon. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, socket_path: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = resolve_control_socket(socket_path)
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket_path),
            base_url="http://husarnet-ros",  # host is ignored on a Unix socket, but httpx needs one
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=_MAX_CONNECTIONS,
                max_keepalive_connections=4,
                keepalive_expiry=_KEEPALIVE_EXPIRY_S,
            ),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        extra_time_s: float = 0.0,
    ) -> Any:
        timeout = self.timeout_s + (extra_time_s + _LONG_CALL_MARGIN_S if extra_time_s else 0.0)
        try:
            response = self._http.request(
                method, API_PREFIX + path, json=json, params=params, timeout=timeout
            )
        except (httpx.ConnectError, OSError):
            # OSError: what the socket refused before httpx could wrap it (a path that is too long).
            raise _unavailable(self.socket_path) from None
        except httpx.TimeoutException:
            raise ControlError(
                f"the daemon at {shorten(self.socket_path)} did not answer within {timeout:g} s"
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise DaemonUnavailable(
                f"the connection to the daemon at {shorten(self.socket_path)} was lost (did it stop?)",
                self.socket_path,
            ) from None
        except httpx.HTTPError as exc:
            raise ControlError(
                bound_message(f"cannot talk to the daemon at {shorten(self.socket_path)}: {exc}")
            ) from None
        if response.status_code == HTTP_NOT_FOUND:
            raise NotFound(_error_message(response))
        if response.is_error:
            raise ControlError(_error_message(response), response.status_code)
        try:
            return response.json()
        except ValueError:
            raise ControlError(
                f"the daemon at {shorten(self.socket_path)} sent an answer that is not JSON"
            ) from None

    @staticmethod
    def _parse(model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ControlError(
                bound_message(f"unexpected answer from the daemon (version mismatch?): {exc}")
            ) from None

    @staticmethod
    def _parse_list(adapter: TypeAdapter[list[T]], data: Any) -> list[T]:
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            raise ControlError(
                bound_message(f"unexpected answer from the daemon (version mismatch?): {exc}")
            ) from None

    def _until_answered(
        self,
        timeout_s: float,
        ask: Callable[[float], bool],
        on_retry: Callable[[ClientError], None] | None,
        retry_not_found: bool = False,
    ) -> bool:
        """``ask(remaining seconds)`` until a daemon answers it, for at most ``timeout_s``.

        WaitTimedOut when ``timeout_s`` passed without an answer; ``on_retry`` is told about each error
        that is retried. Errors that waiting cannot cure are raised at once.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ask(max(0.0, deadline - time.monotonic()))
            except ClientError as exc:
                if not _is_retried_by_waits(exc, retry_not_found):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimedOut(exc) from None
                if on_retry is not None:
                    on_retry(exc)
                time.sleep(min(WAIT_RETRY_INTERVAL_S, remaining))

    @staticmethod
    def _segment(text: str) -> str:
        # Colons stay readable in addresses; anything that could escape the path segment is quoted.
        return quote(text, safe=":")

    # --- daemon ------------------------------------------------------------------------------------------

    def health(self) -> Health:
        return self._parse(Health, self._request("GET", "/health"))

    def is_alive(self) -> bool:
        """True if a daemon answers on the socket; never raises."""
        try:
            self.health()
        except ClientError:
            return False
        return True

    def status(self) -> Status:
        return self._parse(Status, self._request("GET", "/status"))

    def logs(self, limit: int = 100) -> list[str]:
        return self._parse(LogLines, self._request("GET", "/logs", params={"limit": limit})).lines

    def wait_ready(self, timeout_s: float, on_retry: Callable[[ClientError], None] | None = None) -> bool:
        """True once the daemon is ready, False if ``timeout_s`` passed first.

        Until a daemon answers (no socket yet, a stale socket left by a killed daemon, a busy daemon), it
        is asked again every WAIT_RETRY_INTERVAL_S; WaitTimedOut if none answered within ``timeout_s``.
        Other errors (``SocketAccessDenied``, a refused request) are raised at once.
        """

        def ask(remaining_s: float) -> bool:
            data = self._request(
                "GET", "/wait/ready", params={"timeout": remaining_s}, extra_time_s=remaining_s
            )
            return self._parse(WaitResult, data).reached

        return self._until_answered(timeout_s, ask, on_retry)

    # --- peers -------------------------------------------------------------------------------------------

    def peers(self) -> list[PeerStatus]:
        return self._parse_list(_PEERS, self._request("GET", "/peers"))

    def peer(self, target: str) -> PeerStatus:
        """One peer by address or host name; NotFound if unknown."""
        return self._parse(PeerStatus, self._request("GET", f"/peers/{self._segment(target)}"))

    def resolve(self, name_or_address: str) -> str:
        """The overlay address of a host name (or a normalised address); NotFound if unknown."""
        data = self._request("GET", f"/resolve/{self._segment(name_or_address)}")
        return self._parse(ResolvedAddress, data).address

    def ping(
        self, target: str, count: int = 3, interval_s: float = 1.0, timeout_s: float = 2.0
    ) -> PingResult:
        """Authenticated pings to an address or host name, through whatever path the daemon uses."""
        body = {"target": target, "count": count, "interval_s": interval_s, "timeout_s": timeout_s}
        worst_case = max(0.0, (count - 1) * interval_s) + max(0.0, timeout_s)
        return self._parse(PingResult, self._request("POST", "/ping", json=body, extra_time_s=worst_case))

    def wait_peer(
        self, target: str, timeout_s: float, on_retry: Callable[[ClientError], None] | None = None
    ) -> bool:
        """True once the peer has a direct or tunnelled path, False if ``timeout_s`` passed first.

        Waits for a daemon to answer as ``wait_ready`` does, and for a host name to become known (a peer's
        name may be learnt only when it connects): WaitTimedOut (saying why) if ``timeout_s`` passed first.
        """

        def ask(remaining_s: float) -> bool:
            data = self._request(
                "GET",
                f"/wait/peer/{self._segment(target)}",
                params={"timeout": remaining_s},
                extra_time_s=remaining_s,
            )
            return self._parse(WaitResult, data).reached

        return self._until_answered(timeout_s, ask, on_retry, retry_not_found=True)

    # --- whitelist (each call returns the whitelist after the change) ------------------------------------

    def whitelist(self) -> Whitelist:
        return self._parse(Whitelist, self._request("GET", "/whitelist"))

    def whitelist_add(self, address: str) -> Whitelist:
        return self._parse(Whitelist, self._request("POST", "/whitelist", json={"address": address}))

    def whitelist_remove(self, address: str) -> Whitelist:
        return self._parse(Whitelist, self._request("DELETE", f"/whitelist/{self._segment(address)}"))

    def whitelist_set_enabled(self, enabled: bool) -> Whitelist:
        return self._parse(Whitelist, self._request("PATCH", "/whitelist", json={"enabled": enabled}))

    # --- base servers (each call returns the list after the change) -------------------------------------

    def base_servers(self) -> list[BaseServerStatus]:
        """The base servers the daemon uses, in order, each with its state."""
        return self._parse_list(_BASE_SERVERS, self._request("GET", "/base"))

    def base_add(self, address: str) -> list[BaseServerStatus]:
        """Use the base server ``address`` (host, host:port or [IPv6]:port) from now on, also after restarts;
        one already used is no error. ControlError (status 400) if it does not parse, 409 if the list is
        full."""
        return self._parse_list(_BASE_SERVERS, self._request("POST", "/base", json={"address": address}))

    def base_remove(self, address: str) -> list[BaseServerStatus]:
        """Stop using the base server ``address``; NotFound if the daemon does not use it."""
        return self._parse_list(_BASE_SERVERS, self._request("DELETE", f"/base/{self._segment(address)}"))

    # --- static endpoints of peers (each call returns them all after the change) ---------------------------

    def static_endpoints(self) -> list[StaticEndpoint]:
        """The peers' static endpoints (WireGuard's ``Endpoint``), in the order they were added."""
        return self._parse_list(_STATIC_ENDPOINTS, self._request("GET", "/endpoints"))

    def static_endpoint_add(self, address: str, endpoint: str) -> list[StaticEndpoint]:
        """Reach the peer ``address`` at ``endpoint`` (host, host:port or [IPv6]:port; port 5582 by default)
        from now on, also after restarts; one already there is no error. ControlError with status 400 if
        either does not parse, 409 if the peer or the table is full."""
        body = {"address": address, "endpoint": endpoint}
        return self._parse_list(_STATIC_ENDPOINTS, self._request("POST", "/endpoints", json=body))

    def static_endpoint_remove(self, address: str, endpoint: str) -> list[StaticEndpoint]:
        """Stop using that static endpoint of the peer; NotFound if it is not one."""
        path = f"/endpoints/{self._segment(address)}/{self._segment(endpoint)}"
        return self._parse_list(_STATIC_ENDPOINTS, self._request("DELETE", path))

    # --- hosts (each call returns the entries after the change) ------------------------------------------

    def hosts(self) -> list[HostEntry]:
        return self._parse_list(_HOSTS, self._request("GET", "/hosts"))

    def hosts_add(self, hostname: str, address: str) -> list[HostEntry]:
        data = self._request("POST", "/hosts", json={"hostname": hostname, "address": address})
        return self._parse_list(_HOSTS, data)

    def hosts_remove(self, hostname: str) -> list[HostEntry]:
        return self._parse_list(_HOSTS, self._request("DELETE", f"/hosts/{self._segment(hostname)}"))

    # --- control plane (a Dashboard's license, join) -----------------------------------------------------

    def setup_server(
        self, address: str, fingerprint: str | None = None, replace: bool = False
    ) -> LicenseInfo:
        """Have the daemon fetch, check, pin and apply the license at ``http://ADDRESS/license.json``.
        ControlError (the daemon's message) when the address, the server or the license is wrong, 409 for
        another key than the pinned one."""
        body = {"address": address, "fingerprint": fingerprint, "replace": replace}
        data = self._request("POST", "/setup-server", json=body, extra_time_s=_CONTROL_PLANE_CALL_S)
        return self._parse(LicenseInfo, data)

    def join(self, code: str, hostname: str | None = None) -> JoinInfo:
        """Claim this device at the pinned Dashboard with a join code; ControlError with Websetup's reason."""
        body = {"code": code, "hostname": hostname}
        return self._parse(
            JoinInfo, self._request("POST", "/join", json=body, extra_time_s=_CONTROL_PLANE_CALL_S)
        )

    def wait_joined(self, timeout_s: float, on_retry: Callable[[ClientError], None] | None = None) -> bool:
        """True once the daemon holds a config from Websetup, False if ``timeout_s`` passed first (waits for a
        daemon to answer as ``wait_ready`` does)."""

        def ask(remaining_s: float) -> bool:
            data = self._request(
                "GET", "/wait/joined", params={"timeout": remaining_s}, extra_time_s=remaining_s
            )
            return self._parse(WaitResult, data).reached

        return self._until_answered(timeout_s, ask, on_retry)
