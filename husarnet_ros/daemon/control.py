"""The daemon's control API: a FastAPI app over a ``Controller``, served by uvicorn on a Unix socket.

Threading: ``ControlServer`` runs uvicorn on its own asyncio loop in a background thread, so a slow request
never stalls the daemon. Where controller methods run depends on ``controller_loop``:

- ``controller_loop=None``: on the control server's loop thread. Synchronous methods are then called one at
  a time (never concurrently with each other), but concurrently with whatever threads the daemon runs, so
  the daemon must guard shared state itself.
- ``controller_loop=<the daemon's running loop>``: every call, synchronous or coroutine, is executed on that
  loop (``call_soon_threadsafe`` / ``run_coroutine_threadsafe``), so a single-loop daemon needs no locks.

Routes (all JSON; errors are ``{"error": "message"}`` with 400/404/409/422/502/503/507, never a
traceback; a value the client sent is quoted shortened, never in full):

    GET    /v1/health                       Health (answered without the controller)
    GET    /v1/status                       Status
    GET    /v1/peers                        list[PeerStatus]
    GET    /v1/peers/{target}               PeerStatus (address or host name)
    GET    /v1/whitelist                    Whitelist
    POST   /v1/whitelist                    AddressRequest -> Whitelist
    DELETE /v1/whitelist/{address}          Whitelist
    PATCH  /v1/whitelist                    EnabledRequest -> Whitelist (switch enforcement)
    GET    /v1/base                         list[BaseServerStatus]
    POST   /v1/base                         BaseServerRequest -> list[BaseServerStatus]
    DELETE /v1/base/{address}               list[BaseServerStatus]
    GET    /v1/endpoints                    list[StaticEndpoint] (peers' static endpoints)
    POST   /v1/endpoints                    StaticEndpointRequest -> list[StaticEndpoint]
    DELETE /v1/endpoints/{address}/{endpoint} list[StaticEndpoint]
    GET    /v1/hosts                        list[HostEntry]
    POST   /v1/hosts                        HostEntry -> list[HostEntry]
    DELETE /v1/hosts/{hostname}             list[HostEntry]
    GET    /v1/resolve/{name}               ResolvedAddress
    POST   /v1/ping                         PingRequest -> PingResult
    GET    /v1/wait/ready?timeout=S         WaitResult
    GET    /v1/wait/peer/{target}?timeout=S WaitResult
    GET    /v1/logs?limit=N                 LogLines
    POST   /v1/setup-server                 SetupServerRequest -> LicenseInfo (fetch, pin, apply a license)
    POST   /v1/join                         JoinApiRequest -> JoinInfo (claim this device at Websetup)
    GET    /v1/wait/joined?timeout=S        WaitResult (holds a config from Websetup)

The OpenAPI schema is at /openapi.json (and interactive docs at /docs) on the same socket. How many
connections, how large and how slow a request may be: ``control_limits.ControlLimits``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Annotated, Any, TypeVar

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..api import (
    API_PREFIX,
    MAX_LOG_LINES,
    MAX_WAIT_TIMEOUT_S,
    AddressRequest,
    BaseServerStatus,
    EnabledRequest,
    ErrorBody,
    Health,
    HostEntry,
    JoinApiRequest,
    JoinInfo,
    LicenseInfo,
    LogLines,
    PeerStatus,
    PingRequest,
    PingResult,
    ResolvedAddress,
    SetupServerRequest,
    Status,
    WaitResult,
    Whitelist,
    bound_message,
    describe_validation_errors,
    normalize_overlay,
    quote_input,
    shorten,
    validate_hostname,
)
from ..core.errors import AddressError, HusarnetError
from ..core.peer_endpoint import StaticEndpoint
from .control_limits import ConnectionGuard, ConnectionSlot, ControlHttpProtocol, ControlLimits
from .control_socket import CONTROL_GROUP, ControlSocket, ControlSocketError
from .controller import (
    Controller,
    ControllerError,
    ControlPlaneController,
    InvalidRequest,
    NotFound,
    NotReady,
)

log = logging.getLogger(__name__)

# A synchronous controller call that takes longer than this on the daemon's loop means the loop is stuck.
CONTROLLER_CALL_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 5.0
# Open long-poll requests (wait, ping) are cut after this long when the server stops.
GRACEFUL_SHUTDOWN_S = 1

T = TypeVar("T")


async def run_on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on another thread's ``loop`` and await its result from the current loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


class _Dispatcher:
    """Runs controller calls where the daemon wants them (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._loop is None:
            return fn(*args)
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return
            try:
                result.set_result(fn(*args))
            # Handed to the awaiting request, which maps it to a response.
            except BaseException as exc:
                result.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(result), CONTROLLER_CALL_TIMEOUT_S)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise NotReady(f"the daemon did not answer within {CONTROLLER_CALL_TIMEOUT_S:g} s") from None

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        if self._loop is None:
            return await fn(*args)
        return await run_on_loop(self._loop, fn(*args))


