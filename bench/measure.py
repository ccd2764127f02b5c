"""Measurements taken inside lab namespaces: iperf3 throughput, ping RTT and start-up, CPU and RSS."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from husarnet_ros.testing.netlab import Host, LabError, wait_until

IPERF_PORT = 5201
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FIRST_REPLY_POLL_S = 0.01  # ping interval while waiting for a tunnel's first answer
FIRST_REPLY_ATTEMPT_S = 2
_REPLY_TIME_RE = re.compile(r"bytes from .*time=([\d.]+) ms")
_REPLY_STAMP_RE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


@dataclass(frozen=True)
class ProcessSample:
    """CPU time (user + system, all threads) and resident memory of one process at one moment."""

    pid: int
    cpu_seconds: float
    rss_bytes: int


def sample_process(pid: int) -> ProcessSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may contain spaces) start at field 3; utime/stime are 14/15.
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return ProcessSample(pid, cpu, rss)


@dataclass(frozen=True)
class ThroughputResult:
    streams: int
    duration_s: float
    sent_bits_per_second: float
    received_bits_per_second: float
    received_bytes: int
    retransmits: int | None
    tunnel_cpu_seconds: float | None  # summed over the tunnel processes at both ends
    tunnel_cpu_seconds_each: list[float]  # per process, in the tunnel's order (says who did the work)
    tunnel_cpu_seconds_per_gbit: float | None
    tunnel_rss_bytes: list[int]

    @property
    def mbit_per_second(self) -> float:
        return self.received_bits_per_second / 1e6

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"mbit_per_second": self.mbit_per_second}


@dataclass(frozen=True)
class RttResult:
    count: int
    received: int
    interval_s: float
    min_ms: float | None
    avg_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``fraction`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def ping_argv(address: str, *extra: str) -> list[str]:
    return ["ping", *(["-6"] if ":" in address else []), "-n", *extra, address]


def start_iperf_server(host: Host) -> None:
    """An iperf3 server in ``host`` (stopped by the lab on cleanup)."""
    host.popen(
        ["iperf3", "--server", "--port", str(IPERF_PORT)],
        stdout=open(os.devnull, "wb"),  # noqa: SIM115 (the child keeps it)
        stderr=open(os.devnull, "wb"),  # noqa: SIM115
    )
    wait_until(lambda: host.tcp_listening(IPERF_PORT), 10.0, what=f"iperf3 server in {host.netns}")


def run_iperf(client: Host, server_address: str, argv: list[str], timeout: float) -> dict[str, Any]:
    """One iperf3 client run (``argv`` after the address and port); its JSON report."""
    base = [
        "iperf3",
        "--client",
        server_address,
        "--port",
        str(IPERF_PORT),
        "--json",
        "--connect-timeout",
        "5000",
    ]
    result = client.run([*base, *argv], check=False, timeout=timeout)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError as exc:
        raise LabError(f"iperf3 printed no JSON ({result.returncode}): {result.stderr.strip()}") from exc
    if "error" in report:
        raise LabError(f"iperf3 to {server_address} failed: {report['error']}")
    return report


def measure_throughput(
    client: Host, server_address: str, *, streams: int, duration: float, tunnel_pids: list[int]
) -> ThroughputResult:
    """One iperf3 TCP run from ``client`` to ``server_address``, with the tunnel processes' CPU use."""
    before = [sample_process(pid) for pid in tunnel_pids]
    # No --omit: the CPU window (samples before and after) must cover exactly the bytes counted.
    report = run_iperf(
        client,
        server_address,
        ["--time", f"{duration:g}", "--parallel", str(streams)],
        timeout=duration + 30.0,
    )
    after = [sample_process(pid) for pid in tunnel_pids]
    end = report["end"]
    received = end["sum_received"]
    gbits = received["bytes"] * 8 / 1e9
    each = [a.cpu_seconds - b.cpu_seconds for a, b in zip(after, before, strict=True)]
    cpu = sum(each) if tunnel_pids else None
    return ThroughputResult(
        streams=streams,
        duration_s=float(received["seconds"]),
        sent_bits_per_second=float(end["sum_sent"]["bits_per_second"]),
        received_bits_per_second=float(received["bits_per_second"]),
        received_bytes=int(received["bytes"]),
        retransmits=end["sum_sent"].get("retransmits"),
        tunnel_cpu_seconds=cpu,
        tunnel_cpu_seconds_each=each,
        tunnel_cpu_seconds_per_gbit=(cpu / gbits) if cpu is not None and gbits > 0 else None,
        tunnel_rss_bytes=[sample.rss_bytes for sample in after],
    )


def measure_rtt(client: Host, address: str, *, count: int, interval: float = 0.01) -> RttResult:
    """``count`` pings at ``interval`` (bounded by a deadline), after one warm-up ping; per-reply times."""
    client.run(ping_argv(address, "-c", "1", "-W", "2"), check=False, timeout=10.0)
    deadline = math.ceil(count * interval + 5.0)
    argv = ping_argv(address, "-c", str(count), "-i", f"{interval:g}", "-W", "1", "-w", str(deadline))
    output = client.run(argv, check=False, timeout=deadline + 10.0).stdout
    times = [float(match.group(1)) for match in _REPLY_TIME_RE.finditer(output)]
    return RttResult(
        count=count,
        received=len(times),
        interval_s=interval,
        min_ms=min(times) if times else None,
        avg_ms=sum(times) / len(times) if times else None,
        p50_ms=percentile(times, 0.50),
        p99_ms=percentile(times, 0.99),
        max_ms=max(times) if times else None,
    )


def first_reply(
    client: Host,
    address: str,
    started_at: float,
    timeout: float,
    *,
    check: Callable[[], None] | None = None,
    what: str = "tunnel",
) -> float:
    """Seconds from ``started_at`` (``time.time()``) to the first ping answered by ``address``.

    One ``ping`` at a 10 ms interval that exits on its first reply; ``-D`` stamps the reply with the
    time it arrived, so the answer does not include the cost of reading ping's output. While the
    tunnel has no route yet, ping exits at once ("Network is unreachable") and is started again.
    ``check`` (called between attempts) raises if the tunnel's processes died.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LabError(f"{what}: {address} answered no ping from {client.netns} within {timeout:.0f} s")
        # Short attempts, so that a tunnel process that died is noticed (``check``) within seconds.
        wait_s = max(1, min(FIRST_REPLY_ATTEMPT_S, math.ceil(remaining)))
        argv = ping_argv(address, "-D", "-c", "1", "-i", f"{FIRST_REPLY_POLL_S:g}", "-w", str(wait_s))
        result = client.run(argv, check=False, timeout=wait_s + 10.0)
        for line in result.stdout.splitlines():
            stamp = _REPLY_STAMP_RE.match(line)
            if stamp:
                return float(stamp.group(1)) - started_at
        time.sleep(FIRST_REPLY_POLL_S)
