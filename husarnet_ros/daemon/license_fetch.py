"""Fetching a Dashboard's ``license.json`` for `husarnet-ros setup-server ADDR`.

Plain HTTP on purpose: the document is signed and its key pinned (core/license.py), so the transport needs
no trust of its own, and a Dashboard on a LAN without certificates works. Every way it can fail is a
ControllerError whose message names the URL and what to check.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket

import httpx

from ..api import quote_input
from ..core.license import MAX_LICENSE_SIZE
from .controller import BadValue, Unreachable

LICENSE_PATH = "/license.json"
# The whole fetch (connect, headers, body) ends within this: a Dashboard answers it in milliseconds.
FETCH_TIMEOUT_S = 10.0
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
_HOW = "give the Dashboard's address as host, host:port or [IPv6]:port (e.g. 198.18.0.10:8080)"


def license_url(address: str) -> str:
    """``http://ADDR/license.json`` for what the user typed (``host``, ``host:port``, ``[IPv6]:port``, a bare
    IPv6 address, each optionally after ``http://``); BadValue saying what is wrong otherwise."""
    text = address.strip()
    if text.lower().startswith("http://"):
        text = text[len("http://") :]
    text = text.rstrip("/")
    if text.endswith(LICENSE_PATH):
        text = text[: -len(LICENSE_PATH)]
    if not text or "/" in text or "@" in text or "://" in text:
        raise BadValue(f"{quote_input(address)} is not a server address: {_HOW}")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BadValue(f"{quote_input(address)}: an IPv6 address goes in brackets, [IPv6]:port")
        port = _port(address, rest[1:]) if rest else None
        _ipv6(address, host)
        host_text = f"[{host}]"
    elif text.count(":") > 1:
        _ipv6(address, text)
        host_text = f"[{text}]"
    else:
        host, _, port_text = text.partition(":")
        if ":" in text:
            port = _port(address, port_text)
        if not _HOST_NAME.match(host):
            raise BadValue(f"{quote_input(address)}: {quote_input(host)} is not a host name or IPv4 address")
        host_text = host
    return f"http://{host_text}{'' if port is None else f':{port}'}{LICENSE_PATH}"


def _port(address: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadValue(f"{quote_input(address)}: the port must be a number from 1 to 65535")
    return int(text)


def _ipv6(address: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise BadValue(f"{quote_input(address)}: {quote_input(text)} is not an IPv6 address") from None


def connect_failure(exc: BaseException) -> str:
    """Why a connection failed, in words (httpx's own message is often "All connection attempts failed")."""
    seen: BaseException | None = exc
    for _ in range(8):  # the OS error sits a few causes down
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused: is the server running, and on this port?"
        if isinstance(seen, OSError) and seen.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"{seen.strerror}: check the address and this machine's routes"
        if isinstance(seen, socket.gaierror):
            return f"the name does not resolve ({seen.strerror})"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or "connection failed"


async def fetch_license(url: str, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """The body of ``url`` (at most MAX_LICENSE_SIZE + 1 bytes are read); Unreachable saying why not."""
    # trust_env off: an HTTP proxy of the environment must not see (or answer for) a LAN Dashboard.
    # verify off: the URL is plain http:// (no TLS is ever made), and loading CA files may be impossible once
    # the daemon switched accounts.
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout_s, trust_env=False, follow_redirects=False, verify=False
            ) as http,
            http.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise Unreachable(
                    f"{url} answered HTTP {response.status_code}, not a license: is this the Dashboard's "
                    "address and port?"
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_LICENSE_SIZE:
                    raise Unreachable(
                        f"{url} sent more than {MAX_LICENSE_SIZE} bytes: not a license (is this the "
                        "Dashboard's address?)"
                    )
            return bytes(body)
    except httpx.ConnectTimeout:
        raise Unreachable(
            f"cannot connect to {url}: no answer within {timeout_s:g} s (a firewall, or a wrong address?)"
        ) from None
    except httpx.ConnectError as exc:
        raise Unreachable(f"cannot connect to {url}: {connect_failure(exc)}") from None
    except httpx.TimeoutException:
        raise Unreachable(f"{url} did not send the license within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
