"""Limits of the control API's HTTP server, so that no local client can exhaust the daemon.

uvicorn (0.54, its h11 protocol) on its own accepts every connection it can (``limit_concurrency`` still
accepts, and answers a plain-text 503 only once a request arrives), keeps a fresh connection that never
sends anything open forever (its keep-alive timer starts after a first answer), limits an incomplete request
head to 16 KiB with a plain-text 400 but reads request bodies of any size into memory, and asyncio answers
EMFILE at ``accept()`` with a logged traceback per attempt, up to the listen backlog per wake-up. A thousand
idle connections from a local client then exhaust the daemon's file descriptors. Here:

- ``ConnectionGuard`` accepts on the control socket itself: at most ``max_connections`` are served at
  once; beyond that, or when the process comes within ``fd_reserve`` descriptors of RLIMIT_NOFILE, a new
  connection is answered 503 at once and closed (it holds its descriptor for microseconds). When
  ``accept()`` itself fails for lack of descriptors, accepting pauses for a second, with one warning.
- ``ControlHttpProtocol`` (uvicorn's h11 protocol) closes a connection whose request (head and body) has
  not fully arrived ``request_timeout_s`` after it was opened or after the previous answer (idle
  keep-alive connections included), and refuses a head over ``max_head_bytes`` (431) or a body over
  ``max_body_bytes`` (413, judged from Content-Length before reading any of it; a chunked body is cut as
  soon as it passes the limit).

Every refusal is ``{"error": "..."}`` JSON, like every other error of the control API. Everything here runs
on the control server's event loop thread: the guard's counters have no other writer.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from .log_ring import LogThrottle

log = logging.getLogger(__name__)

# uvicorn's protocol warns once per malformed request; a local client could fill the log with those. Our own
# refusals are logged by the guard, at most once per REFUSAL_LOG_INTERVAL_S; errors still get through.
_protocol_log = logging.getLogger(f"{__name__}.http")
_protocol_log.setLevel(logging.ERROR)

REFUSAL_LOG_INTERVAL_S = 10.0
# After accept() failed for lack of file descriptors (asyncio waits as long before retrying).
ACCEPT_PAUSE_S = 1.0
# Connections taken from the backlog per wake-up, so a burst cannot monopolise the loop.
ACCEPT_BATCH = 32
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class ControlLimits:
    """How much one control server accepts. The defaults suit a robot: a CLI call, a few ROS nodes."""

    # Connections served at once: every CLI call, every ROS node's pooled connection, every long poll.
    max_connections: int = 64
    # Descriptors always left free below RLIMIT_NOFILE (at most a quarter of it) for the daemon's own
    # sockets, TUN device and state files.
    fd_reserve: int = 128
    # A request line plus headers; ours are a few hundred bytes.
    max_head_bytes: int = 16 * 1024
    # A request body; the largest the API takes (a ping or a host entry) is a few hundred bytes.
    max_body_bytes: int = 64 * 1024
    # A whole request must arrive within this of the connection's start or of the previous answer.
    request_timeout_s: float = 5.0


def json_error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 answer ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} bytes"


def _nofile_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


class _RateLimitedWarning:
    """Logs a warning at most once per ``interval_s``, saying how many were left out in between."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self._throttle = LogThrottle(interval_s)

    def __call__(self, message: str) -> None:
        note = self._throttle.allow()
        if note is not None:
            log.warning("control API: %s%s", message, note)


