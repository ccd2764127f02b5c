"""Checksummed transfers across the overlay for integration tests: every byte is checked where it arrives.

Each side runs in its own lab namespace as ``python -m husarnet_ros.testing.transfer ...``; the test process
drives both through :func:`tcp_transfer` and :func:`udp_echo` and checks what they report.

* TCP: ``streams`` parallel connections, stream ``i`` carrying ``stream_payload(seed + i, size)`` (seeded
  random bytes, so the test knows the SHA-256 to expect without trusting the sender). The receiver hashes
  what it got.
  ``dstopts`` puts a Destination Options header on every segment the sender sends (a sticky IPV6_DSTOPTS).
* UDP: an echo server sends every datagram back, with the Destination Options or Hop-by-Hop header it came
  with; the client sends datagrams of the given sizes and compares each echo byte for byte (both legs carry
  every size) and the extension headers that came back with the ones it sent.
* UDP bursts (:func:`udp_burst`): runs of datagrams sent back to back as fast as the socket takes them (as
  DDS sends a large sample's fragments), one ``sendto`` each or, with ``gso``, up to 64 in one send
  (``UDP_SEGMENT``, as QUIC stacks do); each carries its number and seeded bytes, and the receiver reports
  which numbers arrived intact, which arrived corrupt or twice, and how long each was.

Every socket wait has a timeout and every process is bounded by ``seconds``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .lab_daemon import husarnet_ros_env
from .netlab import Host, Lab

SOCKET_TIMEOUT_S = 30.0
_STREAM_HEADER = struct.Struct("!I")  # the stream's index, sent before its payload
_READ_SIZE = 256 * 1024
_UDP_TRIES = 3
_UDP_REPLY_TIMEOUT_S = 1.0
_MAX_UDP = 65535

# An experimental option type (RFC 4727, 0x1E: "skip if unknown, not changed en route") with four bytes of
# data: a receiver skips it, so the packet is delivered, and it must arrive exactly as sent. Two bytes of
# header (next header, length in 8-byte units minus one) + 2 + 4 = one 8-byte unit.
OPTION_HEADER = bytes([0, 0, 0x1E, 4, 0xA5, 0x5A, 0xC3, 0x3C])
_OPTION_LEVELS = {"dstopts": socket.IPV6_DSTOPTS, "hopopts": socket.IPV6_HOPOPTS}
_RECEIVE_OPTIONS = {socket.IPV6_RECVDSTOPTS: 1, socket.IPV6_RECVHOPOPTS: 1}


def stream_payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def datagram_payload(seed: int, size: int) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


# --- the two ends, run inside the namespaces -------------------------------------------------------------


def _receive_stream(conn: socket.socket, results: dict[int, dict[str, object]]) -> None:
    with conn:
        conn.settimeout(SOCKET_TIMEOUT_S)
        header = b""
        while len(header) < _STREAM_HEADER.size:
            chunk = conn.recv(_STREAM_HEADER.size - len(header))
            if not chunk:
                return
            header += chunk
        (index,) = _STREAM_HEADER.unpack(header)
        digest, count = hashlib.sha256(), 0
        while chunk := conn.recv(_READ_SIZE):
            digest.update(chunk)
            count += len(chunk)
        results[index] = {"bytes": count, "sha256": digest.hexdigest()}


def tcp_receive(address: str, port: int, streams: int, seconds: float) -> list[dict[str, object] | None]:
    """Accept ``streams`` connections and hash each; one entry per stream index (None: never arrived)."""
    results: dict[int, dict[str, object]] = {}
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(streams)
        server.settimeout(seconds)
        print("listening", flush=True)
        threads = []
        for _ in range(streams):
            conn, _peer = server.accept()
            thread = threading.Thread(target=_receive_stream, args=(conn, results), daemon=True)
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + seconds
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    return [results.get(index) for index in range(streams)]


def _send_stream(address: str, port: int, index: int, payload: bytes, dstopts: bool) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as conn:
        if dstopts:
            conn.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, OPTION_HEADER)
        conn.settimeout(SOCKET_TIMEOUT_S)
        conn.connect((address, port))
        conn.sendall(_STREAM_HEADER.pack(index) + payload)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the receiver closes once it has read everything


def tcp_send(address: str, port: int, streams: int, size: int, seed: int, dstopts: bool) -> None:
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            _send_stream(address, port, index, stream_payload(seed + index, size), dstopts)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"sending failed: {errors}")


def _options_of(ancillary: list[tuple[int, int, bytes]]) -> dict[str, str]:
    names = {socket.IPV6_DSTOPTS: "dstopts", socket.IPV6_HOPOPTS: "hopopts"}
    # The first byte (next header) is the kernel's to fill in; what is compared is the rest.
    return {names[kind]: data[1:].hex() for level, kind, data in ancillary if kind in names and level == 41}


def _ancillary(options: dict[str, str]) -> list[tuple[int, int, bytes]]:
    return [
        (socket.IPPROTO_IPV6, _OPTION_LEVELS[name], b"\0" + bytes.fromhex(rest))
        for name, rest in options.items()
    ]


def _open_udp(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for option, value in _RECEIVE_OPTIONS.items():
        sock.setsockopt(socket.IPPROTO_IPV6, option, value)
    sock.bind((address, port))
    return sock


def udp_echo_server(address: str, port: int, seconds: float) -> None:
    """Send every datagram back with the extension headers it came with, for ``seconds``."""
    deadline = time.monotonic() + seconds
    with _open_udp(address, port) as sock:
        print("listening", flush=True)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, ancillary, _flags, peer = sock.recvmsg(_MAX_UDP, 256)
            except TimeoutError:
                return
            sock.sendmsg([data], _ancillary(_options_of(ancillary)), 0, peer)


def udp_client(
    address: str, port: int, sizes: Sequence[int], seed: int, options: Sequence[str]
) -> list[dict[str, object]]:
    """Send each size (up to three tries) and compare the echo; one result per size."""
    sent_options = {name: OPTION_HEADER[1:].hex() for name in options}
    results = []
    with _open_udp("::", 0) as sock:
        sock.settimeout(_UDP_REPLY_TIMEOUT_S)
        for size in sizes:
            payload = datagram_payload(seed, size)
            result: dict[str, object] = {"size": size, "echoed": False, "intact": False, "options": {}}
            for _ in range(_UDP_TRIES):
                sock.sendmsg([payload], _ancillary(sent_options), 0, (address, port))
                try:
                    data, ancillary, _flags, _peer = sock.recvmsg(_MAX_UDP, 256)
                except TimeoutError:
                    continue
                received = _options_of(ancillary)
                result.update(echoed=True, intact=data == payload, options=received, length=len(data))
                break
            result["options_intact"] = result["options"] == sent_options
            results.append(result)
    return results


_BURST_NUMBER = struct.Struct("!I")
_UDP_SEGMENT = 103  # linux/udp.h
_BURST_GSO_SEGMENTS = 64  # what the kernel takes in one UDP GSO send, and 64 KB of payload in all
_BURST_GSO_BYTES = 65000
_BURST_QUIET_S = 1.0  # the receiver stops this long after the last datagram
_BURST_BUFFER = 16 * 1024 * 1024


def burst_payload(seed: int, number: int, size: int) -> bytes:
    """Datagram ``number`` of a burst: its number, then seeded bytes (``size`` at least 4)."""
    return _BURST_NUMBER.pack(number) + random.Random(seed * 1_000_003 + number).randbytes(size - 4)


def burst_sizes(runs: Sequence[tuple[int, int]]) -> list[int]:
    """Every datagram's size, in order, for runs of (count, size)."""
    return [size for count, size in runs for _ in range(count)]