class StaticEndpointRequest(BaseModel):
    """A peer's static endpoint to use (WireGuard's ``Endpoint``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address: str = Field(min_length=1, max_length=100, description="the peer's overlay address")
    endpoint: str = Field(
        min_length=1, max_length=300, description="host[:port] or [IPv6]:port; host an IP address or DNS name"
    )


class BaseServerRequest(BaseModel):
    """A base server to use: host, host:port or [IPv6]:port (port 5582 by default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address: str = Field(min_length=1, max_length=300, description="host[:port] or [IPv6]:port")


# --- the app -----------------------------------------------------------------------------------------------

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "a value of the wrong form (a base server address, a static endpoint)",
    },
    404: {
        "model": ErrorBody,
        "description": "unknown peer, host name, whitelist entry, base server or static endpoint",
    },
    409: {"model": ErrorBody, "description": "conflicts with current state"},
    422: {"model": ErrorBody, "description": "invalid request"},
    502: {
        "model": ErrorBody,
        "description": "a server the daemon had to ask (license.json, Websetup) gave no useful answer",
    },
    503: {"model": ErrorBody, "description": "daemon not ready"},
    507: {"model": ErrorBody, "description": "not saved (full or read-only disk); nothing changed"},
}


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    # Bounded whatever produced it: a message may quote what the client sent.
    return JSONResponse(status_code=status, content={"error": bound_message(message)}, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, describe_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
            # Routing failed: most likely a client newer or older than the daemon.
            headers = {"Allow": _allowed_methods(request)} if exc.status_code == 405 else None
            return _error(
                exc.status_code,
                f"the daemon has no API route {shorten(request.method, 16)} {shorten(request.url.path)} "
                "(version mismatch?)",
                headers,
            )
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot even decode (not UTF-8): as invalid as bad JSON.
            return _error(422, f"invalid request: {exc.detail} (the body must be UTF-8 JSON)")
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(ControllerError)
    async def on_controller_error(_: Request, exc: ControllerError) -> JSONResponse:
        return _error(exc.http_status, str(exc))

    @app.exception_handler(AddressError)
    async def on_address_error(_: Request, exc: AddressError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(HusarnetError)
    async def on_husarnet_error(_: Request, exc: HusarnetError) -> JSONResponse:
        # Raised on purpose with a message for the user, but not mapped to a more precise status.
        return _error(500, str(exc))

    # A middleware rather than an exception handler for Exception: Starlette re-raises after such a handler
    # has answered, which makes uvicorn drop the keep-alive connection and log a second traceback.
    @app.middleware("http")
    async def on_bug(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            return await call_next(request)
        except Exception as exc:
            log.exception("control API: %s %s failed", request.method, request.url.path)
            return _error(500, f"internal error in the daemon ({type(exc).__name__}); see the daemon log")


def _address_param(text: str) -> str:
    try:
        return normalize_overlay(text)
    except AddressError as exc:
        raise InvalidRequest(str(exc)) from None


def _hostname_param(text: str) -> str:
    try:
        return validate_hostname(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


WaitTimeout = Annotated[float, Query(ge=0.0, le=MAX_WAIT_TIMEOUT_S, description="seconds to wait")]
LogLimit = Annotated[int, Query(ge=1, le=MAX_LOG_LINES, description="most recent lines to return")]


def create_app(controller: Controller, controller_loop: asyncio.AbstractEventLoop | None = None) -> FastAPI:
    """The control API over ``controller``; see the module docstring for routes and threading."""
    app = FastAPI(
        title="husarnet-ros daemon control API",
        version=__version__,
        description=(
            "Status, peers, whitelist, base servers, static endpoints, hosts, ping and waits of a "
            "husarnet-ros daemon."
        ),
        responses=_ERROR_RESPONSES,
    )
    _install_error_handlers(app)
    do = _Dispatcher(controller_loop)
    p = API_PREFIX

    async def resolve(target: str) -> str:
        """The overlay address of ``target``: an address, or a host name the daemon knows (else 404)."""
        try:
            normalize_overlay(target)
        except AddressError:
            try:
                validate_hostname(target)
            except ValueError:
                # Only valid names reach the controller, which may quote them in its 404.
                raise InvalidRequest(
                    f"{quote_input(target)} is neither an overlay address nor a valid host name"
                ) from None
        return normalize_overlay(await do.call(controller.resolve, target))

    @app.get(f"{p}/health", tags=["daemon"])
    async def health() -> Health:
        return Health(version=__version__)

    @app.get(f"{p}/status", tags=["daemon"])
    async def status() -> Status:
        return await do.call(controller.status)

    @app.get(f"{p}/peers", tags=["peers"])
    async def peers() -> list[PeerStatus]:
        return (await do.call(controller.status)).peers

    @app.get(f"{p}/peers/{{target:path}}", tags=["peers"])
    async def peer(target: str) -> PeerStatus:
        address = await resolve(target)
        for entry in (await do.call(controller.status)).peers:
            if entry.address == address:
                return entry
        raise NotFound(f"{shorten(target)} is not a known peer")

    @app.get(f"{p}/whitelist", tags=["whitelist"])
    async def whitelist() -> Whitelist:
        return await do.call(controller.whitelist)

    @app.post(f"{p}/whitelist", tags=["whitelist"])
    async def whitelist_add(body: AddressRequest) -> Whitelist:
        await do.call(controller.whitelist_add, body.address)
        return await do.call(controller.whitelist)

    @app.delete(f"{p}/whitelist/{{address:path}}", tags=["whitelist"])
    async def whitelist_remove(address: str) -> Whitelist:
        await do.call(controller.whitelist_remove, _address_param(address))
        return await do.call(controller.whitelist)

    @app.patch(f"{p}/whitelist", tags=["whitelist"])
    async def whitelist_enabled(body: EnabledRequest) -> Whitelist:
        await do.call(controller.whitelist_set_enabled, body.enabled)
        return await do.call(controller.whitelist)

    @app.get(f"{p}/base", tags=["base servers"])
    async def base_servers() -> list[BaseServerStatus]:
        return await do.call(controller.base_servers)

    @app.post(f"{p}/base", tags=["base servers"])
    async def base_add(body: BaseServerRequest) -> list[BaseServerStatus]:
        await do.call(controller.base_add, body.address)
        return await do.call(controller.base_servers)

    @app.delete(f"{p}/base/{{address:path}}", tags=["base servers"])
    async def base_remove(address: str) -> list[BaseServerStatus]:
        await do.call(controller.base_remove, address)
        return await do.call(controller.base_servers)

    @app.get(f"{p}/endpoints", tags=["static endpoints"])
    async def static_endpoints() -> list[StaticEndpoint]:
        return await do.call(controller.static_endpoints)

    @app.post(f"{p}/endpoints", tags=["static endpoints"])
    async def static_endpoint_add(body: StaticEndpointRequest) -> list[StaticEndpoint]:
        await do.call(controller.static_endpoint_add, body.address, body.endpoint)
        return await do.call(controller.static_endpoints)

    @app.delete(f"{p}/endpoints/{{address}}/{{endpoint:path}}", tags=["static endpoints"])
    async def static_endpoint_remove(address: str, endpoint: str) -> list[StaticEndpoint]:
        await do.call(controller.static_endpoint_remove, address, endpoint)
        return await do.call(controller.static_endpoints)

    @app.get(f"{p}/hosts", tags=["hosts"])
    async def hosts() -> list[HostEntry]:
        return await do.call(controller.hosts)

    @app.post(f"{p}/hosts", tags=["hosts"])
    async def hosts_add(body: HostEntry) -> list[HostEntry]:
        await do.call(controller.hosts_add, body.hostname, body.address)
        return await do.call(controller.hosts)

    @app.delete(f"{p}/hosts/{{hostname:path}}", tags=["hosts"])
    async def hosts_remove(hostname: str) -> list[HostEntry]:
        await do.call(controller.hosts_remove, _hostname_param(hostname))
        return await do.call(controller.hosts)

    @app.get(f"{p}/resolve/{{name:path}}", tags=["peers"])
    async def resolve_name(name: str) -> ResolvedAddress:
        return ResolvedAddress(name=name, address=await resolve(name))

    @app.post(f"{p}/ping", tags=["peers"])
    async def ping(body: PingRequest) -> PingResult:
        address = await resolve(body.target)
        return await do.run(controller.ping, address, body.count, body.interval_s, body.timeout_s)

    @app.get(f"{p}/wait/ready", tags=["daemon"])
    async def wait_ready(timeout: WaitTimeout = 30.0) -> WaitResult:
        return WaitResult(reached=await do.run(controller.wait_ready, timeout))

    @app.get(f"{p}/wait/peer/{{target:path}}", tags=["peers"])
    async def wait_peer(target: str, timeout: WaitTimeout = 30.0) -> WaitResult:
        address = await resolve(target)
        return WaitResult(reached=await do.run(controller.wait_peer, address, timeout))

    @app.get(f"{p}/logs", tags=["daemon"])
    async def logs(limit: LogLimit = 100) -> LogLines:
        return LogLines(lines=await do.call(controller.logs, limit))

    def control_plane() -> ControlPlaneController:
        if not isinstance(controller, ControlPlaneController):
            raise InvalidRequest("this daemon does not take a Dashboard (no setup-server or join)")
        return controller

    @app.post(f"{p}/setup-server", tags=["control plane"])
    async def setup_server(body: SetupServerRequest) -> LicenseInfo:
        return await do.run(control_plane().setup_server, body.address, body.fingerprint, body.replace)

    @app.post(f"{p}/join", tags=["control plane"])
    async def join(body: JoinApiRequest) -> JoinInfo:
        return await do.run(control_plane().join, body.code, body.hostname)

    @app.get(f"{p}/wait/joined", tags=["control plane"])
    async def wait_joined(timeout: WaitTimeout = 30.0) -> WaitResult:
        return WaitResult(reached=await do.run(control_plane().wait_joined, timeout))

    return app


# --- serving it on a Unix socket ---------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, accepting on ``sock`` through a ConnectionGuard; tells another thread when it
    is listening."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, limits: ControlLimits) -> None:
        super().__init__(config)
        self.listening = threading.Event()
        self._sock = sock
        self._limits = limits
        self._guard: ConnectionGuard | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # No sockets for uvicorn itself: asyncio's own accept loop would take every connection it can.
        await super().startup(sockets=[])
        loop = asyncio.get_running_loop()
        self._guard = ConnectionGuard(self._sock, self._new_protocol, self._limits, loop)
        self._guard.start()
        self.listening.set()

    def _new_protocol(self, slot: ConnectionSlot) -> ControlHttpProtocol:
        assert self._guard is not None
        return ControlHttpProtocol(self.config, self.server_state, self.lifespan.state, self._guard, slot)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._guard is not None:
            self._guard.close()
        await super().shutdown(sockets=sockets)


class ControlServer:
    """Serves ``create_app(controller)`` on ``socket_path`` (mode 0660, group ``group`` if it exists).

    ``start()`` returns once the socket accepts connections; ``stop()`` shuts down and removes the socket
    (if it can: see ``ControlSocket.remove``). Usable as a context manager. ``limits``: how many
    connections, how large and how slow a request may be. ``listening``: a socket bound beforehand at
    ``socket_path`` (the daemon binds it while privileged, long before this module is imported).
    """

    def __init__(
        self,
        controller: Controller,
        socket_path: str,
        group: str | None = CONTROL_GROUP,
        controller_loop: asyncio.AbstractEventLoop | None = None,
        limits: ControlLimits | None = None,
        listening: ControlSocket | None = None,
    ) -> None:
        if listening is not None and listening.path != socket_path:
            raise ValueError(f"the socket given is bound at {listening.path}, not {socket_path}")
        self.socket_path = socket_path
        self._limits = limits or ControlLimits()
        self._app = create_app(controller, controller_loop)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._socket = listening or ControlSocket(socket_path, group)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The control server's event loop while it runs (for ``asyncio.run_coroutine_threadsafe``)."""
        return self._loop

    def bind(self) -> None:
        """Create the listening socket now, without serving yet.

        The daemon binds while it still holds its capabilities (giving the socket to the control group needs
        CAP_CHOWN) and serves only after dropping them. ``start()`` binds by itself when this was not called.
        """
        self._socket.bind()

    def give_to(self, uid: int) -> None:
        """Make the bound socket file (and its directory, if bind() created it) owned by ``uid``."""
        self._socket.give_to(uid)

    def start(self) -> None:
        if self._thread is not None:
            raise ControlSocketError("control server already started")
        sock = self._socket.take()  # owned (and closed) by the serving thread from here on
        config = uvicorn.Config(
            self._app,
            http=ControlHttpProtocol,  # h11 even where httptools is installed: the limits are built on it
            log_config=None,  # the daemon configures logging, uvicorn must not replace it
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            # uvicorn's own timer for idle keep-alive connections; ControlHttpProtocol's request deadline
            # closes them at the same time and also covers a connection that never sends a whole request.
            timeout_keep_alive=math.ceil(self._limits.request_timeout_s),
        )
        self._server = _Server(config, sock, self._limits)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="control-api", daemon=True)
        self._thread.start()
        self._server.listening.wait(STARTUP_TIMEOUT_S)
        if not self._server.listening.is_set():
            self.stop()
            reason = f": {self._failure}" if self._failure else ""
            raise ControlSocketError(f"control server on {self.socket_path} did not start{reason}")

    def _serve(self, sock: socket.socket) -> None:
        assert self._loop is not None
        assert self._server is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._server.serve())
        # Reported by start(); a dying thread must not print a traceback.
        except BaseException as exc:
            self._failure = exc
            log.error("control server stopped: %s", exc)
        finally:
            sock.close()
            self._server.listening.set()  # wake start() if startup failed
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def stop(self) -> None:
        """Stop serving, cut open long-polls after a short grace period, remove the socket file.

        Never raises for the socket file: a daemon that switched to its own account may not be allowed to
        remove it (a root-owned directory); that is logged, and the next daemon replaces the stale socket.
        """
        if self._server is not None:
            self._server.should_exit = True  # polled by uvicorn's main loop
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_S)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(SHUTDOWN_TIMEOUT_S)
        self._socket.remove()
        self._thread = None
        self._server = None
        self._loop = None

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