class ConnectionSlot:
    """One of the guard's ``max_connections`` places, held by a connection from accept() until it closes."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._held = True

    def release(self) -> None:
        """Give the place back; only the first call counts (a failed hand-over and the protocol may both)."""
        if self._held:
            self._held = False
            self._guard.open_connections -= 1


class ConnectionGuard:
    """Accepts connections on the listening socket ``sock`` and hands them to ``protocol_factory``, which
    gets the connection's ConnectionSlot to release when the connection closes."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[ConnectionSlot], asyncio.Protocol],
        limits: ControlLimits,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._sock = sock
        self._protocol_factory = protocol_factory
        self.limits = limits
        self._loop = loop
        self.open_connections = 0
        self._paused_until: asyncio.TimerHandle | None = None
        self._closed = False
        self.warn = _RateLimitedWarning()

    def start(self) -> None:
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop accepting (the socket itself stays open: its owner closes it)."""
        self._closed = True
        if self._paused_until is not None:
            self._paused_until.cancel()
            self._paused_until = None
        self._loop.remove_reader(self._sock.fileno())

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # backlog empty, or the client gave up meanwhile
            except OSError as exc:
                self._pause(exc)
                return
            refusal = self._refusal(conn)
            if refusal:
                self._turn_away(conn, refusal)
                continue
            self.open_connections += 1
            slot = ConnectionSlot(self)
            factory = functools.partial(self._protocol_factory, slot)
            task = self._loop.create_task(self._loop.connect_accepted_socket(factory, conn))
            task.add_done_callback(functools.partial(self._handed_over, conn, slot))

    def _refusal(self, conn: socket.socket) -> str | None:
        """Why ``conn`` cannot be served now, or None."""
        if self.open_connections >= self.limits.max_connections:
            return f"the daemon's control API is busy ({self.open_connections} connections open); try again"
        # Descriptors are allocated lowest first: a new one this high means this many are in use.
        limit = _nofile_limit()
        if conn.fileno() >= limit - min(self.limits.fd_reserve, limit // 4):
            return "the daemon is short of file descriptors; try again"
        return None

    def _turn_away(self, conn: socket.socket, reason: str) -> None:
        # Answered before the request is read: HTTP clients (httpx, curl) read an early answer even when
        # sending their request failed because the connection was closed meanwhile.
        try:
            conn.setblocking(False)
            conn.send(json_error_response(503, reason))
        except OSError:
            pass  # the client is gone already
        finally:
            conn.close()
        self.warn(f"turned a connection away with 503: {reason}")

    def _handed_over(self, conn: socket.socket, slot: ConnectionSlot, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or done.exception() is not None:
            slot.release()
            conn.close()

    def _pause(self, exc: OSError) -> None:
        if exc.errno not in _OUT_OF_RESOURCES:
            self.warn(f"accept() failed: {exc.strerror or exc}")
            return
        self.warn(f"accept() failed ({exc.strerror}); not accepting for {ACCEPT_PAUSE_S:g} s")
        self._loop.remove_reader(self._sock.fileno())
        self._paused_until = self._loop.call_later(ACCEPT_PAUSE_S, self._resume)

    def _resume(self) -> None:
        self._paused_until = None
        if not self._closed:
            self.start()


class _BoundedConnection(h11.Connection):
    """h11's server side that refuses a request head or body above the limits.

    A refusal is raised as h11's RemoteProtocolError, which uvicorn catches without handing it over to
    ``send_400_response``: ``error_answer()`` then says what to answer.
    """

    def __init__(self, limits: ControlLimits) -> None:
        # h11 checks this only while a head is incomplete; complete heads are measured in _check_head.
        super().__init__(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self._limits = limits
        self._body_bytes = 0
        self._refusal: tuple[int, str] | None = None

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request):
            self._body_bytes = 0
            self._check_head(event)
        elif isinstance(event, h11.Data):
            self._body_bytes += len(event.data)
            if self._body_bytes > self._limits.max_body_bytes:
                self._refuse(413, self._body_too_large())
        return event

    def _check_head(self, request: h11.Request) -> None:
        head_bytes = len(request.method) + len(request.target)
        head_bytes += sum(len(name) + len(value) + 4 for name, value in request.headers)
        if head_bytes > self._limits.max_head_bytes:
            self._refuse(431, self._head_too_large())
        for name, value in request.headers:
            # h11 has checked that Content-Length is digits and appears once.
            if name == b"content-length" and int(value) > self._limits.max_body_bytes:
                self._refuse(413, self._body_too_large())

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise h11.RemoteProtocolError(message, error_status_hint=status)

    def _head_too_large(self) -> str:
        return f"request head larger than {_size(self._limits.max_head_bytes)}"

    def _body_too_large(self) -> str:
        return (
            f"request body larger than {_size(self._limits.max_body_bytes)}: the control API takes small "
            "JSON requests"
        )

    def error_answer(self) -> tuple[int, str]:
        """Status and message answering the request that made ``next_event`` raise."""
        if self._refusal is not None:
            return self._refusal
        buffered, _ = self.trailing_data
        if len(buffered) > self._limits.max_head_bytes:  # h11's own limit on an incomplete head
            return 431, self._head_too_large()
        return 400, "invalid HTTP/1.1 request"


class ControlHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with the request limits and timeouts of ``ControlLimits``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        guard: ConnectionGuard,
        slot: ConnectionSlot,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = _protocol_log
        self._guard = guard
        self._slot = slot
        self._limits = guard.limits
        self.conn: _BoundedConnection = _BoundedConnection(self._limits)
        self._request_deadline: asyncio.TimerHandle | None = None

    # --- life cycle -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow_request_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_deadline()
        super().connection_lost(exc)
        self._slot.release()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request_deadline()

    # --- the request deadline ---------------------------------------------------------------------------

    def _follow_request_deadline(self) -> None:
        """Run the deadline while a request is awaited or half-received, not while it is being answered."""
        awaiting = self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()
        if awaiting and self._request_deadline is None:
            timeout_s = self._limits.request_timeout_s
            self._request_deadline = self.loop.call_later(timeout_s, self._request_timed_out)
        elif not awaiting:
            self._cancel_request_deadline()

    def _cancel_request_deadline(self) -> None:
        if self._request_deadline is not None:
            self._request_deadline.cancel()
            self._request_deadline = None

    def _request_timed_out(self) -> None:
        self._request_deadline = None
        if self.transport.is_closing():
            return
        buffered, _ = self.conn.trailing_data
        if self.conn.their_state is h11.IDLE and not buffered:
            self.transport.close()  # an idle connection: nothing to answer
            return
        message = f"the request did not arrive completely within {self._limits.request_timeout_s:g} s"
        self._guard.warn(f"closed a connection: {message}")
        self._answer_and_close(408, message)

    # --- refusals ---------------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn when h11 (or ``_BoundedConnection``) rejects the request."""
        status, message = self.conn.error_answer()
        self._guard.warn(f"refused a request with {status}: {message}")
        self._answer_and_close(status, message)

    def _answer_and_close(self, status: int, message: str) -> None:
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # too late for another answer
            return
        self.transport.write(json_error_response(status, message))
        self.transport.close()
