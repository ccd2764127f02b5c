"""robot.launch.py's `server:=ADDR join_code:=CODE` (husarnet_ros/launch_join.py, ros/launch_actions.py): the
steps, the code kept off every command line and out of the log, and the launch actions that chain them."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from husarnet_ros.api import JOIN_CODE_ENV
from husarnet_ros.core.errors import ConfigError
from husarnet_ros.launch_join import enrolment_steps, masked
from husarnet_ros.launch_support import husarnet_ros_command
from husarnet_ros.testing.lab_daemon import husarnet_ros_env

CODE = "Zq81-secretcode_x"


def test_nothing_given_is_nothing_to_do() -> None:
    assert enrolment_steps("/run/s.sock", "", "  ", "robot1") == []


def test_setup_server_then_join_with_the_code_in_the_environment_only() -> None:
    steps = enrolment_steps("/run/s.sock", "198.18.0.10:8080", CODE, "robot1", command=["husarnet-ros"])
    assert [step.argv for step in steps] == [
        ["husarnet-ros", "--control-socket", "/run/s.sock", "setup-server", "198.18.0.10:8080"],
        ["husarnet-ros", "--control-socket", "/run/s.sock", "join", "--hostname", "robot1"],
    ]
    assert steps[1].env == {JOIN_CODE_ENV: CODE}
    for step in steps:
        assert CODE not in " ".join(step.argv)
        assert CODE not in step.what
    assert steps[1].what == "join with code Zq******"


def test_join_alone_and_a_code_that_cannot_be_one() -> None:
    steps = enrolment_steps("/s", "", CODE, "")
    assert len(steps) == 1
    assert steps[0].argv[-1] == "join"
    with pytest.raises(ConfigError) as caught:
        enrolment_steps("/s", "", "has spaces and secrets", "r")
    assert "secrets" not in str(caught.value)


def test_short_codes_are_masked_whole() -> None:
    assert masked("abc") == "******"
    assert masked("abcdefgh") == "ab******"


def test_the_cli_takes_the_code_from_its_environment(tmp_path: Any) -> None:
    """No daemon: the CLI still parsed the code from the environment (it got as far as the socket)."""
    socket_path = str(tmp_path / "none.sock")
    env = {**husarnet_ros_env(), JOIN_CODE_ENV: CODE}  # this tree's husarnet_ros first
    argv = [*husarnet_ros_command(), "--control-socket", socket_path, "join", "--hostname", "robot1"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "daemon not running" in result.stderr
    without = subprocess.run(
        argv,
        env={k: v for k, v in env.items() if k != JOIN_CODE_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert without.returncode == 2
    assert "Missing argument 'CODE'" in without.stderr


def test_launch_actions_chain_the_steps_and_never_show_the_code() -> None:
    launch_actions = pytest.importorskip("husarnet_ros.ros.launch_actions")
    from launch.actions import ExecuteProcess, LogInfo, RegisterEventHandler

    steps = enrolment_steps("/s", "198.18.0.10", CODE, "robot1", command=["husarnet-ros"])
    actions = launch_actions._enrolment(steps)
    kinds = [type(action) for action in actions]
    assert kinds == [LogInfo, ExecuteProcess, RegisterEventHandler]  # the join waits for setup-server's exit
    process = actions[1]
    assert "setup-server" in [str(part) for part in _flatten(process.cmd)]
    text = " ".join(str(a.msg) if isinstance(a, LogInfo) else "" for a in actions)
    assert CODE not in text


def _flatten(cmd: Any) -> list[Any]:
    out: list[Any] = []
    for part in cmd:
        out.extend(part if isinstance(part, list) else [part])
    return [getattr(p, "text", p) for p in out]
