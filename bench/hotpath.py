"""Hot-path microbenchmark: the daemon's per-packet work without the kernel, in one process.

    python bench/hotpath.py [--packets N] [--repeats R] [--profile] [--json-out PATH]

Two protocol engines (``core.node.Node``) with an established session, in memory. It times, for the same
64 KB of TCP payload:

* **plain** (``--no-offload``): every MTU-sized packet through ``Node.send`` and ``Node.receive_data`` (one
  call, one seal or open, one copy in and out per packet), as the data plane does without offloads;
* **offload, full checksums**: one TSO packet through ``Node.send_large`` toward a peer that has not said it
  takes partial checksums (each segment's TCP checksum computed in Python), then ``Node.receive_batch``;
* **offload**: the same toward a peer that takes partial checksums (the case between husarnet_ros nodes),
  its segments written from one header template and sealed as a run, opened in place and coalesced;
* **AEAD only**: libsodium's XChaCha20-Poly1305 on one segment's bytes, in place: the floor, which no Python
  change removes.

Reported as microseconds per segment (the minimum over the repeats: the least disturbed by other load) and
as ratios to *plain* measured in the same run. ``--profile`` prints cProfile's view of the offload path. No
sockets, no namespaces, no root: this isolates the interpreter's share of bench/dataplane.py's figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout, not a copy installed in the venv

from husarnet_ros.core import aead, offload, wire  # noqa: E402
from husarnet_ros.core.identity import Identity  # noqa: E402
from husarnet_ros.core.node import Node  # noqa: E402
from husarnet_ros.core.peer import Endpoint, PathKind  # noqa: E402
from husarnet_ros.fileio import atomic_write_text  # noqa: E402
from husarnet_ros.testing.memnet import MemNet  # noqa: E402

MTU = 1350
TCP_HEADER = 32  # with the timestamp option, as Linux sends it
MSS = MTU - 40 - TCP_HEADER
PAYLOAD = 64000


def established_pair(partial: bool) -> tuple[MemNet, Node, Node, Endpoint]:
    """Two nodes with a session; ``partial``: they told each other they take partial checksums."""
    net = MemNet()
    a, ea = net.add(Identity.generate())
    b, eb = net.add(Identity.generate())
    net.introduce(ea, eb)
    net.advance(1.5)
    for node, other in ((a, b), (b, a)):
        peer = node.peer(other.address)
        if peer is None or peer.route is None or node.path_of(other.address) is not PathKind.DIRECT:
            raise SystemExit("bench: the two nodes did not establish a session")
        peer.route.session.peer_features = wire.FEATURE_PARTIAL_CHECKSUM if partial else 0
    return net, a, b, ea


def tso_packet(src: bytes, dst: bytes) -> bytes:
    """An IPv6 + TCP packet of 64 KB as the TUN hands it over with TSO (checksum left partial)."""
    tcp = bytearray(TCP_HEADER)
    tcp[0:4] = b"\x9c\x40\x14\x51"
    tcp[4:8] = (1_000_000).to_bytes(4, "big")
    tcp[12] = (TCP_HEADER // 4) << 4
    tcp[13] = offload.TCP_ACK | offload.TCP_PSH
    tcp[20:32] = b"\x01\x01\x08\x0a" + os.urandom(8)
    ip = bytes([0x60, 0, 0, 0]) + (TCP_HEADER + PAYLOAD).to_bytes(2, "big") + bytes([6, 64]) + src + dst
    return ip + bytes(tcp) + os.urandom(PAYLOAD)


def best_of(repeats: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure_offload(
    name: str, partial: bool, packets: int, repeats: int, segments: int, profile: bool
) -> dict[str, float]:
    """``send_large`` and ``receive_batch`` + coalescing, per segment."""
    net, a, b, source = established_pair(partial=partial)
    packet = memoryview(tso_packet(a.address, b.address))
    now = net.now

    def send_large() -> None:
        for _ in range(packets):
            a.send_large(packet, 40, MSS, now)

    batches = []
    for _ in range(packets * repeats):  # fresh datagrams for every round (replays are refused early)
        batch = a.send_large(packet, 40, MSS, now)
        assert batch is not None
        buffer = bytearray(batch[1])
        batches.append((buffer, aead.pointer(buffer), len(buffer), batch[2]))
    writes = 0

    def count_write(_header: bytes, _parts: list[offload.Buffer]) -> None:
        nonlocal writes
        writes += 1

    sink = offload.Coalescer(count_write)
    rounds = iter(range(repeats))

    def receive_batches() -> None:
        first = next(rounds) * packets
        for buffer, base, size, segment in batches[first : first + packets]:
            b.receive_batch(buffer, base, size, segment, source, now, sink)
            sink.flush()

    result = {
        "send": best_of(repeats, send_large) / (packets * segments),
        "receive": best_of(repeats, receive_batches) / (packets * segments),
    }
    if writes != packets * repeats:  # every 64 KB must have gone up whole, in one write
        raise SystemExit(f"bench: {name}: {writes} TUN writes for {packets * repeats} packets")
    if profile:
        fresh = []
        for _ in range(packets):
            batch = a.send_large(packet, 40, MSS, now)
            assert batch is not None
            buffer = bytearray(batch[1])
            fresh.append((buffer, aead.pointer(buffer), len(buffer), batch[2]))
        profiler = cProfile.Profile()
        profiler.enable()
        send_large()
        for buffer, base, size, segment in fresh:
            b.receive_batch(buffer, base, size, segment, source, now, sink)
            sink.flush()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    return result


def measure(packets: int, repeats: int, profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    segments = offload.tcp_segment_count(tso_packet(bytes(16), bytes(16)), 40, MSS)

    # plain: one packet per call, both directions of the work
    net, a, b, source = established_pair(partial=False)
    single = offload.tcp_segments(tso_packet(a.address, b.address), 40, MSS)
    now = net.now

    def plain_send() -> None:
        for _ in range(packets):
            for packet in single:
                a.send(packet, now)

    # Fresh datagrams for every round: a replayed one would be refused before decryption.
    sealed = []
    for _ in range(packets * repeats):
        for packet in single:
            out = a.send(packet, now)
            assert out is not None
            sealed.append(out[1])
    plain_rounds = iter(range(repeats))

    def plain_receive() -> None:
        first = next(plain_rounds) * packets * segments
        for datagram in sealed[first : first + packets * segments]:
            b.receive_data(datagram, source, now)

    if b.rx_counters.total():
        raise SystemExit(f"bench: plain receive dropped frames: {dict(b.rx_counters)}")
    results["plain"] = {
        "send": best_of(repeats, plain_send) / (packets * segments),
        "receive": best_of(repeats, plain_receive) / (packets * segments),
    }

    for name, partial in (("offload, full checksums", False), ("offload", True)):
        results[name] = measure_offload(name, partial, packets, repeats, segments, profile and partial)

    buffer = bytearray(2048)
    base = aead.pointer(buffer)
    key = os.urandom(32)
    size = 1 + 8 + TCP_HEADER + MSS

    def seal_only() -> None:
        for _ in range(packets * segments):
            aead.encrypt_in_place(base, 40, size, 0, 16, 16, key)

    floor = best_of(repeats, seal_only) / (packets * segments)
    results["AEAD only"] = {"send": floor, "receive": floor}
    return {"segments_per_packet": segments, "mss": MSS, "per_segment_s": results}


def markdown(report: dict[str, Any]) -> str:
    rows = report["per_segment_s"]
    plain = rows["plain"]
    lines = [
        f"Per segment of {report['mss']} bytes ({report['segments_per_packet']} per 64 KB), microseconds "
        "(minimum over the repeats); ratio = plain / this (above 1x: faster than plain)",
        "",
        "| path | send µs | receive µs | send vs plain | receive vs plain |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['send'] * 1e6:.2f} | {row['receive'] * 1e6:.2f} | "
            f"{plain['send'] / row['send']:.2f}x | {plain['receive'] / row['receive']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=40, help="64 KB packets per timed round [40]")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; the fastest counts [7]")
    parser.add_argument("--profile", action="store_true", help="print cProfile's view of the offload path")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.packets < 1 or args.repeats < 1:
        parser.error("--packets and --repeats must be at least 1")
    report = measure(args.packets, args.repeats, args.profile)
    report["meta"] = {"python": sys.version.split()[0], "load_average": os.getloadavg()}
    print(markdown(report))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
