"""The hot path: two threads moving packets between the TUN device and the UDP socket.

One thread per direction blocks in a syscall (read on the TUN, recvfrom on the socket) and calls the
node's hot-path method (``Node.send`` / ``Node.receive``); libsodium releases the GIL, so the directions
overlap. Neither thread changes the node's tables: what they learn is posted to the control loop, which
they wake only when there is something for it. A bad packet costs that packet (counted, logged at most
once a second), never the thread; a thread that cannot go on at all reports it through ``on_fatal``.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable

from ..core.constants import MAX_DATAGRAM
from ..core.node import Node
from .log_ring import LogThrottle
from .transport import UdpTransport

log = logging.getLogger(__name__)

# A TUN or socket that fails this many times in a row is gone (the device was deleted, the fd closed).
_FATAL_CONSECUTIVE_ERRORS = 100
_ERROR_LOG_INTERVAL_S = 1.0
# What an ICMP error of an earlier send makes recvfrom() return: the socket itself is fine.
_TRANSIENT_RECV_ERRNOS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ECONNRESET,
    errno.EMSGSIZE,
}


class DataPlane:
    def __init__(
        self,
        node: Node,
        tun_fd: int,
        transport: UdpTransport,
        wake_control: Callable[[], None],
        on_fatal: Callable[[str], None],
    ) -> None:
        self._node = node
        self._tun_fd = tun_fd
        self._transport = transport
        self._wake = wake_control
        self._on_fatal = on_fatal
        self._threads: list[threading.Thread] = []
        self.stopping = False
        self._error_log = {name: LogThrottle(_ERROR_LOG_INTERVAL_S) for name in ("tun->udp", "udp->tun")}

    def start(self) -> None:
        for target, name in ((self._tun_to_udp, "tun->udp"), (self._udp_to_tun, "udp->tun")):
            thread = threading.Thread(target=self._guard, args=(target, name), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _guard(self, target: Callable[[], None], name: str) -> None:
        try:
            target()
        except BaseException as exc:  # the thread is gone: the daemon must not run on without it
            if not self.stopping:
                log.exception("data plane thread %s stopped", name)
                self._on_fatal(f"data plane thread {name} stopped: {type(exc).__name__}: {exc}")

    def _packet_error(self, name: str, exc: Exception) -> None:
        """One packet failed in a way that is a bug: count it, log it (not more than once a second)."""
        counters = self._node.tx_counters if name == "tun->udp" else self._node.rx_counters
        counters["internal_errors"] += 1
        note = self._error_log[name].allow()
        if note is not None:
            log.error(
                "%s: a packet failed (%s: %s); dropped%s", name, type(exc).__name__, exc, note, exc_info=exc
            )

    def _tun_to_udp(self) -> None:
        node, fd = self._node, self._tun_fd
        send, sendto, read, clock = node.send, self._transport.sendto, os.read, time.monotonic
        failures = 0
        while not self.stopping:
            try:
                packet = read(fd, MAX_DATAGRAM)
            except OSError as exc:
                if self.stopping:
                    return
                failures += 1
                if failures >= _FATAL_CONSECUTIVE_ERRORS:
                    self._on_fatal(f"the TUN device cannot be read any more: {exc.strerror or exc}")
                    return
                time.sleep(0.01)
                continue
            failures = 0
            try:
                out = send(packet, clock())
                if out is None:
                    if node.has_posted():
                        self._wake()  # a handshake may be needed now, not at the next tick
                    continue
                sendto(out[1], out[0])
            except Exception as exc:
                self._packet_error("tun->udp", exc)

    def _udp_to_tun(self) -> None:
        node, transport, fd = self._node, self._transport, self._tun_fd
        receive, recvfrom, write, clock = node.receive, transport.recvfrom, os.write, time.monotonic
        replies = node.replies
        failures = 0
        while not self.stopping:
            try:
                datagram, endpoint = recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                if self.stopping:
                    return
                # ICMP errors of earlier sends surface here (ECONNREFUSED and friends): not the socket's end.
                failures += 1
                if failures >= _FATAL_CONSECUTIVE_ERRORS and exc.errno not in _TRANSIENT_RECV_ERRNOS:
                    self._on_fatal(f"the UDP socket cannot be read any more: {exc.strerror or exc}")
                    return
                log.debug("UDP receive error: %s", exc)
                continue
            failures = 0
            try:
                packet = receive(datagram, endpoint, clock())
                if packet is not None:
                    try:
                        write(fd, packet)
                    except OSError as exc:
                        node.rx_counters["drop_tun_write"] += 1
                        log.debug("TUN write failed: %s", exc)
                while replies:
                    to, data = replies.popleft()
                    transport.sendto(data, to)
                if node.has_posted():
                    self._wake()
            except Exception as exc:
                self._packet_error("udp->tun", exc)
