"""Data-plane benchmark: raw veth vs wireguard-go vs the husarnet_ros overlay, in one run.

    python bench/dataplane.py [--duration S] [--json-out PATH] [--md-out PATH] [--skip-overlay]

Two fresh network namespaces joined by a veth pair carry, one after the other, the raw
underlay, a wireguard-go tunnel and the husarnet_ros overlay. For each: iperf3 TCP
throughput with 1 and 4 streams, ping RTT, and the CPU time (user + system, both ends)
and RSS of the tunnel processes. Prints a Markdown table with ratios, writes JSON.
Needs root. Never gates CI: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
try:
    import husarnet_ros  # noqa: F401
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from measure import measure_rtt, measure_throughput, start_iperf_server  # noqa: E402
from report import markdown, ratios  # noqa: E402
from tunnels import Tunnel, husarnet_ros_overlay, make_workdir, raw_veth, wireguard_go  # noqa: E402

from husarnet_ros.core.errors import HusarnetError  # noqa: E402
from husarnet_ros.fileio import atomic_write_text  # noqa: E402
from husarnet_ros.testing.netlab import Host, Lab, cleanup_stale, netns_supported  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "dataplane.json"
REQUIRED_TOOLS = ("ip", "iperf3", "ping", "wg", "wireguard-go")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per iperf3 run (default 5)")
    parser.add_argument("--pings", type=int, default=50, help="pings per RTT measurement (default 50)")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--md-out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--skip-overlay", action="store_true", help="only raw veth and wireguard-go")
    parser.add_argument("--skip-wireguard", action="store_true", help="no wireguard-go baseline")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120:
        parser.error("--duration must be between 1 and 120 seconds")
    if not 1 <= args.pings <= 1000:
        parser.error("--pings must be between 1 and 1000")
    return args


def measure_path(tunnel: Tunnel, client: Host, args: argparse.Namespace) -> dict[str, Any]:
    progress(f"{tunnel.name}: TCP 1 stream, {args.duration:g} s")
    one = measure_throughput(
        client, tunnel.server_address, streams=1, duration=args.duration, tunnel_pids=tunnel.tunnel_pids
    )
    progress(f"{tunnel.name}: TCP 4 streams, {args.duration:g} s")
    four = measure_throughput(
        client, tunnel.server_address, streams=4, duration=args.duration, tunnel_pids=tunnel.tunnel_pids
    )
    progress(f"{tunnel.name}: {args.pings} pings")
    rtt = measure_rtt(client, tunnel.server_address, count=args.pings)
    return {
        "server_address": tunnel.server_address,
        "interface": tunnel.interface,
        "mtu": tunnel.mtu,
        "tunnel_processes": len(tunnel.tunnel_pids),
        "versions": tunnel.versions,
        "setup_timings": tunnel.timings,
        "tcp_1": one.to_json(),
        "tcp_4": four.to_json(),
        "rtt": rtt.to_json(),
    }


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (
        (out.stdout or out.stderr).strip().splitlines()[0]
        if (out.stdout or out.stderr).strip()
        else "unknown"
    )


def machine_info() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        # Other work on the machine skews every number: keep the load next to them.
        "load_average_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
        "husarnet_ros_commit": tool_version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "iperf3": tool_version(["iperf3", "--version"]),
        "wireguard-go": tool_version(["wireguard-go", "--version"]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": machine_info() | {"duration_s": args.duration, "pings": args.pings},
        "paths": {},
    }
    cleanup_stale()
    with Lab() as lab:
        workdir = make_workdir(lab)
        try:
            client, server = lab.pair(labels=["client", "server"])
            start_iperf_server(server)
            progress(f"lab {lab.prefix}: {client.netns} -> {server.netns}")
            setups: list[tuple[str, Any]] = [("raw veth", lambda: raw_veth(client, server))]
            if not args.skip_wireguard:
                setups.append(("wireguard-go", lambda: wireguard_go(lab, client, server, workdir)))
            if not args.skip_overlay:
                setups.append(("husarnet_ros", lambda: husarnet_ros_overlay(client, server)))
            for name, setup in setups:
                progress(f"{name}: setting up")
                started = time.monotonic()
                tunnel: Tunnel = setup()
                # Start of the tunnel processes until the server answers a ping through the path.
                setup_s = time.monotonic() - started
                try:
                    results["paths"][name] = measure_path(tunnel, client, args) | {"setup_s": setup_s}
                finally:
                    tunnel.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    results["ratios"] = ratios(results["paths"])
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = netns_supported()
    if reason:
        print(f"dataplane benchmark: {reason}", file=sys.stderr)
        return 2
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        hint = "apt-get install iperf3 wireguard-go wireguard-tools iputils-ping"
        print(f"dataplane benchmark: missing tools: {', '.join(missing)} ({hint})", file=sys.stderr)
        return 2
    try:
        results = run(args)
    except (HusarnetError, OSError) as exc:
        print(f"dataplane benchmark failed: {exc}", file=sys.stderr)
        if not args.skip_overlay:
            print("(use --skip-overlay to measure only the baselines)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; lab cleaned up", file=sys.stderr)
        return 130
    table = markdown(results)
    print(table)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json_out, json.dumps(results, indent=2) + "\n")
    progress(f"JSON written to {args.json_out}")
    if args.md_out:
        atomic_write_text(args.md_out, table)
        progress(f"Markdown written to {args.md_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
