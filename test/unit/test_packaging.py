"""The installed package: interfaces as specified, package.xml valid, files where ROS looks for them.

These tests need scripts/setup.sh to have run (it installs the package into the venv running the tests).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from catkin_pkg.package import parse_package

import husarnet_ros

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path(sys.prefix)

PEER_FIELDS = {
    "address": "string",
    "hostname": "string",
    "path": "uint8",
    "endpoint": "string",
    "base_server": "string",
    "rtt_ms": "double",
    "last_handshake": "builtin_interfaces/Time",
    "last_seen": "builtin_interfaces/Time",
    "rx_bytes": "uint64",
    "tx_bytes": "uint64",
    "whitelisted": "boolean",
}
STATUS_FIELDS = {
    "header": "std_msgs/Header",
    "address": "string",
    "hostname": "string",
    "daemon_running": "boolean",
    "base_server": "string",
    "base_state": "string",
    "base_transport": "string",
    "whitelist_enabled": "boolean",
    "peers_total": "uint32",
    "peers_direct": "uint32",
    "peers_tunnelled": "uint32",
}
RESULT_FIELDS = {"success": "boolean", "message": "string"}
PEER_REF_FIELDS = {"address": "string", "hostname": "string"}


def _fields(interface: Any) -> dict[str, str]:
    return dict(interface.get_fields_and_field_types())


def test_installed_package_imports_interfaces_from_site_packages() -> None:
    # -I: without the working tree on sys.path, so this is the installed copy, not the source tree.
    code = (
        "import husarnet_ros, husarnet_ros.msg, husarnet_ros.srv\n"
        "from husarnet_ros.msg import Peer, PeerArray, Status\n"
        "from husarnet_ros.srv import AddPeer, RemovePeer, ListPeers, Ping\n"
        "PeerArray(peers=[Peer(address='fc94::1')])\n"
        "print(husarnet_ros.__file__); print(husarnet_ros.msg.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd="/", timeout=60, check=False
    )
    assert result.returncode == 0, (
        f"installed husarnet_ros does not import (run scripts/setup.sh): {result.stderr}"
    )
    package_file, msg_file = (Path(line) for line in result.stdout.split())
    assert package_file.parent.parent == Path(sysconfig.get_paths()["platlib"]), package_file
    assert package_file.parent == msg_file.parent.parent


def test_peer_fields_and_path_constants() -> None:
    from husarnet_ros.msg import Peer

    assert _fields(Peer) == PEER_FIELDS
    assert (Peer.PATH_NONE, Peer.PATH_DIRECT, Peer.PATH_TUNNELLED) == (0, 1, 2)
    assert Peer().path == Peer.PATH_NONE


def test_peer_array_and_status_fields() -> None:
    from husarnet_ros.msg import PeerArray, Status

    assert _fields(PeerArray) == {"header": "std_msgs/Header", "peers": "sequence<husarnet_ros/Peer>"}
    assert _fields(Status) == STATUS_FIELDS


def test_service_fields() -> None:
    from husarnet_ros.srv import AddPeer, ListPeers, Ping, RemovePeer

    for service in (AddPeer, RemovePeer):
        assert _fields(service.Request) == PEER_REF_FIELDS
        assert _fields(service.Response) == RESULT_FIELDS
    assert _fields(ListPeers.Request) == {}
    assert _fields(ListPeers.Response) == {
        "peers": "sequence<husarnet_ros/Peer>",
        "whitelist_enabled": "boolean",
    }
    assert _fields(Ping.Request) == {**PEER_REF_FIELDS, "timeout_s": "double"}
    assert _fields(Ping.Response) == {
        "success": "boolean",
        "rtt_ms": "double",
        "path": "uint8",
        "message": "string",
    }


@pytest.mark.parametrize(
    "interface_file",
    sorted([*REPO.glob("msg/*.msg"), *REPO.glob("srv/*.srv")]),
    ids=lambda path: path.name,
)
def test_every_field_and_constant_has_a_comment_line_above(interface_file: Path) -> None:
    lines = interface_file.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if not line.strip() or line.startswith("#") or line == "---":
            continue
        assert number > 0, f"{interface_file.name} starts without a comment"
        assert lines[number - 1].startswith("#"), f"{interface_file.name}:{number + 1}: {line!r} uncommented"


def test_package_xml_is_valid_and_matches_the_python_version() -> None:
    package = parse_package(str(REPO / "package.xml"))
    package.validate()
    assert package.name == "husarnet_ros"
    assert package.package_format == 3
    assert package.version == husarnet_ros.__version__
    assert package.licenses == ["Apache-2.0"]
    assert package.get_build_type() == "ament_python"
    assert "rosidl_interface_packages" in [group.name for group in package.member_of_groups]
    assert all(re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", str(m.email)) for m in package.maintainers)


def test_share_files_and_ament_index_are_installed() -> None:
    share = PREFIX / "share" / "husarnet_ros"
    assert (share / "package.xml").read_bytes() == (REPO / "package.xml").read_bytes()
    index = PREFIX / "share" / "ament_index" / "resource_index"
    assert (index / "packages" / "husarnet_ros").is_file()
    interfaces = (index / "rosidl_interfaces" / "husarnet_ros").read_text(encoding="utf-8").split()
    assert {"msg/PeerArray.msg", "srv/Ping.srv"} <= set(interfaces)
    for folder, pattern in (("launch", "*.py"), ("config", "*.yaml")):
        for source in (REPO / folder).glob(pattern):
            assert (share / folder / source.name).read_bytes() == source.read_bytes(), source


def _setup_py_dict(name: str) -> dict[str, str]:
    """A dict literal assigned at the top level of setup.py (without running setup.py)."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            value = ast.literal_eval(node.value) if node.value is not None else None
            assert isinstance(value, dict)
            return value
    raise AssertionError(f"setup.py has no {name}")


def test_console_scripts_are_installed() -> None:
    for script in _setup_py_dict("CONSOLE_SCRIPTS"):
        assert os.access(PREFIX / "bin" / script, os.X_OK), script


def test_ros_executables_have_wrappers_where_ros2_run_looks() -> None:
    executables = _setup_py_dict("ROS_EXECUTABLES")
    assert executables, "setup.py lists no ROS executables"
    for name, target in executables.items():
        module = target.split(":", 1)[0]
        source = REPO.joinpath(*module.split("."))
        wrapper = PREFIX / "lib" / "husarnet_ros" / name
        if source.with_suffix(".py").is_file() or (source / "__init__.py").is_file():
            assert os.access(wrapper, os.X_OK), f"{wrapper} missing: rerun scripts/setup.sh"
        else:
            assert not wrapper.exists(), f"{wrapper} installed although {module} does not exist"
