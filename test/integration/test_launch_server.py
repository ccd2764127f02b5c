"""`ros2 launch husarnet_ros server.launch.py` runs a base server that robots register with, and stopping the
launch stops it; with `dashboard:=true` it runs the self-hosted control plane too (Dashboard and Websetup),
which robots set up with `husarnet-ros setup-server` and join.

The launch runs in a lab namespace with this working tree's code first on PYTHONPATH (RobotLaunch); a
daemon in a second namespace uses the base server it started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.core.license import DEFAULT_WEBSETUP_PORT
from husarnet_ros.testing.lab_daemon import husarnet_ros_command, husarnet_ros_env
from husarnet_ros.testing.netlab import Host, Lab, LabError, wait_until
from husarnet_ros.testing.ros_launch import RobotLaunch, private_domain_id

from .conftest import DaemonFactory

pytestmark = [pytest.mark.integration, pytest.mark.ros, pytest.mark.usefixtures("setup_accounts")]

UDP_PORT, TCP_PORT = 5590, 4443
START_S = 60.0


def _listening(host: Any, protocol: str, port: int) -> bool:
    return bool(_sockets(host, protocol, port))


def _sockets(host: Any, protocol: str, port: int) -> str:
    """The ``ss`` lines of the sockets listening on ``port`` in ``host``'s namespace ('' for none)."""
    return str(host.run(["ss", "-Hln", f"-{protocol}", f"sport = :{port}"], check=False).stdout).strip()


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


def _free_tcp_port(host: Host) -> int:
    """A TCP port nothing listens on in ``host``'s namespace (the kernel's choice there)."""
    script = "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])"
    return int(host.run([sys.executable, "-c", script, host.ipv4]).stdout.strip())


def _dashboard_cli(host: Host, data_dir: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        host.exec_argv([*husarnet_ros_command(), "dashboard", *args, "--data-dir", str(data_dir)]),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=husarnet_ros_env(),
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"husarnet-ros dashboard {args[0]}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def test_server_launch_with_the_dashboard_runs_the_control_plane_robots_set_up_with(
    lab: Lab, daemon_factory: DaemonFactory
) -> None:
    server_host, robot_host = lab.pair(["server", "robot"])
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-server-launch-", dir="/tmp"))
    data_dir = workdir / "dashboard"
    launch = RobotLaunch("server", server_host, workdir, private_domain_id(8))
    try:
        # Websetup's fc94 identity: the server's own daemon, open to devices it does not know yet; its UDP
        # port is not the base server's.
        websetup_daemon = daemon_factory(server_host, "websetup", udp_port=5580)
        websetup_daemon.cli("whitelist", "disable")
        # An account made beforehand, as an operator does, in the data dir the launch's Dashboard uses.
        created = _dashboard_cli(
            server_host,
            data_dir,
            "create-user",
            "admin",
            "--json",
            "--password-stdin",
            stdin="pw-0123456789\n",
        )
        join_code = str(json.loads(created)["join_code"])
        dashboard_port = _free_tcp_port(server_host)
        unused_base = f"{server_host.ipv4}:{UDP_PORT + 9}"  # listed in the license; nothing answers there
        launch.start(
            "server.launch.py",
            {
                "udp_port": str(UDP_PORT),
                "tcp_port": str(TCP_PORT),
                "dashboard": "true",
                "dashboard_listen": f"{server_host.ipv4}:{dashboard_port}",
                "dashboard_data_dir": str(data_dir),
                "public_host": server_host.ipv4,
                "base_servers": unused_base,
                "name": "launch lab",
                "websetup_address": websetup_daemon.address,
            },
        )

        def every_port_open() -> bool:
            if launch.process is not None and launch.process.poll() is not None:
                raise LabError(f"the launch exited ({launch.process.returncode}):\n{launch.log()[-4000:]}")
            return all(
                _listening(server_host, protocol, port)
                for protocol, port in (("u", UDP_PORT), ("t", TCP_PORT), ("t", dashboard_port))
            ) and websetup_daemon.address in _sockets(server_host, "t", DEFAULT_WEBSETUP_PORT)

        wait_until(every_port_open, START_S, interval=0.2, what="the base server, Dashboard and Websetup")
        log = launch.log()
        assert f"starting the Dashboard on {server_host.ipv4}:{dashboard_port}" in log
        assert f"starting Websetup on [{websetup_daemon.address}]:{DEFAULT_WEBSETUP_PORT}" in log
        assert f"robots run: husarnet-ros setup-server {server_host.ipv4}:{dashboard_port}" in log

        # A robot sets the server up as users do, checking the key's fingerprint: the license it pins lists
        # this launch's base server first, and the robot then registers with that base server.
        fingerprint = json.loads(_dashboard_cli(server_host, data_dir, "fingerprint", "--json"))[
            "fingerprint"
        ]
        robot = daemon_factory(robot_host, "robot")
        robot.json(
            "setup-server", f"{server_host.ipv4}:{dashboard_port}", "--fingerprint", fingerprint, timeout=40
        )
        license_ = robot.status()["license"]
        assert license_["name"] == "launch lab"
        assert license_["fingerprint"] == fingerprint
        assert license_["base_servers"] == [f"{server_host.ipv4}:{UDP_PORT}", unused_base]
        assert license_["websetup_address"] == websetup_daemon.address
        assert license_["dashboard_url"] == f"http://{server_host.ipv4}:{dashboard_port}"
        robot.cli("wait", "base", "--timeout", "20", timeout=30)
        assert robot.status()["base"]["address"] == f"{server_host.ipv4}:{UDP_PORT}"

        # Websetup, started by the launch on the daemon's address, claims the robot over the overlay.
        joined = robot.json("join", join_code, "robot-1", timeout=40)
        assert (joined["account"], joined["hostname"]) == ("admin", "robot-1")

        launch.stop()  # SIGINT, as Ctrl-C: every process goes with the launch
        wait_until(
            lambda: (
                not any(
                    _listening(server_host, protocol, port)
                    for protocol, port in (
                        ("u", UDP_PORT),
                        ("t", TCP_PORT),
                        ("t", dashboard_port),
                        ("t", DEFAULT_WEBSETUP_PORT),
                    )
                )
            ),
            10,
            interval=0.2,
            what="the base server, Dashboard and Websetup gone with their launch",
        )
    except BaseException:
        print(launch.log()[-6000:])
        raise
    finally:
        launch.stop()
        shutil.rmtree(workdir, ignore_errors=True)
