"""DDS middleware configuration that keeps ROS 2 discovery and data on the overlay, with no multicast.

ROS 2's default discovery is multicast on every interface, which finds nothing across ``hnet0`` (a point to
point TUN device carries no multicast) and leaks traffic onto the underlay unencrypted. The files rendered
here instead:

* keep DDS on the overlay: participants listen on and announce only the robot's fc94 address (Fast DDS) or
  use only ``hnet0`` (Cyclone DDS), so every DDS packet between robots goes through the encrypted overlay;
* discover by unicast: every peer's fc94 address is an initial peer (Fast DDS) / discovery peer (Cyclone
  DDS), and so is the robot's own address, so that nodes on the same robot still find each other without
  multicast (the own address is local: the kernel delivers to it over loopback, not through the TUN device);
* leave room for several ROS nodes per robot: unicast discovery reaches a participant only at the ports of
  the participant indices it tries, so that range is raised from the default 4 to :data:`MAX_PARTICIPANTS`;
* never let the kernel fragment a DDS datagram on ``hnet0``: every RTPS message fits in one packet of the
  overlay's MTU (:func:`max_datagram`, the MTU from the daemon: :func:`overlay_mtu`), so a lost packet costs
  one DDS fragment, which reliable QoS repeats alone, instead of a whole 64 KB datagram (~49 IP fragments);
* ask for large socket buffers (:data:`SOCKET_BUFFER_BYTES`), so that the burst of packets one large sample
  becomes is queued rather than dropped at the receiving socket.

No flow controller and no Fast DDS writer timing: a flow controller in the default writer profile makes every
writer of a process that runs in rmw_fastrtps' default SYNCHRONOUS mode fail to be created, and writer
timings are spelt differently in Fast DDS 2.x and 3.x, so one file could not serve both (docs/ROS.md).

Rendering is pure; :func:`write_config` writes the files (atomically, only when their content changed) and
returns the environment a ROS process needs (:func:`environment`). Middleware reads these files only when a
participant is created: processes started before a change keep the old peers, which is why the launch files
call :func:`write_config` before starting nodes. Findings behind these choices: docs/ROS.md.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import quoteattr

from .api import Status, Whitelist, normalize_overlay
from .core.constants import DEFAULT_MTU
from .core.errors import ConfigError
from .core.fleet import RobotView
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

# Packet budget on the overlay. hnet0 carries IPv6 packets of at most its MTU; a UDP datagram bigger than
# MTU - 40 (IPv6 header) - 8 (UDP header) is cut into IP fragments, and losing any one of them loses the whole
# datagram. DATAGRAM_MARGIN keeps DDS a little below that bound (1250 B at the default MTU), so a datagram
# still fits when the profile was written for a slightly larger MTU than the link has.
IPV6_HEADER = 40
UDP_HEADER = 8
DATAGRAM_MARGIN = 52
MIN_MTU = 1280  # the IPv6 minimum link MTU; the daemon refuses anything smaller
MAX_DATAGRAM = 65500  # the largest maxMessageSize Fast DDS accepts
# Socket buffers asked of the kernel (the default is the system's 208 KiB, ~90 datagrams). Linux caps them at
# net.core.rmem_max / wmem_max, so this is what a robot gets when those sysctls allow it (docs/ROS.md); both
# middlewares then take what they can get, silently.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
# Cyclone packs DATA_FRAG submessages into messages of at most MaxMessageSize; a fragment this much smaller
# leaves room for the RTPS header and the submessages around it, so one fragment fits one datagram.
CYCLONE_FRAGMENT_HEADERS = 100

FASTDDS_PROFILES_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
# Fast DDS 2.x (ROS 2 Humble, Jazzy) reads only this older name and silently ignores the one above (3.x,
# Kilted, reads the new name); both are exported, pointing at the same file, so one environment works on all.
FASTRTPS_PROFILES_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"
FASTDDS_PROFILES_ENVS = (FASTDDS_PROFILES_ENV, FASTRTPS_PROFILES_ENV)
CYCLONEDDS_URI_ENV = "CYCLONEDDS_URI"
RMW_IMPLEMENTATION_ENV = "RMW_IMPLEMENTATION"
DISCOVERY_RANGE_ENV = "ROS_AUTOMATIC_DISCOVERY_RANGE"
# SUBNET is the default, and the only range under which the rmw layers leave these files alone: LOCALHOST
# would restrict discovery to this machine, OFF would disable it. Exported so a stray setting cannot win.
DISCOVERY_RANGE = "SUBNET"

GENERATED_NOTE = (
    "Generated by husarnet_ros (husarnet-ros dds, husarnet_dds node); rewritten when peers change"
)
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


def own_and_peers(
    view: RobotView | None, status: Status | None, whitelist: Whitelist | None
) -> tuple[str | None, list[str]]:
    """This robot's overlay address and its DDS peers, from its fleet view and/or the running daemon.

    Own address: the daemon's (it holds the identity), else the fleet's entry for this robot. Peers: the
    fleet members this robot may talk to, plus, when ``whitelist`` is given (with ``status``), the peers the
    daemon allows (:func:`discovered_peers`); sorted, without the own address. The one rule the launch, the
    CLI and the husarnet_dds node share, so they all write the same files.
    """
    own = status.address if status is not None else (view.me.address if view is not None else None)
    peers = {member.address for member in view.peers} if view is not None else set()
    if status is not None and whitelist is not None:
        peers |= discovered_peers(status, whitelist)
    return own, sorted(peers - {own})


def max_datagram(mtu: int = DEFAULT_MTU) -> int:
    """The largest UDP payload DDS may send so that no datagram is IP-fragmented on an overlay of ``mtu``."""
    if mtu < MIN_MTU:
        raise ConfigError(f"an overlay MTU of {mtu} is below the IPv6 minimum of {MIN_MTU}")
    return min(mtu - IPV6_HEADER - UDP_HEADER - DATAGRAM_MARGIN, MAX_DATAGRAM)


def overlay_mtu(status: Status | None, configured: int | None = None) -> int:
    """The MTU the DDS files assume: ``configured`` if given, else the running daemon's, else the default.

    The daemon reports its MTU in ``status.dataplane.mtu`` (0 from a daemon too old to say); a fleet run with
    a custom MTU thus gets datagrams sized for it without any setting on the ROS side.
    """
    if configured:
        return configured
    if status is not None and status.dataplane.mtu > 0:
        return status.dataplane.mtu
    return DEFAULT_MTU


def _check_interface(interface: str) -> str:
    # Linux interface names: at most 15 bytes, no '/', no whitespace. Kept to a safe set so that the name
    # can go into XML attributes and element text as is.
    if not interface or len(interface) > 15 or not set(interface) <= _SAFE_INTERFACE_CHARS:
        raise ConfigError(f"{interface!r} is not a usable network interface name")
    return interface


def render_fastdds_xml(own: str | None, peers: Iterable[str], *, mtu: int = DEFAULT_MTU) -> str:
    """Fast DDS profiles file: UDPv6 only, no builtin transports (no SHM, no UDPv4), unicast initial peers.

    Valid for Fast DDS 2.x (Humble, Jazzy) and 3.x (Kilted). Every datagram fits one packet of an overlay of
    ``mtu`` (``maxMessageSize``: larger samples go as DATA_FRAG fragments of that size).

    The participant profile is the default profile, so every participant of a process started with
    FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS 3.x) or FASTRTPS_DEFAULT_PROFILES_FILE (2.x) pointing here uses
    it without code changes. With the own address known,
    participants listen on it only and announce only it, so remote robots send to fc94 addresses and DDS
    never takes the underlay (an interface allowlist of hnet0 did not work: see docs/ROS.md).
    """
    addresses = overlay_peers(own, peers)
    datagram = max_datagram(mtu)
    own_address = addresses[0] if own else None
    initial_peers = "".join(f"            {_fastdds_locator(address)}\n" for address in addresses)
    unicast = ""
    metatraffic = ""
    if own_address:
        unicast = (
            "        <defaultUnicastLocatorList>\n"
            f"          {_fastdds_locator(own_address)}\n"
            "        </defaultUnicastLocatorList>\n"
        )
        metatraffic = (
            "          <metatrafficUnicastLocatorList>\n"
            f"            {_fastdds_locator(own_address)}\n"
            "          </metatrafficUnicastLocatorList>\n"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<!-- {GENERATED_NOTE} -->\n"
        '<dds xmlns="http://www.eprosima.com">\n'
        '  <profiles xmlns="http://www.eprosima.com">\n'
        "    <transport_descriptors>\n"
        "      <transport_descriptor>\n"
        "        <transport_id>husarnet_udp6</transport_id>\n"
        "        <type>UDPv6</type>\n"
        f"        <maxMessageSize>{datagram}</maxMessageSize>\n"
        f"        <sendBufferSize>{SOCKET_BUFFER_BYTES}</sendBufferSize>\n"
        f"        <receiveBufferSize>{SOCKET_BUFFER_BYTES}</receiveBufferSize>\n"
        f"        <maxInitialPeersRange>{MAX_PARTICIPANTS}</maxInitialPeersRange>\n"
        "      </transport_descriptor>\n"
        "    </transport_descriptors>\n"
        '    <participant profile_name="husarnet_overlay" is_default_profile="true">\n'
        "      <rtps>\n"
        "        <userTransports>\n"
        "          <transport_id>husarnet_udp6</transport_id>\n"
        "        </userTransports>\n"
        "        <useBuiltinTransports>false</useBuiltinTransports>\n"
        f"{unicast}"
        "        <builtin>\n"
        "          <discovery_config>\n"
        "            <initialAnnouncements>\n"
        f"              <count>{INITIAL_ANNOUNCEMENTS}</count>\n"
        f"              <period><sec>0</sec><nanosec>{INITIAL_ANNOUNCEMENT_PERIOD_MS * 1_000_000}</nanosec>"
        "</period>\n"
        "            </initialAnnouncements>\n"
        "          </discovery_config>\n"
        "          <avoid_builtin_multicast>true</avoid_builtin_multicast>\n"
        f"{metatraffic}"
        "          <initialPeersList>\n"
        f"{initial_peers}"
        "          </initialPeersList>\n"
        "        </builtin>\n"
        "      </rtps>\n"
        "    </participant>\n"
        "  </profiles>\n"
        "</dds>\n"
    )


def _fastdds_locator(address: str) -> str:
    return f"<locator><udpv6><address>{address}</address></udpv6></locator>"


def render_cyclonedds_xml(
    own: str | None, peers: Iterable[str], *, interface: str = OVERLAY_INTERFACE, mtu: int = DEFAULT_MTU
) -> str:
    """Cyclone DDS (0.10 / 11) configuration: udp6 on ``interface`` only, multicast off, unicast peers.

    Datagrams (first transmissions and retransmits) fit one packet of an overlay of ``mtu``.
    """
    addresses = overlay_peers(own, peers)
    interface = _check_interface(interface)
    datagram = max_datagram(mtu)
    peer_lines = "".join(f"        <Peer address={quoteattr(f'[{address}]')}/>\n" for address in addresses)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<!-- {GENERATED_NOTE} -->\n"
        '<CycloneDDS xmlns="https://cdds.io/config">\n'
        '  <Domain Id="any">\n'
        "    <General>\n"
        "      <Interfaces>\n"
        f"        <NetworkInterface name={quoteattr(interface)}/>\n"
        "      </Interfaces>\n"
        "      <Transport>udp6</Transport>\n"
        "      <AllowMulticast>false</AllowMulticast>\n"
        f"      <MaxMessageSize>{datagram}B</MaxMessageSize>\n"
        f"      <MaxRexmitMessageSize>{datagram}B</MaxRexmitMessageSize>\n"
        f"      <FragmentSize>{datagram - CYCLONE_FRAGMENT_HEADERS}B</FragmentSize>\n"
        "    </General>\n"
        "    <Discovery>\n"
        "      <ParticipantIndex>auto</ParticipantIndex>\n"
        f"      <MaxAutoParticipantIndex>{MAX_PARTICIPANTS - 1}</MaxAutoParticipantIndex>\n"
        "      <Peers>\n"
        f"{peer_lines}"
        "      </Peers>\n"
        "    </Discovery>\n"
        "    <Internal>\n"
        f'      <SocketReceiveBufferSize min="default" max="{SOCKET_BUFFER_BYTES}B"/>\n'
        f'      <SocketSendBufferSize min="default" max="{SOCKET_BUFFER_BYTES}B"/>\n'
        "    </Internal>\n"
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
        for name in FASTDDS_PROFILES_ENVS:
            env[name] = str(directory / FASTDDS_FILE)
    if "cyclonedds" in _middlewares(choice):
        env[CYCLONEDDS_URI_ENV] = (directory / CYCLONEDDS_FILE).as_uri()
    if set_rmw_implementation:
        if choice == "auto":
            raise ConfigError("RMW_IMPLEMENTATION needs a definite rmw (fastdds or cyclonedds), not auto")
        env[RMW_IMPLEMENTATION_ENV] = RMW_IMPLEMENTATIONS[choice]
    env[DISCOVERY_RANGE_ENV] = DISCOVERY_RANGE
    return env


def export_lines(env: Mapping[str, str]) -> str:
    """Shell ``export`` lines (sorted, quoted) a user pastes, ``eval``s or sources for the same setup."""
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items()))


def render_files(
    own: str | None,
    peers: Iterable[str],
    rmw: str = "auto",
    *,
    interface: str = OVERLAY_INTERFACE,
    mtu: int = DEFAULT_MTU,
) -> dict[str, str]:
    """File name -> content of every file ``rmw`` needs, for an overlay of ``mtu``."""
    peer_list = list(peers)
    middlewares = _middlewares(_check_rmw(rmw))
    files: dict[str, str] = {}
    if "fastdds" in middlewares:
        files[FASTDDS_FILE] = render_fastdds_xml(own, peer_list, mtu=mtu)
    if "cyclonedds" in middlewares:
        files[CYCLONEDDS_FILE] = render_cyclonedds_xml(own, peer_list, interface=interface, mtu=mtu)
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
    mtu: int = DEFAULT_MTU,
) -> dict[str, str]:
    """Render and write the files for ``rmw``; returns the environment to export (:func:`environment`).

    Each file is replaced atomically and only when its content changed, so running this on every poll costs a
    read and never disturbs a reader. ``own`` (this robot's overlay address, None if unknown yet) and
    ``peers`` must be overlay addresses: AddressError otherwise; ConfigError when the files cannot be written.
    """
    write_files(output_dir, render_files(own, peers, rmw, interface=interface, mtu=mtu))
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
