"""The base server process: a dual-stack UDP socket and a TCP listener (server/tcp.py) around the sans-IO
``BaseServer`` (server/registry.py).

Single-threaded, one selector: a datagram or a TCP frame in, its answers out (over UDP or the client's TCP
connection, whichever it came by); every second the expiry of silent clients; every
``status_interval`` seconds one status line in the log (JSON with ``--json``) and, with ``status_file``,
the same figures written to that file atomically (for monitoring and tests).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..core import basewire
from ..core.base_client import DEFAULT_BASE_PORT, DEFAULT_BASE_TCP_PORT
from ..core.errors import HusarnetError
from ..daemon.transport import RECEIVE_BUFFER_SIZE, UDP_GRO, UDP_SEGMENT, gro_segment, try_udp_option
from ..fileio import atomic_write_text
from . import tcp
from .registry import DEFAULT_MAX_CLIENTS, BaseServer, is_tcp

log = logging.getLogger("husarnet_ros.base_server")

_EXPIRE_EVERY_S = 1.0
_SOCKET_BUFFER = 4 * 1024 * 1024


class BaseServerError(HusarnetError):
    """The base server could not start (port in use, bad listen address)."""


@dataclass
class BaseServerConfig:
    listen: str = "::"
    udp_port: int = DEFAULT_BASE_PORT
    tcp_port: int | None = DEFAULT_BASE_TCP_PORT  # None: no TCP
    max_clients: int = DEFAULT_MAX_CLIENTS
    status_interval: float = 60.0
    status_file: Path | None = None
    json_log: bool = False


def open_socket(listen: str, port: int) -> socket.socket:
    family = socket.AF_INET if "." in listen and ":" not in listen else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 clients too
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        sock.bind((listen, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BaseServerError(f"UDP port {port} is in use; choose another with --udp-port") from None
        raise BaseServerError(f"cannot listen on {listen!r} UDP port {port}: {exc.strerror or exc}") from None
    return sock


class BaseServerService:
    def __init__(self, config: BaseServerConfig) -> None:
        self.config = config
        self.engine = BaseServer(max_clients=config.max_clients)
        self.sock = open_socket(config.listen, config.udp_port)
        self.port = self.sock.getsockname()[1]
        # UDP GRO/GSO where the kernel has them: a relayed stream moves in batches, not datagram by datagram.
        self._gso = try_udp_option(self.sock, UDP_SEGMENT, 0)
        gro = try_udp_option(self.sock, UDP_GRO, 1)
        self._ancillary = socket.CMSG_SPACE(4) if gro else 0
        self.listener: socket.socket | None = None
        if config.tcp_port is not None:
            try:
                self.listener = tcp.open_listener(config.listen, config.tcp_port)
            except OSError as exc:
                self.sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise BaseServerError(
                        f"TCP port {config.tcp_port} is in use; choose another with --tcp-port"
                    ) from None
                raise BaseServerError(
                    f"cannot listen on {config.listen!r} TCP port {config.tcp_port}: {exc.strerror or exc}"
                ) from None
        self.tcp_port = self.listener.getsockname()[1] if self.listener is not None else None
        self.connections: dict[tuple[str, int], tcp.Connection] = {}
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        self.started = time.monotonic()

    def _handle(self, buffer: bytearray, size: int, segment: int, endpoint: tuple[str, int]) -> None:
        engine = self.engine
        if buffer[0] == basewire.MSG_BASE_RELAY:
            # Relayed traffic (a TCP stream through the relay) comes as batches of equal datagrams from one
            # client to one peer: rewritten in place and sent on in one GSO send when the kernel allows.
            target = engine.relay_in_place(buffer, size, segment, endpoint)
            if target is not None:
                self._send_batch(memoryview(buffer)[:size], segment, target)
                return
        now = time.monotonic()
        view = memoryview(buffer)
        for start in range(0, size, segment):
            datagram = bytes(view[start : min(size, start + segment)])
            for target, answer in engine.receive(datagram, endpoint, now):
                self._send(answer, target)

    def _send(self, data: bytes | memoryview, target: tuple[str, int]) -> None:
        if is_tcp(target):
            connection = self.connections.get(target)
            if connection is None or not connection.enqueue(data):
                self.engine.counters["drop_tcp_send"] += 1
            elif not connection.write():
                self._drop(connection)
            elif connection.queue:
                self._watch(connection)
            return
        try:
            self.sock.sendto(data, target)
        except OSError as exc:
            self.engine.counters["send_errors"] += 1
            log.debug("send to %s failed: %s", target, exc)

    def _send_batch(self, data: memoryview, segment: int, target: tuple[str, int]) -> None:
        if len(data) > segment and self._gso and not is_tcp(target):
            try:
                self.sock.sendmsg(
                    [data], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))], 0, target
                )
                return
            except OSError as exc:
                if exc.errno not in (
                    errno.EINVAL,
                    errno.EMSGSIZE,
                    errno.EIO,
                    errno.ENOPROTOOPT,
                    errno.EOPNOTSUPP,
                ):
                    self.engine.counters["send_errors"] += 1
                    return
                log.info("UDP segmentation refused (%s); relaying datagrams one by one", exc)
                self._gso = False
        for start in range(0, len(data), segment):
            self._send(data[start : start + segment], target)

    def stop(self, _signum: int | None = None, _frame: FrameType | None = None) -> None:
        self._stopping = True

    def status(self) -> dict[str, object]:
        return {
            "udp_port": self.port,
            "tcp_port": self.tcp_port,
            "tcp_connections": len(self.connections),
            "uptime_s": round(time.monotonic() - self.started, 3),
            **self.engine.status(),
        }

    def _report(self) -> None:
        status = self.status()
        if self.config.json_log:
            log.info("%s", json.dumps(status, sort_keys=True))
        else:
            log.info(
                "%d clients, %d frames (%d bytes) relayed, counters %s",
                status["clients"],
                status["relayed_frames"],
                status["relayed_bytes"],
                status["counters"],
            )
        if self.config.status_file is not None:
            try:
                atomic_write_text(self.config.status_file, json.dumps(status, sort_keys=True) + "\n")
            except OSError as exc:
                log.warning("cannot write the status file %s: %s", self.config.status_file, exc)

    def run(self) -> None:
        engine, selector = self.engine, self._selector
        buffer = bytearray(RECEIVE_BUFFER_SIZE)
        selector.register(self.sock, selectors.EVENT_READ, "udp")
        if self.listener is not None:
            selector.register(self.listener, selectors.EVENT_READ, "listen")
        next_expire = next_report = time.monotonic()
        log.info(
            "base server listening on %s UDP port %d%s",
            self.config.listen,
            self.port,
            f", TCP port {self.tcp_port}" if self.tcp_port is not None else "",
        )
        while not self._stopping:
            now = time.monotonic()
            if now >= next_expire:
                engine.expire(now)
                self._close_idle(now)
                next_expire = now + _EXPIRE_EVERY_S
            if now >= next_report:
                self._report()
                next_report = now + self.config.status_interval
            try:
                events = selector.select(max(0.0, min(next_expire, next_report) - now))
            except InterruptedError:
                continue
            for key, mask in events:
                if key.data == "udp":
                    self._read_udp(buffer)
                elif key.data == "listen":
                    self._accept()
                else:
                    connection: tcp.Connection = key.data
                    if mask & selectors.EVENT_READ:
                        self._read_tcp(connection)
                    if mask & selectors.EVENT_WRITE and connection.endpoint in self.connections:
                        if not connection.write():
                            self._drop(connection)
                        else:
                            self._watch(connection)
        self._report()
        for connection in list(self.connections.values()):
            self._drop(connection)
        selector.close()
        self.sock.close()
        if self.listener is not None:
            self.listener.close()

    def _read_udp(self, buffer: bytearray) -> None:
        for _ in range(256):  # a bounded batch, then the others and the timers
            try:
                size, ancillary, _flags, addr = self.sock.recvmsg_into(
                    [buffer], self._ancillary, socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors of earlier sends: not the socket's end
                log.debug("receive error: %s", exc)
                continue
            if size:
                self._handle(buffer, size, gro_segment(ancillary, size), (addr[0], addr[1]))

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of descriptors: the listener itself goes on
                log.warning("TCP accept failed: %s", exc)
                return
            host = addr[0]
            if len(self.connections) >= self.engine.max_clients or (
                sum(1 for endpoint in self.connections if endpoint[0] == host) >= tcp.MAX_CONNECTIONS_PER_HOST
            ):
                self.engine.counters["drop_tcp_too_many"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = tcp.Connection(sock, tcp.tcp_endpoint(addr), opened_at=time.monotonic())
            self.connections[connection.endpoint] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)
            self.engine.counters["tcp_accepted"] += 1

    def _read_tcp(self, connection: tcp.Connection) -> None:
        messages = connection.read()
        if messages is None:
            if connection.bad_frame:
                self.engine.counters["tcp_closed_bad_frame"] += 1
            self._drop(connection)
            return
        now = time.monotonic()
        if messages:
            connection.last_frame_at = now
        for message in messages:
            for target, answer in self.engine.receive(message, connection.endpoint, now):
                self._send(answer, target)

    def _close_idle(self, now: float) -> None:
        for connection in [c for c in self.connections.values() if c.expired(now)]:
            self.engine.counters["tcp_closed_idle"] += 1
            self._drop(connection)

    def _watch(self, connection: tcp.Connection) -> None:
        """Ask for writability only while something waits to be written."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.queue else 0)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.modify(connection.sock, events, connection)

    def _drop(self, connection: tcp.Connection) -> None:
        self.connections.pop(connection.endpoint, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(connection.sock)
        connection.close()


def run(config: BaseServerConfig) -> int:
    service = BaseServerService(config)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    service.run()
    return 0
