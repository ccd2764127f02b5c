"""`colcon build` of the repository in a fresh workspace, with ROS 2 from the venv running the tests.

The workspace gets a copy of the working tree plus one probe executable added to setup.py's ROS_EXECUTABLES,
so the test also proves the mechanism that installs executables for `ros2 run` works under colcon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.build, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
PROBE_TOKEN = "husarnet-ros-colcon-probe-ok"
# Build output, caches (and hidden folders: .git, .venv, tool caches) and the generated modules that
# scripts/setup.sh copies into the tree: not sources.
NOT_SOURCES = {"build", "install", "log", "dist", "__pycache__"}
GENERATED = {"msg", "srv"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n in NOT_SOURCES or (n.startswith(".") and n != ".ci")}
    ignored |= {n for n in names if n.endswith(".egg-info")}
    if Path(directory).resolve() == REPO / "husarnet_ros":
        ignored |= {n for n in names if n in GENERATED or n.endswith(".so")}
    return ignored


def _ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["AMENT_PREFIX_PATH"] = str(VENV)
    env["CMAKE_PREFIX_PATH"] = str(VENV)
    env.pop("PYTHONPATH", None)
    return env


def _in_workspace(workspace: Path, command: str) -> subprocess.CompletedProcess[str]:
    """Run a shell command with the built workspace sourced, outside the source tree."""
    script = f"source {workspace / 'install' / 'setup.bash'} && {command}"
    return subprocess.run(
        ["bash", "-c", script],
        cwd=workspace.parent,
        env={**_ros_env(), "ROS_LOG_DIR": str(workspace / "ros_log")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = tmp_path_factory.mktemp("colcon_ws")
    source = workspace / "src" / "husarnet_ros"
    shutil.copytree(REPO, source, ignore=_ignore)

    (source / "husarnet_ros" / "_colcon_probe.py").write_text(
        f"def main() -> None:\n    print({PROBE_TOKEN!r})\n", encoding="utf-8"
    )
    setup_py = source / "setup.py"
    anchor = "ROS_EXECUTABLES: dict[str, str] = {\n"
    text = setup_py.read_text(encoding="utf-8")
    assert anchor in text, "setup.py's ROS_EXECUTABLES list moved: update this test"
    setup_py.write_text(
        text.replace(anchor, anchor + '    "colcon_probe": "husarnet_ros._colcon_probe:main",\n', 1),
        encoding="utf-8",
    )

    result = subprocess.run(
        [str(VENV / "bin" / "colcon"), "build", "--event-handlers", "console_cohesion+"],
        cwd=workspace,
        env=_ros_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return workspace


@pytest.mark.timeout(1500)
def test_colcon_build_installs_importable_interfaces(workspace: Path) -> None:
    result = _in_workspace(
        workspace,
        "python -c 'import husarnet_ros, husarnet_ros.msg, husarnet_ros.srv\n"
        "from husarnet_ros.msg import Peer, PeerArray, Status\n"
        "from husarnet_ros.srv import AddPeer, RemovePeer, ListPeers, Ping\n"
        "print(husarnet_ros.__file__); print(husarnet_ros.msg.__file__); print(Peer.PATH_TUNNELLED)'",
    )
    assert result.returncode == 0, result.stderr
    package_file, msg_file, constant = result.stdout.split()
    install = workspace / "install" / "husarnet_ros"
    assert Path(package_file).is_relative_to(install)
    assert Path(msg_file).is_relative_to(install)
    assert constant == "2"


@pytest.mark.timeout(1500)
def test_colcon_build_registers_interfaces_for_ros2_cli(workspace: Path) -> None:
    result = _in_workspace(
        workspace, "ros2 interface show husarnet_ros/msg/PeerArray && ros2 pkg prefix husarnet_ros"
    )
    assert result.returncode == 0, result.stderr
    assert "Peer[] peers" in result.stdout
    assert "uint8 PATH_DIRECT=1" in result.stdout
    assert result.stdout.split()[-1] == str(workspace / "install" / "husarnet_ros")


@pytest.mark.timeout(1500)
def test_colcon_build_installs_ros_executables_and_share_files(workspace: Path) -> None:
    result = _in_workspace(workspace, "ros2 run husarnet_ros colcon_probe")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == PROBE_TOKEN
    share = workspace / "install" / "husarnet_ros" / "share" / "husarnet_ros"
    assert (share / "package.xml").is_file()
    for folder, pattern in (("launch", "*.py"), ("config", "*.yaml")):
        for source in (REPO / folder).glob(pattern):
            assert (share / folder / source.name).is_file(), source
