"""A lossy link between two hosts of a lab LAN: what ``tc qdisc ... netem`` would do, in userspace.

Some kernels have no netem (built without CONFIG_NET_SCH_NETEM and without module support, as on the VMs
this project is developed on), so the lab does it itself: the switch's two ports leave the bridge, and a
small forwarder in the switch namespace copies every Ethernet frame from one port to the other through
packet sockets, dropping, duplicating or holding back some of them at random (seeded). Every frame is
one wire datagram: the hosts' ``eth0`` get ``gso_max_segs 1``, so the kernel splits a UDP GSO batch into
single datagrams before they leave the host, as a real NIC does on the wire (netem on the host's own veth
would see, and drop, a whole batch as one packet). The hosts' ``eth0`` get GRO on, polled by a kernel thread
(threaded NAPI): a real NIC's driver batches what arrives between two polls, and so what survives the link
is batched again for a receiver that asked for UDP GRO (polled at once after each frame, a veth would hand
over single datagrams only).

    python -m husarnet_ros.testing.lossy_link --ports p0 p1 [--loss P] [--duplicate P] [--reorder P]
                                              [--delay-ms D] [--both-ways] [--seed N] [--seconds S]

Frames entering at the first port are impaired (with ``--both-ways`` those entering at the second too);
``--reorder P`` holds a frame back for ``--delay-ms`` with probability P while the ones behind it go ahead.
It prints ``ready``, and on SIGTERM (or after ``--seconds``) one JSON line of counts per direction.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from .lab_daemon import husarnet_ros_env
from .netlab import Host, Lab
from .outage import connect_switch

_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_PACKET_IGNORE_OUTGOING = 23
_PACKET_VNET_HDR = 15
_SO_RCVBUFFORCE = 33
_SOCKET_BUFFER = 16 * 1024 * 1024
_FRAME_MAX = 65536 + 64
_VNET_GSO_TYPE = 1  # offset of gso_type in struct virtio_net_hdr (0: not a GSO frame)
_DRAIN_BATCH = 256  # frames read from one port before the other gets its turn
_POLL_MAX_S = 0.05
# A veth's receive ring holds 256 frames: when its polling thread falls behind, a send fails with ENOBUFS.
_SEND_TRIES = 100
_SEND_RETRY_S = 0.0002


@dataclass
class DirectionCounts:
    forwarded: int = 0  # frames sent on (duplicates included)
    dropped: int = 0  # frames dropped on purpose (the loss asked for)
    duplicated: int = 0
    delayed: int = 0
    socket_drops: int = 0  # frames the packet socket lost before we read them (not asked for)
    send_errors: int = 0  # frames the outgoing port refused (too big, no buffer space)
    batches: int = 0  # frames that were several datagrams (GSO) and so impaired as one: should stay 0


@dataclass
class _Port:
    name: str
    sock: socket.socket
    impaired: bool
    counts: DirectionCounts = field(default_factory=DirectionCounts)
    peer: _Port | None = None


def _open_port(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)  # not the frames we send out of it ourselves
    # Each frame comes with, and is sent on with, its virtio-net header: a frame whose checksum the sender
    # left to the "hardware" (veth) keeps that note, else it would arrive with a checksum never filled in.
    sock.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _SOCKET_BUFFER)
    sock.bind((name, _ETH_P_ALL))
    sock.setblocking(False)
    return sock


def _socket_drops(sock: socket.socket) -> int:
    """Frames the kernel could not queue to ``sock`` since the last call (the counter resets on reading)."""
    _packets, drops = struct.unpack("II", sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
    return int(drops)


class _Forwarder:
    def __init__(self, ports: list[_Port], args: argparse.Namespace) -> None:
        self.ports = ports
        self.loss, self.duplicate, self.reorder = args.loss, args.duplicate, args.reorder
        self.delay_s = args.delay_ms / 1000.0
        self.random = random.Random(args.seed)
        self.held: list[tuple[float, int, int, bytes]] = []  # (release time, order, port index, frame)
        self.order = 0
        self.stopping = False

    def _send(self, port: _Port, frame: bytes) -> None:
        """Send on through the other port; a full queue there is waited out (a switch buffers, and this
        link is to lose only what it is told to), up to a bound."""
        assert port.peer is not None
        for _ in range(_SEND_TRIES):
            try:
                port.peer.sock.send(frame)
                port.counts.forwarded += 1
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    break
                time.sleep(_SEND_RETRY_S)
        port.counts.send_errors += 1

    def _arrived(self, index: int, frame: bytes) -> None:
        port = self.ports[index]
        if frame[_VNET_GSO_TYPE] != 0:
            port.counts.batches += 1
        if not port.impaired:
            self._send(port, frame)
            return
        draw = self.random.random
        if draw() < self.loss:
            port.counts.dropped += 1
            return
        copies = 2 if draw() < self.duplicate else 1
        port.counts.duplicated += copies - 1
        if draw() < self.reorder:
            port.counts.delayed += 1
            self.order += 1
            heapq.heappush(self.held, (time.monotonic() + self.delay_s, self.order, index, frame))
            copies -= 1
        for _ in range(copies):
            self._send(port, frame)

    def _release_due(self) -> None:
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            _due, _order, index, frame = heapq.heappop(self.held)
            self._send(self.ports[index], frame)

    def run(self, seconds: float) -> None:
        poller = select.poll()
        for port in self.ports:
            poller.register(port.sock.fileno(), select.POLLIN)
        by_fd = {port.sock.fileno(): index for index, port in enumerate(self.ports)}
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            wait = (
                _POLL_MAX_S
                if not self.held
                else max(0.0, min(_POLL_MAX_S, self.held[0][0] - time.monotonic()))
            )
            for fd, _event in poller.poll(wait * 1000):
                index = by_fd[fd]
                for _ in range(_DRAIN_BATCH):
                    try:
                        frame = self.ports[index].sock.recv(_FRAME_MAX)
                    except BlockingIOError:
                        break
                    self._arrived(index, frame)
            self._release_due()
        for _due, _order, index, frame in sorted(self.held):  # what is still held back goes out, late
            self._send(self.ports[index], frame)

    def report(self) -> dict[str, dict[str, int]]:
        out = {}
        for port in self.ports:
            assert port.peer is not None
            port.counts.socket_drops += _socket_drops(port.sock)
            out[f"{port.name}>{port.peer.name}"] = vars(port.counts)
        return out


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m husarnet_ros.testing.lossy_link")
    parser.add_argument("--ports", nargs=2, required=True, metavar=("FIRST", "SECOND"))
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--duplicate", type=float, default=0.0)
    parser.add_argument("--reorder", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--both-ways", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    first, second = (_Port(name, _open_port(name), impaired) for name, impaired in
                     zip(args.ports, (True, args.both_ways), strict=True))  # fmt: skip
    first.peer, second.peer = second, first
    forwarder = _Forwarder([first, second], args)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        forwarder.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    forwarder.run(args.seconds)
    print(json.dumps(forwarder.report()), flush=True)
    return 0


# --- in the lab ---------------------------------------------------------------------------------------------


@dataclass
class LossyLink:
    """The running forwarder; ``counts`` (per direction, ``"p0>p1"`` style) once it has stopped, the
    impaired direction's under ``counts[impaired]``."""

    process: subprocess.Popen[str]
    impaired: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def stop(self) -> dict[str, dict[str, int]]:
        if not self.counts:
            Lab.stop_process(self.process)
            out, err = self.process.communicate(timeout=10)
            lines = out.strip().splitlines()
            if self.process.returncode != 0 or not lines:
                raise AssertionError(f"the lossy link failed ({self.process.returncode}): {err}")
            self.counts = json.loads(lines[-1])
        return self.counts


