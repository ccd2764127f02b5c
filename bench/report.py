"""Medians over runs, husarnet_ros's ratios against the other VPNs with their targets, and Markdown tables."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OURS = "husarnet_ros"
UNDERLAY = "raw veth"
JUMBO = "wireguard-go MTU 9000"
RELAYED = "husarnet_ros relayed"  # through a base server's relay; judged against the direct path
# At its defaults on the jumbo underlay that JUMBO has: wireguard-go's 9000-byte MTU on equal ground.
OURS_JUMBO = "husarnet_ros jumbo underlay"
DEFAULT_PEERS = ("wireguard-go", "tinc", "nebula", "n2n")  # the VPNs at their default settings
DASH = "-"
EN_DASH = "\u2013"  # between the min and max of a range
MIB = 2**20


def _rss_mib(path: dict[str, Any]) -> float | None:
    values = path["tcp_4"]["tunnel_rss_bytes"]
    return max(values) / MIB if values else None


# Metric -> how to read it from one run's result of one path.
METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "tcp_1_mbit": lambda p: p["tcp_1"]["mbit_per_second"],
    "tcp_4_mbit": lambda p: p["tcp_4"]["mbit_per_second"],
    "tcp_1_retransmits": lambda p: p["tcp_1"]["retransmits"],
    "tcp_4_retransmits": lambda p: p["tcp_4"]["retransmits"],
    "rtt_avg_ms": lambda p: p["rtt"]["avg_ms"],
    "rtt_p50_ms": lambda p: p["rtt"]["p50_ms"],
    "rtt_p99_ms": lambda p: p["rtt"]["p99_ms"],
    "rtt_min_ms": lambda p: p["rtt"]["min_ms"],
    "cpu_1_s_per_gbit": lambda p: p["tcp_1"]["tunnel_cpu_seconds_per_gbit"],
    "cpu_4_s_per_gbit": lambda p: p["tcp_4"]["tunnel_cpu_seconds_per_gbit"],
    "rss_mib": _rss_mib,
    "startup_s": lambda p: p["startup_s"],
}


def spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def aggregate(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """path -> {runs_ok, errors, mtu, metrics: {metric -> {median, min, max, values} or None}}."""
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        results = [entry["paths"][name] for entry in runs if name in entry["paths"]]
        ok = [result for result in results if "error" not in result]
        metrics = {}
        for metric, read in METRICS.items():
            values = [float(value) for value in map(read, ok) if value is not None]
            metrics[metric] = spread(values)
        summary[name] = {
            "runs_ok": len(ok),
            "errors": [result["error"] for result in results if "error" in result],
            "mtu": sorted({result["mtu"] for result in ok}),
            "metrics": metrics,
        }
    return summary


def median(summary: dict[str, dict[str, Any]], name: str, metric: str) -> float | None:
    path = summary.get(name)
    if path is None or path["metrics"].get(metric) is None:
        return None
    return float(path["metrics"][metric]["median"])


# What a target compares husarnet_ros with.
BEST_DEFAULT = "best default peer"  # the best of DEFAULT_PEERS
BEST_PEER = "best peer"  # the best of DEFAULT_PEERS and JUMBO
ABSOLUTE = "absolute"  # a bound in the metric's unit; the best peer is shown for scale only


@dataclass(frozen=True)
class Target:
    label: str
    metric: str
    unit: str
    higher_is_better: bool
    against: str  # BEST_DEFAULT, BEST_PEER, JUMBO or ABSOLUTE
    bound: float  # a ratio, or for ABSOLUTE a value in ``unit``
    strict: bool = False  # "<" rather than "<=" (">=" is never strict)
    ours: str = OURS  # the path judged

    def describe(self) -> str:
        sign = ">=" if self.higher_is_better else ("<" if self.strict else "<=")
        return f"{sign} {self.bound:g} {self.unit}" if self.against == ABSOLUTE else f"{sign} {self.bound:g}x"

    def met_by(self, value: float) -> bool:
        if self.higher_is_better:
            return value >= self.bound
        return value < self.bound if self.strict else value <= self.bound


# issue 10's targets; "lower than every peer's" is a ratio below 1 against the best peer.
TARGETS = (
    Target("TCP 1 stream", "tcp_1_mbit", "Mbit/s", True, BEST_DEFAULT, 3.0),
    Target("TCP 1 stream", "tcp_1_mbit", "Mbit/s", True, JUMBO, 1.0),
    Target("TCP 4 streams", "tcp_4_mbit", "Mbit/s", True, BEST_DEFAULT, 3.0),
    Target("TCP 4 streams", "tcp_4_mbit", "Mbit/s", True, JUMBO, 1.0),
    Target("RTT avg", "rtt_avg_ms", "ms", False, BEST_PEER, 1.2),
    Target("RTT p99", "rtt_p99_ms", "ms", False, ABSOLUTE, 2.0, strict=True),
    Target("CPU per Gbit, 1 stream", "cpu_1_s_per_gbit", "s", False, BEST_PEER, 1.0, strict=True),
    Target("CPU per Gbit, 4 streams", "cpu_4_s_per_gbit", "s", False, BEST_PEER, 1.0, strict=True),
    Target("start-up", "startup_s", "s", False, ABSOLUTE, 0.5, strict=True),
    Target("TCP 1 stream, relayed", "tcp_1_mbit", "Mbit/s", True, OURS, 0.5, ours=RELAYED),
    # wireguard-go's 9000-byte MTU needs a jumbo underlay: husarnet_ros at its defaults on the same one.
    Target("TCP 1 stream, jumbo underlay", "tcp_1_mbit", "Mbit/s", True, JUMBO, 1.0, ours=OURS_JUMBO),
    Target("TCP 4 streams, jumbo underlay", "tcp_4_mbit", "Mbit/s", True, JUMBO, 1.0, ours=OURS_JUMBO),
    Target(
        "CPU per Gbit, 1 stream, jumbo underlay", "cpu_1_s_per_gbit", "s", False, JUMBO, 1.0, strict=True,
        ours=OURS_JUMBO,
    ),
    Target(
        "CPU per Gbit, 4 streams, jumbo underlay", "cpu_4_s_per_gbit", "s", False, JUMBO, 1.0, strict=True,
        ours=OURS_JUMBO,
    ),
)  # fmt: skip


def comparator(summary: dict[str, dict[str, Any]], target: Target) -> tuple[str | None, float | None]:
    """The name and median of what ``target`` compares with: one named path, or the best of a group."""
    if target.against in (JUMBO, OURS):  # one named path
        return target.against, median(summary, target.against, target.metric)
    group = DEFAULT_PEERS if target.against == BEST_DEFAULT else (*DEFAULT_PEERS, JUMBO)
    measured = [
        (name, value) for name in group if (value := median(summary, name, target.metric)) is not None
    ]
    if not measured:
        return None, None
    pick = max if target.higher_is_better else min
    return pick(measured, key=lambda item: item[1])


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target: husarnet_ros's median, the comparator, the ratio, and whether the target is met
    (None when something it needs was not measured)."""
    rows = []
    for target in TARGETS:
        ours = median(summary, target.ours, target.metric)
        name, value = comparator(summary, target)
        ratio = ours / value if ours is not None and value else None
        judged = ours if target.against == ABSOLUTE else ratio
        rows.append(
            {
                "label": target.label,
                "metric": target.metric,
                "unit": target.unit,
                "ours": ours,
                "against": target.against,
                "compared_with": name,
                "compared_value": value,
                "ratio": ratio,
                "target": target.describe(),
                "met": None if judged is None else target.met_by(judged),
            }
        )
    return rows


