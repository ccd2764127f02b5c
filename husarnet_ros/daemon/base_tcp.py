"""TCP to a base server, for networks that let no UDP out: a bridge between the daemon's UDP socket and
one TCP connection.

The daemon keeps speaking UDP: to this bridge's loopback endpoint instead of the base's. The bridge frames
what it receives there (length-prefixed, core/basewire.py) onto the TCP connection, and sends what comes
back over TCP to the daemon's UDP port from that same loopback endpoint, so the data plane and the base
client see the base's messages and relayed frames arrive like any other datagrams. Nothing about threads
or the protocol changes; the cost is one loopback hop, paid only while UDP does not work.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading

from ..core import basewire
from ..core.errors import ProtocolError
from ..core.peer import Endpoint

log = logging.getLogger("husarnet_ros.daemon")

CONNECT_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 5.0  # a base that takes nothing for this long is gone
_LOOPBACK = "127.0.0.1"  # IPv4: there even where IPv6 is turned off
_READ_SIZE = 256 * 1024
_DATAGRAMS_PER_WRITE = 64


class TcpBridge:
    def __init__(self, name: str, target: Endpoint, daemon_port: int) -> None:
        self.name = name
        self.target = target
        self._daemon = (_LOOPBACK, daemon_port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((_LOOPBACK, 0))
        self.udp.setblocking(False)
        self.endpoint: Endpoint = (_LOOPBACK, self.udp.getsockname()[1])
        self.state = "connecting"  # then "connected", and "failed" or "closed" at the end
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"base-tcp {name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(timeout=2.0)
        with contextlib.suppress(OSError):
            self.udp.close()
        if self.state != "failed":
            self.state = "closed"

    def _run(self) -> None:
        try:
            sock = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            log.info("base server %s: no TCP either (%s)", self.name, exc.strerror or exc)
            self.state = "failed"
            return
        if self._stopping:  # closed while connecting: close() has returned, nobody uses this any more
            sock.close()
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(SEND_TIMEOUT_S)
            self.state = "connected"
            self._pump(sock)
        except (OSError, ProtocolError) as exc:
            if not self._stopping:
                log.info("base server %s: TCP connection lost (%s)", self.name, exc)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            if not self._stopping:
                self.state = "failed"

    def _pump(self, sock: socket.socket) -> None:
        decoder = basewire.FrameDecoder()
        while not self._stopping:
            readable, _, _ = select.select([sock, self.udp], [], [], 0.5)
            if sock in readable:
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise OSError("closed by the base server")
                for message in decoder.feed(data):
                    with contextlib.suppress(OSError):  # the daemon's buffer is full: like packet loss
                        self.udp.sendto(message, self._daemon)
            if self.udp in readable:
                frames = []
                for _ in range(_DATAGRAMS_PER_WRITE):
                    try:
                        message, source = self.udp.recvfrom(basewire.MAX_FRAME)
                    except (BlockingIOError, InterruptedError):
                        break
                    if source == self._daemon and message:  # only the daemon speaks through the bridge
                        frames.append(basewire.frame(message))
                if frames:
                    sock.sendall(b"".join(frames))
