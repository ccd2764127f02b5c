"""What robot.launch.py runs once the daemon is ready when given ``server:=ADDR`` and/or ``join_code:=CODE``:
`husarnet-ros setup-server ADDR`, then `husarnet-ros join`, each only if the one before succeeded.

Plain functions (unit-tested without ROS); ros/launch_actions.py turns the steps into launch actions. A join
code is a secret that lets any device into the networks it names: it goes to the CLI in its environment
(``HUSARNET_ROS_JOIN_CODE``), never on a command line (which `ps` shows and launch prints when a process
fails), and the launch log shows it masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .api import JOIN_CODE_ENV
from .core.errors import ConfigError
from .launch_support import husarnet_ros_command

_JOIN_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class EnrolmentStep:
    """One CLI command: ``what`` (for the log; never holds the code), its argv and extra environment."""

    what: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def masked(code: str) -> str:
    """A join code as the log may show it: its first two characters at most, the rest hidden."""
    shown = code[:2] if len(code) > 6 else ""
    return f"{shown}{'*' * 6}"


def enrolment_steps(
    control_socket: str, server: str, join_code: str, hostname: str, *, command: list[str] | None = None
) -> list[EnrolmentStep]:
    """The steps for ``server`` (empty: none) and ``join_code`` (empty: none), in order. ConfigError (the
    launch exits saying why) for a join code that cannot be one."""
    base = [*(command or husarnet_ros_command()), "--control-socket", control_socket]
    steps: list[EnrolmentStep] = []
    server = server.strip()
    if server:
        steps.append(EnrolmentStep(f"setup-server {server}", [*base, "setup-server", server]))
    code = join_code.strip()
    if code:
        if not _JOIN_CODE.match(code):
            raise ConfigError(
                "join_code: a join code is 1 to 64 letters, digits, '-' and '_', as the Dashboard shows it"
            )
        argv = [*base, "join"] + (["--hostname", hostname] if hostname else [])
        steps.append(EnrolmentStep(f"join with code {masked(code)}", argv, {JOIN_CODE_ENV: code}))
    return steps