# --- Markdown ---------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _cell(summary: dict[str, Any], metric: str, digits: int) -> str:
    """Median, with the min-max over runs in parentheses when there was more than one run."""
    stats = summary["metrics"].get(metric)
    if stats is None:
        return DASH
    text = _num(stats["median"], digits)
    if len(stats["values"]) > 1:
        text += f" ({_num(stats['min'], digits)}{EN_DASH}{_num(stats['max'], digits)})"
    return text


PATH_COLUMNS = (
    ("TCP 1 stream (Mbit/s)", "tcp_1_mbit", 0),
    ("TCP 4 streams (Mbit/s)", "tcp_4_mbit", 0),
    ("RTT avg (ms)", "rtt_avg_ms", 3),
    ("RTT p50 (ms)", "rtt_p50_ms", 3),
    ("RTT p99 (ms)", "rtt_p99_ms", 3),
    ("RTT min (ms)", "rtt_min_ms", 3),
    ("CPU s/Gbit, 1 stream", "cpu_1_s_per_gbit", 2),
    ("CPU s/Gbit, 4 streams", "cpu_4_s_per_gbit", 2),
    ("RSS MiB (largest process)", "rss_mib", 1),
    ("start-up (s)", "startup_s", 3),
)


def _compared(row: dict[str, Any]) -> str:
    name, against = row["compared_with"], str(row["against"])
    if name is None:
        return DASH
    if against in (JUMBO, OURS):
        return str(name)
    return f"{'best peer, for scale' if against == ABSOLUTE else against}: {name}"


def markdown(results: dict[str, Any]) -> str:
    summary: dict[str, dict[str, Any]] = results["summary"]
    runs = results["meta"]["runs"]
    lines = [
        f"Median (min{EN_DASH}max) of {runs} run{'s' if runs != 1 else ''}; "
        f"iperf3 {results['meta']['duration_s']:g} s, "
        f"{results['meta']['pings']} pings every {results['meta']['ping_interval_s']:g} s.",
        "",
        "| path | MTU | " + " | ".join(title for title, _, _ in PATH_COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(PATH_COLUMNS),
    ]
    for name, path in summary.items():
        mtu = "/".join(str(value) for value in path["mtu"]) or DASH
        cells = " | ".join(_cell(path, metric, digits) for _, metric, digits in PATH_COLUMNS)
        lines.append(f"| {name} | {mtu} | {cells} |")
    rows = results["targets"]
    if OURS in summary and summary[OURS]["runs_ok"]:
        lines += [
            "",
            f"| {OURS} target | {OURS} | compared with | its value | ratio | target | met |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for row in rows:
            digits = 0 if row["unit"] == "Mbit/s" else (2 if row["unit"] == "s" else 3)
            met = {True: "yes", False: "**no**", None: DASH}[row["met"]]
            compared = _compared(row)
            ratio = DASH if row["ratio"] is None else f"{row['ratio']:.2f}x"
            lines.append(
                f"| {row['label']} | {_num(row['ours'], digits)} {row['unit']} | {compared} "
                f"| {_num(row['compared_value'], digits)} | {ratio} | {row['target']} | {met} |"
            )
    failures = [(name, error) for name, path in summary.items() for error in path["errors"]]
    if failures:
        lines += ["", "Failed measurements:", ""]
        lines += [f"- {name}: {error.splitlines()[0]}" for name, error in failures]
    return "\n".join(lines) + "\n"


def save(
    results: dict[str, Any], table: str, json_out: Path, md_out: Path | None, progress: Callable[[str], None]
) -> None:
    """Print the table and write the JSON (and the Markdown, if asked), atomically, saying where."""
    from husarnet_ros.fileio import atomic_write_text

    print(table)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_out, json.dumps(results, indent=2) + "\n")
    progress(f"JSON written to {json_out}")
    if md_out:
        atomic_write_text(md_out, table)
        progress(f"Markdown written to {md_out}")
