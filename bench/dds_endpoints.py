"""The publisher and the subscriber of bench/dds.py, one process each, in the robots' namespaces.

    python bench/dds_endpoints.py pub --middleware fastdds --size 1000000 --reliability reliable \
        --phases 15:5,30:5 --drain 2 --out pub.json
    python bench/dds_endpoints.py sub --middleware fastdds --reliability reliable --seconds 120 --out sub.json

``fastdds``: real rclpy nodes with std_msgs/UInt8MultiArray (the middleware is whatever RMW_IMPLEMENTATION
and the profile variables in the environment say). ``cyclonedds``: a plain DDS writer and reader of a
byte-sequence type with the ``cyclonedds`` Python binding, configured only by CYCLONEDDS_URI (there is no
rmw_cyclonedds_cpp wheel on PyPI, so no ROS node can use Cyclone here).

The publisher runs its phases one after the other: phase i publishes at ``rate`` Hz for ``seconds``, then
stays quiet for ``--drain`` seconds so that reliable retransmissions of that phase finish before the next
one starts. Every message starts with a 16-byte header (phase, sequence number, send time), so the subscriber
can tell phases apart. Both use CLOCK_MONOTONIC, which network namespaces share, so times compare directly.
The subscriber records (phase, sequence, arrival time) per message and writes them when SIGTERM/SIGINT comes
or ``--seconds`` run out. Imports only rclpy/std_msgs or cyclonedds: runs by path under another ROS 2 too.
"""

from __future__ import annotations

import argparse
import array
import json
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOPIC = "husarnet_bench_blob"
HEADER = struct.Struct("<IId")  # phase, sequence number, monotonic send time: 16 bytes
HEADER_SIZE = HEADER.size
HISTORY_DEPTH = 10  # KEEP_LAST 10: what `create_publisher(type, topic, 10)` gives a ROS 2 node
MATCH_TIMEOUT_S = 20.0  # the publisher waits this long for the subscriber to be discovered
MATCH_SETTLE_S = 0.5  # and this much more, so that the reader side has matched the writer as well
SPIN_STEP_S = 0.02
CYCLONE_MAX_BLOCKING_S = 1.0  # a reliable Cyclone writer waits at most this long for room in its history


@dataclass(frozen=True)
class Phase:
    rate_hz: float
    seconds: float


@dataclass
class PhaseReport:
    """What the publisher did in one phase (monotonic times)."""

    rate_hz: float
    start: float = 0.0
    end: float = 0.0
    sent: int = 0
    failed: int = 0  # write() refused or timed out (Cyclone's blocking reliable writer)


@dataclass
class Received:
    """Arrivals as three parallel lists (compact JSON): phase, sequence number, arrival time."""

    phase: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    t: list[float] = field(default_factory=list)

    def add(self, payload: bytes | memoryview) -> None:
        phase, seq, _sent = HEADER.unpack_from(payload)
        self.phase.append(phase)
        self.seq.append(seq)
        self.t.append(time.monotonic())


def parse_phases(text: str) -> list[Phase]:
    phases = []
    for item in text.split(","):
        rate, _, seconds = item.partition(":")
        phases.append(Phase(float(rate), float(seconds)))
    if not phases or any(p.rate_hz <= 0 or not 0 < p.seconds <= 600 for p in phases):
        raise ValueError(f"bad --phases {text!r}: RATE:SECONDS,... with RATE > 0 and 0 < SECONDS <= 600")
    return phases


def stamp(buffer: bytearray | array.array[int], phase: int, seq: int) -> None:
    HEADER.pack_into(buffer, 0, phase, seq, time.monotonic())


def run_phases(
    phases: list[Phase], drain_s: float, publish: Callable[[int, int], bool], idle: Callable[[float], None]
) -> list[PhaseReport]:
    """Call ``publish(phase, seq)`` on a fixed schedule per phase; ``idle(seconds)`` waits (and spins).

    The schedule is absolute (message n is due at start + n / rate): a publisher that falls behind sends
    the next message at once rather than bursting to catch up, so what is offered is at most the rate.
    """
    reports = []
    for index, phase in enumerate(phases):
        report = PhaseReport(phase.rate_hz)
        period = 1.0 / phase.rate_hz
        report.start = time.monotonic()
        deadline = report.start + phase.seconds
        due = report.start
        seq = 0
        while due < deadline:
            wait = due - time.monotonic()
            if wait > 0:
                idle(wait)
            if publish(index, seq):
                report.sent += 1
            else:
                report.failed += 1
            seq += 1
            due = max(due + period, time.monotonic() - period)  # never more than one period of catch-up
        report.end = time.monotonic()
        reports.append(report)
        idle(drain_s)
    return reports


# --- Fast DDS through rclpy ------------------------------------------------------------------------------


def _ros_qos(reliability: str) -> Any:
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=HISTORY_DEPTH, reliability=policy)


def _ros_init() -> None:
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # No rclpy signal handlers: SIGTERM must reach ours, so that the subscriber writes what it received.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)


def ros_publish(args: argparse.Namespace) -> dict[str, Any]:
    import rclpy
    from std_msgs.msg import UInt8MultiArray

    _ros_init()
    node = rclpy.create_node("husarnet_bench_publisher")
    try:
        publisher = node.create_publisher(UInt8MultiArray, TOPIC, _ros_qos(args.reliability))
        matched_after = _wait(lambda: publisher.get_subscription_count() > 0, lambda s: time.sleep(s))
        buffer = array.array("B", bytes(args.size))
        message = UInt8MultiArray()

        def publish(phase: int, seq: int) -> bool:
            stamp(buffer, phase, seq)
            message.data = buffer
            try:
                publisher.publish(message)
            except RuntimeError:  # rclpy's RCLError "cannot publish data": a RELIABLE writer blocked too long
                return False  # refused, as Cyclone's write errors are
            return True

        reports = run_phases(args.phases, args.drain, publish, time.sleep)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return _publisher_summary(matched_after, reports)


