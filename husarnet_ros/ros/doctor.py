"""Health checks of this machine's husarnet_ros setup, and their `ros2 doctor` plug-in.

The checks are plain functions returning :class:`CheckResult` (no ROS needed), so `husarnet-ros doctor`
and the tests run them anywhere:

* the daemon answers on its control socket;
* its interface (``hnet0``) carries its fc94 address;
* the base server in use answers (information when none is configured: LAN peers need none);
* the DDS configuration matches the RMW in use: the profile variable of that middleware is set, the file
  exists and lists the peers.

``HusarnetCheck`` / ``HusarnetReport`` are what the ``ros2doctor.checks`` / ``ros2doctor.report`` entry
points name. They subclass ros2doctor's ``DoctorCheck`` / ``DoctorReport`` where ros2doctor is installed
(ROS from apt) and a local stand-in with the same methods elsewhere, so the entry points always load.
"""

from __future__ import annotations

import json
import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .. import dds
from ..api import Status, resolve_control_socket
from ..client import ClientError, ControlClient
from ..core.address import format_address, parse_overlay
from ..core.errors import AddressError
from ..fileio import FileReadError, read_bounded_text

Level = Literal["ok", "info", "warn", "error"]
CATEGORY = "husarnet"
# The names the files of husarnet_ros.dds are written for, taken from there so the two cannot drift apart.
DEFAULT_INTERFACE = dds.OVERLAY_INTERFACE
DEFAULT_RMW = dds.RMW_IMPLEMENTATIONS["fastdds"]  # what rclpy loads when RMW_IMPLEMENTATION is unset
FASTDDS_RMWS = (DEFAULT_RMW, "rmw_fastrtps_dynamic_cpp")
CYCLONEDDS_RMW = dds.RMW_IMPLEMENTATIONS["cyclonedds"]
FASTDDS_PROFILE_ENV = dds.FASTDDS_PROFILES_ENV
CYCLONEDDS_ENV = dds.CYCLONEDDS_URI_ENV
# The doctor must answer quickly even when the daemon hangs.
PROBE_TIMEOUT_S = 2.0
# A DDS profile is a few KiB; refuse to parse anything absurd.
MAX_PROFILE_SIZE = 1 << 20


@dataclass(frozen=True)
class CheckResult:
    """One check: ``level`` ok/info (fine), warn (works, but look at it) or error (broken)."""

    name: str
    level: Level
    summary: str
    details: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.level == "error"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# --- daemon -------------------------------------------------------------------------------------------------


def query_daemon(control_socket: str | None) -> tuple[Status | None, str]:
    """(status, socket path), status None when nothing answers; never raises."""
    path = resolve_control_socket(control_socket or None)
    try:
        with ControlClient(path, timeout_s=PROBE_TIMEOUT_S) as client:
            return client.status(), path
    except ClientError:
        return None, path


def check_daemon(status: Status | None, socket_path: str) -> CheckResult:
    if status is None:
        return CheckResult(
            "daemon",
            "error",
            f"no daemon answers at {socket_path}",
            {"hint": "start it: `sudo husarnet-ros daemon` or `ros2 launch husarnet_ros robot.launch.py`"},
        )
    details = {
        "socket": socket_path,
        "address": status.address,
        "hostname": status.hostname,
        "version": status.version,
        "peers": str(len(status.peers)),
    }
    if not status.ready:
        return CheckResult("daemon", "warn", "daemon answers but is not ready yet", details)
    return CheckResult("daemon", "ok", f"daemon {status.version} up, {status.address}", details)


# --- interface ----------------------------------------------------------------------------------------------


def interface_addresses(ifname: str) -> list[str] | None:
    """IPv6 addresses of ``ifname`` (None if there is no such interface), read over netlink."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=ifname)
        if not indexes:
            return None
        messages = ipr.get_addr(index=indexes[0], family=socket.AF_INET6)
        return [str(message.get_attr("IFA_ADDRESS")) for message in messages]


def check_interface(
    status: Status | None, read_addresses: Callable[[str], list[str] | None] = interface_addresses
) -> CheckResult:
    """The daemon's interface carries its address (or, without a daemon, some fc94 address)."""
    ifname = status.interface if status is not None else DEFAULT_INTERFACE
    try:
        addresses = read_addresses(ifname)
    except OSError as exc:
        return CheckResult("interface", "error", f"cannot read the addresses of {ifname}: {exc}")
    if addresses is None:
        return CheckResult("interface", "error", f"no interface {ifname}", {"hint": "is the daemon running?"})
    overlay = [a for a in (_strip_address(text) for text in addresses) if a is not None]
    details = {"interface": ifname, "overlay_addresses": ", ".join(overlay) or "none"}
    if status is not None:
        if status.address in overlay:
            return CheckResult("interface", "ok", f"{ifname} has {status.address}", details)
        summary = f"{ifname} lacks the daemon's address {status.address}"
        return CheckResult("interface", "error", summary, details)
    if overlay:
        return CheckResult("interface", "warn", f"{ifname} has {overlay[0]} but no daemon answers", details)
    return CheckResult("interface", "error", f"{ifname} has no fc94 address", details)


