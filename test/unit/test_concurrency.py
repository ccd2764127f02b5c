"""The node under its real threading: send thread, receive thread and control loop at once.

The data-plane threads must never change a table the control loop iterates (the bug this guards against:
roaming and probes changed ``peer.candidates`` / ``peer.probes`` from the receive thread while ``tick``
iterated and deleted from them; under NAT rebinding the control loop died with a KeyError within seconds).
Here a receive thread feeds authenticated frames from an endpoint that changes every few packets, a send
thread seals packets, and the real ``ControlLoop`` runs timers and applies what they post, for a bounded
time; nothing may fail, and the loop must still answer afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from fixed_identities import fixed_identity

from husarnet_ros.core import wire
from husarnet_ros.core.constants import MAX_CANDIDATES_PER_PEER
from husarnet_ros.core.node import InternalError, Node
from husarnet_ros.core.peer import Endpoint, PathKind
from husarnet_ros.daemon.control_loop import ControlLoop
from husarnet_ros.testing.memnet import MemNet, ipv6_packet

STRESS_SECONDS = 3.0


class _Transport:
    """Stands in for the UDP socket: counts what the control loop sends."""

    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, _data: bytes, _endpoint: Endpoint) -> None:
        self.sent += 1

    def forget_routes(self) -> None:
        pass


def _established() -> tuple[Node, Node, Endpoint]:
    # On the monotonic clock the control loop reads (set up a little in the past).
    net = MemNet(now=time.monotonic() - 1.0)
    a, ea = net.add(fixed_identity("node a"))
    b, eb = net.add(fixed_identity("node b"))
    net.introduce(ea, eb)
    net.advance(0.5)
    assert a.path_of(b.address) is PathKind.DIRECT
    return a, b, eb


class _Worker(threading.Thread):
    """Runs ``step`` until the deadline; keeps the first exception."""

    def __init__(self, name: str, step: Callable[[int], None], deadline: float) -> None:
        super().__init__(name=name, daemon=True)
        self._step = step
        self._deadline = deadline
        self.rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self._deadline and self.rounds < 2_000_000:
                self._step(self.rounds)
                self.rounds += 1
        except BaseException as exc:
            self.error = exc


def test_data_plane_threads_and_control_loop_run_together_without_a_fault() -> None:
    a, b, _eb = _established()
    events: list[object] = []
    loop = ControlLoop(a, _Transport(), events.append)  # type: ignore[arg-type]
    loop_thread = threading.Thread(target=loop.run, name="control", daemon=True)
    loop_thread.start()
    session_b = b.peer(a.address).current  # type: ignore[union-attr]
    assert session_b is not None
    packet = ipv6_packet(a.address, b.address, b"x" * 200)
    kinds = [
        bytes([wire.INNER_KEEPALIVE]),
        wire.compress_ipv6(ipv6_packet(b.address, a.address, b"y" * 100), b.address, a.address),
        bytes([wire.INNER_PING]) + b"12345678",
        bytes([wire.INNER_PROBE]) + b"abcdefgh",
        bytes([wire.INNER_PONG]) + b"unknown!",
    ]

    def rebinding_receiver(i: int) -> None:
        # A NAT that rebinds all the time: a new source port every 3 frames, over a range of hosts.
        endpoint = (f"198.18.0.{11 + (i // 3) % 40}", 40000 + (i // 3) % 500)
        a.receive(session_b.seal(kinds[i % len(kinds)]), endpoint, time.monotonic())
        a.replies.clear()
        if a.has_posted():
            loop.wake()

    def sender(_i: int) -> None:
        if a.send(packet, time.monotonic()) is None and a.has_posted():
            loop.wake()

    deadline = time.monotonic() + STRESS_SECONDS
    workers = [_Worker("receive", rebinding_receiver, deadline), _Worker("send", sender, deadline)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(STRESS_SECONDS + 30)
        assert loop_thread.is_alive(), f"the control loop died: {loop.fatal_error}"
        assert loop.call(lambda: a.path_of(b.address)) is PathKind.DIRECT  # it still answers
    finally:
        loop.stop()
        loop_thread.join(10)
        loop.close()
    for worker in workers:
        assert worker.error is None, f"{worker.name} thread failed: {worker.error!r}"
        assert worker.rounds > 100, f"{worker.name} thread barely ran ({worker.rounds} rounds)"
    bugs = [e for e in events if isinstance(e, InternalError)]
    assert not bugs, bugs[:3]
    assert a.counters["internal_errors"] == 0
    peer = a.peer(b.address)
    assert peer is not None
    assert len(peer.candidates) <= MAX_CANDIDATES_PER_PEER
    print(
        f"stress {STRESS_SECONDS:.0f} s: {workers[0].rounds} frames received from rebinding endpoints, "
        f"{workers[1].rounds} packets sealed, endpoint now {peer.endpoint}"
    )


def test_one_bad_event_is_logged_counted_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    a, b, eb = _established()
    session_b = b.peer(a.address).current  # type: ignore[union-attr]
    assert session_b is not None
    failures = {"left": 1}
    original = a._on_pong

    def flaky_on_pong(event: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in pong handling")
        original(event)  # type: ignore[arg-type]

    a._on_pong = flaky_on_pong  # type: ignore[method-assign]
    handled: list[object] = []

    def on_event(event: object) -> None:
        handled.append(event)
        if isinstance(event, InternalError):
            logging.getLogger("husarnet_ros.daemon").error("bug in %s", event.where, exc_info=event.error)

    loop = ControlLoop(a, _Transport(), on_event)  # type: ignore[arg-type]
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            a.receive(session_b.seal(bytes([wire.INNER_PONG]) + b"probe-id"), eb, time.monotonic())
            loop.wake()
            time.sleep(0.2)
        assert thread.is_alive()
        assert loop.call(lambda: a.counters["internal_errors"]) == 1
        assert loop.call(lambda: 2 + 2) == 4
    finally:
        loop.stop()
        thread.join(10)
        loop.close()
    assert next(e for e in handled if isinstance(e, InternalError)).where == "PongSeen"
    assert "a bug in pong handling" in caplog.text


def test_a_fatal_error_stops_the_loop_with_its_reason() -> None:
    a, _b, _eb = _established()
    loop = ControlLoop(a, _Transport(), lambda _e: None)  # type: ignore[arg-type]
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    loop.fail("the TUN device cannot be read any more: File descriptor in bad state")
    thread.join(5)
    loop.close()
    assert not thread.is_alive()
    assert loop.fatal_error == "the TUN device cannot be read any more: File descriptor in bad state"
