"""`husarnet-ros doctor`: the checks of the `ros2 doctor` plug-in, without ROS.

Exit status 0 when no check failed (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import click

from ..ros.doctor import CheckResult, results_json, run_checks
from .state import cli_state, json_option

_MARKS = {"ok": "ok  ", "info": "info", "warn": "WARN", "error": "FAIL"}


def _print(result: CheckResult) -> None:
    click.echo(f"[{_MARKS[result.level]}] {result.name}: {result.summary}")
    for key, value in result.details.items():
        click.echo(f"         {key}: {value}")


@click.command()
@json_option
def doctor() -> None:
    """Check this machine: daemon up, hnet0 has its fc94 address, base servers, DDS profile for the RMW.

    The DDS check reads this shell's environment (RMW_IMPLEMENTATION, FASTDDS_DEFAULT_PROFILES_FILE,
    CYCLONEDDS_URI), so run it where your ROS nodes run. Exit status 1 when a check fails.

    \b
    Examples:
      husarnet-ros doctor
      husarnet-ros doctor --json
    """
    state = cli_state()
    results = run_checks(state.socket_path)
    if state.json:
        click.echo(results_json(results))
    else:
        for result in results:
            _print(result)
    if any(result.failed for result in results):
        raise SystemExit(1)