def _big_buffer(sock: socket.socket, forced: int, plain: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, _BURST_BUFFER)  # root: above net.core.*mem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, _BURST_BUFFER)


def udp_burst_receive(
    address: str, port: int, sizes: Sequence[int], seed: int, seconds: float
) -> dict[str, object]:
    """Receive a burst: until every datagram came, ``_BURST_QUIET_S`` after the last one, or ``seconds``."""
    intact: set[int] = set()
    corrupt: list[int] = []
    repeated: list[int] = []
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        _big_buffer(sock, 33, socket.SO_RCVBUF)  # SO_RCVBUFFORCE
        sock.bind((address, port))
        print("listening", flush=True)
        deadline = time.monotonic() + seconds
        quiet_until = deadline
        while len(intact) < len(sizes) and (now := time.monotonic()) < min(deadline, quiet_until):
            sock.settimeout(min(deadline, quiet_until) - now)
            try:
                data = sock.recv(_MAX_UDP)
            except TimeoutError:
                break
            quiet_until = time.monotonic() + _BURST_QUIET_S
            number = _BURST_NUMBER.unpack_from(data)[0] if len(data) >= 4 else -1
            if not 0 <= number < len(sizes) or data != burst_payload(seed, number, sizes[number]):
                corrupt.append(number)
            elif number in intact:
                repeated.append(number)
            else:
                intact.add(number)
    return {"intact": len(intact), "corrupt": corrupt, "repeated": repeated, "sent": len(sizes)}


