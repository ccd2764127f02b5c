"""The LAN overlay end to end: real daemons, real TUN devices, real sockets, one namespace per robot."""

from __future__ import annotations

import grp
import pwd
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.core.config import DEFAULT_DAEMON_USER
from husarnet_ros.daemon.control import CONTROL_GROUP
from husarnet_ros.daemon.privileges import effective_capabilities
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other
from husarnet_ros.testing.netlab import Host, wait_until

pytestmark = pytest.mark.integration

TRANSFER_BYTES = 4 * 1024 * 1024
TRANSFER_PORT = 5599


def _tcp_transfer(sender: Host, receiver: Host, address: str) -> tuple[str, str]:
    """Send TRANSFER_BYTES of seeded random data over TCP to ``address``; (sent sha256, received sha256)."""
    server = textwrap.dedent(
        f"""
        import hashlib, socket
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{address}", {TRANSFER_PORT})); s.listen(1); s.settimeout(60)
        print("listening", flush=True)
        c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
        while True:
            b = c.recv(65536)
            if not b: break
            h.update(b); n += len(b)
        print(n, h.hexdigest(), flush=True)
        """
    )
    client = textwrap.dedent(
        f"""
        import hashlib, random, socket
        data = random.Random(1234).randbytes({TRANSFER_BYTES})
        c = socket.create_connection(("{address}", {TRANSFER_PORT}), timeout=60)
        c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
        print(hashlib.sha256(data).hexdigest(), flush=True)
        """
    )
    proc = receiver.popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    sent = sender.run([sys.executable, "-c", client], timeout=90).stdout.strip()
    out, _ = proc.communicate(timeout=90)
    count, received = out.split()
    assert int(count) == TRANSFER_BYTES
    return sent, received


CONNECT_PROBE = (
    "import errno, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    "    s.connect(sys.argv[1]); print('ok')\n"
    "except OSError as exc:\n"
    "    print(errno.errorcode.get(exc.errno, exc.errno))\n"
)


