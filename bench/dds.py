"""DDS benchmark: large ROS 2 / DDS messages across the husarnet_ros overlay next to the raw underlay.

    sudo .venv/bin/python bench/dds.py [--quick] [--runs N] [--phase-seconds S] [--json-out PATH]
        [--md-out PATH] [--middlewares fastdds,cyclonedds] [--paths raw,overlay,raw-default]
        [--sizes 10000,...] [--rates 15,30] [--reliabilities reliable,best_effort] [--ros-python PY]

Two lab namespaces joined by a veth pair, a husarnet-ros daemon in each (whitelisting each other), a
publisher in robot-a and a subscriber in robot-b. For every middleware (Fast DDS through real rclpy nodes
and std_msgs/UInt8MultiArray; Cyclone DDS through its Python binding, a plain writer and reader of an
octet array), reliability, message size and path, one publisher/subscriber pair runs the offered rates one
after the other (lowest first), each for a bounded time with a quiet drain after it. Paths:

* ``overlay``: the files husarnet_ros.dds writes for the robots' fc94 addresses, over hnet0;
* ``raw``: the very same files with the underlay (fd00:98::) addresses put in, over the veth;
* ``overlay-untuned``: the overlay with the files as they were before issue 10 (no datagram size, no socket
  buffers: Fast DDS sends 64 KB datagrams, Cyclone 14720 B ones, IP-fragmented on hnet0). Not by default;
* ``raw-default``: the middleware's own defaults over the veth (IPv4, multicast discovery; Fast DDS with
  shared memory off so that it cannot bypass the network), as in issue 10's measurement. Not by default.

Per cell: messages delivered of those sent, delivered Mbit/s, whether delivery stalled (no message for more
than 2 s while still publishing), overlay ÷ raw, and the IP fragments the publisher's namespace created. TCP
capacity of both paths (iperf3, one stream) is measured in the same run, so each row says whether its
offered rate is above the overlay's. Needs root; never gates CI. Cyclone DDS needs the ``cyclonedds`` Python
package (``.venv/bin/pip install cyclonedds``); there is no rmw_cyclonedds_cpp wheel, so no ROS node here.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This checkout's husarnet_ros, not an installed copy: the profiles and the daemons measured are the working
# tree's, as in the tests (the lab's daemons run the husarnet_ros this process imports).
sys.path.insert(0, str(REPO))

from dds_lab import PATHS, Endpoints, Group, Robots, run_group, start_robots, stop_robots  # noqa: E402
from dds_report import aggregate, capacity_lines, markdown, phase_result  # noqa: E402
from measure import measure_throughput, run_iperf, start_iperf_server  # noqa: E402
from report import save  # noqa: E402

from husarnet_ros import dds  # noqa: E402
from husarnet_ros.core.errors import HusarnetError  # noqa: E402
from husarnet_ros.testing.netlab import Lab, cleanup_stale, netns_supported  # noqa: E402
from husarnet_ros.testing.ros_launch import private_domain_id  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "dds.json"
MIDDLEWARES = ("fastdds", "cyclonedds")
DEFAULT_PATHS = ("raw", "overlay")
RELIABILITIES = ("reliable", "best_effort")
# Offered rates (Hz) per message size, lowest first: about 25, 100 and 250 Mbit/s, and for the large
# messages ~1 Gbit/s, above the overlay's TCP capacity (a Python publisher cannot offer that much in 10 KB or
# 100 KB messages). 1 MB at 15 and 30 Hz are issue 10's cases.
RATES: dict[int, tuple[float, ...]] = {
    10_000: (300.0, 1200.0, 3000.0),
    100_000: (30.0, 120.0, 300.0),
    1_000_000: (3.0, 15.0, 30.0, 125.0),
    4_000_000: (1.0, 4.0, 8.0, 32.0),
}
QUICK_RATES: dict[int, tuple[float, ...]] = {100_000: (30.0, 120.0), 1_000_000: (15.0, 30.0)}
CAPACITY_SECONDS = 3.0
# DDS cannot use the overlay's TCP segmentation offload: its datagrams are one packet each. What the overlay
# carries of such packets is measured too: UDP datagrams of the DDS files' size, offered at this rate.
UDP_PROBE_MBIT = 2000
START_UP_S = 4.0  # per group: processes, discovery, shutdown (for the time estimate only)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(item.strip() for item in text.split(",") if item.strip())
        if not values or any(value not in allowed for value in values):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (got {text!r})")
        return values

    return parse


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"byte counts separated by commas, not {text!r}") from None
    if any(size not in RATES for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes with rates defined: {', '.join(map(str, RATES))}")
    return sizes


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates in Hz separated by commas, not {text!r}") from None
    if any(not 0 < rate <= 10_000 for rate in rates):
        raise argparse.ArgumentTypeError("rates must be above 0 and at most 10000 Hz")
    return rates


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 KB and 1 MB, RELIABLE, two rates each")
    parser.add_argument("--runs", type=int, default=1, help="repeat every group this often (median, min-max)")
    parser.add_argument("--phase-seconds", type=float, default=5.0, help="seconds per offered rate (5)")
    parser.add_argument("--middlewares", type=_choices(MIDDLEWARES), default=MIDDLEWARES)
    parser.add_argument("--paths", type=_choices(PATHS), default=DEFAULT_PATHS)
    parser.add_argument("--reliabilities", type=_choices(RELIABILITIES), default=None)
    parser.add_argument("--sizes", type=_sizes, default=None, help=f"bytes, of {', '.join(map(str, RATES))}")
    parser.add_argument("--rates", type=_rates, default=None, help="rates (Hz) for every size, e.g. 15,30")
    parser.add_argument(
        "--ros-python", type=Path, default=None, help="Python of another ROS 2 venv (Fast DDS)"
    )
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--md-out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 10:
        parser.error("--runs must be between 1 and 10")
    if not 2 <= args.phase_seconds <= 60:
        parser.error("--phase-seconds must be between 2 and 60")
    table = QUICK_RATES if args.quick else RATES
    args.sizes = args.sizes or tuple(table)
    args.reliabilities = args.reliabilities or (("reliable",) if args.quick else RELIABILITIES)
    return args


def plan(args: argparse.Namespace) -> list[Group]:
    """Every group of the matrix, in the order they run (a run's groups, then the next run's)."""
    table = QUICK_RATES if args.quick else RATES
    return [
        Group(middleware, reliability, size, path, args.rates or table.get(size, RATES[size]))
        for middleware in args.middlewares
        for reliability in args.reliabilities
        for size in args.sizes
        for path in args.paths
    ]


def measure_capacity(robots: Robots, datagram: int) -> dict[str, Any]:
    """Robot-a to robot-b over the underlay and over the overlay: iperf3 TCP (one stream), and UDP datagrams
    of ``datagram`` bytes offered at UDP_PROBE_MBIT (what arrives, and the share lost)."""
    client, server = robots.hosts
    start_iperf_server(server)
    capacity = {}
    for name, address in (("raw", server.ipv6), ("overlay", robots.overlay["robot-b"])):
        tcp = measure_throughput(
            client, address, streams=1, duration=CAPACITY_SECONDS, tunnel_pids=[robots.a.pid, robots.b.pid]
        )
        udp_argv = ["--udp", "--length", str(datagram), "--bitrate", f"{UDP_PROBE_MBIT}M"]
        udp = run_iperf(
            client, address, [*udp_argv, "--time", f"{CAPACITY_SECONDS:g}"], CAPACITY_SECONDS + 20
        )
        received = udp["end"]["sum"]
        capacity[name] = {
            "mbit_per_second": tcp.mbit_per_second,
            "udp_datagram_bytes": datagram,
            "udp_mbit_per_second": received["bits_per_second"] / 1e6 * (1 - received["lost_percent"] / 100),
            "udp_lost_percent": received["lost_percent"],
        }
    return capacity


def _distribution_version(python: str, distribution: str, env: dict[str, str] | None) -> str:
    probe = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    try:
        out = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=30, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine_info(args: argparse.Namespace, robots: Robots, endpoints: Endpoints, mtu: int) -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        ).stdout

    python = endpoints.python("fastdds")
    env = endpoints.base_env(robots.workdir) if args.ros_python else None
    fastdds = _distribution_version(python, "ros-fastdds", env)
    if fastdds == "unknown":  # Fast DDS 2.x (Jazzy) is the ros-fastrtps distribution
        fastdds = _distribution_version(python, "ros-fastrtps", env)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "husarnet_ros_commit": git("log", "--oneline", "-1").strip(),
        # The lab's daemons run the working tree: uncommitted changes to the daemon count too.
        "daemon_changes_uncommitted": git(
            "status", "--short", "--", "husarnet_ros/daemon", "husarnet_ros/core"
        ),
        "fastdds": fastdds,
        "cyclonedds": _distribution_version(sys.executable, "cyclonedds", None),
        "overlay_mtu": mtu,
        "dataplane": robots.a.status().get("dataplane"),
        "phase_seconds": args.phase_seconds,
        "runs": args.runs,
        "paths": list(args.paths),
    }


def summarize(group: Group, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The group's run as one result per rate."""
    published, arrivals = result["published"], result["arrivals"]
    rows = []
    for index, phase in enumerate(published["phases"]):
        row = phase_result(index, phase, arrivals, group.size)
        row["ip_fragments"] = result["ip_fragments"]  # per group: the publisher's namespace, all rates
        row["overlay_packets"] = result["overlay_packets"]
        row["path_packets"] = result["path_packets"]
        row["subscriber_side_drops"] = result["subscriber_side_drops"]
        row["matched_after_s"] = published["matched_after_s"]
        rows.append(row)
    return rows