# --- base servers -------------------------------------------------------------------------------------------


def check_base(status: Status | None) -> CheckResult:
    """The base server the daemon uses: registered is fine; configured but not answering is a warning
    (direct links go on, only peers on other networks are out of reach); none configured is information."""
    base = status.base if status is not None else None
    if base is None:
        return CheckResult("base", "info", "no base server configured (LAN peers and static endpoints only)")
    details = {"address": base.address, "transport": base.transport, "state": base.state}
    if base.rtt_ms is not None:
        details["rtt_ms"] = f"{base.rtt_ms:.1f}"
    if base.state == "registered":
        return CheckResult("base", "ok", f"registered with {base.address} over {base.transport}", details)
    return CheckResult(
        "base",
        "warn",
        f"no base server answers ({base.address}: {base.state}); peers on other networks are unreachable",
        details,
    )


# --- DDS ----------------------------------------------------------------------------------------------------


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _strip_address(text: str) -> str | None:
    """'fc94::2', '[fc94::2]', '[fc94::2]:7400' -> 'fc94::2'; None for something that is not an overlay."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    try:
        return format_address(parse_overlay(text))
    except AddressError:
        return None


def _parse_xml(text: str) -> ET.Element:
    # Entity declarations are the one dangerous XML feature; a DDS profile never needs them.
    if "<!ENTITY" in text or "<!DOCTYPE" in text:
        raise ValueError("DOCTYPE/ENTITY declarations are not allowed")
    return ET.fromstring(text)


def fastdds_peers(xml_text: str) -> list[str]:
    """Overlay addresses in the Fast DDS profile's initial peers lists."""
    root = _parse_xml(xml_text)
    found: list[str] = []
    for element in root.iter():
        if _local_name(element.tag) != "initialPeersList":
            continue
        for child in element.iter():
            if _local_name(child.tag) == "address" and child.text:
                address = _strip_address(child.text)
                if address and address not in found:
                    found.append(address)
    return found


def cyclonedds_peers(xml_text: str) -> list[str]:
    """Overlay addresses of ``<Peer address=...>`` entries of a Cyclone DDS configuration."""
    root = _parse_xml(xml_text)
    found: list[str] = []
    for element in root.iter():
        if _local_name(element.tag) == "Peer":
            address = _strip_address(element.get("address") or element.get("Address") or "")
            if address and address not in found:
                found.append(address)
    return found


def _cyclonedds_text(uri: str) -> tuple[str | None, str]:
    """(XML text or None if unreadable, where it came from) for the CYCLONEDDS_URI value."""
    value = uri.strip()
    if value.startswith("<"):
        return value, "inline XML"
    # Cyclone accepts a comma-separated list; ours is one file.
    first = value.split(",", 1)[0].strip()
    path = Path(first.removeprefix("file://"))
    return _read_profile(path), str(path)


def _read_profile(path: Path) -> str | None:
    # None (the check then says the profile cannot be used) for a missing, unreadable or oversized file.
    try:
        return read_bounded_text(path, MAX_PROFILE_SIZE, "DDS profile", errors="replace")
    except FileReadError:
        return None


