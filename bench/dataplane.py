"""Data-plane benchmark: the husarnet_ros overlay against raw veth and other VPNs, all in one run.

    python bench/dataplane.py [--runs N] [--duration S] [--paths a,b,...] [--json-out PATH] [--md-out PATH]

Each path (raw veth, wireguard-go at its defaults and with a 9000-byte MTU, tinc, nebula, n2n, husarnet_ros)
is measured in a fresh pair of network namespaces joined by a veth: start-up (starting the tunnel's
processes until the first ping is answered through it), iperf3 TCP throughput with 1 and 4 streams, ping
RTT (avg, p50, p99, min) and the tunnel processes' CPU time per Gbit and RSS. Every path is measured
``--runs`` times, in a different order each run so that drift on the machine hits all paths alike; the
report gives medians and min-max and the ratios of husarnet_ros to the best of the other VPNs, each
against its target. Missing Debian packages are installed (apt-get) unless --no-install. Needs root.
Never gates CI: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This checkout's husarnet_ros, not a copy installed in the venv: the daemons (started with this package's
# directory on their PYTHONPATH, husarnet_ros.testing.lab_daemon) must run the code being measured.
sys.path.insert(0, str(REPO))

from measure import measure_rtt, measure_throughput, start_iperf_server  # noqa: E402
from packages import MissingTools, ensure_commands  # noqa: E402
from peers.n2n import n2n  # noqa: E402
from peers.nebula import nebula  # noqa: E402
from peers.tinc import tinc  # noqa: E402
from report import aggregate, markdown, save, targets  # noqa: E402
from tunnels import (  # noqa: E402
    JUMBO_UNDERLAY_MTU,
    Tunnel,
    husarnet_ros_jumbo,
    husarnet_ros_overlay,
    husarnet_ros_relayed,
    make_workdir,
    raw_veth,
    set_underlay_mtu,
    tool_version,
    wireguard_go,
    wireguard_go_jumbo,
)

import husarnet_ros  # noqa: E402
from husarnet_ros.core.errors import HusarnetError  # noqa: E402
from husarnet_ros.testing.netlab import Host, Lab, cleanup_stale, netns_supported  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "dataplane.json"
BASE_COMMANDS = ("ip", "ss", "ping", "iperf3")

Setup = Callable[[Lab, Host, Host, Path], Tunnel]


@dataclass(frozen=True)
class PathSpec:
    setup: Setup
    commands: tuple[str, ...]  # what it runs besides the base commands


def path_specs(daemon_args: list[str]) -> dict[str, PathSpec]:
    def overlay(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
        return husarnet_ros_overlay(lab, client, server, workdir, daemon_args)

    def jumbo(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
        return husarnet_ros_jumbo(lab, client, server, workdir, daemon_args)

    def relayed(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
        return husarnet_ros_relayed(lab, client, server, workdir, daemon_args)

    def relayed_tcp(lab: Lab, client: Host, server: Host, workdir: Path) -> Tunnel:
        return husarnet_ros_relayed(lab, client, server, workdir, daemon_args, tcp=True)

    return {
        "raw veth": PathSpec(raw_veth, ()),
        "wireguard-go": PathSpec(wireguard_go, ("wg", "wireguard-go")),
        "wireguard-go MTU 9000": PathSpec(wireguard_go_jumbo, ("wg", "wireguard-go")),
        "tinc": PathSpec(tinc, ("tincd",)),
        "nebula": PathSpec(nebula, ("nebula", "nebula-cert")),
        "n2n": PathSpec(n2n, ("edge", "supernode")),
        "husarnet_ros": PathSpec(overlay, ()),
        "husarnet_ros jumbo underlay": PathSpec(jumbo, ()),
        "husarnet_ros relayed": PathSpec(relayed, ("nft",)),
        "husarnet_ros relayed over TCP": PathSpec(relayed_tcp, ("nft",)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    names = list(path_specs([]))
    parser.add_argument("--runs", type=int, default=3, help="measurements of every path (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per iperf3 run (default 5)")
    parser.add_argument("--pings", type=int, default=200, help="pings per RTT measurement (default 200)")
    parser.add_argument(
        "--ping-interval", type=float, default=0.01, help="seconds between pings (default 0.01)"
    )
    parser.add_argument(
        "--paths", default=",".join(names), help=f"comma list out of: {', '.join(names)} (default all)"
    )
    parser.add_argument(
        "--daemon-arg", action="append", default=[], metavar="ARG",
        help="extra argument for both husarnet-ros daemons, e.g. --daemon-arg=--mtu=9000 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--underlay-mtu", type=int, default=None, metavar="N",
        help="the veth's MTU in every lab (default: the veth's own, 1500; the jumbo paths raise theirs to "
        f"{JUMBO_UNDERLAY_MTU} whatever this says), e.g. {JUMBO_UNDERLAY_MTU}: every tunnel on a jumbo LAN",
    )  # fmt: skip
    parser.add_argument(
        "--no-install", action="store_true", help="fail instead of installing missing packages"
    )
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--md-out", type=Path, help="also write the Markdown tables here")
    args = parser.parse_args(argv)
    args.paths = [name.strip() for name in args.paths.split(",") if name.strip()]
    unknown = [name for name in args.paths if name not in names]
    if unknown or not args.paths:
        parser.error(
            f"--paths: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(names)}"
        )
    if args.underlay_mtu is not None and not 1280 <= args.underlay_mtu <= 65535:
        parser.error("--underlay-mtu must be between 1280 and 65535")
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    if not 1 <= args.duration <= 120:
        parser.error("--duration must be between 1 and 120 seconds")
    if not 1 <= args.pings <= 1000:
        parser.error("--pings must be between 1 and 1000")
    if not 0.002 <= args.ping_interval <= 1:
        parser.error("--ping-interval must be between 0.002 and 1 second")
    return args


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_once(name: str, spec: PathSpec, args: argparse.Namespace) -> dict[str, Any]:
    """One path in a lab of its own: set it up, measure, tear it all down (processes, interfaces, files)."""
    with Lab() as lab:
        workdir = make_workdir(lab)
        try:
            client, server = lab.pair(labels=["client", "server"])
            if args.underlay_mtu:
                set_underlay_mtu((client, server), args.underlay_mtu)
            start_iperf_server(server)
            tunnel = spec.setup(lab, client, server, workdir)
            try:
                startup = "" if tunnel.startup_s is None else f", started in {tunnel.startup_s:.3f} s"
                progress(
                    f"{name}: up in {lab.prefix}{startup}; TCP 1 and 4 streams, {args.duration:g} s each"
                )
                one = measure_throughput(
                    client,
                    tunnel.server_address,
                    streams=1,
                    duration=args.duration,
                    tunnel_pids=tunnel.tunnel_pids,
                )
                four = measure_throughput(
                    client,
                    tunnel.server_address,
                    streams=4,
                    duration=args.duration,
                    tunnel_pids=tunnel.tunnel_pids,
                )
                rtt = measure_rtt(
                    client, tunnel.server_address, count=args.pings, interval=args.ping_interval
                )
            finally:
                tunnel.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "server_address": tunnel.server_address,
        "interface": tunnel.interface,
        "mtu": tunnel.mtu,
        "startup_s": tunnel.startup_s,
        "tunnel_processes": len(tunnel.tunnel_pids),
        "versions": tunnel.versions,
        "details": tunnel.details,
        "tcp_1": one.to_json(),
        "tcp_4": four.to_json(),
        "rtt": rtt.to_json(),
    }


def run_order(names: list[str], run: int) -> list[str]:
    """Run r starts r places further down the list, so no path is always first (or always after another)."""
    shift = run % len(names)
    order = names[shift:] + names[:shift]
    return order if run % 2 == 0 else order[::-1]


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
        "husarnet_ros_package": str(Path(husarnet_ros.__file__).parent),
        "iperf3": tool_version(["iperf3", "--version"]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    specs = path_specs(args.daemon_arg)
    results: dict[str, Any] = {
        "meta": machine_info()
        | {
            "runs": args.runs,
            "duration_s": args.duration,
            "pings": args.pings,
            "ping_interval_s": args.ping_interval,
            "daemon_args": args.daemon_arg,
            "underlay_mtu": args.underlay_mtu,
            "paths": args.paths,
        },
        "runs": [],
    }
    cleanup_stale()
    for run_index in range(args.runs):
        order = run_order(args.paths, run_index)
        progress(f"run {run_index + 1}/{args.runs}: {', '.join(order)}")
        measured: dict[str, Any] = {}
        for name in order:
            try:
                measured[name] = measure_once(name, specs[name], args)
            except (HusarnetError, OSError, KeyError, ValueError) as exc:
                # One path failing (a peer that would not come up) must not cost the others' numbers.
                progress(f"{name}: FAILED: {exc}")
                measured[name] = {"error": str(exc), "traceback": traceback.format_exc(limit=5)}
        results["runs"].append(
            {"order": order, "load_average_1_5_15": list(os.getloadavg()), "paths": measured}
        )
    results["summary"] = aggregate(results["runs"], args.paths)
    results["targets"] = targets(results["summary"])
    results["meta"]["load_average_after_1_5_15"] = list(os.getloadavg())
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = netns_supported()
    if reason:
        print(f"dataplane benchmark: {reason}", file=sys.stderr)
        return 2
    specs = path_specs(args.daemon_arg)
    commands = {*BASE_COMMANDS, *(command for name in args.paths for command in specs[name].commands)}
    try:
        ensure_commands(commands, install=not args.no_install)
    except MissingTools as exc:
        print(f"dataplane benchmark: {exc}", file=sys.stderr)
        return 2
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("interrupted; lab cleaned up", file=sys.stderr)
        return 130
    table = markdown(results)
    save(results, table, args.json_out, args.md_out, progress)
    failed = sum(1 for entry in results["runs"] for path in entry["paths"].values() if "error" in path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
