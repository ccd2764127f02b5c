"""Rekey under load: does throughput dip when a tunnel replaces its session keys in the middle of a transfer?

    python bench/rekey.py [--duration S] [--paths husarnet_ros,wireguard-go] [--json-out PATH] [--md-out PATH]

Both husarnet_ros and WireGuard start a new handshake 120 s after a session was made (REKEY_AFTER_TIME in
husarnet_ros/core/constants.py). Each path is set up in a fresh pair of namespaces (as in dataplane.py) and
carries one iperf3 TCP stream for ``--duration`` seconds (default 135) with 1-second intervals, started
right after the tunnel came up, so the rekey falls a little before 120 s into the transfer. Reported per
path: when the rekey was seen (each end's last handshake time), the lowest 1-second interval from 5 s
before to 10 s after it (115-130 s if none was seen) against the median of all the other intervals, and
the tunnel's own counters before and after (for husarnet_ros, ``status --json`` of both daemons).
wireguard-go is the baseline measured in the same run. Needs root. Never gates CI.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This checkout's husarnet_ros, not a copy installed in the venv: the daemons (started with this package's
# directory on their PYTHONPATH, husarnet_ros.testing.lab_daemon) must run the code being measured.
sys.path.insert(0, str(REPO))

from dataplane import BASE_COMMANDS, machine_info, path_specs, progress  # noqa: E402
from measure import run_iperf, start_iperf_server  # noqa: E402
from packages import MissingTools, ensure_commands  # noqa: E402
from report import save  # noqa: E402
from tunnels import Tunnel, make_workdir  # noqa: E402

from husarnet_ros.core.constants import REKEY_AFTER_TIME  # noqa: E402
from husarnet_ros.core.errors import HusarnetError  # noqa: E402
from husarnet_ros.testing.netlab import Lab, cleanup_stale, netns_supported  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "rekey.json"
PATHS = ("husarnet_ros", "wireguard-go")
WINDOW_BEFORE_S, WINDOW_AFTER_S = 5.0, 10.0  # the rekey window, around the handshake
# Where the handshake is expected (the transfer starts as the session is made) if none is seen: 115-130 s.
WINDOW_S = (REKEY_AFTER_TIME - WINDOW_BEFORE_S, REKEY_AFTER_TIME + WINDOW_AFTER_S)
DIP_FRACTION = 0.5  # a 1-s interval in the window below half the usual rate is a dip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=135.0, help="seconds of iperf3 (default 135)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma list out of {', '.join(PATHS)}")
    parser.add_argument("--daemon-arg", action="append", default=[], metavar="ARG", help="as in dataplane.py")
    parser.add_argument(
        "--no-install", action="store_true", help="fail instead of installing missing packages"
    )
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--md-out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    args.paths = [name.strip() for name in args.paths.split(",") if name.strip()]
    if not args.paths or any(name not in PATHS for name in args.paths):
        parser.error(f"--paths: choose from {', '.join(PATHS)}")
    if not WINDOW_S[1] + 5 <= args.duration <= 300:
        parser.error(
            f"--duration must be between {WINDOW_S[1] + 5:g} and 300 s (rekey at {REKEY_AFTER_TIME:g} s)"
        )
    return args


def intervals(report: dict[str, Any]) -> list[dict[str, float]]:
    """iperf3's 1-second intervals: start and end (seconds into the transfer) and Mbit/s received."""
    return [
        {
            "start": float(entry["sum"]["start"]),
            "end": float(entry["sum"]["end"]),
            "mbit_per_second": float(entry["sum"]["bits_per_second"]) / 1e6,
        }
        for entry in report["intervals"]
    ]


def dip(series: list[dict[str, float]], handshake_at_s: float | None) -> dict[str, Any]:
    """The lowest interval inside the rekey window against the median of the intervals outside it.

    The window is 5 s before to 10 s after the client's new handshake when one was seen (the transfer
    starts a few seconds after the session was made, more on a busy machine), else 115-130 s. The lowest
    interval outside the window is given too: a dip that deep elsewhere is the machine's, not the rekey's.
    The first second (TCP slow start) is left out.
    """
    window = (
        WINDOW_S
        if handshake_at_s is None
        else (handshake_at_s - WINDOW_BEFORE_S, handshake_at_s + WINDOW_AFTER_S)
    )
    # Intervals that overlap the window count as inside it.
    inside = [entry for entry in series if entry["end"] > window[0] and entry["start"] < window[1]]
    outside = [entry["mbit_per_second"] for entry in series[1:] if entry not in inside]
    if not inside or not outside:
        return {"window_s": list(window), "min_in_window": None, "median_elsewhere": None, "ratio": None}
    lowest = min(inside, key=lambda entry: entry["mbit_per_second"])
    usual = statistics.median(outside)
    ratio = lowest["mbit_per_second"] / usual if usual else None
    return {
        "window_s": list(window),
        "min_in_window": lowest["mbit_per_second"],
        "min_in_window_at_s": lowest["start"],
        "median_elsewhere": usual,
        "ratio": ratio,
        "dip": ratio is not None and ratio < DIP_FRACTION,
        "min_elsewhere_ratio": min(outside) / usual if usual else None,
    }


def handshakes_seen(
    before: dict[str, Any], after: dict[str, Any], started_at: float
) -> dict[str, float | None]:
    """Per end, seconds into the transfer of the last handshake, if it changed during the transfer."""
    seen: dict[str, float | None] = {}
    for end, view in after.items():
        old, new = _handshake(before.get(end, {})), _handshake(view)
        seen[end] = new - started_at if new is not None and new != old else None
    return seen


