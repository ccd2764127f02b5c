"""husarnet_ros.ros.common: the pure parameter validator and descriptors (no node needed)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from husarnet_ros.exit_with_parent import child_environment
from husarnet_ros.ros.common import COMMON_PARAMETERS, LATCHED_QOS, ParamSpec, check_value
from husarnet_ros.ros.peers_node import PEERS_PARAMETERS

PERIOD = ParamSpec("period_s", 2.0, "a period", min_value=0.1, max_value=60.0)
POSITIVE = ParamSpec("latency_ms", 200.0, "a threshold", min_value=0.0, min_exclusive=True)
CHOICE = ParamSpec("rmw", "auto", "middleware", choices=("auto", "fastdds", "cyclonedds"))
FLAG = ParamSpec("include", True, "a flag")
TEXT = ParamSpec("path", "", "a path")


@pytest.mark.parametrize("value", [0.1, 2.0, 60.0, 1, 60])
def test_in_range_values_accepted(value: float) -> None:
    assert check_value(PERIOD, value) is None


@pytest.mark.parametrize("value", [0.0999, -1.0, 0, 60.001, 1e9, math.nan, math.inf, -math.inf])
def test_out_of_range_refused_with_name_and_bounds(value: float) -> None:
    reason = check_value(PERIOD, value)
    assert reason is not None
    assert reason.startswith("period_s must be")


def test_range_reason_names_both_bounds() -> None:
    assert check_value(PERIOD, -1.0) == "period_s must be at least 0.1 and at most 60, got -1"
    assert check_value(PERIOD, 61.0) == "period_s must be at most 60, got 61"


def test_exclusive_minimum() -> None:
    assert check_value(POSITIVE, 0.0) == "latency_ms must be greater than 0, got 0"
    assert check_value(POSITIVE, -5.0) is not None
    assert check_value(POSITIVE, 1e-9) is None
    assert check_value(POSITIVE, 1e12) is None


@pytest.mark.parametrize(
    ("spec", "value"),
    [(PERIOD, "2.0"), (PERIOD, True), (FLAG, 1), (FLAG, "true"), (TEXT, 3), (CHOICE, 1.0), (TEXT, False)],
)
def test_wrong_types_refused(spec: ParamSpec, value: object) -> None:
    reason = check_value(spec, value)
    assert reason is not None
    assert "must be a" in reason


def test_choices() -> None:
    assert check_value(CHOICE, "fastdds") is None
    assert check_value(CHOICE, "FastDDS") == "rmw must be one of auto, fastdds, cyclonedds, got 'FastDDS'"


def test_bool_and_string_values() -> None:
    assert check_value(FLAG, False) is None
    assert check_value(TEXT, "/tmp/x.sock") is None


def test_descriptor_carries_description_and_range() -> None:
    descriptor = PERIOD.descriptor()
    assert descriptor.name == "period_s"
    assert descriptor.description == "a period"
    (fp_range,) = descriptor.floating_point_range
    assert (fp_range.from_value, fp_range.to_value, fp_range.step) == (0.1, 60.0, 0.0)
    assert POSITIVE.descriptor().floating_point_range == []
    assert POSITIVE.descriptor().additional_constraints == "> 0"
    assert "one of: auto, fastdds, cyclonedds" in CHOICE.descriptor().additional_constraints


@pytest.mark.parametrize("spec", [*COMMON_PARAMETERS, *PEERS_PARAMETERS], ids=lambda s: s.name)
def test_every_declared_default_is_valid_and_described(spec: ParamSpec) -> None:
    assert check_value(spec, spec.default) is None
    assert spec.description


def test_latched_qos() -> None:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

    assert LATCHED_QOS.reliability == ReliabilityPolicy.RELIABLE
    assert LATCHED_QOS.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert LATCHED_QOS.history == HistoryPolicy.KEEP_LAST
    assert LATCHED_QOS.depth == 1


def test_run_node_does_not_start_when_its_launch_is_already_gone() -> None:
    # A node whose launch died before it could tie its life to it must not run on as an orphan: one line,
    # exit 1, the node never created. In a child process: the prctl would otherwise apply to pytest.
    ended = subprocess.Popen(["true"])
    ended.wait(timeout=30)
    program = (
        "from husarnet_ros.ros.common import run_node\n"
        "def factory():\n    print('node created', flush=True)\n    raise SystemExit(3)\n"
        "run_node(factory)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=os.environ | child_environment(ended.pid),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "node created" not in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: the launch that started this process (pid {ended.pid}) has already exited; not starting"
    ]
