"""Typed, synchronous client of the daemon's control API (HTTP over its Unix socket).

Used by the CLI and by the ROS nodes::

    with ControlClient() as daemon:          # socket: arg > $HUSARNET_ROS_CONTROL_SOCKET > default
        for peer in daemon.peers():
            print(peer.address, peer.path, peer.rtt_ms)

Every failure is a ``ClientError``: ``DaemonUnavailable`` when nothing answers on the socket (the message
says how to start the daemon or point at another socket), ``ControlError`` with the daemon's own message
(and HTTP status) when it refused the request. Each call has a timeout; long calls (ping, wait) extend it
by the time they may legitimately take.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from .api import (
    API_PREFIX,
    CONTROL_SOCKET_ENV,
    Health,
    HostEntry,
    LogLines,
    PeerStatus,
    PingResult,
    ResolvedAddress,
    Status,
    WaitResult,
    Whitelist,
    resolve_control_socket,
)
from .core.errors import HusarnetError

DEFAULT_TIMEOUT_S = 5.0
# Added to the time a long call may take on the daemon's side, for the round trip and scheduling.
_LONG_CALL_MARGIN_S = 5.0

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_PEERS = TypeAdapter(list[PeerStatus])
_HOSTS = TypeAdapter(list[HostEntry])


class ClientError(HusarnetError):
    """The daemon could not be asked or refused: the message is meant for the user."""


class DaemonUnavailable(ClientError):
    """Nothing answers on the control socket."""

    def __init__(self, message: str, socket_path: str) -> None:
        super().__init__(message)
        self.socket_path = socket_path


class ControlError(ClientError):
    """The daemon answered with an error; ``status`` is the HTTP status (404 unknown, 422 invalid, ...)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _how_to_reach(socket_path: str) -> str:
    return (
        "start it with `husarnet-ros daemon`, or, if it listens elsewhere, give its socket with "
        f"--control-socket, ${CONTROL_SOCKET_ENV} or the ROS nodes' control_socket parameter"
    )


def _unavailable(socket_path: str) -> DaemonUnavailable:
    """Say why the socket did not answer, as precisely as the file system tells."""
    if not Path(socket_path).exists():
        reason = f"daemon not running (no socket at {socket_path}): {_how_to_reach(socket_path)}"
    elif not os.access(socket_path, os.R_OK | os.W_OK):
        reason = (
            f"permission denied on the control socket {socket_path}: run as root or as a member of the "
            "'husarnet' group"
        )
    else:
        reason = f"daemon not running (nothing answers on {socket_path}): {_how_to_reach(socket_path)}"
    return DaemonUnavailable(reason, socket_path)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip().splitlines()[0] if response.text.strip() else response.reason_phrase
    return f"daemon answered {response.status_code}: {text}"


class ControlClient:
    """One connection pool to one daemon. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, socket_path: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = resolve_control_socket(socket_path)
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket_path),
            base_url="http://husarnet-ros",  # host is ignored on a Unix socket, but httpx needs one
            timeout=timeout_s,
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
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError, PermissionError):
            raise _unavailable(self.socket_path) from None
        except httpx.TimeoutException:
            raise ControlError(
                f"the daemon at {self.socket_path} did not answer within {timeout:g} s"
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise DaemonUnavailable(
                f"the connection to the daemon at {self.socket_path} was lost (did it stop?)",
                self.socket_path,
            ) from None
        except httpx.HTTPError as exc:
            raise ControlError(f"cannot talk to the daemon at {self.socket_path}: {exc}") from None
        if response.is_error:
            raise ControlError(_error_message(response), response.status_code)
        try:
            return response.json()
        except ValueError:
            raise ControlError(f"the daemon at {self.socket_path} sent an answer that is not JSON") from None

    @staticmethod
    def _parse(model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ControlError(f"unexpected answer from the daemon (version mismatch?): {exc}") from None

    @staticmethod
    def _parse_list(adapter: TypeAdapter[list[T]], data: Any) -> list[T]:
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            raise ControlError(f"unexpected answer from the daemon (version mismatch?): {exc}") from None

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

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the daemon is ready, False if ``timeout_s`` passed first."""
        data = self._request("GET", "/wait/ready", params={"timeout": timeout_s}, extra_time_s=timeout_s)
        return self._parse(WaitResult, data).reached

    # --- peers -------------------------------------------------------------------------------------------

    def peers(self) -> list[PeerStatus]:
        return self._parse_list(_PEERS, self._request("GET", "/peers"))

    def peer(self, target: str) -> PeerStatus:
        """One peer by address or host name; ControlError(status=404) if unknown."""
        return self._parse(PeerStatus, self._request("GET", f"/peers/{self._segment(target)}"))

    def resolve(self, name_or_address: str) -> str:
        """The overlay address of a host name (or a normalised address); ControlError(404) if unknown."""
        data = self._request("GET", f"/resolve/{self._segment(name_or_address)}")
        return self._parse(ResolvedAddress, data).address

    def ping(
        self, target: str, count: int = 3, interval_s: float = 1.0, timeout_s: float = 2.0
    ) -> PingResult:
        """Authenticated pings to an address or host name, through whatever path the daemon uses."""
        body = {"target": target, "count": count, "interval_s": interval_s, "timeout_s": timeout_s}
        worst_case = max(0.0, (count - 1) * interval_s) + max(0.0, timeout_s)
        return self._parse(PingResult, self._request("POST", "/ping", json=body, extra_time_s=worst_case))

    def wait_peer(self, target: str, timeout_s: float) -> bool:
        """True once the peer has a direct or tunnelled path, False if ``timeout_s`` passed first."""
        data = self._request(
            "GET",
            f"/wait/peer/{self._segment(target)}",
            params={"timeout": timeout_s},
            extra_time_s=timeout_s,
        )
        return self._parse(WaitResult, data).reached

    # --- whitelist (each call returns the whitelist after the change) ------------------------------------

    def whitelist(self) -> Whitelist:
        return self._parse(Whitelist, self._request("GET", "/whitelist"))

    def whitelist_add(self, address: str) -> Whitelist:
        return self._parse(Whitelist, self._request("POST", "/whitelist", json={"address": address}))

    def whitelist_remove(self, address: str) -> Whitelist:
        return self._parse(Whitelist, self._request("DELETE", f"/whitelist/{self._segment(address)}"))

    def whitelist_set_enabled(self, enabled: bool) -> Whitelist:
        return self._parse(Whitelist, self._request("PATCH", "/whitelist", json={"enabled": enabled}))

    # --- hosts (each call returns the entries after the change) ------------------------------------------

    def hosts(self) -> list[HostEntry]:
        return self._parse_list(_HOSTS, self._request("GET", "/hosts"))

    def hosts_add(self, hostname: str, address: str) -> list[HostEntry]:
        data = self._request("POST", "/hosts", json={"hostname": hostname, "address": address})
        return self._parse_list(_HOSTS, data)

    def hosts_remove(self, hostname: str) -> list[HostEntry]:
        return self._parse_list(_HOSTS, self._request("DELETE", f"/hosts/{self._segment(hostname)}"))
