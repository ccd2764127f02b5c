"""The base server's TCP side, for clients on networks that let no UDP out: a listening socket and one
connection per client, carrying the same messages as UDP in length-prefixed frames (core/basewire.py).

Non-blocking, driven by the service's selector. Each connection has a bounded output queue: a client that
does not read loses frames (as a full UDP buffer would), never the server's memory.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass, field

from ..core import basewire
from ..core.errors import ProtocolError
from ..core.peer import Endpoint
from .registry import TCP_PORT_OFFSET

log = logging.getLogger("husarnet_ros.base_server")

MAX_QUEUED_BYTES = 4 * 1024 * 1024  # per connection; frames beyond it are dropped (and counted)
# A connection must carry a complete frame this soon after it opens, and then one at least this often (a
# registered client sends a hello every 5 s): otherwise it is closed, so idle or half-open connections cannot
# pile up to the cap and lock genuine TCP-only clients out.
FIRST_FRAME_WITHIN_S = 10.0
IDLE_CLOSE_AFTER_S = 60.0
MAX_CONNECTIONS_PER_HOST = 32  # one NAT may hide a few robots; more from one address is a flood
_READ_SIZE = 256 * 1024


class TcpListenError(OSError):
    pass


def open_listener(listen: str, port: int) -> socket.socket:
    family = socket.AF_INET if "." in listen and ":" not in listen else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((listen, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def tcp_endpoint(addr: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    """How the engine knows a TCP client (see registry.TCP_PORT_OFFSET)."""
    return (addr[0], addr[1] + TCP_PORT_OFFSET)


@dataclass
class Connection:
    sock: socket.socket
    endpoint: Endpoint
    decoder: basewire.FrameDecoder = field(default_factory=basewire.FrameDecoder)
    queue: collections.deque[bytes] = field(default_factory=collections.deque)
    queued_bytes: int = 0
    offset: int = 0  # bytes of queue[0] already written
    opened_at: float = 0.0
    last_frame_at: float | None = None  # the last complete frame received
    bad_frame: bool = False  # read() ended it on a frame that cannot be (counted by the service)

    def expired(self, now: float) -> bool:
        if self.last_frame_at is None:
            return now - self.opened_at > FIRST_FRAME_WITHIN_S
        return now - self.last_frame_at > IDLE_CLOSE_AFTER_S

    def enqueue(self, message: bytes | memoryview) -> bool:
        """Queue one message; False (dropped) when the client is too far behind."""
        framed = basewire.frame(message)
        if self.queued_bytes + len(framed) > MAX_QUEUED_BYTES:
            return False
        self.queue.append(framed)
        self.queued_bytes += len(framed)
        return True

    def read(self) -> list[bytes] | None:
        """What arrived, as messages; None when the connection is over (closed, reset, or a bad frame)."""
        try:
            data = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        try:
            return self.decoder.feed(data)
        except ProtocolError:
            self.bad_frame = True
            return None

    def write(self) -> bool:
        """Write what is queued, as much as the socket takes; False when the connection is broken."""
        while self.queue:
            head = self.queue[0]
            try:
                sent = self.sock.send(memoryview(head)[self.offset :])
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
            self.offset += sent
            if self.offset < len(head):
                return True
            self.queue.popleft()
            self.queued_bytes -= len(head)
            self.offset = 0
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
