"""TCP in segments as large as the path carries (issue 10): two robots on a LAN whose interfaces take jumbo
frames, at their default settings (``hnet0`` keeps MTU 1350).

Each daemon asks the kernel how large a datagram the route's interface takes, probes the path with a padded
datagram that large, and only once it comes back cuts the kernel's large TCP packets for that peer into
segments that fill such datagrams. Checked with real daemons, TUN devices and sockets in namespaces: what
status reports, that the segments really went path-sized, that transfers arrive intact both ways, and that a
path which silently drops large frames (a smaller MTU further on, no ICMP) never gets them while the way back,
which carries them, still does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from husarnet_ros.core.constants import PROBE_TIMEOUT, SIZE_PROBE_INTERVAL
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other
from husarnet_ros.testing.netlab import Host, Lab, run_command, wait_until
from husarnet_ros.testing.transfer import StreamOutcome, tcp_transfer

pytestmark = pytest.mark.integration

JUMBO = 9000
TRANSFER_BYTES = 32 * 1024 * 1024
UDP_HEADERS = {4: 20 + 8, 6: 40 + 8}  # IPv4 or IPv6 header, then UDP


def _set_mtu(host: Host, mtu: int) -> None:
    host.run(["ip", "link", "set", "dev", host.ifname, "mtu", str(mtu)])


def _largest_datagram(mtu: int, endpoint: str) -> int:
    """The UDP payload an ``mtu``-byte interface takes towards ``endpoint`` (as status prints it)."""
    family = 4 if endpoint.count(".") == 3 and not endpoint.startswith("[") else 6
    return mtu - UDP_HEADERS[family]


def _peer(daemon: Daemon, address: str) -> dict[str, Any]:
    peers: list[dict[str, Any]] = [p for p in daemon.status()["peers"] if p["address"] == address]
    assert peers, f"{daemon.hostname} does not know {address}"
    return peers[0]


def _wait_datagram(daemon: Daemon, address: str, predicate: Callable[[Any], bool]) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        peer = _peer(daemon, address)
        return peer if peer["path"] == "direct" and predicate(peer["max_datagram"]) else None

    return wait_until(ready, 20, what=f"{daemon.hostname}'s max_datagram towards {address}")


def _assert_intact(outcomes: list[StreamOutcome], what: str, daemons: list[Daemon]) -> None:
    broken = [o for o in outcomes if not o.intact]
    logs = "".join(f"\n--- {d.hostname}:\n{d.log_tail(30)}" for d in daemons)
    assert not broken, f"{what}: {broken}{logs}"


def _path_sized(daemon: Daemon) -> int:
    return int(daemon.status()["counters"].get("tso_path_sized", 0))


def _transfer_both_ways(daemons: list[Daemon], addresses: dict[str, str], seed: int) -> dict[str, bool]:
    """A checksummed TCP transfer each way (asserted intact); per sender, whether it cut TCP packets to the
    path's size meanwhile."""
    a, b = daemons
    grew = {}
    for offset, (sender, receiver) in enumerate(((a, b), (b, a))):
        before = _path_sized(sender)
        address = addresses[receiver.hostname]
        outcomes = tcp_transfer(
            sender.host, receiver.host, address, total_bytes=TRANSFER_BYTES, seed=seed + offset
        )
        _assert_intact(outcomes, f"{sender.hostname} -> {receiver.hostname}", daemons)
        grew[sender.hostname] = _path_sized(sender) > before
    return grew


def _start_pair(
    lab: Lab, daemon_factory: Any, mtus: tuple[int, int], port_mtus: tuple[int, int]
) -> tuple[list[Daemon], dict[str, str]]:
    """Two robots on one switch: each robot's interface MTU, and the MTU of the switch port it is plugged
    into (a frame larger than the port's MTU is dropped there without a word)."""
    hosts = lab.lan(2, ["robot-a", "robot-b"])
    switch = lab.switches[-1]
    for host, mtu, port, port_mtu in zip(hosts, mtus, switch.ports, port_mtus, strict=True):
        _set_mtu(host, mtu)
        run_command(["ip", "-n", switch.netns, "link", "set", "dev", port, "mtu", str(port_mtu)])
    daemons = [
        daemon_factory(host, name, start=False)
        for host, name in zip(hosts, ["robot-a", "robot-b"], strict=True)
    ]
    for daemon in daemons:
        daemon.start(wait_ready=False)
    for daemon in daemons:
        daemon.wait_ready()
    addresses = whitelist_each_other(daemons)
    return daemons, addresses


