"""Websetup: the HTTP service daemons reach over the overlay to join, fetch their config and report links.

Protocol: docs/CONTROL_PLANE.md, "Websetup protocol"; bodies: ``core.websetup``. A device is known by the TCP
source address of its request: Websetup listens on the server daemon's fc94 address, so a request can only
arrive through the overlay, which has already proved that the sender holds that address's key. A source
outside fc94::/16 (someone on the server's LAN, a misconfigured listen address) is refused with 403.

Threads: the database is reached only from anyio's worker threads (the drivers block), one short transaction
per step. A long-poll sleeps on the event loop between its checks, holding no thread and no connection, and
the held requests share their reads of the revision, so hundreds of daemons can wait at once.

Run alone with ``husarnet-ros websetup`` (husarnet_ros/cli/websetup.py) or in the Dashboard's process: build
the app with ``create_websetup_app(session_factory)``, wrap it in ``websetup_server(...)`` and run that server
beside the Dashboard's with ``serve_together``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..api import bound_message, describe_validation_errors, shorten
from ..core.address import format_address, parse_overlay
from ..core.errors import AddressError
from ..core.websetup import (
    API_PREFIX,
    DEFAULT_WAIT_S,
    MAX_WAIT_S,
    DeviceConfig,
    JoinRequest,
    JoinResult,
    PeerReport,
    Problem,
)
from . import db, service
from .clock import utc_now
from .errors import Conflict, DashboardError, Forbidden, Invalid, NotFound, Unauthenticated

log = logging.getLogger(__name__)

# How often a held config request looks at the revision (docs/CONTROL_PLANE.md promises 0.5 s).
POLL_INTERVAL_S = 0.5
# Held requests share their reads of the revision: one read serves every check within this long after it
# began, so the database sees a few reads a second however many daemons wait (with SQLite each transaction
# takes the write lock, see db.py).
REVISION_FRESH_S = 0.25
# The largest body Websetup reads: a report of MAX_PEERS_IN_REPORT links is about 200 KiB.
MAX_BODY_BYTES = 512 * 1024
NOT_CLAIMED = "this device is not claimed: run husarnet-ros join CODE on it"

T = TypeVar("T")

_STATUS = {
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    Invalid: 422,
    Unauthenticated: 401,
}


class _Refused(Exception):
    """An answer other than 2xx decided by this module (the request's source, an unclaimed device)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class WebsetupSettings:
    """What a standalone Websetup needs: the Dashboard's database (migrated by whoever starts it)."""

    database_url: str


def create_websetup_app(source: db.SessionFactory | WebsetupSettings) -> FastAPI:
    """The Websetup app over a session factory (the Dashboard's own, when both run in one process) or over
    the database that ``WebsetupSettings`` names (an engine of its own, disposed when the app shuts down)."""
    engine = None
    if isinstance(source, WebsetupSettings):
        engine = db.create_db_engine(source.database_url)
        factory = db.session_factory(engine)
    else:
        factory = source

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if engine is not None:
                engine.dispose()

    app = FastAPI(
        title="husarnet-ros Websetup",
        version=__version__,
        description=(
            "Daemons join, fetch their whitelist and hosts, and report their links here, over the overlay. "
            "A device is identified by the fc94 source address of its connection."
        ),
        lifespan=lifespan,
        responses={
            403: {"model": Problem, "description": "The request did not come from an overlay address."},
            413: {"model": Problem, "description": "The body is larger than Websetup reads."},
            422: {"model": Problem, "description": "The request is malformed; the detail says where."},
        },
    )
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(_InternalErrors)
    _install_error_handlers(app)
    endpoints = _Endpoints(factory)

    @app.post(
        f"{API_PREFIX}/join",
        response_model=JoinResult,
        responses={
            404: {"model": Problem, "description": "No account or network has this join code."},
            409: {
                "model": Problem,
                "description": "Hostname taken, device limit reached, or another's device.",
            },
        },
        summary="Claim the requesting device with a join code",
    )
    async def join(request: Request, body: JoinRequest) -> JoinResult:
        return await endpoints.join(device_address(request), body)

    @app.get(
        f"{API_PREFIX}/config",
        response_model=DeviceConfig,
        responses={404: {"model": Problem, "description": "The device is not claimed."}},
        summary="The device's whitelist and hosts, held until the revision passes `after`",
    )
    async def config(
        request: Request,
        after: Annotated[
            int,
            Query(ge=-1, le=2**62, description="The revision the device has (-1: none)."),
        ] = -1,
        wait: Annotated[
            float,
            Query(ge=0, allow_inf_nan=False, description=f"Seconds to hold it (at most {MAX_WAIT_S:g})."),
        ] = DEFAULT_WAIT_S,
    ) -> DeviceConfig:
        return await endpoints.config(request, device_address(request), after, min(wait, MAX_WAIT_S))

    @app.post(
        f"{API_PREFIX}/report",
        status_code=204,
        response_class=Response,
        responses={404: {"model": Problem, "description": "The device is not claimed."}},
        summary="The links the device sees, for the network picture",
    )
    async def report(request: Request, body: PeerReport) -> Response:
        await endpoints.report(device_address(request), body)
        return Response(status_code=204)

    return app


def device_address(request: Request) -> str:
    """The requesting device: the connection's source address, canonical, which must be an overlay address."""
    host = request.client.host if request.client is not None else ""
    # A link-local zone (%hnet0) says which interface, not who: the address is the identity.
    try:
        return format_address(parse_overlay(host.split("%", 1)[0]))
    except AddressError:
        raise _Refused(
            403,
            "Websetup answers only devices on the overlay, and this request came from "
            f"{shorten(host or '?')}: "
            "connect through the husarnet-ros daemon (husarnet-ros setup-server), to the license's "
            "websetup_address",
        ) from None


class _Endpoints:
    """The three operations, each a few short transactions in worker threads."""

    def __init__(self, factory: db.SessionFactory) -> None:
        self._factory = factory
        self._revision = _SharedRevision(lambda: self._in_transaction(service.current_revision))

    async def _in_transaction(self, work: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            with db.transaction(self._factory) as session:
                return work(session, *args)

        return await run_in_threadpool(run)

    async def join(self, address: str, body: JoinRequest) -> JoinResult:
        def claim(session: Any) -> JoinResult:
            # Claiming also refreshes the device's last_seen_at.
            _, result = service.claim_device(session, body.code, address, body.hostname, utc_now())
            return result

        return await self._in_transaction(claim)

    async def config(self, request: Request, address: str, after: int, wait: float) -> DeviceConfig:
        def current(session: Any, touch: bool) -> DeviceConfig:
            if touch:
                service.touch_device(session, address, utc_now())
            found = service.device_config(session, address)
            if found is None:
                raise _Refused(404, NOT_CLAIMED)
            return found

        first = await self._in_transaction(current, True)
        # Only a revision above the device's is news. (One below it, after a database restored from a backup,
        # is held like no change: the daemon ignores older revisions and would ask again at once, in a loop.)
        if first.revision > after or wait <= 0:
            return first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(POLL_INTERVAL_S, remaining))
            if await request.is_disconnected():
                # Nobody to answer; the daemon asks again with its revision when it is back.
                break
            if await self._revision.get() > after:
                break
        return await self._in_transaction(current, False)

    async def report(self, address: str, body: PeerReport) -> None:
        def store(session: Any) -> None:
            # Refuses an unclaimed device (NotFound); refreshes last_seen_at.
            service.record_report(session, address, body, utc_now())

        await self._in_transaction(store)


class _SharedRevision:
    """The installation's revision for all held requests: a read that began less than REVISION_FRESH_S ago
    answers, and a read under way is awaited instead of starting another."""

    def __init__(self, read: Callable[[], Awaitable[int]]) -> None:
        self._read = read
        self._loop: asyncio.AbstractEventLoop | None = None
        self._value = 0
        self._read_at = -math.inf
        self._pending: asyncio.Task[int] | None = None

    async def get(self) -> int:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Another event loop (an app reused across asyncio.run calls): nothing of the old one is valid.
            self._loop, self._pending, self._read_at = loop, None, -math.inf
        if loop.time() - self._read_at < REVISION_FRESH_S:
            return self._value
        if self._pending is None:
            self._pending = loop.create_task(self._refresh(loop.time()))
        # Shielded: one waiter that goes away does not cancel the read the others wait for.
        return await asyncio.shield(self._pending)

    async def _refresh(self, started: float) -> int:
        try:
            value = await self._read()
        finally:
            self._pending = None
        # The time the read began: a change committed while it ran is seen by the next one.
        self._value, self._read_at = value, started
        return value


class _BodyLimit:
    """Refuses (413) a body larger than ``limit`` before it is read whole, announced or not."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        too_large = StarletteHTTPException(413, f"the request body is larger than {self._limit} bytes")
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self._limit:
                await _send_json(send, 413, str(too_large.detail))
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    # FastAPI passes an HTTPException raised while it reads the body on to the handlers.
                    raise too_large
            return message

        await self._app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, detail: str) -> None:
    response = JSONResponse(status_code=status, content={"detail": detail})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _problem(status: int, detail: str) -> JSONResponse:
    # Bounded whatever produced it: a message may quote what the client sent.
    return JSONResponse(status_code=status, content=Problem(detail=bound_message(detail)).model_dump())


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, describe_validation_errors(exc.errors(), whole="body"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
            return _problem(
                exc.status_code,
                f"Websetup has no route {shorten(request.method, 16)} {shorten(request.url.path)}: "
                f"the protocol's routes are under {API_PREFIX} (is the daemon newer or older than Websetup?)",
            )
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode at all (not UTF-8).
            return _problem(422, f"invalid request: {exc.detail} (the body must be UTF-8 JSON)")
        return _problem(exc.status_code, str(exc.detail))

    @app.exception_handler(_Refused)
    async def on_refused(_: Request, exc: _Refused) -> JSONResponse:
        return _problem(exc.status, exc.detail)

    @app.exception_handler(DashboardError)
    async def on_service_refusal(_: Request, exc: DashboardError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 409)
        return _problem(status, str(exc))

    @app.exception_handler(AddressError)
    async def on_address_error(_: Request, exc: AddressError) -> JSONResponse:
        return _problem(422, str(exc))

    @app.exception_handler(SQLAlchemyError)
    async def on_database_error(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        # Not the request's fault: the database is down or overloaded. The daemon backs off and asks again.
        log.warning("Websetup: database error: %s", str(exc).splitlines()[0] if str(exc) else type(exc))
        return _problem(503, "Websetup cannot reach its database right now; the daemon will retry")


class _InternalErrors:
    """A bug answers 500 with a sentence (and a traceback in the log) instead of a dropped connection.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which puts a task group between the app and the
    connection's receive: a held request would then never see its client go away."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("Websetup: %s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for an answer: the server closes the connection
            await _send_json(send, 500, f"internal error in Websetup ({type(exc).__name__}); see its log")


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv6 or IPv4); OSError says why not (the fc94 address is
    not up yet: the server's daemon is not running)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            # "::" serves IPv4 too, as the other servers of the project do.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or "::", port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def websetup_server(app: FastAPI, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for the app; serve it with ``server.serve(sockets=[bind_listen_socket(...)])`` or
    beside other servers with ``serve_together``."""
    config = uvicorn.Config(
        app,
        log_level=log_level.lower(),
        # Held config requests are cut after this long when the server stops; the daemons ask again.
        timeout_graceful_shutdown=2,
        # A daemon's long-poll keeps one connection; idle ones between polls are closed after this.
        timeout_keep_alive=int(MAX_WAIT_S) + 5,
        server_header=False,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


async def serve_together(servers: Iterable[tuple[uvicorn.Server, list[socket.socket]]]) -> None:
    """Run several uvicorn servers on this loop until one of them stops (a signal, a failed start), then stop
    the others: the Dashboard and Websetup live and die together when they share a process.

    SIGINT and SIGTERM stop them all and this returns normally (exit status 0 for a service manager)."""
    pairs = list(servers)

    def stop_all(*_: object) -> None:
        for server, _sockets in pairs:
            server.should_exit = True

    with _stopping_signals(stop_all):
        tasks = [asyncio.ensure_future(server.serve(sockets=sockets)) for server, sockets in pairs]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_all()
            results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


@contextlib.contextmanager
def _stopping_signals(handler: Callable[..., None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` while the block runs. Each uvicorn server puts its own handler in
    front while it serves and, once stopped, passes the signal back to the one before it: ending with this
    one instead of Python's default, the process shuts down cleanly instead of dying by the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
