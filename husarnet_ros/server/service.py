"""The base server process: one dual-stack UDP socket around the sans-IO ``BaseServer`` (server/registry.py).

Single-threaded: a datagram in, its answers out; every second the expiry of silent clients; every
``status_interval`` seconds one status line in the log (JSON with ``--json``) and, with ``status_file``,
the same figures written to that file atomically (for monitoring and tests).
"""

from __future__ import annotations

import errno
import json
import logging
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..core import basewire
from ..core.base_client import DEFAULT_BASE_PORT
from ..core.errors import HusarnetError
from ..daemon.transport import RECEIVE_BUFFER_SIZE, UDP_GRO, UDP_SEGMENT, gro_segment, try_udp_option
from ..fileio import atomic_write_text
from .registry import DEFAULT_MAX_CLIENTS, BaseServer

log = logging.getLogger("husarnet_ros.base_server")

_EXPIRE_EVERY_S = 1.0
_SOCKET_BUFFER = 4 * 1024 * 1024


class BaseServerError(HusarnetError):
    """The base server could not start (port in use, bad listen address)."""


@dataclass
class BaseServerConfig:
    listen: str = "::"
    udp_port: int = DEFAULT_BASE_PORT
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
        try:
            self.sock.sendto(data, target)
        except OSError as exc:
            self.engine.counters["send_errors"] += 1
            log.debug("send to %s failed: %s", target, exc)

    def _send_batch(self, data: memoryview, segment: int, target: tuple[str, int]) -> None:
        if len(data) > segment and self._gso:
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
        sock, engine = self.sock, self.engine
        buffer = bytearray(RECEIVE_BUFFER_SIZE)
        next_expire = next_report = time.monotonic()
        log.info("base server listening on UDP %s port %d", self.config.listen, self.port)
        while not self._stopping:
            now = time.monotonic()
            if now >= next_expire:
                engine.expire(now)
                next_expire = now + _EXPIRE_EVERY_S
            if now >= next_report:
                self._report()
                next_report = now + self.config.status_interval
            try:
                ready, _, _ = select.select([sock], [], [], min(next_expire, next_report) - now)
            except InterruptedError:
                continue
            if not ready:
                continue
            for _ in range(256):  # a bounded batch, then the timers again
                try:
                    size, ancillary, _flags, addr = sock.recvmsg_into(
                        [buffer], self._ancillary, socket.MSG_DONTWAIT
                    )
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # ICMP errors of earlier sends: not the socket's end
                    log.debug("receive error: %s", exc)
                    continue
                if size:
                    self._handle(buffer, size, gro_segment(ancillary, size), (addr[0], addr[1]))
        self._report()
        sock.close()


def run(config: BaseServerConfig) -> int:
    service = BaseServerService(config)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    service.run()
    return 0