def _connect_as_nobody(socket_path: str | Path, *, with_group: bool) -> str:
    """Connect to the control socket as an unprivileged user, in the control group or not ('ok' or errno)."""
    groups = ["--groups", str(grp.getgrnam(CONTROL_GROUP).gr_gid)] if with_group else ["--clear-groups"]
    nobody = pwd.getpwnam("nobody")
    argv = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", *groups,
            "/usr/bin/python3", "-c", CONNECT_PROBE, str(socket_path)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def process_uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of ``pid`` (the Uid line of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(field) for field in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def test_three_robots_find_each_other_and_exchange_traffic(fleet: Any, setup_accounts: Any) -> None:
    # setup_accounts: the daemon account and control group checked below exist (scripts/setup.sh)
    daemons: list[Daemon] = fleet(3)
    addresses = whitelist_each_other(daemons)
    for daemon in daemons:
        for other in daemons:
            if other is not daemon:
                entry = daemon.wait_path(addresses[other.hostname], "direct", timeout=20)
                assert entry["hostname"] == other.hostname  # learnt from the signed beacon
                assert entry["endpoint"].startswith(other.host.ipv4) or "fe80" in entry["endpoint"] or (
                    "fd00:98" in entry["endpoint"]
                )
    a, b, c = daemons
    for src, dst in ((a, b), (b, c), (c, a)):
        result = src.host.ping6(addresses[dst.hostname], count=5)
        assert result.ok, f"{src.hostname} -> {dst.hostname}: {result}"
    sent, received = _tcp_transfer(a.host, b.host, addresses["robot-b"])
    assert sent == received
    # After traffic and a probe interval, the status carries a measured RTT and byte counts.
    entry = wait_until(
        lambda: (e := a.peer(addresses["robot-b"])) and e["rtt_ms"] is not None and e,
        15,
        interval=0.5,
        what="an RTT for robot-b",
    )
    assert entry["path"] == "direct"
    assert entry["rtt_ms"] > 0
    assert entry["tx_bytes"] >= TRANSFER_BYTES
    assert entry["last_handshake"] is not None
    status = a.status()
    assert status["whitelist_enabled"] is True
    assert status["address"] == addresses["robot-a"]
    # The daemon runs with no capabilities at all once it is up, as its own account (scripts/setup.sh creates
    # it) so that root's files are closed to it too; its state directory went with it, its key stayed root's.
    assert effective_capabilities(a.pid) == 0
    account = pwd.getpwnam(DEFAULT_DAEMON_USER)
    assert process_uids(a.pid) == [account.pw_uid] * 4
    assert Path(a.state_dir).stat().st_uid == account.pw_uid
    assert (Path(a.state_dir) / "identity").stat().st_uid == 0
    # The control socket is for root and the control group (scripts/setup.sh creates it): the ROS nodes of a
    # user who is not root get in through the group.
    socket_stat = Path(a.control_socket).stat()
    assert socket_stat.st_gid == grp.getgrnam(CONTROL_GROUP).gr_gid
    assert socket_stat.st_mode & 0o777 == 0o660
    assert _connect_as_nobody(a.control_socket, with_group=True) == "ok"
    assert _connect_as_nobody(a.control_socket, with_group=False) == "EACCES"
    # The CLI ping says how it got there.
    ping = a.json("ping", addresses["robot-c"], "-c", "2", "-i", "0.2")
    assert ping["received"] == 2
    assert ping["path"] == "direct"
    # What happened is in the log, on stderr and through the API.
    assert "all capabilities dropped" in a.log_path.read_text()
    lines = a.json("logs")
    assert any("peer" in line and "up" in line for line in lines["lines"]), lines


def test_whitelist_blocks_both_directions_until_disabled(fleet: Any) -> None:
    a, b, c = fleet(3)
    addr = {d.hostname: d.address for d in (a, b, c)}
    # a and b trust each other; c trusts a, but a does not trust c.
    a.whitelist_add(addr["robot-b"])
    b.whitelist_add(addr["robot-a"])
    c.whitelist_add(addr["robot-a"])
    a.wait_path(addr["robot-b"], "direct")
    assert not c.host.ping6(addr["robot-a"], count=3, deadline=4).received
    assert not a.host.ping6(addr["robot-c"], count=3, deadline=4).received
    entry = c.peer(addr["robot-a"])
    assert entry is None or entry["path"] == "none"
    counters = a.status()["counters"]
    assert counters.get("drop_whitelist", 0) + counters.get("drop_no_peer", 0) > 0
    # Turning a's whitelist off lets c in at once, without a restart.
    a.cli("whitelist", "disable")
    c.wait_path(addr["robot-a"], "direct", timeout=20)
    assert c.host.ping6(addr["robot-a"], count=3).ok
    assert a.host.ping6(addr["robot-c"], count=3).ok
    # And on again: c is cut off again.
    a.cli("whitelist", "enable")
    wait_until(
        lambda: not c.host.ping6(addr["robot-a"], count=1, deadline=2).received,
        15,
        interval=0.5,
        what="c cut off after re-enabling the whitelist",
    )
    assert b.host.ping6(addr["robot-a"], count=2).ok


def test_restart_keeps_identity_whitelist_and_hosts_and_peer_reconnects(fleet: Any) -> None:
    a, b = fleet(2)
    addresses = whitelist_each_other([a, b])
    a.cli("hosts", "add", "robot-b", addresses["robot-b"])
    assert f"{addresses['robot-b']}\trobot-b" in a.hosts_file.read_text().replace(" ", "\t")
    a.wait_path(addresses["robot-b"], "direct")
    before = a.whoami()
    restarted_at = time.time()
    a.restart()
    assert a.whoami() == before
    assert addresses["robot-b"] in a.json("whitelist", "ls")["addresses"]
    assert {"hostname": "robot-b", "address": addresses["robot-b"]} in a.json("hosts", "ls")
    # b notices nothing but a lost session: a new handshake replaces it without touching b (until then b's
    # status may still show the old session, which a no longer has), and traffic flows again.
    wait_until(
        lambda: (e := b.peer(addresses["robot-a"])) is not None
        and e["path"] == "direct"
        and (e["last_handshake"] or 0) > restarted_at,
        30,
        interval=0.2,
        what="robot-b's new session with the restarted robot-a",
    )
    assert b.host.ping6(addresses["robot-a"], count=3, deadline=10).ok
    # The hostname in the managed block resolves inside a's namespace.
    text = a.hosts_file.read_text()
    assert text.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost\n")  # user lines untouched


ATTACKER = textwrap.dedent(
    """
    import json, socket, sys, time
    from husarnet_ros.core import wire
    from husarnet_ros.core.identity import Identity
    from husarnet_ros.core.node import Node
    from husarnet_ros.core.address import parse_overlay
    from husarnet_ros.testing.memnet import ipv6_packet

    target_host, target_port, target_address = sys.argv[1], int(sys.argv[2]), parse_overlay(sys.argv[3])
    identity = Identity.from_file_text(sys.stdin.read())
    endpoint = (target_host, target_port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(0.2)
    node = Node(identity, lambda a: True, wall_offset_ns=time.time_ns())
    node.add_static_endpoint(target_address, endpoint, time.monotonic())
    sent = {"garbage": 0, "truncated": 0, "replayed": 0}
    # 1. garbage and truncated datagrams of every type
    for i in range(200):
        sock.sendto(bytes([i % 7]) + bytes(range(i % 90)), endpoint); sent["garbage"] += 1
    # 2. a real session, then a data frame sent twice
    deadline = time.monotonic() + 10
    while node.path_of(target_address).value != "direct" and time.monotonic() < deadline:
        node.tick(time.monotonic())
        while node.outbox:
            ep, data = node.outbox.popleft(); sock.sendto(data, ep)
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            continue
        now = time.monotonic()
        node.receive(data, endpoint, now)  # as the daemon's receive thread ...
        node.process_posted(now)  # ... and its control loop do
    assert node.path_of(target_address).value == "direct", "no session with the daemon"
    packet = ipv6_packet(identity.address, target_address, b"x" * 8, next_header=59)
    frame = node.send(packet, time.monotonic())
    assert frame is not None
    for _ in range(5):
        sock.sendto(frame[1], endpoint); sent["replayed"] += 1
    for cut in (1, 8, 16, 39, 40, 56, len(frame[1]) - 1):
        sock.sendto(frame[1][:cut], endpoint); sent["truncated"] += 1
    print(json.dumps(sent))
    """
)


def test_garbage_truncated_and_replayed_datagrams_are_counted_and_dropped(fleet: Any) -> None:
    a, b, mallory_host_daemon = fleet(3)
    # The third host runs no daemon: it is an attacker with a whitelisted identity speaking raw UDP.
    mallory_host_daemon.stop()
    mallory_host = mallory_host_daemon.host
    addresses = whitelist_each_other([a, b])
    identity_file = Path(mallory_host_daemon.state_dir) / "identity"
    mallory_address = identity_file.read_text().split()[0]
    a.whitelist_add(mallory_address)
    a.wait_path(addresses["robot-b"], "direct")
    result = mallory_host.run(
        [sys.executable, "-c", ATTACKER, a.host.ipv4, str(a.udp_port), addresses["robot-a"]],
        input=identity_file.read_text(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    counters = a.status()["counters"]
    assert counters.get("drop_replay", 0) >= 4, counters  # the first copy was fresh, the others replays
    malformed = sum(counters.get(k, 0) for k in ("drop_malformed", "drop_handshake", "drop_unknown_type",
                                                  "drop_unknown_session", "drop_auth"))
    assert malformed >= 100, counters
    # Still healthy: the control API answers and real traffic flows.
    assert a.running
    assert a.host.ping6(addresses["robot-b"], count=3).ok
