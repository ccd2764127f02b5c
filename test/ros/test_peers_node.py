"""The husarnet_peers node against the real control API server and the real daemon controller on the
in-memory network (test/ros/conftest.py's ``daemon``: robot2 reached directly, UNHEARD whitelisted only).

In-process: the node and the test's own subscribers share one rclpy context and executor, spun by the test
until what it waits for arrives (bounded; a timeout fails with what was last seen). One test runs the node
as a subprocess (``python -m husarnet_ros.ros.peers_node``) in a namespace, to cover main() and SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.client import ControlClient
from husarnet_ros.daemon.control import ControlServer
from husarnet_ros.testing.memnet_daemon import MemNetFleet, ServedFleet, member_address

pytestmark = pytest.mark.ros

WAIT_S = 20.0  # bound of every wait; never asserted on, only a failure limit
FAST = {"poll_period_s": 0.05, "retry_period_s": 0.1, "diagnostics_period_s": 0.1, "publish_period_s": 3600.0}
UNHEARD = "fc94::4"  # on the daemon fixture's whitelist, but no robot has that address
ROBOT2 = member_address("robot2")


class Harness:
    """A PeersNode plus a test node with subscriptions, spun together by ``wait_for``."""

    def __init__(self, context: Any, socket_path: str, **params: object) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter

        from husarnet_ros.ros.peers_node import PeersNode

        overrides = [Parameter(name, value=value) for name, value in {**FAST, **params}.items()]
        overrides.append(Parameter("control_socket", value=socket_path))
        self.node = PeersNode(context=context, parameter_overrides=overrides)
        self.probe = Node("peers_node_test_probe", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.peers: list[Any] = []
        self.statuses: list[Any] = []
        self.diagnostics: list[Any] = []

    def subscribe(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from husarnet_ros.msg import PeerArray, Status
        from husarnet_ros.ros.common import DIAGNOSTICS_QOS, LATCHED_QOS

        self.probe.create_subscription(PeerArray, "husarnet/peers", self.peers.append, LATCHED_QOS)
        self.probe.create_subscription(Status, "husarnet/status", self.statuses.append, LATCHED_QOS)
        self.probe.create_subscription(
            DiagnosticArray, "/diagnostics", self.diagnostics.append, DIAGNOSTICS_QOS
        )

    def wait_for(self, what: str, condition: Callable[[], bool], last: Callable[[], object]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {WAIT_S:g} s; last seen: {last()!r}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    # --- what the latest messages say

    def table(self) -> list[str] | None:
        return [p.address for p in self.peers[-1].peers] if self.peers else None

    def daemon_running(self) -> bool | None:
        return self.statuses[-1].daemon_running if self.statuses else None

    def levels(self) -> dict[str, tuple[str, str]]:
        from husarnet_ros.ros.diagnostics import level_name

        if not self.diagnostics:
            return {}
        return {s.name: (level_name(s.level), s.message) for s in self.diagnostics[-1].status}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.close()
        self.node.destroy_node()
        self.probe.destroy_node()


@pytest.fixture
def harness_factory(rclpy_context: Any) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(socket_path: str, **params: object) -> Harness:
        harness = Harness(rclpy_context, socket_path, **params)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def test_late_subscriber_gets_the_current_table_and_changes(
    daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory(daemon.socket_path)
    # The node published in its constructor; with publish_period_s = 1 h nothing is re-sent on its own,
    # so only TRANSIENT_LOCAL durability can bring that table to this subscriber created afterwards.
    h.spin_for(0.3)
    h.subscribe()
    h.wait_for("latched peer table", lambda: h.table() is not None, h.table)
    assert h.table() == sorted([ROBOT2, UNHEARD])
    h.wait_for("latched status", lambda: h.daemon_running() is not None, lambda: h.statuses)
    status = h.statuses[-1]
    assert (status.address, status.hostname, status.daemon_running) == (daemon.address, "robot1", True)
    assert (status.peers_total, status.peers_direct, status.peers_tunnelled) == (2, 1, 0)
    assert status.base_state == "none"

    daemon.fleet.add("robot5")
    daemon.fleet.connect("robot1", "robot5")
    robot5 = member_address("robot5")
    h.wait_for("table with the new peer", lambda: robot5 in (h.table() or []), h.table)
    h.wait_for("status counting it", lambda: h.statuses[-1].peers_direct == 2, lambda: h.statuses[-1])

    daemon.controller.whitelist_remove(ROBOT2)
    h.wait_for("table without the removed peer", lambda: ROBOT2 not in (h.table() or []), h.table)
    assert h.table() == sorted([UNHEARD, robot5])


def test_counter_changes_alone_are_not_republished(
    daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory(daemon.socket_path)
    h.subscribe()
    h.wait_for("first table", lambda: h.table() is not None, h.table)
    # Pings change robot2's RTT and last-seen time in every poll of the node: no new table for that.
    with ControlClient(daemon.socket_path) as client:
        assert client.ping("robot2", count=5, interval_s=0.05, timeout_s=5.0).received == 5
    h.spin_for(0.5)
    assert len(h.peers) == 1, h.peers
    # A path change is published.
    daemon.fleet.set_online("robot2", False)

    def robot2_path() -> int | None:
        return next((p.path for p in h.peers[-1].peers if p.address == ROBOT2), None)

    h.wait_for("robot2's path none", lambda: robot2_path() == 0, lambda: h.peers[-1])


def test_diagnostics_follow_a_peer_from_direct_to_none_to_gone(
    daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory(daemon.socket_path)
    h.subscribe()
    name = "husarnet: peer robot2"

    def level() -> str | None:
        entry = h.levels().get(name)
        return entry[0] if entry else None

    h.wait_for("robot2 OK", lambda: level() == "OK", h.levels)
    levels = h.levels()
    assert levels["husarnet: daemon"][0] == "OK"
    assert levels["husarnet: base server"] == ("OK", "no base server configured (LAN only)")
    assert levels[f"husarnet: peer {UNHEARD}"][0] == "ERROR"  # path none, no hostname

    daemon.fleet.set_online("robot2", False)  # switched off: the daemon finds its path dead
    h.wait_for("robot2 ERROR (unreachable)", lambda: level() == "ERROR", h.levels)
    assert h.levels()[name][1].startswith("unreachable")

    daemon.fleet.set_online("robot2", True)
    daemon.fleet.beacon_now()
    h.wait_for("robot2 OK again", lambda: level() == "OK", h.levels)
    daemon.controller.whitelist_remove(ROBOT2)
    h.wait_for("robot2 ERROR (gone)", lambda: level() == "ERROR", h.levels)
    assert h.levels()[name][1].startswith("gone")


@pytest.fixture
def slow_peer() -> Iterator[str]:
    """A daemon whose one peer answers in 150 ms. Faked: the in-memory network answers in well under a
    millisecond, and the real node reports the RTT it measures."""
    from husarnet_ros.api import PeerStatus
    from husarnet_ros.testing.fake_controller import FakeController, serve_fake

    fake = FakeController()
    fake.add_peer(PeerStatus(address="fc94::2", hostname="robot2", path="direct", rtt_ms=150.0))
    with serve_fake(fake) as (_, socket_path):
        yield socket_path


def test_diagnostics_warn_above_the_latency_parameter(
    slow_peer: str, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory(slow_peer, latency_warn_ms=100.0)
    h.subscribe()
    h.wait_for("robot2 WARN (latency)", lambda: "husarnet: peer robot2" in h.levels(), h.levels)
    assert h.levels()["husarnet: peer robot2"][0] == "WARN"


def test_daemon_absent_then_answering_then_stopped(harness_factory: Callable[..., Harness]) -> None:
    with tempfile.TemporaryDirectory(prefix="hr-peers-", dir="/tmp") as directory:
        path = f"{directory}/control.sock"
        h = harness_factory(path)
        h.subscribe()
        h.wait_for("daemon_running false", lambda: h.daemon_running() is False, lambda: h.statuses)
        h.wait_for("empty table", lambda: h.table() == [], h.table)
        h.wait_for("daemon ERROR", lambda: "husarnet: daemon" in h.levels(), h.levels)
        assert h.levels()["husarnet: daemon"] == ("ERROR", "not answering")

        with MemNetFleet() as fleet:
            robot1 = fleet.add("robot1")
            fleet.add("robot2")
            fleet.connect("robot1", "robot2")
            with ControlServer(robot1, path, group=None):
                h.wait_for("daemon_running true", lambda: h.daemon_running() is True, lambda: h.statuses)
                h.wait_for("robot2 in the table", lambda: h.table() == [ROBOT2], h.table)
                h.wait_for(
                    "daemon OK", lambda: h.levels().get("husarnet: daemon", ("",))[0] == "OK", h.levels
                )
        h.wait_for("daemon_running false again", lambda: h.daemon_running() is False, lambda: h.statuses)
        h.wait_for("daemon STALE", lambda: h.levels().get("husarnet: daemon", ("",))[0] == "STALE", h.levels)
        levels = h.levels()
        assert levels["husarnet: peer robot2"][0] == "STALE"
        # The node's own identity stays visible while its daemon is down.
        assert h.statuses[-1].address == member_address("robot1")


def test_invalid_parameters_refused_through_the_parameter_service(
    daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    h = harness_factory(daemon.socket_path)
    client = AsyncParameterClient(h.probe, "husarnet_peers")
    h.wait_for("parameter services", client.services_are_ready, lambda: "not ready")

    def set_one(name: str, value: object) -> Any:
        future = client.set_parameters([Parameter(name, value=value)])
        h.wait_for(f"set {name} answer", future.done, lambda: future)
        answer = future.result()
        assert answer is not None, f"set {name}: the parameter service failed: {future.exception()!r}"
        (result,) = answer.results
        return result

    refused = [
        ("publish_period_s", -1.0),
        ("poll_period_s", 0.0),
        ("poll_period_s", float("nan")),
        ("latency_warn_ms", 0.0),
        ("diagnostics_period_s", 1e6),
        ("retry_period_s", 61.0),
        ("publish_period_s", 0),
    ]
    for name, value in refused:
        result = set_one(name, value)
        assert not result.successful, f"{name}={value!r} was accepted"
        assert name in result.reason
    wrong_type = set_one("poll_period_s", "fast")
    assert not wrong_type.successful
    assert "type" in wrong_type.reason
    assert h.node.get_parameter("publish_period_s").value == 3600.0
    assert h.node.get_parameter("latency_warn_ms").value == 200.0

    assert set_one("latency_warn_ms", 0.5).successful
    assert set_one("poll_period_s", 0.2).successful
    assert h.node.get_parameter("poll_period_s").value == 0.2
    assert set_one("publish_period_s", 30).successful  # an integer, as `ros2 param set` sends `30`
    assert h.node.get_parameter("publish_period_s").value == 30.0


def test_invalid_value_in_overrides_falls_back_to_default(
    daemon: ServedFleet, harness_factory: Callable[..., Harness]
) -> None:
    h = harness_factory(daemon.socket_path, latency_warn_ms=-5.0, publish_period_s=7)
    assert h.node.get_parameter("latency_warn_ms").value == 200.0
    assert h.node.get_parameter("publish_period_s").value == 7.0  # an int for a double is taken


@pytest.fixture
def subprocess_node(
    daemon: ServedFleet, ros_env: dict[str, str], tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    path = daemon.socket_path
    log = (tmp_path / "node.log").open("wb")
    command = [
        sys.executable,
        "-m",
        "husarnet_ros.ros.peers_node",
        "--ros-args",
        "-r",
        "__ns:=/robot7",
        "-p",
        f"control_socket:={path}",
        "-p",
        "publish_period_s:=3600.0",
    ]
    process = subprocess.Popen(command, env=ros_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_main_in_a_namespace_and_clean_sigterm(
    subprocess_node: subprocess.Popen[bytes], rclpy_context: Any, tmp_path: Path
) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from husarnet_ros.msg import PeerArray
    from husarnet_ros.ros.common import LATCHED_QOS

    received: list[Any] = []
    probe = Node("peers_main_probe", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(probe)
    try:
        probe.create_subscription(PeerArray, "/robot7/husarnet/peers", received.append, LATCHED_QOS)
        deadline = time.monotonic() + WAIT_S
        while not received and time.monotonic() < deadline and subprocess_node.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        log = (tmp_path / "node.log").read_text(errors="replace")
        assert received, f"no /robot7/husarnet/peers from the node; its output:\n{log}"
        assert [p.address for p in received[-1].peers] == sorted([ROBOT2, UNHEARD])
    finally:
        executor.shutdown()
        probe.destroy_node()

    subprocess_node.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess_node.wait(timeout=WAIT_S)
    log = (tmp_path / "node.log").read_text(errors="replace")
    assert subprocess_node.returncode == 0, f"exit code {subprocess_node.returncode}; output:\n{log}"
    assert "Traceback" not in log