def udp_burst_send(address: str, port: int, runs: Sequence[tuple[int, int]], seed: int, gso: bool) -> None:
    """Each run's datagrams back to back, a short pause between runs (each is one burst)."""
    number = 0
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        _big_buffer(sock, 32, socket.SO_SNDBUF)  # SO_SNDBUFFORCE
        for count, size in runs:
            payloads = [burst_payload(seed, number + i, size) for i in range(count)]
            number += count
            if gso:
                segment = [(socket.SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))]
                step = max(1, min(_BURST_GSO_SEGMENTS, _BURST_GSO_BYTES // size))
                for start in range(0, count, step):
                    group = payloads[start : start + step]
                    sock.sendmsg(group, segment if len(group) > 1 else [], 0, (address, port))
            else:
                for payload in payloads:
                    sock.sendto(payload, (address, port))
            time.sleep(0.05)


def _run(text: str) -> tuple[int, int]:
    count, _, size = text.partition(":")
    return int(count), int(size)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m husarnet_ros.testing.transfer")
    parser.add_argument(
        "role",
        choices=["tcp-receive", "tcp-send", "udp-echo", "udp-client", "udp-burst-receive", "udp-burst-send"],
    )
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--bytes", type=int, default=0, help="per stream")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--options", nargs="*", default=[], choices=sorted(_OPTION_LEVELS))
    parser.add_argument("--dstopts", action="store_true")
    parser.add_argument("--runs", default="", help="count:size,... (bursts)")
    parser.add_argument(
        "--gso", action="store_true", help="bursts: up to 64 datagrams per send (UDP_SEGMENT)"
    )
    args = parser.parse_args(argv)
    runs = [_run(text) for text in args.runs.split(",") if text]
    if args.role == "tcp-receive":
        print(json.dumps(tcp_receive(args.address, args.port, args.streams, args.seconds)), flush=True)
    elif args.role == "tcp-send":
        tcp_send(args.address, args.port, args.streams, args.bytes, args.seed, args.dstopts)
    elif args.role == "udp-burst-receive":
        result = udp_burst_receive(args.address, args.port, burst_sizes(runs), args.seed, args.seconds)
        print(json.dumps(result), flush=True)
    elif args.role == "udp-burst-send":
        udp_burst_send(args.address, args.port, runs, args.seed, args.gso)
    elif args.role == "udp-echo":
        udp_echo_server(args.address, args.port, args.seconds)
    else:
        print(
            json.dumps(udp_client(args.address, args.port, args.sizes, args.seed, args.options)), flush=True
        )
    return 0


# --- driving both ends from the test ----------------------------------------------------------------------


def _module_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "husarnet_ros.testing.transfer", *args]


def _start_listener(host: Host, argv: list[str]) -> subprocess.Popen[str]:
    process = host.popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=husarnet_ros_env()
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != "listening":
        Lab.stop_process(process)
        _out, err = process.communicate(timeout=5)
        raise AssertionError(f"the listener in {host.netns} did not start: {line!r} {err}")
    return process


