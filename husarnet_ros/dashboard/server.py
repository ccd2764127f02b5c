"""Serving the Dashboard with uvicorn: in the foreground (``husarnet-ros dashboard serve``) or in a background
thread of the calling process (tests, and anything that runs it beside other services)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from ..core.errors import HusarnetError

STARTUP_TIMEOUT_S = 15.0
SHUTDOWN_TIMEOUT_S = 10.0


class ServeError(HusarnetError):
    """The server could not listen or start."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port); ServeError says how to write it."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise ServeError(f"listen address {text!r}: write HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080")
    return host, port


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _config(app: Any, log_level: str) -> uvicorn.Config:
    # proxy_headers off: the client address must be the TCP peer's, not what a header claims.
    return uvicorn.Config(
        app, log_level=log_level, proxy_headers=False, server_header=False, access_log=False
    )


def dashboard_server(app: Any, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for the app (serve it on a socket from ``bind_socket``)."""
    return uvicorn.Server(_config(app, log_level))


def serve_forever(app: Any, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on a bound socket until interrupted (SIGINT/SIGTERM)."""
    dashboard_server(app, log_level).run(sockets=[sock])


class LateApp:
    """An ASGI app that is set after the server's socket is bound (``BackgroundServer(late)``, then
    ``late.app = create_app(...)``): for an app whose settings name the server's own port (its public URL)."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class BackgroundServer:
    """An ASGI app served by uvicorn in a thread, on 127.0.0.1 and a free port unless told otherwise.
    ``with BackgroundServer(app) as server:`` waits until it answers; leaving stops it."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self._socket = bind_socket(host, port)
        bound = self._socket.getsockname()
        self.host, self.port = bound[0], bound[1]
        self._server = uvicorn.Server(_config(app, "warning"))
        self._thread = threading.Thread(target=self._run, name="dashboard-server", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"the server on {self.url} did not start within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(SHUTDOWN_TIMEOUT_S)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
