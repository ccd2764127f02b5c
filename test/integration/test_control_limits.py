"""A local client flooding the control socket never stops the daemon nor its data plane.

Two real daemons in network namespaces, each run with the file descriptor limit of a typical service
(RLIMIT_NOFILE 1024). A child process (with a higher limit of its own) opens 2,000 idle connections to
robot-a's control socket and sends a few 50 MB request bodies, while robot-b pings robot-a over the overlay
and the test asks robot-a for its status. Printed: robot-a's RSS before, at its peak and after, the status
latency (or 503s) during and after the flood, the overlay ping, what the flooding client saw.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from husarnet_ros.client import ClientError, ControlClient, ControlError
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other
from husarnet_ros.testing.netlab import Lab, parse_ping

pytestmark = pytest.mark.integration

SERVICE_NOFILE = 1024  # systemd's default soft limit for a service
FLOOD_CONNECTIONS = 2000
FLOOD_HOLD_S = 8.0  # longer than the control API's request timeout (5 s)
OVERSIZE_BODIES = 3
OVERSIZE_BODY_BYTES = 50 * 1024 * 1024
FLOOD_TIMEOUT_S = 120.0
PING_INTERVAL_S = 0.2
SAMPLE_INTERVAL_S = 0.5
# The daemon must never hold an oversize body: its RSS may grow by less than one of them (before the limits,
# one 50 MB body took it from ~50 MB to 632 MB).
MAX_RSS_GROWTH_BYTES = OVERSIZE_BODY_BYTES


class ServiceDaemon(Daemon):
    """A lab daemon started with the descriptor limit of a service (``prlimit`` execs it: same PID)."""

    def daemon_argv(self) -> list[str]:
        return ["prlimit", f"--nofile={SERVICE_NOFILE}:{SERVICE_NOFILE}", "--", *super().daemon_argv()]


FLOOD_CLIENT = textwrap.dedent(
    """
    import json, resource, socket, sys, time

    path, count, hold_s, bodies, body_bytes, timeout_s = (
        sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
        float(sys.argv[6]))
    deadline = time.monotonic() + timeout_s
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client needs more than the daemon has

    def body(chunked):
        # One oversize request, sent 64 KiB at a time until the daemon stops reading or all is sent.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % body_bytes
        sock.sendall(b"POST /v1/whitelist HTTP/1.1\\r\\nhost: d\\r\\ncontent-type: application/json\\r\\n"
                     + framing + b"\\r\\n\\r\\n")
        chunk, sent, t0 = b"x" * 65536, 0, time.monotonic()
        try:
            while sent < body_bytes and time.monotonic() < deadline:
                sock.sendall(b"%x\\r\\n%s\\r\\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
        except OSError:
            pass
        answer = b""
        try:
            while time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        sock.close()
        status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
        seconds = round(time.monotonic() - t0, 3)
        return {"chunked": chunked, "status": status, "sent": sent, "seconds": seconds}

    # The oversize bodies first, while the daemon has free connection slots to read them with.
    results = [body(chunked=(i == bodies - 1)) for i in range(bodies)]

    opened, backlog_full = [], 0
    started = time.monotonic()
    while len(opened) < count and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:  # the listen backlog is full: try again
            sock.close()
            backlog_full += 1
            time.sleep(0.001)
            continue
        opened.append(sock)
    open_s = time.monotonic() - started

    # Hold the idle connections, then see what the daemon did with each.
    time.sleep(max(0.0, min(hold_s - (time.monotonic() - started), deadline - time.monotonic())))
    seen = {"busy_503": 0, "closed": 0, "still_open": 0, "other": 0}
    for sock in opened:  # non-blocking: nothing to read means still open
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            seen["still_open"] += 1
            continue
        except ConnectionResetError:
            data = b""
        if data.startswith(b"HTTP/1.1 503"):
            seen["busy_503"] += 1
        elif not data:
            seen["closed"] += 1
        else:
            seen["other"] += 1
        sock.close()
    print(json.dumps({"opened": len(opened), "backlog_full_retries": backlog_full, "open_s": round(open_s, 3),
                      "idle": seen, "bodies": results}), flush=True)
    """
)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open files limit for pid {pid}")


@dataclass
class StatusSample:
    latency_ms: float
    outcome: str  # "200", "503" or the error


def ask_status(socket_path: Path) -> StatusSample:
    """One GET /v1/status on a new connection, as a CLI call makes it; timed from connecting to the answer."""
    with ControlClient(str(socket_path), timeout_s=5.0) as client:
        started = time.monotonic()
        try:
            client.status()
            outcome = "200"
        except ControlError as exc:
            outcome = str(exc.status) if exc.status else type(exc).__name__
        except ClientError as exc:
            outcome = type(exc).__name__
        return StatusSample((time.monotonic() - started) * 1000, outcome)


def summary(samples: list[StatusSample]) -> str:
    by_outcome: dict[str, list[float]] = {}
    for sample in samples:
        by_outcome.setdefault(sample.outcome, []).append(sample.latency_ms)
    parts = [
        f"{outcome}: {len(ms)}x median {statistics.median(ms):.1f} ms max {max(ms):.1f} ms"
        for outcome, ms in sorted(by_outcome.items())
    ]
    return "; ".join(parts)


def test_a_flood_of_connections_and_oversize_bodies_leaves_daemon_and_data_plane_running(
    lab: Lab, husarnet_ros_available: None
) -> None:
    host_a, host_b = lab.lan(2, labels=["robot-a", "robot-b"])
    a = ServiceDaemon.create(host_a, "robot-a")
    b = ServiceDaemon.create(host_b, "robot-b")
    flood: subprocess.Popen[str] | None = None
    pinger: subprocess.Popen[str] | None = None
    try:
        for daemon in (a, b):
            daemon.start(wait_ready=False)
        for daemon in (a, b):
            daemon.wait_ready()
        assert open_files_limit(a.pid) == SERVICE_NOFILE
        addresses = whitelist_each_other([a, b])
        a.wait_path(addresses["robot-b"], "direct", timeout=20)
        b.wait_path(addresses["robot-a"], "direct", timeout=20)

        rss_before = rss_bytes(a.pid)
        before = [ask_status(a.control_socket) for _ in range(5)]

        flood_s = FLOOD_HOLD_S + 10  # what the flood takes, with room for the oversize bodies
        pings = int(flood_s / PING_INTERVAL_S)
        ping_argv = ["ping", "-6", "-n", "-q", "-i", str(PING_INTERVAL_S), "-c", str(pings)]
        ping_argv += ["-w", str(int(flood_s) + 10), addresses["robot-a"]]
        pinger = host_b.popen(ping_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        flood_args = [FLOOD_CONNECTIONS, FLOOD_HOLD_S, OVERSIZE_BODIES, OVERSIZE_BODY_BYTES, FLOOD_TIMEOUT_S]
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD_CLIENT, str(a.control_socket), *map(str, flood_args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        during: list[StatusSample] = []
        rss_peak = rss_before
        flood_deadline = time.monotonic() + FLOOD_TIMEOUT_S + 10
        while flood.poll() is None and time.monotonic() < flood_deadline:
            rss_peak = max(rss_peak, rss_bytes(a.pid))
            during.append(ask_status(a.control_socket))
            time.sleep(SAMPLE_INTERVAL_S)
        flood_out, flood_err = flood.communicate(timeout=30)
        assert flood.returncode == 0, flood_err[-2000:]
        seen: dict[str, Any] = json.loads(flood_out)

        time.sleep(6)  # the request timeout closes whatever the flood left open
        after = [ask_status(a.control_socket) for _ in range(5)]
        rss_after = rss_bytes(a.pid)
        ping_out, _ = pinger.communicate(timeout=flood_s + 30)
        ping = parse_ping(ping_out)

        print(
            "\n--- control socket flood (robot-a, RLIMIT_NOFILE "
            f"{SERVICE_NOFILE}) ---\n"
            f"RSS before {rss_before / 2**20:.1f} MiB, peak {rss_peak / 2**20:.1f} MiB, "
            f"after {rss_after / 2**20:.1f} MiB\n"
            f"flood client: {json.dumps(seen)}\n"
            f"status before: {summary(before)}\n"
            f"status during: {summary(during)}\n"
            f"status after:  {summary(after)}\n"
            f"overlay ping robot-b -> robot-a during the flood: {ping.transmitted} sent, {ping.received} "
            f"received, rtt min/avg/max {ping.rtt_min_ms}/{ping.rtt_avg_ms}/{ping.rtt_max_ms} ms"
        )

        # The daemon survived and answers again.
        assert a.running, a.log_tail()
        assert all(sample.outcome == "200" for sample in after), summary(after)
        # Every connection was accepted and then either served (and closed once idle) or told 503 at once.
        assert seen["opened"] == FLOOD_CONNECTIONS
        assert seen["idle"]["still_open"] == 0
        assert seen["idle"]["busy_503"] >= FLOOD_CONNECTIONS - 2 * 64
        # Oversize bodies were refused, not read.
        for result in seen["bodies"]:
            assert result["status"] == 413, result
            assert result["sent"] < OVERSIZE_BODY_BYTES / 10, result
        # The data plane did not notice.
        assert ping.transmitted >= pings * 0.9
        assert ping.received == ping.transmitted, ping.output
        # Memory stayed bounded relative to the daemon's own baseline.
        assert rss_peak - rss_before < MAX_RSS_GROWTH_BYTES
        log = a.log_path.read_text(errors="replace")
        assert "Traceback" not in log
        assert "Too many open files" not in log
    finally:
        for process in (flood, pinger):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
        statuses = {daemon.hostname: daemon.stop() for daemon in (a, b)}
    # A clean stop exits 0, although the daemon's account may not remove its socket from the lab's
    # root-owned directory.
    assert statuses == {"robot-a": 0, "robot-b": 0}, a.log_tail()
    for daemon in (a, b):
        daemon.remove_files()
