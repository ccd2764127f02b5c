"""A swarm of simulated peers for one real daemon: many sans-IO ``Node``s in one process, each with its own
identity, underlay address and UDP socket, that handshake with the daemon and then keep traffic flowing
(authenticated pings, and ICMPv6 echo requests that go through the daemon's TUN to its kernel and back), so
the daemon holds one live session per peer. Used by bench/memory.py; runs inside a lab namespace:

    python -m husarnet_ros.testing.swarm --identities FILE --daemon FC94_ADDRESS --endpoint IPV4:PORT
                                         --first-address IPV4 [--port P] [--seconds S] [--interval S]

``--identities`` holds one identity per line (the identity file format, ``Identity.to_file_text``); peer i
binds ``--first-address`` + i (which the caller has put on the namespace's interface), port ``--port`` + i.
Every second one JSON line goes to stdout: ``{"peers": N, "sessions": n, "pongs": p, "echo_replies": e}``
(``sessions``: peers whose session with the daemon is up). Ends after ``--seconds`` or on SIGTERM/SIGINT.
A single thread: select() over every socket, the nodes' timers every 50 ms; every loop is bounded in time.

``SwarmProcess`` starts it in a lab host (whose interface first gets the peers' addresses,
``add_peer_addresses``) and reads what it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.address import format_address
from ..core.events import PeerDown, PeerUp, PongReceived
from ..core.identity import Identity
from ..core.node import Node
from ..core.peer import Endpoint
from ..fileio import atomic_write_text
from .netlab import Host, Lab, LabError

FIRST_PEER_ADDRESS = ipaddress.IPv4Address("198.18.0.100")  # inside the lab LAN's 198.18.0.0/24
MAX_PEERS = 150  # .100 to .249
FIRST_PEER_PORT = 20000
TICK_S = 0.05
REPORT_INTERVAL_S = 1.0
MAX_READS_PER_SOCKET = 64  # per wake-up, so one busy peer cannot starve the others
ICMPV6 = 58
ECHO_REQUEST, ECHO_REPLY = 128, 129


def echo_request(source: bytes, destination: bytes, ident: int, seq: int, payload: bytes = b"swarm") -> bytes:
    """An IPv6 packet holding an ICMPv6 echo request, checksum included (the receiving kernel checks it)."""
    icmp = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + payload
    pseudo = source + destination + struct.pack("!I3xB", len(icmp), ICMPV6) + icmp
    if len(pseudo) % 2:
        pseudo += b"\0"
    total = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    icmp = icmp[:2] + struct.pack("!H", ~total & 0xFFFF) + icmp[4:]
    header = struct.pack("!IHBB", 6 << 28, len(icmp), ICMPV6, 64)
    return header + source + destination + icmp


def is_echo_reply(packet: bytes) -> bool:
    return len(packet) > 40 and packet[6] == ICMPV6 and packet[40] == ECHO_REPLY


@dataclass
class SimulatedPeer:
    """One peer: its node, its socket, and what it has seen."""

    node: Node
    sock: socket.socket
    daemon: bytes
    next_traffic_at: float
    session_up: bool = False
    pongs: int = 0
    echo_replies: int = 0
    sent: int = 0


class Swarm:
    def __init__(
        self,
        identities: Sequence[Identity],
        daemon: bytes,
        daemon_endpoint: Endpoint,
        first_address: str,
        port: int,
        interval_s: float,
    ) -> None:
        self.daemon = daemon
        self.interval_s = interval_s
        self.peers: list[SimulatedPeer] = []
        self._by_fd: dict[int, SimulatedPeer] = {}
        now = time.monotonic()
        wall_offset_ns = int((time.time() - now) * 1e9)
        base = ipaddress.IPv4Address(first_address)
        try:
            for i, identity in enumerate(identities):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((str(base + i), port + i))
                sock.setblocking(False)
                node = Node(identity, daemon.__eq__, wall_offset_ns=wall_offset_ns)
                node.add_static_endpoint(daemon, daemon_endpoint, now)
                # Spread the traffic over the interval instead of sending it all at once.
                peer = SimulatedPeer(node, sock, daemon, now + interval_s * i / max(1, len(identities)))
                self.peers.append(peer)
                self._by_fd[sock.fileno()] = peer
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for peer in self.peers:
            peer.sock.close()

    def stats(self) -> dict[str, int]:
        return {
            "peers": len(self.peers),
            "sessions": sum(peer.session_up for peer in self.peers),
            "answered": sum(peer.echo_replies > 0 for peer in self.peers),  # peers whose echoes came back
            "pongs": sum(peer.pongs for peer in self.peers),
            "echo_replies": sum(peer.echo_replies for peer in self.peers),
            "sent": sum(peer.sent for peer in self.peers),
        }

    def run(self, seconds: float, report: bool = True) -> dict[str, int]:
        """Run for ``seconds`` (or until SIGTERM/SIGINT); returns the final stats."""
        stop = False

        def on_signal(*_: object) -> None:
            nonlocal stop
            stop = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        deadline = time.monotonic() + seconds
        next_tick = next_report = 0.0
        while not stop and (now := time.monotonic()) < deadline:
            if now >= next_tick:
                self.tick(now)
                next_tick = now + TICK_S
            if report and now >= next_report:
                print(json.dumps(self.stats()), flush=True)
                next_report = now + REPORT_INTERVAL_S
            timeout = max(0.0, min(next_tick, deadline) - time.monotonic())
            try:
                readable, _, _ = select.select(list(self._by_fd), [], [], timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd in readable:
                self._read(self._by_fd[fd], now)
        final = self.stats()
        if report:
            print(json.dumps(final), flush=True)
        return final

    def tick(self, now: float) -> None:
        for peer in self.peers:
            node = peer.node
            node.process_posted(now)
            node.tick(now)
            if peer.session_up and now >= peer.next_traffic_at:
                peer.next_traffic_at = now + self.interval_s
                node.ping(self.daemon, now)
                datagram = node.send(echo_request(node.address, self.daemon, 0x5357, peer.sent), now)
                peer.sent += 1
                if datagram is not None:
                    node.outbox.append(datagram)
            self._flush(peer)

    def _read(self, peer: SimulatedPeer, now: float) -> None:
        node = peer.node
        for _ in range(MAX_READS_PER_SOCKET):
            try:
                data, addr = peer.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error for an earlier send: nothing to read
            packet = node.receive(data, (addr[0], addr[1]), now)
            if packet is not None and is_echo_reply(packet):
                peer.echo_replies += 1
        node.process_posted(now)  # handshake answers go out at once, not at the next tick
        self._flush(peer)

    def _flush(self, peer: SimulatedPeer) -> None:
        node, sock = peer.node, peer.sock
        for queue in (node.replies, node.outbox):
            while queue:
                endpoint, data = queue.popleft()
                with contextlib.suppress(OSError):  # the daemon is not up (yet): the node retries
                    sock.sendto(data, endpoint)
        while node.events:
            event = node.events.popleft()
            if isinstance(event, PeerUp):
                peer.session_up = True
            elif isinstance(event, PeerDown):
                peer.session_up = False
            elif isinstance(event, PongReceived):
                peer.pongs += 1


def add_peer_addresses(host: Host, count: int) -> None:
    """Give ``host``'s interface the addresses of ``count`` simulated peers."""
    if not 1 <= count <= MAX_PEERS:
        raise LabError(f"a swarm has 1..{MAX_PEERS} peers, not {count}")
    commands = "".join(f"addr add {FIRST_PEER_ADDRESS + i}/24 dev {host.ifname}\n" for i in range(count))
    host.run(["ip", "-batch", "-"], input=commands)