def check_dds(environ: Mapping[str, str], status: Status | None) -> CheckResult:
    """The profile of the RMW in use is set, exists and lists peers (the daemon's, when it answers)."""
    rmw = environ.get(dds.RMW_IMPLEMENTATION_ENV) or DEFAULT_RMW
    details = {"rmw": rmw}
    fastdds_set = [name for name in dds.FASTDDS_PROFILES_ENVS if environ.get(name)]
    if rmw in FASTDDS_RMWS:
        # Fast DDS 3.x (Kilted, Rolling) reads the first name, 2.x (Humble, Jazzy) the second.
        variable, other = (fastdds_set or [FASTDDS_PROFILE_ENV])[0], CYCLONEDDS_ENV
        value = environ.get(variable, "")
        text, where = (_read_profile(Path(value)), value) if value else (None, "")
        parse = fastdds_peers
    elif rmw == CYCLONEDDS_RMW:
        variable, other = CYCLONEDDS_ENV, FASTDDS_PROFILE_ENV
        value = environ.get(variable, "")
        text, where = _cyclonedds_text(value) if value else (None, "")
        parse = cyclonedds_peers
    else:
        return CheckResult("dds", "warn", f"RMW {rmw} is not one husarnet_ros configures", details)
    hint = 'eval "$(husarnet-ros dds env)" or use the variables robot.launch.py prints'
    if not value:
        if environ.get(other):
            summary = f"{other} is set but the RMW in use is {rmw}, which reads {variable}"
        else:
            summary = f"{variable} is not set: DDS uses multicast, which does not cross the overlay"
        return CheckResult("dds", "error", summary, {**details, "hint": hint})
    details[variable] = value
    if text is None:
        return CheckResult("dds", "error", f"{variable} points at {where}, which cannot be read", details)
    try:
        peers = parse(text)
    except (ET.ParseError, ValueError) as exc:
        return CheckResult("dds", "error", f"{where} is not valid XML: {exc}", details)
    own = status.address if status is not None else None
    peers = [p for p in peers if p != own]
    details["peers"] = ", ".join(peers) or "none"
    if not peers:
        return CheckResult("dds", "warn", f"{where} lists no overlay peers", details)
    if status is not None:
        expected = {p.address for p in status.peers if p.whitelisted}
        missing = sorted(expected - set(peers))
        if missing:
            details["missing"] = ", ".join(missing)
            return CheckResult(
                "dds", "warn", f"{where} lacks {len(missing)} whitelisted peer(s) of the daemon", details
            )
    if rmw in FASTDDS_RMWS and len(fastdds_set) < len(dds.FASTDDS_PROFILES_ENVS):
        unset = next(name for name in dds.FASTDDS_PROFILES_ENVS if name not in fastdds_set)
        return CheckResult(
            "dds",
            "warn",
            f"only {variable} is set: a Fast DDS that reads {unset} (2.x on Humble and Jazzy reads "
            f"{dds.FASTRTPS_PROFILES_ENV}, 3.x {dds.FASTDDS_PROFILES_ENV}) would ignore the profile",
            {**details, "hint": hint},
        )
    return CheckResult("dds", "ok", f"{rmw} profile lists {len(peers)} peer(s)", details)


# --- all together -------------------------------------------------------------------------------------------


def run_checks(
    control_socket: str | None = None,
    environ: Mapping[str, str] | None = None,
    read_addresses: Callable[[str], list[str] | None] | None = None,
) -> list[CheckResult]:
    status, path = query_daemon(control_socket)
    return [
        check_daemon(status, path),
        check_interface(status, read_addresses or interface_addresses),
        check_base(status),
        check_dds(os.environ if environ is None else environ, status),
    ]


def results_json(results: Sequence[CheckResult]) -> str:
    return json.dumps(
        {"ok": not any(r.failed for r in results), "checks": [r.to_json() for r in results]}, indent=2
    )


# --- ros2doctor plug-in -------------------------------------------------------------------------------------


class _Report:
    """Stand-in for ros2doctor.api.Report: a name and (item, info) pairs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[tuple[str, str]] = []

    def add_to_report(self, item_name: str, item_info: str) -> None:
        self.items.append((item_name, item_info))


class _Result:
    """Stand-in for ros2doctor.api.Result: error and warning counts."""

    def __init__(self) -> None:
        self.error = 0
        self.warning = 0
        self.messages: list[str] = []

    def add_error(self, msg: str) -> None:
        self.messages.append(msg)
        self.error += 1

    def add_warning(self, msg: str) -> None:
        self.messages.append(msg)
        self.warning += 1


class _DoctorCheck:
    def category(self) -> str:
        raise NotImplementedError

    def check(self) -> _Result:
        raise NotImplementedError


class _DoctorReport:
    def category(self) -> str:
        raise NotImplementedError

    def report(self) -> _Report:
        raise NotImplementedError


if TYPE_CHECKING:
    DoctorCheck = _DoctorCheck
    DoctorReport = _DoctorReport
    Report = _Report
    Result = _Result
else:
    try:
        from ros2doctor.api import DoctorCheck, DoctorReport, Report, Result
    except ImportError:  # no ros2doctor (PyPI wheels): the entry points must load all the same
        DoctorCheck, DoctorReport, Report, Result = _DoctorCheck, _DoctorReport, _Report, _Result


class HusarnetCheck(DoctorCheck):
    """`ros2 doctor` check: an error per failed husarnet_ros check, a warning per warning."""

    def category(self) -> str:
        return CATEGORY

    def check(self) -> Result:
        result = Result()
        for item in run_checks():
            if item.level == "error":
                result.add_error(f"husarnet {item.name}: {item.summary}")
            elif item.level == "warn":
                result.add_warning(f"husarnet {item.name}: {item.summary}")
        return result


class HusarnetReport(DoctorReport):
    """`ros2 doctor --report` section HUSARNET: one line per check and its details."""

    def category(self) -> str:
        return CATEGORY

    def report(self) -> Report:
        report = Report("HUSARNET")
        for item in run_checks():
            report.add_to_report(item.name, f"{item.level}: {item.summary}")
            for key, value in item.details.items():
                report.add_to_report(f"{item.name}.{key}", value)
        return report