@dataclass(frozen=True)
class StreamOutcome:
    index: int
    expected_bytes: int
    expected_sha256: str
    received: dict[str, object] | None

    @property
    def intact(self) -> bool:
        return self.received == {"bytes": self.expected_bytes, "sha256": self.expected_sha256}


def tcp_transfer(
    sender: Host,
    receiver: Host,
    address: str,
    *,
    total_bytes: int,
    streams: int = 1,
    seed: int = 1,
    port: int = 5599,
    dstopts: bool = False,
    seconds: float = 120.0,
) -> list[StreamOutcome]:
    """``total_bytes`` from ``sender`` to ``receiver``'s overlay ``address`` over ``streams`` connections."""
    size = total_bytes // streams
    listen = ["tcp-receive", "--address", address, "--port", str(port), "--streams", str(streams)]
    receiving = _start_listener(receiver, _module_argv(*listen, "--seconds", str(seconds)))
    send = ["tcp-send", "--address", address, "--port", str(port), "--streams", str(streams)]
    send += ["--bytes", str(size), "--seed", str(seed), *(["--dstopts"] if dstopts else [])]
    try:
        sent = sender.run(_module_argv(*send), check=False, timeout=seconds + 10, env=husarnet_ros_env())
        out, err = receiving.communicate(timeout=seconds + 10)
    finally:
        Lab.stop_process(receiving)
    if sent.returncode != 0 or receiving.returncode != 0:
        raise AssertionError(f"transfer failed: sender {sent.returncode} {sent.stderr}; receiver {err}")
    received = json.loads(out)
    return [
        StreamOutcome(i, size, hashlib.sha256(stream_payload(seed + i, size)).hexdigest(), received[i])
        for i in range(streams)
    ]


def udp_echo(
    client: Host,
    server: Host,
    address: str,
    sizes: Sequence[int],
    *,
    options: Sequence[str] = (),
    seed: int = 1,
    port: int = 5598,
    seconds: float = 60.0,
) -> list[dict[str, object]]:
    """Datagrams of ``sizes`` from ``client`` to the echo server at ``server``'s ``address`` and back."""
    echo = _start_listener(
        server, _module_argv("udp-echo", "--address", address, "--port", str(port), "--seconds", str(seconds))
    )
    argv = _module_argv("udp-client", "--address", address, "--port", str(port), "--seed", str(seed))
    argv += ["--sizes", *map(str, sizes), *(["--options", *options] if options else [])]
    try:
        result = client.run(argv, timeout=seconds, env=husarnet_ros_env())
    finally:
        Lab.stop_process(echo)
    outcomes: list[dict[str, object]] = json.loads(result.stdout)
    return outcomes


def udp_burst(
    sender: Host,
    receiver: Host,
    address: str,
    runs: Sequence[tuple[int, int]],
    *,
    gso: bool = False,
    seed: int = 1,
    port: int = 5597,
    seconds: float = 60.0,
) -> dict[str, object]:
    """Bursts of datagrams, ``runs`` of (count, size), from ``sender`` to ``receiver``'s ``address``: what
    arrived (``intact`` count, ``corrupt`` and ``repeated`` numbers, ``sent``)."""
    spec = ",".join(f"{count}:{size}" for count, size in runs)
    common = ["--address", address, "--port", str(port), "--seed", str(seed), "--runs", spec]
    receiving = _start_listener(
        receiver, _module_argv("udp-burst-receive", *common, "--seconds", str(seconds))
    )
    try:
        sent = sender.run(
            _module_argv("udp-burst-send", *common, *(["--gso"] if gso else [])),
            check=False,
            timeout=seconds,
            env=husarnet_ros_env(),
        )
        out, err = receiving.communicate(timeout=seconds + 10)
    finally:
        Lab.stop_process(receiving)
    if sent.returncode != 0 or receiving.returncode != 0:
        raise AssertionError(f"burst failed: sender {sent.returncode} {sent.stderr}; receiver {err}")
    outcome: dict[str, object] = json.loads(out)
    return outcome


if __name__ == "__main__":
    sys.exit(_main())
