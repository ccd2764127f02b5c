"""A raw IPv4 capture on one interface of a lab namespace, for tests that check what crosses a wire.

    python -m husarnet_ros.testing.capture --interface eth0 --output FILE [--seconds S] [--max-bytes N]

Opens a packet socket for IPv4 frames on the interface (both what arrives and what leaves), prints
``capturing``, and writes every frame to FILE as a 4-byte big-endian length and the frame, until its stdin
closes, ``--seconds`` pass or ``--max-bytes`` are written; then prints one JSON line of counts. The kernel
may hand over a whole GSO or GRO batch as one frame: the receive buffer holds the largest (64 KiB and the
headers), and a frame cut short anyway is counted as ``truncated``.

:class:`PacketCapture` runs it in a lab host; :func:`read_frames` and :func:`udp_datagrams` read the file.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lab_daemon import husarnet_ros_env
from .netlab import Host, Lab

# A packet socket for one protocol sees only what arrives; one for every protocol sees what leaves too, and
# keeps the IPv4 frames only.
ETH_P_ALL = 0x0003
ETHERTYPE_IPV4 = b"\x08\x00"
_ETHERTYPE_OFFSET = 12
ETHERNET_HEADER_SIZE = 14
_RECORD_LENGTH = struct.Struct("!I")
_FRAME_BUFFER = 256 * 1024  # more than any GSO/GRO batch (an IPv4 packet is at most 64 KiB)
_SO_RCVBUFFORCE = 33  # as root: a receive queue beyond net.core.rmem_max, so a burst is not lost
_SOCKET_BUFFER = 64 * 1024 * 1024
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_UDP = 17
_UDP_HEADER_SIZE = 8
_POLL_S = 0.2


def _open(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _SOCKET_BUFFER)
    sock.bind((interface, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def _kernel_drops(sock: socket.socket) -> int:
    """Frames the kernel could not queue to ``sock`` (the counter resets on reading)."""
    _packets, drops = struct.unpack("II", sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
    return int(drops)


def capture(interface: str, output: Path, seconds: float, max_bytes: int) -> dict[str, int]:
    counts = {"frames": 0, "bytes": 0, "truncated": 0, "kernel_drops": 0}
    buffer = bytearray(_FRAME_BUFFER)
    deadline = time.monotonic() + seconds
    with _open(interface) as sock, output.open("wb") as out:
        print("capturing", flush=True)
        stdin_open = True
        while stdin_open and counts["bytes"] < max_bytes and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock, sys.stdin], [], [], min(left, _POLL_S))
            if sys.stdin in readable and not os.read(sys.stdin.fileno(), 4096):
                stdin_open = False  # the test is done with us; take what is queued, then stop
            for _ in range(1024):
                try:
                    size = sock.recv_into(buffer, _FRAME_BUFFER, socket.MSG_TRUNC)
                except BlockingIOError:
                    break
                if buffer[_ETHERTYPE_OFFSET : _ETHERTYPE_OFFSET + 2] != ETHERTYPE_IPV4:
                    continue
                kept = min(size, _FRAME_BUFFER)
                counts["truncated"] += size > kept
                out.write(_RECORD_LENGTH.pack(kept))
                out.write(memoryview(buffer)[:kept])
                counts["frames"] += 1
                counts["bytes"] += kept
        counts["kernel_drops"] = _kernel_drops(sock)
    return counts


# --- reading what was captured ------------------------------------------------------------------------------


def read_frames(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    offset = 0
    while offset + _RECORD_LENGTH.size <= len(data):
        (length,) = _RECORD_LENGTH.unpack_from(data, offset)
        offset += _RECORD_LENGTH.size
        yield data[offset : offset + length]
        offset += length


@dataclass(frozen=True)
class UdpDatagram:
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes  # everything after the UDP header: a GSO/GRO batch is several datagrams' payloads


def udp_datagrams(frames: Iterator[bytes]) -> Iterator[UdpDatagram]:
    """The UDP datagrams among captured Ethernet frames (IPv4 only; fragments are left out)."""
    for frame in frames:
        ip = frame[ETHERNET_HEADER_SIZE:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != _UDP:
            continue
        flags_offset = int.from_bytes(ip[6:8], "big")
        if flags_offset & 0x3FFF:  # a fragment (more fragments, or an offset): no UDP header of its own
            continue
        header_size = (ip[0] & 0x0F) * 4
        udp = ip[header_size:]
        if len(udp) < _UDP_HEADER_SIZE:
            continue
        source_port, destination_port = struct.unpack_from("!HH", udp)
        yield UdpDatagram(
            (socket.inet_ntoa(ip[12:16]), source_port),
            (socket.inet_ntoa(ip[16:20]), destination_port),
            udp[_UDP_HEADER_SIZE:],
        )


# --- driving it from the test -------------------------------------------------------------------------------


class PacketCapture:
    """``python -m husarnet_ros.testing.capture`` in ``host``; ``stop()`` returns its counts."""

    def __init__(
        self, host: Host, output: Path, *, interface: str | None = None, seconds: float = 120.0
    ) -> None:
        self.output = output
        self._timeout = seconds + 15.0
        argv = [sys.executable, "-m", "husarnet_ros.testing.capture", "--interface", interface or host.ifname]
        argv += ["--output", str(output), "--seconds", str(seconds)]
        self._process: subprocess.Popen[str] = host.popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=husarnet_ros_env(),
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if line != "capturing":
            Lab.stop_process(self._process)
            _out, err = self._process.communicate(timeout=5)
            raise AssertionError(f"the capture in {host.netns} did not start: {line!r} {err}")

    def stop(self) -> dict[str, Any]:
        out, err = self._process.communicate(input="", timeout=self._timeout)
        if self._process.returncode != 0:
            raise AssertionError(f"the capture failed ({self._process.returncode}): {err}")
        counts: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return counts


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m husarnet_ros.testing.capture")
    parser.add_argument("--interface", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-bytes", type=int, default=1 << 30)
    args = parser.parse_args(argv)
    print(json.dumps(capture(args.interface, args.output, args.seconds, args.max_bytes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
