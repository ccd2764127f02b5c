"""husarnet_ros.ros.common.periodic_timer: a node timer whose period follows a double parameter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")

from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from husarnet_ros.ros.common import ParamSpec, declare_parameters, periodic_timer  # noqa: E402

PERIOD = ParamSpec("period_s", 2.0, "a period", min_value=0.1, max_value=60.0)


@pytest.fixture
def node(ros_context: Any) -> Iterator[Node]:
    node = Node("periodic_timer_test", context=ros_context)
    declare_parameters(node, (PERIOD,))
    yield node
    node.destroy_node()


def test_period_is_the_parameter_and_follows_accepted_changes(node: Node) -> None:
    timer = periodic_timer(node, "period_s", lambda: None)
    assert timer.timer_period_ns == 2_000_000_000
    assert node.set_parameters([Parameter("period_s", value=0.5)])[0].successful
    assert timer.timer_period_ns == 500_000_000
    assert not node.set_parameters([Parameter("period_s", value=0.0)])[0].successful
    assert timer.timer_period_ns == 500_000_000