def _gso_segments(host: Host) -> int:
    out = host.run(["ip", "-j", "-d", "link", "show", "dev", host.ifname]).stdout
    return int(json.loads(out)[0]["gso_max_segs"])


def _set_gso_segments(host: Host, segments: int) -> None:
    host.run(["ip", "link", "set", "dev", host.ifname, "gso_max_segs", str(segments)])


# rx-udp-gro-forwarding too: a veth takes frames from a device with TSO (the switch's port) through GRO only
# when it has that feature or GRO fraglist (veth_skb_is_eligible_for_gro). The polling thread exists only
# while GRO is on (a veth has no NAPI otherwise).
_SET_GRO = """
import sys
from pyroute2.ethtool import Ethtool
ifname, on = sys.argv[1], sys.argv[2] == "1"
names = ("rx-gro", "rx-udp-gro-forwarding")
threaded = f"/sys/class/net/{ifname}/threaded"
with Ethtool() as ethtool:
    features = ethtool.get_features(ifname)
    print(int(all(features.features[name].enable for name in names)))
    if not on:
        try:
            open(threaded, "w").write("0")
        except OSError:
            pass  # no NAPI, no thread
    for name in names:
        features.features[name].enable = on
    ethtool.set_features(ifname, features)
    if on:
        open(threaded, "w").write("1")
"""


def _set_gro(host: Host, on: bool) -> bool:
    """Turn GRO of ``eth0`` on (polled by a kernel thread) or off; returns whether it was on."""
    return host.run([sys.executable, "-c", _SET_GRO, host.ifname, str(int(on))]).stdout.strip() == "1"


@contextlib.contextmanager
def lossy_link(lab: Lab, hosts: tuple[Host, Host], **impairment: Any) -> Iterator[LossyLink]:
    """Impair what ``hosts[0]`` sends to ``hosts[1]`` (both ways with ``both_ways=True``) on the lab's first
    LAN, which must hold just these two; keyword arguments as the command line's (``loss=0.02``, ...).
    On exit the forwarder stops (its counts stay on the returned object) and the bridge is back."""
    switch = lab.switches[0]
    ports = [switch.ports[lab.hosts.index(host)] for host in hosts]
    argv = [sys.executable, "-m", "husarnet_ros.testing.lossy_link", "--ports", *ports]
    for key, value in impairment.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [] if value is False else [flag, str(value)]
    gso_segments = [_gso_segments(host) for host in hosts]
    gro = [_set_gro(host, True) for host in hosts]
    for host in hosts:
        _set_gso_segments(host, 1)
    connect_switch(lab, False)
    process = lab.track(
        subprocess.Popen(
            ["ip", "netns", "exec", switch.netns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=husarnet_ros_env(),
        )
    )
    link = LossyLink(process, ">".join(ports))
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline().strip()
        if first_line != "ready":
            raise AssertionError(f"the lossy link did not start: {first_line!r}")
        yield link
    finally:
        try:
            link.stop()
        finally:
            connect_switch(lab, True)
            for host, segments, was_on in zip(hosts, gso_segments, gro, strict=True):
                _set_gso_segments(host, segments)
                _set_gro(host, was_on)


if __name__ == "__main__":
    sys.exit(_main())
