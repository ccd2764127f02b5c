"""Path recovery benchmark: how long the overlay is out after a link flap, a silent outage and an address
change, against the underlay's own recovery from the same fault in the same run.

    python bench/recovery.py [--outage S] [--runs N] [--json-out PATH] [--md-out PATH]

Two robots with real daemons on a LAN of network namespaces. For each fault, two pings (one every 20 ms)
run side by side from robot-a to robot-b: across the overlay (fc94 address) and across the underlay (the
IPv4 address the fault leaves reachable). Reported per fault: seconds from the repair to the first reply,
for both, and their difference (what the overlay adds); for the address change, the longest gap in
replies. Needs root. Never gates CI: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This checkout's husarnet_ros, not a copy installed in the venv: the daemons (started with this package's
# directory on their PYTHONPATH, husarnet_ros.testing.lab_daemon) must run the code being measured.
sys.path.insert(0, str(REPO))

from husarnet_ros.fileio import atomic_write_text  # noqa: E402
from husarnet_ros.testing.lab_daemon import Daemon, whitelist_each_other  # noqa: E402
from husarnet_ros.testing.netlab import Host, Lab, cleanup_stale, netns_supported  # noqa: E402
from husarnet_ros.testing.outage import ContinuousPing, change_ipv4, connect_switch, set_link  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "recovery.json"
SETTLE_S = 4.0  # after the repair, before the pings stop


def progress(message: str) -> None:
    print(f"[recovery] {message}", file=sys.stderr, flush=True)


def two_robots(lab: Lab) -> tuple[Host, Host, Daemon, Daemon, str]:
    a_host, b_host = lab.lan(2, ["robot-a", "robot-b"])
    a = Daemon.create(a_host, "robot-a").start()
    b = Daemon.create(b_host, "robot-b").start()
    addresses = whitelist_each_other([a, b])
    a.wait_path(addresses["robot-b"], "direct", timeout=20)
    b.wait_path(addresses["robot-a"], "direct", timeout=20)
    # Let the path settle on its preferred endpoint (IPv4) before breaking it.
    a.wait_path(addresses["robot-b"], "direct", timeout=10)
    time.sleep(1.0)
    return a_host, b_host, a, b, addresses["robot-b"]


def measure_outage(
    outage_s: float, break_it: Callable[[Lab, Host], None], heal_it: Callable[[Lab, Host], None]
) -> dict[str, float | None]:
    with Lab() as lab:
        a_host, b_host, a, b, overlay = two_robots(lab)
        try:
            pings = {
                "overlay": ContinuousPing(a_host, overlay, seconds=outage_s + SETTLE_S + 5),
                "underlay": ContinuousPing(a_host, b_host.ipv4, seconds=outage_s + SETTLE_S + 5),
            }
            time.sleep(1.0)
            break_it(lab, a_host)
            time.sleep(outage_s)
            heal_it(lab, a_host)
            healed = time.time()
            time.sleep(SETTLE_S)
            for ping in pings.values():
                ping.stop()
            return {name: ping.first_reply_after(healed) for name, ping in pings.items()}
        finally:
            for daemon in (a, b):
                daemon.stop()
                daemon.remove_files()


def measure_address_change() -> dict[str, float | None]:
    with Lab() as lab:
        a_host, b_host, a, b, overlay = two_robots(lab)
        try:
            ping = ContinuousPing(a_host, overlay, seconds=SETTLE_S + 5)
            time.sleep(1.0)
            change_ipv4(b_host, "198.18.0.50")
            time.sleep(SETTLE_S)
            ping.stop()
            return {"overlay": ping.longest_gap(), "underlay": None}
        finally:
            for daemon in (a, b):
                daemon.stop()
                daemon.remove_files()


def summary(values: list[float | None]) -> dict[str, float | None]:
    numbers = [v for v in values if v is not None]
    return {
        "median_s": statistics.median(numbers) if numbers else None,
        "max_s": max(numbers) if numbers else None,
        "never_recovered": len(values) - len(numbers),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    faults: dict[str, Callable[[], dict[str, float | None]]] = {
        f"link flap ({args.outage:g} s, robot-a's own link)": lambda: measure_outage(
            args.outage,
            lambda _lab, host: set_link(host, up=False),
            lambda _lab, host: set_link(host, up=True),
        ),
        f"silent outage ({args.outage:g} s, the switch)": lambda: measure_outage(
            args.outage,
            lambda lab, _host: connect_switch(lab, False),
            lambda lab, _host: connect_switch(lab, True),
        ),
        "address change (robot-b's IPv4, longest gap)": measure_address_change,
    }
    results: dict[str, Any] = {"runs": args.runs, "faults": {}}
    for name, measure in faults.items():
        samples = []
        for i in range(args.runs):
            progress(f"{name}: run {i + 1}/{args.runs}")
            samples.append(measure())
        results["faults"][name] = {
            "overlay": summary([s["overlay"] for s in samples]),
            "underlay": summary([s["underlay"] for s in samples]),
        }
    return results


def markdown(results: dict[str, Any]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"Recovery after the repair, median (max) of {results['runs']} runs, seconds.",
        "",
        "| fault | overlay | underlay (same run) | overlay - underlay |",
        "|---|---:|---:|---:|",
    ]
    for name, fault in results["faults"].items():
        overlay, underlay = fault["overlay"], fault["underlay"]
        extra = (
            None
            if overlay["median_s"] is None or underlay["median_s"] is None
            else overlay["median_s"] - underlay["median_s"]
        )
        lines.append(
            f"| {name} | {cell(overlay['median_s'])} ({cell(overlay['max_s'])}) "
            f"| {cell(underlay['median_s'])} ({cell(underlay['max_s'])}) | {cell(extra)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=5.0, help="seconds each fault lasts (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per fault (default 3)")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--md-out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    if not 1 <= args.outage <= 60 or not 1 <= args.runs <= 20:
        parser.error("--outage must be 1..60 s and --runs 1..20")
    reason = netns_supported()
    if reason:
        parser.exit(2, f"recovery: cannot run here: {reason}\n")
    cleanup_stale()
    results = run(args)
    table = markdown(results)
    print(table)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json_out, json.dumps(results, indent=2) + "\n")
    if args.md_out:
        atomic_write_text(args.md_out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
