"""`ros2 launch husarnet_ros server.launch.py` runs a base server that robots register with, and stopping the
launch stops it.

The launch runs in a lab namespace with this working tree's code first on PYTHONPATH (RobotLaunch); a
daemon in a second namespace uses the base server it started.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.testing.netlab import Lab, wait_until
from husarnet_ros.testing.ros_launch import RobotLaunch, private_domain_id

from .conftest import DaemonFactory

pytestmark = [pytest.mark.integration, pytest.mark.ros, pytest.mark.usefixtures("setup_accounts")]

UDP_PORT, TCP_PORT = 5590, 4443
START_S = 60.0


def _listening(host: Any, protocol: str, port: int) -> bool:
    out = host.run(["ss", "-Hln", f"-{protocol}", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def test_server_launch_runs_a_base_server_robots_use(lab: Lab, daemon_factory: DaemonFactory) -> None:
    server_host, robot_host = lab.pair(["server", "robot"])
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-server-launch-", dir="/tmp"))
    status_file = workdir / "base.json"
    launch = RobotLaunch("server", server_host, workdir, private_domain_id(7))
    try:
        arguments = {
            "udp_port": str(UDP_PORT),
            "tcp_port": str(TCP_PORT),
            "status_file": str(status_file),
            "status_interval": "0.2",
        }
        launch.start("server.launch.py", arguments)
        wait_until(
            status_file.exists, START_S, interval=0.2, what=f"the base server's status\n{launch.log()}"
        )
        status = json.loads(status_file.read_text())
        assert (status["udp_port"], status["tcp_port"]) == (UDP_PORT, TCP_PORT)
        assert _listening(server_host, "u", UDP_PORT)
        assert _listening(server_host, "t", TCP_PORT)

        daemon = daemon_factory(
            robot_host, "robot", extra_args=["--base-server", f"{server_host.ipv4}:{UDP_PORT}"]
        )
        daemon.cli("wait", "base", "--timeout", "20", timeout=30)
        assert daemon.status()["base"]["state"] == "registered"
        wait_until(
            lambda: json.loads(status_file.read_text())["clients"] == 1, 10, interval=0.2, what="one client"
        )

        launch.stop()  # SIGINT, as Ctrl-C: the base server goes with the launch
        wait_until(
            lambda: not _listening(server_host, "u", UDP_PORT) and not _listening(server_host, "t", TCP_PORT),
            10,
            interval=0.2,
            what="the base server gone with its launch",
        )
    except BaseException:
        print(launch.log()[-4000:])
        raise
    finally:
        launch.stop()
        shutil.rmtree(workdir, ignore_errors=True)