def ros_subscribe(args: argparse.Namespace, stop: Callable[[], bool]) -> Received:
    import rclpy
    from std_msgs.msg import UInt8MultiArray

    received = Received()
    _ros_init()
    node = rclpy.create_node("husarnet_bench_subscriber")
    try:
        node.create_subscription(
            UInt8MultiArray, TOPIC, lambda msg: received.add(msg.data), _ros_qos(args.reliability)
        )
        print("ready", flush=True)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and not stop():
            rclpy.spin_once(node, timeout_sec=SPIN_STEP_S)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return received


# --- Cyclone DDS through its Python binding --------------------------------------------------------------


def _cyclone_entities(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from dataclasses import dataclass as idl_dataclass

    from cyclonedds.core import Policy, Qos
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.idl import IdlStruct
    from cyclonedds.idl.types import array as idl_array
    from cyclonedds.idl.types import uint8
    from cyclonedds.topic import Topic
    from cyclonedds.util import duration

    # A fixed-size octet array is (de)serialized in one copy (a sequence goes element by element: ~30 ms per
    # MB), so one type per size. Annotations as a dict: postponed annotations would be unresolvable strings.
    @idl_dataclass
    class Blob(IdlStruct, typename=f"husarnet_bench.Blob{args.size}"):
        __annotations__ = {"data": idl_array[uint8, args.size]}  # type: ignore[misc]

    if args.reliability == "reliable":
        reliability = Policy.Reliability.Reliable(max_blocking_time=duration(seconds=CYCLONE_MAX_BLOCKING_S))
    else:
        reliability = Policy.Reliability.BestEffort
    qos = Qos(reliability, Policy.History.KeepLast(HISTORY_DEPTH))
    participant = DomainParticipant(args.domain)
    return participant, Topic(participant, TOPIC, Blob, qos=qos), Blob


def cyclone_publish(args: argparse.Namespace) -> dict[str, Any]:
    from cyclonedds.core import DDSException
    from cyclonedds.pub import DataWriter

    participant, topic, blob = _cyclone_entities(args)
    writer = DataWriter(participant, topic, qos=topic.get_qos())
    matched_after = _wait(lambda: len(writer.get_matched_subscriptions()) > 0, time.sleep)
    buffer = bytearray(args.size)

    def publish(phase: int, seq: int) -> bool:
        stamp(buffer, phase, seq)
        try:
            writer.write(blob(data=bytes(buffer)))
        except DDSException:
            return False  # reliable history full for max_blocking_time: the writer refused the sample
        return True

    reports = run_phases(args.phases, args.drain, publish, time.sleep)
    return _publisher_summary(matched_after, reports)


def cyclone_subscribe(args: argparse.Namespace, stop: Callable[[], bool]) -> Received:
    from cyclonedds.sub import DataReader

    participant, topic, _blob = _cyclone_entities(args)
    reader = DataReader(participant, topic, qos=topic.get_qos())
    received = Received()
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and not stop():
        samples = reader.take(N=64)
        for sample in samples:
            data = getattr(sample, "data", None)  # None: an InvalidSample (the writer went away)
            if data is not None:
                received.add(data)
        if not samples:
            time.sleep(SPIN_STEP_S / 4)
    return received


# --- common --------------------------------------------------------------------------------------------


def _wait(matched: Callable[[], bool], sleep: Callable[[float], None]) -> float | None:
    """Seconds until ``matched``, plus a short settle time; None if it never matched (nothing is sent)."""
    started = time.monotonic()
    while not matched():
        if time.monotonic() - started > MATCH_TIMEOUT_S:
            return None
        sleep(0.05)
    sleep(MATCH_SETTLE_S)
    return time.monotonic() - started


def _publisher_summary(matched_after: float | None, reports: list[PhaseReport]) -> dict[str, Any]:
    return {"matched_after_s": matched_after, "phases": [vars(report) for report in reports]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("pub", "sub"))
    parser.add_argument("--middleware", choices=("fastdds", "cyclonedds"), required=True)
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), required=True)
    parser.add_argument("--domain", type=int, default=0, help="DDS domain (Cyclone; ROS uses ROS_DOMAIN_ID)")
    parser.add_argument("--size", type=int, default=1_000_000, help="payload bytes (Cyclone: both ends)")
    parser.add_argument("--phases", type=parse_phases, default=[Phase(15, 5)], help="RATE:SECONDS,... (pub)")
    parser.add_argument("--drain", type=float, default=2.0, help="quiet seconds after each phase (pub)")
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="the subscriber gives up after this long"
    )
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args(argv)
    if args.size < HEADER_SIZE:
        parser.error(f"--size must be at least {HEADER_SIZE}")
    if args.role == "pub":
        result = ros_publish(args) if args.middleware == "fastdds" else cyclone_publish(args)
    else:
        stopping = [False]

        def request_stop(_signum: int, _frame: object) -> None:
            stopping[0] = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        subscribe = ros_subscribe if args.middleware == "fastdds" else cyclone_subscribe
        result = vars(subscribe(args, lambda: stopping[0]))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