def _phase_line(row: dict[str, Any]) -> str:
    stalled = " STALLED" if row["stalled"] else ""
    return f"{row['rate_hz']:g} Hz {row['delivered']}/{row['sent']}{stalled}"


def _group_line(rows: list[dict[str, Any]]) -> str:
    drops = rows[0]["subscriber_side_drops"]
    counters = (
        f"IP fragments {rows[0]['ip_fragments']}, packets sent: hnet0 {rows[0]['overlay_packets']}, "
        f"path {rows[0]['path_packets']}, "
        f"receive buffer drops at robot-b udp6 {drops['udp6']} udp4 {drops['udp4']}"
    )
    return ", ".join(_phase_line(row) for row in rows) + f" ({counters})"


def run(args: argparse.Namespace) -> dict[str, Any]:
    cleanup_stale()
    groups = plan(args)
    endpoints = Endpoints(private_domain_id(29), args.phase_seconds, args.ros_python)
    estimate = sum(group.busy_seconds(args.phase_seconds) + START_UP_S for group in groups) * args.runs
    progress(f"{len(groups)} groups x {args.runs} run(s): about {estimate / 60:.0f} min")
    per_cell: dict[tuple[str, str, int, str, float], list[dict[str, Any]]] = {}
    with Lab() as lab:
        workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-dds-", dir="/tmp"))
        robots = None
        try:
            robots = start_robots(lab, workdir)
            mtu = robots.overlay_mtu()
            results: dict[str, Any] = {"meta": machine_info(args, robots, endpoints, mtu), "cells": []}
            progress(f"lab {lab.prefix}: robots up, overlay MTU {mtu}")
            results["capacity"] = measure_capacity(robots, dds.max_datagram(mtu))
            progress(capacity_lines(results).strip())
            for run_index in range(args.runs):
                for number, group in enumerate(groups, 1):
                    started = time.monotonic()
                    rows = summarize(group, run_group(robots, endpoints, group, mtu))
                    summary = _group_line(rows)
                    done = run_index * len(groups) + number
                    elapsed = time.monotonic() - started
                    progress(f"[{done}/{len(groups) * args.runs}] {group.tag}: {summary} ({elapsed:.0f} s)")
                    for row in rows:
                        key = (group.middleware, group.reliability, group.size, group.path, row["rate_hz"])
                        per_cell.setdefault(key, []).append(row)
            results["meta"]["load_average_after"] = list(os.getloadavg())
        finally:
            if robots is not None:
                stop_robots(robots)
            shutil.rmtree(workdir, ignore_errors=True)
    for (middleware, reliability, size, path, rate), runs in per_cell.items():
        cell = {
            "middleware": middleware,
            "reliability": reliability,
            "size": size,
            "path": path,
            "rate_hz": rate,
        }
        results["cells"].append(cell | {"summary": aggregate(runs), "runs": runs})
    return results


def missing_requirements(args: argparse.Namespace) -> str | None:
    reason = netns_supported()
    if reason:
        return reason
    if "cyclonedds" in args.middlewares and importlib.util.find_spec("cyclonedds") is None:
        pip = Path(sys.executable).parent / "pip"
        return (
            f"the cyclonedds Python package is missing: {pip} install cyclonedds (or --middlewares fastdds)"
        )
    if shutil.which("iperf3") is None:
        return "iperf3 is missing (apt-get install iperf3)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = missing_requirements(args)
    if reason:
        print(f"dds benchmark: {reason}", file=sys.stderr)
        return 2
    try:
        results = run(args)
    except (HusarnetError, OSError) as exc:
        print(f"dds benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; lab cleaned up", file=sys.stderr)
        return 130
    table = capacity_lines(results) + "\n" + markdown(results)
    save(results, table, args.json_out, args.md_out, progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
