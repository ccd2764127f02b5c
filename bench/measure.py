"""Measurements taken inside lab namespaces: iperf3 throughput, ping RTT, a process's CPU and RSS."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from husarnet_ros.testing.netlab import Host, LabError, wait_until

IPERF_PORT = 5201
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
    min_ms: float | None
    avg_ms: float | None
    max_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def start_iperf_server(host: Host) -> None:
    """An iperf3 server in ``host`` (stopped by the lab on cleanup)."""
    host.popen(
        ["iperf3", "--server", "--port", str(IPERF_PORT)],
        stdout=open(os.devnull, "wb"),  # noqa: SIM115 (the child keeps it)
        stderr=open(os.devnull, "wb"),  # noqa: SIM115
    )
    wait_until(lambda: host.tcp_listening(IPERF_PORT), 10.0, what=f"iperf3 server in {host.netns}")


def measure_throughput(
    client: Host, server_address: str, *, streams: int, duration: float, tunnel_pids: list[int]
) -> ThroughputResult:
    """One iperf3 TCP run from ``client`` to ``server_address``, with the tunnel processes' CPU use."""
    before = [sample_process(pid) for pid in tunnel_pids]
    argv = ["iperf3", "--client", server_address, "--port", str(IPERF_PORT), "--json"]
    # No --omit: the CPU window (samples before and after) must cover exactly the bytes counted.
    argv += ["--time", f"{duration:g}", "--parallel", str(streams), "--connect-timeout", "5000"]
    result = client.run(argv, check=False, timeout=duration + 30.0)
    after = [sample_process(pid) for pid in tunnel_pids]
    try:
        report = json.loads(result.stdout)
    except ValueError as exc:
        raise LabError(f"iperf3 printed no JSON ({result.returncode}): {result.stderr.strip()}") from exc
    if "error" in report:
        raise LabError(f"iperf3 to {server_address} failed: {report['error']}")
    end = report["end"]
    received = end["sum_received"]
    gbits = received["bytes"] * 8 / 1e9
    cpu = (
        sum(a.cpu_seconds - b.cpu_seconds for a, b in zip(after, before, strict=True))
        if tunnel_pids
        else None
    )
    return ThroughputResult(
        streams=streams,
        duration_s=float(received["seconds"]),
        sent_bits_per_second=float(end["sum_sent"]["bits_per_second"]),
        received_bits_per_second=float(received["bits_per_second"]),
        received_bytes=int(received["bytes"]),
        retransmits=end["sum_sent"].get("retransmits"),
        tunnel_cpu_seconds=cpu,
        tunnel_cpu_seconds_per_gbit=(cpu / gbits) if cpu is not None and gbits > 0 else None,
        tunnel_rss_bytes=[sample.rss_bytes for sample in after],
    )


def measure_rtt(client: Host, address: str, *, count: int, interval: float = 0.05) -> RttResult:
    """``count`` pings at ``interval`` (bounded by a deadline); a first ping warms up the path."""
    client.ping(address, 1, deadline=3)
    result = client.ping(address, count, interval=interval, deadline=count * interval + 5.0)
    return RttResult(count, result.received, result.rtt_min_ms, result.rtt_avg_ms, result.rtt_max_ms)
