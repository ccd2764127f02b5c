"""A TCP port on this machine's loopback that leads to a service inside a lab's network namespace.

The demo's Dashboard runs on a host of its small internet (a namespace), but a person opens it in a browser
on this machine: ``http://127.0.0.1:PORT``. The listening socket is made here; the sockets that connect to
the service are made by one thread that has joined the namespace (``setns`` moves only the calling thread,
and a socket stays in the namespace it was created in), so nothing else of this process changes namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import socket
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_CONNECT_TIMEOUT_S = 5.0
_BUFFER = 65536


class PortForwardError(OSError):
    pass


def _enter_netns(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(Path("/run/netns") / netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise PortForwardError(exc.errno, f"no network namespace {netns}: {exc.strerror}") from None
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise PortForwardError(errno, f"cannot enter network namespace {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class PortForward:
    """Forwards connections to ``127.0.0.1:<port>`` (0: any free port) to ``target`` inside ``netns``.
    ``close`` stops it and every connection."""

    def __init__(self, netns: str, target: tuple[str, int], port: int = 0) -> None:
        self._netns, self._target = netns, target
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self._listener.getsockname()[1]
        self._requests: queue.Queue[queue.Queue[socket.socket | OSError] | None] = queue.Queue()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        ready: queue.Queue[OSError | None] = queue.Queue()
        self._connector = threading.Thread(target=self._connect_loop, args=(ready,), daemon=True)
        self._connector.start()
        error = ready.get(timeout=10)
        if error is not None:
            self._listener.close()
            raise error
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _connect_loop(self, ready: queue.Queue[OSError | None]) -> None:
        try:
            _enter_netns(self._netns)
        except OSError as exc:
            ready.put(exc)
            return
        ready.put(None)
        while True:
            reply = self._requests.get()
            if reply is None:
                return
            try:
                reply.put(socket.create_connection(self._target, timeout=_CONNECT_TIMEOUT_S))
            except OSError as exc:
                reply.put(exc)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reply: queue.Queue[socket.socket | OSError] = queue.Queue()
        self._requests.put(reply)
        upstream = reply.get()
        if isinstance(upstream, OSError):
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.update((client, upstream))
        pump = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        pump.start()
        self._pump(client, upstream)
        pump.join()
        with self._lock:
            self._sockets.difference_update((client, upstream))
        client.close()
        upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_BUFFER):
                sink.sendall(data)
        except OSError:
            pass
        # The other direction may still be talking: pass on only the end of this one.
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        # A thread blocked in accept() keeps a closed socket listening; shutting it down wakes the thread.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._requests.put(None)
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._connector.join(5)
        self._acceptor.join(5)
