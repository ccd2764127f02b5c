"""The hot path: two threads moving packets between the TUN device and the UDP socket.

One thread per direction blocks in a syscall (read on the TUN, recvfrom on the socket) and
calls the node's lock-free hot-path methods; libsodium releases the GIL, so the directions
overlap. Handshake datagrams are handed to the node under the control lock. Nothing here
allocates per packet beyond what the syscalls and the AEAD return.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from ..core import wire
from ..core.node import Node
from .transport import UdpTransport

log = logging.getLogger(__name__)


def flush_outbox(node: Node, transport: UdpTransport) -> None:
    """Send everything the node queued (safe from any thread)."""
    outbox = node.outbox
    while outbox:
        try:
            endpoint, data = outbox.popleft()
        except IndexError:  # another thread emptied it first
            return
        transport.sendto(data, endpoint)


class DataPlane:
    def __init__(
        self,
        node: Node,
        tun_fd: int,
        transport: UdpTransport,
        control_lock: threading.Lock,
        wake_control: Callable[[], None],
        mtu: int,
    ) -> None:
        self._node = node
        self._tun_fd = tun_fd
        self._transport = transport
        self._lock = control_lock
        self._wake = wake_control
        self._mtu = mtu
        self._threads: list[threading.Thread] = []
        self.stopping = False

    def start(self) -> None:
        for target, name in ((self._tun_to_udp, "tun->udp"), (self._udp_to_tun, "udp->tun")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _tun_to_udp(self) -> None:
        node, transport, fd = self._node, self._transport, self._tun_fd
        send, sendto, read, clock = node.send, transport.sendto, os.read, time.monotonic
        while not self.stopping:
            try:
                packet = read(fd, 65535)
            except OSError as exc:
                if self.stopping:
                    return
                log.warning("TUN read failed: %s", exc)
                time.sleep(0.1)
                continue
            out = send(packet, clock())
            if out is None:
                self._wake()  # a handshake may be needed now, not at the next tick
                continue
            sendto(out[1], out[0])
            if node.outbox:
                flush_outbox(node, transport)

    def _udp_to_tun(self) -> None:
        node, transport, fd = self._node, self._transport, self._tun_fd
        receive_data, recvfrom, write, clock = node.receive_data, transport.recvfrom, os.write, time.monotonic
        data_type = wire.MSG_DATA
        while not self.stopping:
            try:
                datagram, endpoint = recvfrom(65535)
            except OSError as exc:
                if self.stopping:
                    return
                log.debug("UDP receive error: %s", exc)
                continue
            if datagram and datagram[0] == data_type:
                packet = receive_data(datagram, endpoint, clock())
                if packet is not None:
                    try:
                        write(fd, packet)
                    except OSError as exc:
                        node.counters["drop_tun_write"] += 1
                        log.debug("TUN write failed: %s", exc)
            else:
                with self._lock:
                    node.receive_control(datagram, endpoint, clock())
                self._wake()  # a completed handshake may have events for the control loop
            if node.outbox:
                flush_outbox(node, transport)
