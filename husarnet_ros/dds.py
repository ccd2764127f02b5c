"""DDS middleware configuration that keeps ROS 2 discovery and data on the overlay, with no multicast.

ROS 2's default discovery is multicast on every interface, which finds nothing across ``hnet0`` (a point to
point TUN device carries no multicast) and leaks traffic onto the underlay unencrypted. The files rendered
here instead:

* bind DDS to ``hnet0`` only, so every DDS packet between robots goes through the encrypted overlay;
* discover by unicast: every peer's fc94 address is an initial peer (Fast DDS) / discovery peer (Cyclone
  DDS), and so is the robot's own address, so that nodes on the same robot still find each other without
  multicast (the own address is local: the kernel delivers to it over loopback, not through the TUN device);
* leave room for several ROS nodes per robot: unicast discovery reaches a participant only at the ports of
  the participant indices it tries, so that range is raised from the default 4 to :data:`MAX_PARTICIPANTS`.

Rendering is pure; :func:`write_config` writes the files (atomically, only when their content changed) and
returns the environment a ROS process needs (:func:`environment`). Middleware reads these files only when a
participant is created: processes started before a change keep the old peers, which is why the launch files
call :func:`write_config` before starting nodes. Findings behind these choices: docs/DDS.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import quoteattr

from .api import Status, Whitelist, normalize_overlay
from .core.errors import ConfigError
from .fileio import atomic_write_text

Rmw = Literal["fastdds", "cyclonedds", "auto"]
RMW_CHOICES: tuple[Rmw, ...] = ("fastdds", "cyclonedds", "auto")
RMW_IMPLEMENTATIONS: dict[str, str] = {"fastdds": "rmw_fastrtps_cpp", "cyclonedds": "rmw_cyclonedds_cpp"}

FASTDDS_FILE = "fastdds.xml"
CYCLONEDDS_FILE = "cyclonedds.xml"
OVERLAY_INTERFACE = "hnet0"

# Participants (roughly: ROS processes) per robot that unicast discovery can reach. Fast DDS sends its
# announcements to this many ports per peer (default 4); Cyclone tries this many indices for its own port.
MAX_PARTICIPANTS = 32
# The 4 default initial announcements, but closer together: with no multicast, the first announcements are
# what lets a late-started node find the others quickly (otherwise it waits for the 3 s periodic one).
INITIAL_ANNOUNCEMENTS = 5
INITIAL_ANNOUNCEMENT_PERIOD_MS = 100

FASTDDS_PROFILES_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
CYCLONEDDS_URI_ENV = "CYCLONEDDS_URI"
RMW_IMPLEMENTATION_ENV = "RMW_IMPLEMENTATION"
DISCOVERY_RANGE_ENV = "ROS_AUTOMATIC_DISCOVERY_RANGE"
# SUBNET is the default, and the only range under which the rmw layers leave these files alone: LOCALHOST
# would restrict discovery to this machine, OFF would disable it. Exported so a stray setting cannot win.
DISCOVERY_RANGE = "SUBNET"

_SAFE_INTERFACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def overlay_peers(own: str | None, peers: Iterable[str]) -> list[str]:
    """The discovery peer list: canonical addresses, own address first, no duplicates, the rest sorted.

    Sorted so the rendered file (and whether it changed) depends only on the set of peers, not their order.
    Raises AddressError for anything that is not an overlay (fc94::/16) address.
    """
    own_address = normalize_overlay(own) if own else None
    others = sorted({normalize_overlay(peer) for peer in peers} - {own_address})
    return [own_address, *others] if own_address else others


def discovered_peers(status: Status, whitelist: Whitelist) -> set[str]:
    """Peers the daemon knows that this robot may talk to: the whitelist, or every peer when it is off."""
    if whitelist.enabled:
        return set(whitelist.addresses)
    return {peer.address for peer in status.peers}


def _check_interface(interface: str) -> str:
    # Linux interface names: at most 15 bytes, no '/', no whitespace. Kept to a safe set so that the name
    # can go into XML attributes and element text as is.
    if not interface or len(interface) > 15 or not set(interface) <= _SAFE_INTERFACE_CHARS:
        raise ConfigError(f"{interface!r} is not a usable network interface name")
    return interface


def render_fastdds_xml(own: str | None, peers: Iterable[str], *, interface: str = OVERLAY_INTERFACE) -> str:
    """Fast DDS profiles file: UDPv6 on ``interface`` only, no builtin transports, unicast initial peers.

    The participant profile is the default profile, so every participant of a process started with
    FASTDDS_DEFAULT_PROFILES_FILE pointing here uses it without code changes.
    """
    addresses = overlay_peers(own, peers)
    interface = _check_interface(interface)
    locators = "".join(
        f"            <locator><udpv6><address>{address}</address></udpv6></locator>\n"
        for address in addresses
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<!-- Generated by husarnet_ros (husarnet-ros dds / husarnet_dds node); rewritten when peers change."
        " -->\n"
        '<dds xmlns="http://www.eprosima.com">\n'
        '  <profiles xmlns="http://www.eprosima.com">\n'
        "    <transport_descriptors>\n"
        "      <transport_descriptor>\n"
        "        <transport_id>husarnet_udp6</transport_id>\n"
        "        <type>UDPv6</type>\n"
        f"        <maxInitialPeersRange>{MAX_PARTICIPANTS}</maxInitialPeersRange>\n"
        "        <interfaces>\n"
        "          <allowlist>\n"
        f'            <interface name="{interface}"/>\n'
        "          </allowlist>\n"
        "        </interfaces>\n"
        "      </transport_descriptor>\n"
        "    </transport_descriptors>\n"
        '    <participant profile_name="husarnet_overlay" is_default_profile="true">\n'
        "      <rtps>\n"
        "        <userTransports>\n"
        "          <transport_id>husarnet_udp6</transport_id>\n"
        "        </userTransports>\n"
        "        <useBuiltinTransports>false</useBuiltinTransports>\n"
        "        <builtin>\n"
        "          <discovery_config>\n"
        "            <initialAnnouncements>\n"
        f"              <count>{INITIAL_ANNOUNCEMENTS}</count>\n"
        f"              <period><sec>0</sec><nanosec>{INITIAL_ANNOUNCEMENT_PERIOD_MS * 1_000_000}</nanosec>"
        "</period>\n"
        "            </initialAnnouncements>\n"
        "          </discovery_config>\n"
        "          <avoid_builtin_multicast>true</avoid_builtin_multicast>\n"
        "          <initialPeersList>\n"
        f"{locators}"
        "          </initialPeersList>\n"
        "        </builtin>\n"
        "      </rtps>\n"
        "    </participant>\n"
        "  </profiles>\n"
        "</dds>\n"
    )


def render_cyclonedds_xml(
    own: str | None, peers: Iterable[str], *, interface: str = OVERLAY_INTERFACE
) -> str:
    """Cyclone DDS (0.10 / 11) configuration: udp6 on ``interface`` only, multicast off, unicast peers."""
    addresses = overlay_peers(own, peers)
    interface = _check_interface(interface)
    peer_lines = "".join(f"        <Peer address={quoteattr(f'[{address}]')}/>\n" for address in addresses)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<!-- Generated by husarnet_ros (husarnet-ros dds / husarnet_dds node); rewritten when peers change."
        " -->\n"
        '<CycloneDDS xmlns="https://cdds.io/config">\n'
        '  <Domain Id="any">\n'
        "    <General>\n"
        "      <Interfaces>\n"
        f"        <NetworkInterface name={quoteattr(interface)}/>\n"
        "      </Interfaces>\n"
        "      <Transport>udp6</Transport>\n"
        "      <AllowMulticast>false</AllowMulticast>\n"
        "    </General>\n"
        "    <Discovery>\n"
        "      <ParticipantIndex>auto</ParticipantIndex>\n"
        f"      <MaxAutoParticipantIndex>{MAX_PARTICIPANTS - 1}</MaxAutoParticipantIndex>\n"
        "      <Peers>\n"
        f"{peer_lines}"
        "      </Peers>\n"
        "    </Discovery>\n"
        "  </Domain>\n"
        "</CycloneDDS>\n"
    )


def _check_rmw(rmw: str) -> Rmw:
    for choice in RMW_CHOICES:
        if rmw == choice:
            return choice
    raise ConfigError(f"unknown rmw {rmw!r} (choose one of: {', '.join(RMW_CHOICES)})")


def _middlewares(rmw: Rmw) -> tuple[str, ...]:
    return ("fastdds", "cyclonedds") if rmw == "auto" else (rmw,)


def environment(
    output_dir: Path, rmw: str = "auto", *, set_rmw_implementation: bool = False
) -> dict[str, str]:
    """The variables a ROS process needs to use the files in ``output_dir``.

    ``rmw`` "auto" points both middlewares at their file (whichever the process uses picks its own);
    "fastdds" / "cyclonedds" only that one. RMW_IMPLEMENTATION is set only with ``set_rmw_implementation``
    (and a definite ``rmw``): choosing the middleware is the user's call, not a side effect.
    """
    choice = _check_rmw(rmw)
    directory = Path(os.path.abspath(output_dir))  # noqa: PTH100 (no symlink resolution wanted)
    env: dict[str, str] = {}
    if "fastdds" in _middlewares(choice):
        env[FASTDDS_PROFILES_ENV] = str(directory / FASTDDS_FILE)
    if "cyclonedds" in _middlewares(choice):
        env[CYCLONEDDS_URI_ENV] = (directory / CYCLONEDDS_FILE).as_uri()
    if set_rmw_implementation:
        if choice == "auto":
            raise ConfigError("RMW_IMPLEMENTATION needs a definite rmw (fastdds or cyclonedds), not auto")
        env[RMW_IMPLEMENTATION_ENV] = RMW_IMPLEMENTATIONS[choice]
    env[DISCOVERY_RANGE_ENV] = DISCOVERY_RANGE
    return env


def render_files(
    own: str | None, peers: Iterable[str], rmw: str = "auto", *, interface: str = OVERLAY_INTERFACE
) -> dict[str, str]:
    """File name -> content of every file ``rmw`` needs."""
    peer_list = list(peers)
    renderers = {
        "fastdds": (FASTDDS_FILE, render_fastdds_xml),
        "cyclonedds": (CYCLONEDDS_FILE, render_cyclonedds_xml),
    }
    files: dict[str, str] = {}
    for middleware in _middlewares(_check_rmw(rmw)):
        name, render = renderers[middleware]
        files[name] = render(own, peer_list, interface=interface)
    return files


def _write_if_changed(path: Path, content: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == content:
            return False
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: (re)write it
    atomic_write_text(path, content)
    return True


def write_files(output_dir: Path, files: Mapping[str, str]) -> list[Path]:
    """Write ``files`` into ``output_dir`` (created if needed); returns the paths whose content changed."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        return [
            output_dir / name
            for name, content in files.items()
            if _write_if_changed(output_dir / name, content)
        ]
    except OSError as exc:
        raise ConfigError(
            f"cannot write the DDS configuration to {output_dir}: {exc.strerror or exc}"
        ) from None


