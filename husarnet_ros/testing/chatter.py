"""A plain ROS 2 talker and listener (std_msgs/String) for the demo and the tests that cross robots.

    python -m husarnet_ros.testing.chatter talk [--topic chatter] [--seconds 60]
    python -m husarnet_ros.testing.chatter listen [--topic chatter] [--seconds 45] [--count 5]
    python -m husarnet_ros.testing.chatter peers [--topic /husarnet/peers] [--seconds 20]

Nothing husarnet-specific on purpose: they are what a user's own nodes are, and they get the DDS
configuration only from the environment (``eval "$(husarnet-ros dds env)"`` or the launch's ``env.sh``).
``talk`` and ``listen`` import only rclpy and std_msgs, so this file also runs by path under another ROS 2
(the tests run it with the Jazzy venv's Python: ``python .../chatter.py talk``).
``listen`` prints one JSON line: ``{"first": UNIX_TIME_OF_FIRST_MESSAGE | null, "count": N, "data": [...]}``
and exits 0 when it received ``--count`` messages, 1 when ``--seconds`` ran out first.
``peers`` subscribes to a ``husarnet_ros/msg/PeerArray`` topic the way a late subscriber must (RELIABLE,
TRANSIENT_LOCAL) and prints the table it gets (exit 1 when none came). All are bounded in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rclpy.node import Node

SPIN_STEP_S = 0.05


def _spin(name: str, setup: Callable[[Node], Callable[[], bool]], seconds: float) -> None:
    """Create node ``name``, let ``setup`` add its publishers/subscriptions and return a step function; spin
    until the step says done (returns True) or ``seconds`` pass; always clean up."""
    import rclpy

    rclpy.init()
    node = rclpy.create_node(name)
    deadline = time.monotonic() + seconds
    try:
        step = setup(node)
        while time.monotonic() < deadline and not step():
            rclpy.spin_once(node, timeout_sec=SPIN_STEP_S)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def talk(topic: str, seconds: float) -> int:
    from std_msgs.msg import String

    def setup(node: Node) -> Callable[[], bool]:
        publisher = node.create_publisher(String, topic, 10)
        sent = [0]

        def publish() -> bool:
            publisher.publish(String(data=f"hello {sent[0]} from {node.get_fully_qualified_name()}"))
            sent[0] += 1
            return False  # until the time is up

        return publish

    _spin("husarnet_chatter_talker", setup, seconds)
    return 0


def listen(topic: str, seconds: float, count: int) -> dict[str, object]:
    from std_msgs.msg import String

    received: list[tuple[float, str]] = []

    def setup(node: Node) -> Callable[[], bool]:
        node.create_subscription(String, topic, lambda msg: received.append((time.time(), msg.data)), 10)
        return lambda: len(received) >= count

    _spin("husarnet_chatter_listener", setup, seconds)
    first = received[0][0] if received else None
    return {"first": first, "count": len(received), "data": [data for _, data in received]}


PATH_NAMES = {0: "none", 1: "direct", 2: "tunnelled"}


def peers_table(topic: str, seconds: float) -> list[dict[str, object]] | None:
    """The first PeerArray received on ``topic`` (as dicts), or None when nothing came in ``seconds``."""
    from husarnet_ros.msg import PeerArray
    from husarnet_ros.ros.common import LATCHED_QOS

    tables: list[PeerArray] = []

    def setup(node: Node) -> Callable[[], bool]:
        node.create_subscription(PeerArray, topic, tables.append, LATCHED_QOS)
        return lambda: bool(tables)

    _spin("husarnet_chatter_peers", setup, seconds)
    if not tables:
        return None
    return [
        {
            "address": peer.address,
            "hostname": peer.hostname,
            "path": PATH_NAMES.get(peer.path, str(peer.path)),
            "endpoint": peer.endpoint,
            "rtt_ms": peer.rtt_ms if peer.rtt_ms >= 0 else None,
            "whitelisted": peer.whitelisted,
        }
        for peer in tables[0].peers
    ]


def format_peers(rows: list[dict[str, object]]) -> str:
    lines = [f"{'ADDRESS':40} {'HOSTNAME':10} {'PATH':9} {'ENDPOINT':38} RTT"]
    for row in rows:
        rtt = "-" if row["rtt_ms"] is None else f"{row['rtt_ms']:.2f} ms"
        where = f"{row['path']!s:9} {row['endpoint']!s:38}"
        lines.append(f"{row['address']!s:40} {row['hostname']!s:10} {where} {rtt}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m husarnet_ros.testing.chatter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    talker = commands.add_parser("talk", help="publish std_msgs/String messages every 50 ms")
    talker.add_argument("--topic", default="chatter")
    talker.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    listener = commands.add_parser("listen", help="print a JSON summary of the first messages received")
    listener.add_argument("--topic", default="chatter")
    listener.add_argument("--seconds", type=float, default=45.0, help="give up after this long (default 45)")
    listener.add_argument("--count", type=int, default=5, help="stop after this many messages (default 5)")
    table = commands.add_parser("peers", help="print the husarnet_ros/msg/PeerArray table of a topic")
    table.add_argument("--topic", default="/husarnet/peers")
    table.add_argument("--seconds", type=float, default=20.0, help="give up after this long (default 20)")
    table.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be between 0 and 3600")
    if args.command == "talk":
        return talk(args.topic, args.seconds)
    if args.command == "peers":
        rows = peers_table(args.topic, args.seconds)
        if rows is None:
            print(f"no peer table on {args.topic} within {args.seconds:g} s", file=sys.stderr)
            return 1
        print(json.dumps(rows) if args.json else format_peers(rows), flush=True)
        return 0
    if args.count < 1:
        parser.error("--count must be at least 1")
    summary = listen(args.topic, args.seconds, args.count)
    print(json.dumps(summary), flush=True)
    return 0 if summary["count"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