def test_a_jumbo_lan_carries_tcp_in_jumbo_segments_intact_both_ways(lab: Lab, daemon_factory: Any) -> None:
    daemons, addresses = _start_pair(lab, daemon_factory, (JUMBO, JUMBO), (JUMBO, JUMBO))
    a, b = daemons
    for sender, receiver in ((a, b), (b, a)):
        address = addresses[receiver.hostname]
        peer = _wait_datagram(sender, address, lambda size: size is not None and size > 1500)
        largest = _largest_datagram(JUMBO, peer["endpoint"])
        assert peer["max_datagram"] == largest, peer
        assert sender.host.run(["cat", "/sys/class/net/hnet0/mtu"]).stdout.strip() == "1350"
        assert f"carries {largest}-byte datagrams" in sender.log_tail(200)  # the daemon says what it found
    grew = _transfer_both_ways(daemons, addresses, seed=900)
    assert grew == {"robot-a": True, "robot-b": True}, f"cut TCP packets to the path's size: {grew}"


def test_a_path_that_drops_large_frames_silently_never_gets_them(lab: Lab, daemon_factory: Any) -> None:
    """robot-a's interface takes 9000-byte frames but the switch port behind it only 4000 (larger frames are
    dropped there without a word): a's size probe never returns, so a sends segments of the overlay's size
    only. robot-b's interface says 4000, its probe passes, and b sends segments of three MSS. TCP arrives
    intact both ways."""
    daemons, addresses = _start_pair(lab, daemon_factory, (JUMBO, 4000), (4000, 4000))
    a, b = daemons
    b_peer = _wait_datagram(b, addresses["robot-a"], lambda size: size is not None)
    assert b_peer["max_datagram"] == _largest_datagram(4000, b_peer["endpoint"]), b_peer
    a.wait_path(addresses["robot-b"], "direct", timeout=20)
    grew = _transfer_both_ways(daemons, addresses, seed=950)
    assert grew == {"robot-a": False, "robot-b": True}, f"cut TCP packets to the path's size: {grew}"
    assert _peer(a, addresses["robot-b"])["max_datagram"] is None
    assert _peer(a, addresses["robot-b"])["path"] == "direct"


def test_a_1500_byte_lan_is_not_probed(lab: Lab, daemon_factory: Any) -> None:
    """A datagram that fits a 1500-byte frame holds one segment of the overlay's MSS and no more: nothing
    to gain, so no probe and no change on ordinary networks."""
    daemons, addresses = _start_pair(lab, daemon_factory, (1500, 1500), (1500, 1500))
    a, b = daemons
    a.wait_path(addresses["robot-b"], "direct", timeout=20)
    b.wait_path(addresses["robot-a"], "direct", timeout=20)
    outcomes = tcp_transfer(a.host, b.host, addresses["robot-b"], total_bytes=TRANSFER_BYTES // 4, seed=990)
    _assert_intact(outcomes, "robot-a -> robot-b", daemons)
    assert _peer(a, addresses["robot-b"])["max_datagram"] is None
    assert _path_sized(a) == 0


def test_a_path_that_stops_carrying_jumbo_frames_falls_back_within_one_check(
    lab: Lab, daemon_factory: Any
) -> None:
    """The size was shown; then the switch port behind robot-a takes only 4000-byte frames and says nothing
    (robot-a's own interface still says 9000, so its kernel never learns). Small frames still pass, so only
    the next size probe's silence shows it: a drops its limit, logs a warning, and TCP from a arrives intact
    in one-MSS segments again."""
    daemons, addresses = _start_pair(lab, daemon_factory, (JUMBO, JUMBO), (JUMBO, JUMBO))
    a, b = daemons
    address = addresses["robot-b"]
    _wait_datagram(a, address, lambda size: size is not None and size > 1500)
    switch = lab.switches[-1]
    run_command(["ip", "-n", switch.netns, "link", "set", "dev", switch.ports[0], "mtu", "4000"])
    peer = wait_until(
        lambda: (p := _peer(a, address))["max_datagram"] is None and p,
        SIZE_PROBE_INTERVAL + PROBE_TIMEOUT + 10,
        what="robot-a dropping the size its path no longer carries",
    )
    assert peer["path"] == "direct"
    assert "no longer answers a probe of the datagram size in use" in a.log_tail(200)
    before = _path_sized(a)
    outcomes = tcp_transfer(a.host, b.host, address, total_bytes=TRANSFER_BYTES // 4, seed=970)
    _assert_intact(outcomes, "robot-a -> robot-b after the switch port shrank", daemons)
    assert _path_sized(a) == before
