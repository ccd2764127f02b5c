"""The control loop: the one thread that owns the protocol node's state.

It runs the node's timers, applies what the data-plane threads posted, sends what the node queued,
hands the node's events on, sends LAN beacons, and runs the requests other threads (the control API)
make of the node, one at a time, through ``call``. Everything else may only read the node (the data
plane's hot path) or ask this loop.

A bug while handling one input costs that input: the node reports it as an ``InternalError`` event,
which is logged with its traceback and counted (``internal_errors``), and the loop goes on. The loop
itself ends only when asked to (``stop``) or on a fatal error (``fail``), whose reason it keeps so
that the daemon exits non-zero saying why.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..core.constants import BEACON_INTERVAL
from ..core.node import Event, Node
from .base_connector import BaseConnector
from .controller import NotReady
from .discovery import Discovery
from .log_ring import LogThrottle
from .netwatch import NetworkWatch
from .transport import UdpTransport

log = logging.getLogger("husarnet_ros.daemon")

T = TypeVar("T")

MAX_WAIT_S = 0.25  # never sleep longer: the dead-path check reads timestamps the data plane writes
NETWORK_CHANGE_MIN_INTERVAL_S = 0.1  # a burst of netlink messages is one change


class ControlLoopStopped(NotReady):
    """``call`` was made after the loop stopped (or it did not answer in time): the API answers 503."""


class ControlLoop:
    def __init__(
        self,
        node: Node,
        transport: UdpTransport,
        on_event: Callable[[Event], None],
        *,
        discovery: Discovery | None = None,
        netwatch: NetworkWatch | None = None,
        base: BaseConnector | None = None,
        on_round: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_event`` gets every node event; ``on_round(now)``, if given, runs once per round on this thread
        (the controller's upkeep, e.g. persisting the timestamp floor)."""
        self.node = node
        self._transport = transport
        self._on_event = on_event
        self._discovery = discovery
        self._netwatch = netwatch
        self._base = base
        self._on_round = on_round
        self._clock = clock
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fatal_error: str | None = None
        self._next_beacon = 0.0
        self._network_changed_at = -1.0
        self._network_change_due: float | None = None
        self._bug_log = LogThrottle(1.0)

    # ------------------------------------------------------------------ from other threads
    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def call(self, fn: Callable[[], T], timeout_s: float = 5.0) -> T:
        """Run ``fn`` on the loop's thread and return its result (or raise its exception)."""
        if self._thread is threading.current_thread():
            return fn()
        if self._stop.is_set():
            raise ControlLoopStopped("the daemon is stopping")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._commands.put((fn, future))
        self.wake()
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ControlLoopStopped(
                f"the daemon's control loop did not answer within {timeout_s:g} s"
            ) from None

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def fail(self, reason: str) -> None:
        """A fatal error (from any thread): stop, and let the daemon exit non-zero with ``reason``."""
        if self.fatal_error is None:
            self.fatal_error = reason
        self.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Run until ``stop`` or ``fail``, in the calling thread."""
        self._thread = threading.current_thread()
        watched: list[Any] = [self._wake_r]
        if self._discovery is not None:
            watched += self._discovery.sockets()
        if self._netwatch is not None:
            watched.append(self._netwatch)
        try:
            while not self._stop.is_set():
                try:
                    timeout = self._iteration()
                except Exception:
                    self._bug("a control loop round")
                    timeout = 0.05  # not a busy loop if it keeps failing
                try:
                    readable, _, _ = select.select(watched, [], [], timeout)
                except InterruptedError:
                    continue
                for source in readable:
                    try:
                        self._read(source)
                    except Exception:
                        self._bug("reading an input")
        finally:
            self._cancel_commands()
            self._thread = None

    def _bug(self, where: str) -> None:
        """Something failed that never should: count it, log it (at most once a second), go on."""
        self.node.control_counters["internal_errors"] += 1
        note = self._bug_log.allow()
        if note is not None:
            log.exception("%s failed (a bug; the daemon goes on)%s", where, note)

    def _iteration(self) -> float:
        """One round of work; returns how long select() may wait."""
        node = self.node
        now = self._clock()
        self._run_commands()
        node.process_posted(now)
        if self._network_change_due is not None and now >= self._network_change_due:
            self._network_change_due = None
            self._network_changed_at = now
            self._transport.forget_routes()
            node.network_changed(now)
            if self._base is not None:
                self._base.network_changed(now)
            self._next_beacon = now  # tell the LAN where we are now
        node.tick(now)
        if self._base is not None:
            self._base.round(now)
        if self._on_round is not None:
            self._on_round(now)
        self.flush()
        self._drain_events()
        if self._discovery is not None and now >= self._next_beacon:
            # The node's timestamps, not the wall clock's: peers believe only beacons newer than the last.
            self._discovery.send_beacons(node.next_timestamp_ns(now))
            self._next_beacon = now + BEACON_INTERVAL
        deadline = min(node.next_timer(now), now + MAX_WAIT_S)
        if self._discovery is not None:
            deadline = min(deadline, self._next_beacon)
        if self._base is not None:
            deadline = min(deadline, self._base.next_timer(now))
        if self._network_change_due is not None:
            deadline = min(deadline, self._network_change_due)
        return max(0.0, deadline - self._clock())

    def flush(self) -> None:
        """Send everything the node queued."""
        outbox, sendto = self.node.outbox, self._transport.sendto
        while outbox:
            endpoint, data = outbox.popleft()
            sendto(data, endpoint)

    def _drain_events(self) -> None:
        events = self.node.events
        while events:
            event = events.popleft()
            try:
                self._on_event(event)
            except Exception:
                self._bug(f"handling the event {type(event).__name__}")

    def _queued_commands(self) -> Iterator[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]:
        while True:
            try:
                yield self._commands.get_nowait()
            except queue.Empty:
                return

    def _run_commands(self) -> None:
        """Run what other threads asked for; datagrams or events a request queued (a ping) go out in this
        same round."""
        for fn, future in self._queued_commands():
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who maps it to an answer
                future.set_exception(exc)

    def _cancel_commands(self) -> None:
        for _, future in self._queued_commands():
            if future.set_running_or_notify_cancel():
                future.set_exception(ControlLoopStopped("the daemon is stopping"))

    def _read(self, source: Any) -> None:
        if source == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        elif source is self._netwatch:
            assert self._netwatch is not None
            if self._netwatch.changed() and self._network_change_due is None:
                # Coalesce a burst of messages, but never wait long: this is what makes roaming fast.
                now = self._clock()
                self._network_change_due = max(now, self._network_changed_at + NETWORK_CHANGE_MIN_INTERVAL_S)
        elif self._discovery is not None:
            got = self._discovery.receive(source)
            if got is not None:
                beacon, endpoint = got
                self.node.learn_beacon(beacon, endpoint, self._clock())

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