def at_handshake(series: list[dict[str, float]], at_s: float | None) -> float | None:
    """Mbit/s of the 1-second interval in which the client's new handshake completed."""
    if at_s is None:
        return None
    for entry in series:
        if entry["start"] <= at_s < entry["end"]:
            return entry["mbit_per_second"]
    return None


def _handshake(view: dict[str, Any]) -> float | None:
    entry = view.get("peer", view)  # husarnet_ros: {"counters", "peer"}; wireguard-go: the peer itself
    value = entry.get("last_handshake") if isinstance(entry, dict) else None
    return float(value) if value is not None else None


def counter_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per end, the counters (drops and errors) that moved during the transfer."""
    changes = {}
    for end, view in after.items():
        old = before.get(end, {}).get("counters", {})
        moved = {key: value - old.get(key, 0) for key, value in view.get("counters", {}).items()}
        changes[end] = {key: delta for key, delta in moved.items() if delta}
    return changes


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = path_specs(args.daemon_arg)[name]
    with Lab() as lab:
        workdir = make_workdir(lab)
        try:
            client, server = lab.pair(labels=["client", "server"])
            start_iperf_server(server)
            tunnel: Tunnel = spec.setup(lab, client, server, workdir)
            try:
                progress(f"{name}: up in {lab.prefix}; one TCP stream for {args.duration:g} s")
                before = tunnel.snapshot()
                started_at = time.time()
                report = run_iperf(
                    client,
                    tunnel.server_address,
                    ["--time", f"{args.duration:g}", "--interval", "1"],
                    timeout=args.duration + 60.0,
                )
                after = tunnel.snapshot()
            finally:
                tunnel.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    series = intervals(report)
    seen = handshakes_seen(before, after, started_at)
    return {
        "mtu": tunnel.mtu,
        "startup_s": tunnel.startup_s,
        "mean_mbit_per_second": report["end"]["sum_received"]["bits_per_second"] / 1e6,
        "retransmits": report["end"]["sum_sent"].get("retransmits"),
        "rekey": dip(series, seen.get("client")),
        "handshake_at_s": seen,
        "mbit_per_second_at_handshake": at_handshake(series, seen.get("client")),
        "counter_changes": counter_changes(before, after),
        "before": before,
        "after": after,
        "intervals": series,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"One TCP stream for {results['meta']['duration_s']:g} s; "
        f"rekey window {WINDOW_BEFORE_S:g} s before to {WINDOW_AFTER_S:g} s after the client's new handshake "
        f"({WINDOW_S[0]:g}-{WINDOW_S[1]:g} s into the transfer if none was seen).",
        "",
        "| path | mean Mbit/s | median 1-s Mbit/s outside the window | lowest 1-s in the window (at s) "
        "| ratio | lowest elsewhere, ratio | handshake seen at s (client / server) | Mbit/s in that second "
        "| counters that moved |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for name, path in results["paths"].items():
        if "error" in path:
            lines.append(f"| {name} | failed: {path['error'].splitlines()[0]} |  |  |  |  |  |  |  |")
            continue
        rekey = path["rekey"]
        if rekey["ratio"] is None:
            lowest, ratio, elsewhere = "-", "-", "-"
        else:
            elsewhere = f"{rekey['min_elsewhere_ratio']:.2f}x"
            lowest = f"{rekey['min_in_window']:,.0f} ({rekey['min_in_window_at_s']:.0f})"
            ratio = f"{rekey['ratio']:.2f}x" + (" **dip**" if rekey["dip"] else "")
        usual = "-" if rekey["median_elsewhere"] is None else f"{rekey['median_elsewhere']:,.0f}"
        rate = path["mbit_per_second_at_handshake"]
        at = "-" if rate is None else f"{rate:,.0f}"
        seen = " / ".join("-" if at is None else f"{at:.1f}" for at in path["handshake_at_s"].values()) or "-"
        moved = "; ".join(
            f"{end}: " + ", ".join(f"{key} +{delta}" for key, delta in deltas.items())
            for end, deltas in path["counter_changes"].items()
            if deltas
        )
        lines.append(
            f"| {name} | {path['mean_mbit_per_second']:,.0f} | {usual} | {lowest} | {ratio} | {elsewhere} "
            f"| {seen} | {at} | {moved or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = netns_supported()
    if reason:
        print(f"rekey benchmark: {reason}", file=sys.stderr)
        return 2
    specs = path_specs(args.daemon_arg)
    try:
        ensure_commands(
            {*BASE_COMMANDS, *(c for name in args.paths for c in specs[name].commands)},
            install=not args.no_install,
        )
    except MissingTools as exc:
        print(f"rekey benchmark: {exc}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "meta": machine_info() | {"duration_s": args.duration, "daemon_args": args.daemon_arg},
        "paths": {},
    }
    cleanup_stale()
    try:
        for name in args.paths:
            try:
                results["paths"][name] = measure(name, args)
            except (HusarnetError, OSError, KeyError, ValueError) as exc:
                progress(f"{name}: FAILED: {exc}")
                results["paths"][name] = {"error": str(exc)}
    except KeyboardInterrupt:
        print("interrupted; lab cleaned up", file=sys.stderr)
        return 130
    table = markdown(results)
    save(results, table, args.json_out, args.md_out, progress)
    return 1 if any("error" in path for path in results["paths"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