class SwarmProcess:
    """The swarm running in a lab host (its addresses added already), and the last stats line it printed."""

    def __init__(
        self,
        host: Host,
        workdir: Path,
        peers: Sequence[Identity],
        daemon: bytes,
        endpoint: str,
        env: dict[str, str],
        seconds: float = 600.0,
    ) -> None:
        identity_file = workdir / "swarm-identities.txt"
        atomic_write_text(identity_file, "".join(i.to_file_text() for i in peers), mode=0o600)
        argv = [
            sys.executable, "-m", "husarnet_ros.testing.swarm",
            "--identities", str(identity_file),
            "--daemon", format_address(daemon),
            "--endpoint", endpoint,
            "--first-address", str(FIRST_PEER_ADDRESS),
            "--port", str(FIRST_PEER_PORT),
            "--seconds", f"{seconds:g}",
        ]  # fmt: skip
        self._process = host.popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        self.latest: dict[str, int] = {}

    def read_until(self, done: Callable[[dict[str, int]], bool], timeout: float) -> dict[str, int]:
        """Read stats lines until ``done(stats)``; LabError after ``timeout`` or if the swarm exits."""
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while not (self.latest and done(self.latest)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"the swarm did not get there within {timeout:.0f} s: {self.latest}")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                line = stdout.readline()
                if not line:
                    raise LabError(f"the swarm exited ({self._process.wait()}): {self.latest}")
                self.latest = json.loads(line)
        return self.latest

    def stop(self) -> dict[str, int]:
        """Stop it (SIGTERM: it prints its final stats); returns them."""
        Lab.stop_process(self._process)
        stdout = self._process.stdout
        if stdout is not None:
            for line in stdout.read().splitlines():
                if line.strip():
                    self.latest = json.loads(line)
            stdout.close()
        return self.latest


def read_identities(path: Path) -> list[Identity]:
    return [Identity.from_file_text(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--identities", type=Path, required=True)
    parser.add_argument("--daemon", required=True, help="the daemon's fc94 address")
    parser.add_argument("--endpoint", required=True, help="the daemon's underlay IPv4:PORT")
    parser.add_argument("--first-address", required=True, help="IPv4 address of the first peer")
    parser.add_argument("--port", type=int, default=20000, help="UDP port of the first peer")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a peer's pings")
    args = parser.parse_args(argv)
    host, _, port = args.endpoint.rpartition(":")
    swarm = Swarm(
        read_identities(args.identities),
        ipaddress.IPv6Address(args.daemon).packed,
        (host, int(port)),
        args.first_address,
        args.port,
        args.interval,
    )
    try:
        swarm.run(args.seconds)
    finally:
        swarm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
