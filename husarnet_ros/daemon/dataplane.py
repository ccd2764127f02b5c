"""The hot path: two threads moving packets between the TUN device and the UDP socket.

One thread per direction blocks in a syscall (read on the TUN, recvmsg on the socket) and calls the
node's hot-path methods (``Node.send``/``send_segments``, ``Node.receive``); libsodium releases the GIL, so
the directions overlap. With offloads (core/offload.py) one read brings up to 64 KB of TCP, cut into
segments here and sent with one or two GSO system calls, and one receive brings many datagrams (GRO), whose
contiguous TCP segments go back to the TUN as one write.

Neither thread changes the node's tables: what they learn is posted to the control loop, which they wake
only when there is something for it. A bad packet costs that packet (counted, logged at most
once a second), never the thread; a thread that cannot go on at all reports it through ``on_fatal``.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from ..core import aead, basewire, offload
from ..core.constants import MAX_DATAGRAM
from ..core.errors import ProtocolError
from ..core.node import Node
from ..core.peer import Endpoint, relay_endpoint
from ..core.send_batch import SendBatch
from ..core.wire import PROTOCOL_VERSION
from .log_ring import LogThrottle
from .transport import RECEIVE_BUFFER_SIZE, UdpTransport
from .tun import OFFLOAD_READ_SIZE, Tun

log = logging.getLogger(__name__)

# A TUN or socket that fails this many times in a row is gone (the device was deleted, the fd closed).
_FATAL_CONSECUTIVE_ERRORS = 100
_ERROR_LOG_INTERVAL_S = 1.0
# Packets read from the TUN before they are sent, at most (a GSO send takes up to 64).
_MAX_QUEUED_SINGLES = 64
# How long the send thread sleeps in poll() with nothing to read before it checks whether it should stop.
_IDLE_POLL_MS = 1000
_RELAYED_VERSION_AND_RESERVED = bytes((PROTOCOL_VERSION, 0, 0))
# Base-server messages (not relayed frames) waiting for the control loop, at most.
MAX_BASE_INBOX = 256
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
        tun: Tun,
        transport: UdpTransport,
        wake_control: Callable[[], None],
        on_fatal: Callable[[str], None],
        nice: int = 0,
    ) -> None:
        self._node = node
        self._nice = nice
        self._tun = tun
        self._tun_failures = 0
        self._transport = transport
        self._wake = wake_control
        self._on_fatal = on_fatal
        self._threads: list[threading.Thread] = []
        self.stopping = False
        self._error_log = {name: LogThrottle(_ERROR_LOG_INTERVAL_S) for name in ("tun->udp", "udp->tun")}
        # Base servers: relayed frames are accepted only from these endpoints (set by the control loop);
        # their other messages wait here for the control loop (core/base_client.py).
        self.base_endpoints: frozenset[Endpoint] = frozenset()
        self.base_inbox: collections.deque[tuple[bytes, Endpoint]] = collections.deque()

    def set_base_endpoints(self, endpoints: frozenset[Endpoint]) -> None:
        self.base_endpoints = endpoints

    def start(self) -> None:
        for target, name in ((self._tun_to_udp, "tun->udp"), (self._udp_to_tun, "udp->tun")):
            thread = threading.Thread(target=self._guard, args=(target, name), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _guard(self, target: Callable[[], None], name: str) -> None:
        self._raise_priority(name)
        try:
            target()
        except BaseException as exc:  # the thread is gone: the daemon must not run on without it
            if not self.stopping:
                log.exception("data plane thread %s stopped", name)
                self._on_fatal(f"data plane thread {name} stopped: {type(exc).__name__}: {exc}")

    def _raise_priority(self, name: str) -> None:
        """This thread's nice value (Linux schedules threads one by one): below 0 the packets move before busy
        applications get the CPU, as the kernel's own networking would, so a sender faster than the overlay
        is slowed down rather than losing packets in the TUN's queue. A value below 0 cannot be taken here
        (no capabilities left): the thread was born with it (service._lend_nice), or runs without it."""
        me = threading.get_native_id()
        try:
            if os.getpriority(os.PRIO_PROCESS, me) != self._nice:
                os.setpriority(os.PRIO_PROCESS, me, self._nice)
        except OSError as exc:
            log.warning("data plane thread %s runs at normal priority (nice %d: %s)", name, self._nice, exc)

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
        if self._tun.offload:
            self._tun_to_udp_offload()
            return
        node, fd = self._node, self._tun.fd
        send, sendto, read, clock = node.send, self._transport.sendto, os.read, time.monotonic
        while not self.stopping:
            packet = self._read(read, fd, MAX_DATAGRAM)
            if packet is None:
                continue
            try:
                out = send(packet, clock())
                if out is None:
                    self._wake_if_posted()  # a handshake may be needed now, not at the next tick
                    continue
                sendto(out[1], out[0])
            except Exception as exc:
                self._packet_error("tun->udp", exc)

    def _tun_to_udp_offload(self) -> None:
        """Reads carry a virtio header; a TCP packet of up to 64 KB is cut into MTU-sized segments here, each
        sealed on its own, and they leave in one or two GSO sends. Other packets are read while the TUN has
        more (non-blocking reads, each straight into the next place of one buffer: core/send_batch.py) and
        sealed and sent together when it has none left or the batch is full: equal ones (a burst of DDS
        fragments) in one GSO send. Nothing waits for more to come: a lone packet (a ping) leaves as soon as
        the next read finds the TUN empty."""
        node, fd, transport, counters = self._node, self._tun.fd, self._transport, self._node.tx_counters
        send_large, send_many, sendto_batch = node.send_large, transport.send_many, transport.sendto_batch
        readv, clock, unpack = os.readv, time.monotonic, offload.VNET_STRUCT.unpack_from
        header_size = offload.VNET_HEADER_SIZE
        batch = SendBatch(node, OFFLOAD_READ_SIZE, _MAX_QUEUED_SINGLES)
        ready = select.poll()
        ready.register(fd, select.POLLIN)
        os.set_blocking(fd, False)
        while not self.stopping:
            frame = batch.read_target()
            try:
                size = readv(fd, [frame])
            except BlockingIOError:
                if len(batch):
                    send_many(batch.seal())
                ready.poll(_IDLE_POLL_MS)
                continue
            except OSError as exc:
                self._read_failed(exc)
                continue
            self._tun_failures = 0
            try:
                if size <= header_size:
                    counters["drop_malformed_tun"] += 1
                    continue
                flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = unpack(frame)
                if gso_type == offload.GSO_NONE:
                    if not batch.stage(size - header_size, flags, csum_start, csum_offset, clock()):
                        self._wake_if_posted()  # a handshake may be needed now, not at the next tick
                    elif batch.full():
                        send_many(batch.seal())
                    continue
                if len(batch):  # in order: what was read before this goes before it (the frame stays put)
                    send_many(batch.seal())
                if gso_type == offload.GSO_UDP_L4 and self._tun.udp_offload:
                    self._send_udp_segments(frame[header_size:size], csum_start, gso_size)
                    continue
                if gso_type & ~offload.GSO_ECN != offload.GSO_TCPV6:
                    # A kind we did not offer the kernel (TUNSETOFFLOAD): never expected.
                    counters["drop_gso_type"] += 1
                    continue
                sent = send_large(frame[header_size:size], csum_start, gso_size, clock())
                if sent is None:
                    self._wake_if_posted()
                    continue
                counters["tso_packets"] += 1
                sendto_batch(sent[1], sent[2], sent[0])
            except ProtocolError:
                counters["drop_malformed_tun"] += 1
            except Exception as exc:
                batch.discard()
                self._packet_error("tun->udp", exc)

    def _send_udp_segments(self, packet: memoryview, csum_start: int, gso_size: int) -> None:
        """An application's UDP GSO send (``UDP_SEGMENT``, e.g. QUIC): its datagrams, cut here, go like
        packets read one by one (rare enough that it need not be fast)."""
        node, now, datagrams = self._node, time.monotonic(), []
        for segment in offload.udp_segments(packet, csum_start, gso_size):
            out = node.send(segment, now)
            if out is None:
                self._wake_if_posted()
            else:
                datagrams.append(out)
        self._node.tx_counters["udp_gso_packets"] += 1
        self._transport.send_many(datagrams)

    def _read(self, read: Callable[[int, int], bytes], fd: int, size: int) -> bytes | None:
        """One read from the TUN; None after a failure (the caller goes on; enough in a row are fatal)."""
        try:
            data = read(fd, size)
        except OSError as exc:
            self._read_failed(exc)
            return None
        self._tun_failures = 0
        return data

    def _read_failed(self, exc: OSError) -> None:
        if self.stopping:
            return
        self._tun_failures += 1
        if self._tun_failures >= _FATAL_CONSECUTIVE_ERRORS:
            self.stopping = True
            self._on_fatal(f"the TUN device cannot be read any more: {exc.strerror or exc}")
            return
        time.sleep(0.01)

    def _wake_if_posted(self) -> None:
        if self._node.has_posted():
            self._wake()

    def _udp_to_tun(self) -> None:
        """Each receive may hold several datagrams (GRO), opened in place in one buffer; their packets go to
        the TUN one write each, or joined into large TCP packets when the TUN takes them (offload)."""
        node, transport, fd = self._node, self._transport, self._tun.fd
        receive_batch, recv_batch, clock = node.receive_batch, transport.recv_batch, time.monotonic
        counters, replies = node.rx_counters, node.replies
        buffer = bytearray(RECEIVE_BUFFER_SIZE)
        base = aead.pointer(buffer)

        def write(header: bytes, parts: list[offload.Buffer]) -> None:
            try:
                os.writev(fd, [header, *parts])
            except OSError as exc:
                counters["drop_tun_write"] += 1
                log.debug("TUN write failed: %s", exc)

        sink = (
            offload.Coalescer(write, udp=self._tun.udp_offload)
            if self._tun.offload
            else offload.PlainPackets(write)
        )
        failures = 0
        while not self.stopping:
            try:
                size, segment, endpoint = recv_batch(buffer)
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
                if segment < size:
                    counters["gro_batches"] += 1
                if buffer[0] >= basewire.FIRST_BASE_TYPE:
                    self._from_base(buffer, size, segment, endpoint, clock(), sink)
                else:
                    receive_batch(buffer, base, size, segment, endpoint, clock(), sink)
                sink.flush()
                while replies:
                    to, data = replies.popleft()
                    transport.sendto(data, to)
                if node.has_posted():
                    self._wake()
            except Exception as exc:
                self._packet_error("udp->tun", exc)

    def _open_relayed(
        self,
        buffer: bytearray,
        size: int,
        segment: int,
        endpoint: Endpoint,
        now: float,
        sink: offload.PacketSink,
    ) -> str | None:
        """Frames relayed from one peer, back to back in ``buffer`` (one, or a GRO batch: a TCP stream
        through the relay): the relay headers are squeezed out in place and the frames opened as one batch,
        like direct ones. Returns None when done, else why nothing was done (a drop counter's name): not
        from a base server, or not one peer's well-formed relayed frames (a mixed batch then goes datagram
        by datagram)."""
        header_size = basewire.RELAY_HEADER_SIZE
        if endpoint not in self.base_endpoints:
            return "drop_relayed_not_from_base"
        view = memoryview(buffer)
        header = bytes(view[:header_size])
        starts = range(0, size, segment)
        if (
            segment <= header_size
            or header[1:4] != _RELAYED_VERSION_AND_RESERVED
            or any(
                size - start <= header_size or view[start : start + header_size] != header for start in starts
            )
        ):
            return "drop_malformed"
        write = 0
        for start in starts:
            length = min(segment, size - start) - header_size
            view[write : write + length] = view[start + header_size : start + header_size + length]
            write += length
        self._node.rx_counters["relayed_frames"] += len(starts)
        source = relay_endpoint(header[basewire.HEADER_SIZE :])
        self._node.receive_batch(
            buffer, aead.pointer(buffer), write, segment - header_size, source, now, sink
        )
        return None

    def _from_base(
        self,
        buffer: bytearray,
        size: int,
        segment: int,
        endpoint: Endpoint,
        now: float,
        sink: offload.PacketSink,
    ) -> None:
        """Datagrams from a base server: relayed frames are opened like any frame, from the peer's relay
        endpoint; the base's own messages go to the control loop."""
        counters, view = self._node.rx_counters, memoryview(buffer)
        if buffer[0] == basewire.MSG_BASE_RELAYED and (
            self._open_relayed(buffer, size, segment, endpoint, now, sink) is None
        ):
            return
        for start in range(0, size, segment):
            datagram = view[start : min(start + segment, size)]
            kind = datagram[0]
            if kind == basewire.MSG_BASE_RELAYED:
                one = bytearray(datagram)
                dropped = self._open_relayed(one, len(one), len(one), endpoint, now, sink)
                if dropped is not None:
                    counters[dropped] += 1
            elif basewire.FIRST_BASE_TYPE <= kind <= basewire.LAST_BASE_TYPE:
                if len(self.base_inbox) < MAX_BASE_INBOX:
                    self.base_inbox.append((bytes(datagram), endpoint))
                    self._wake()
                else:
                    counters["drop_base_inbox_full"] += 1
            else:
                counters["drop_unknown_type"] += 1
