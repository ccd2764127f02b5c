"""husarnet_ros.ros.common.periodic_timer: a node timer whose period follows a double parameter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from husarnet_ros.testing.requirements import ros_unavailable

pytestmark = pytest.mark.ros

# Without ROS this module still imports, and the `ros` marker skips its tests with the reason (fails them
# under HUSARNET_ROS_STRICT=1): test/conftest.py, husarnet_ros.testing.requirements.
if ros_unavailable() is None:
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from husarnet_ros.ros.common import ParamSpec, declare_parameters, periodic_timer

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