def write_config(
    output_dir: Path,
    own: str | None,
    peers: Iterable[str],
    *,
    rmw: str = "auto",
    set_rmw_implementation: bool = False,
    interface: str = OVERLAY_INTERFACE,
) -> dict[str, str]:
    """Render and write the files for ``rmw``; returns the environment to export (:func:`environment`).

    Each file is replaced atomically and only when its content changed, so running this on every poll costs a
    read and never disturbs a reader. ``own`` (this robot's overlay address, None if unknown yet) and
    ``peers`` must be overlay addresses: AddressError otherwise; ConfigError when the files cannot be written.
    """
    write_files(output_dir, render_files(own, peers, rmw, interface=interface))
    return environment(output_dir, rmw, set_rmw_implementation=set_rmw_implementation)


def default_output_dir(namespace: str = "", environ: Mapping[str, str] | None = None) -> Path:
    """``$ROS_HOME/husarnet_ros/dds`` (or ``~/.ros/husarnet_ros/dds``), plus the ROS namespace if any.

    Several robots on one machine are separated by namespace, so each gets its own files.
    """
    env = os.environ if environ is None else environ
    ros_home = Path(env["ROS_HOME"]) if env.get("ROS_HOME") else Path.home() / ".ros"
    base = ros_home / "husarnet_ros" / "dds"
    parts = [part for part in namespace.strip("/").split("/") if part]
    for part in parts:
        if part in (".", ".."):
            raise ConfigError(f"namespace {namespace!r} cannot name a directory")
    return base.joinpath(*parts)
