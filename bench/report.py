"""Markdown tables and ratios from the benchmark's JSON results."""

from __future__ import annotations

from typing import Any

BASELINES = ("raw veth", "wireguard-go")
DASH = "-"


def _num(value: float | None, digits: int = 0) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def _rank(name: str) -> int:
    return BASELINES.index(name) if name in BASELINES else len(BASELINES)


def ratios(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """path -> baseline -> {tcp_1, tcp_4, rtt_avg}: path's value divided by the baseline's.

    Throughput ratios above 1 are better; RTT ratios above 1 are worse.
    """
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, path in paths.items():
        table[name] = {}
        for baseline_name in BASELINES:
            baseline = paths.get(baseline_name)
            # Baselines are compared only with what comes before them: wireguard-go with raw veth.
            if baseline is None or _rank(baseline_name) >= _rank(name):
                continue
            table[name][baseline_name] = {
                "tcp_1": _ratio(path["tcp_1"]["mbit_per_second"], baseline["tcp_1"]["mbit_per_second"]),
                "tcp_4": _ratio(path["tcp_4"]["mbit_per_second"], baseline["tcp_4"]["mbit_per_second"]),
                "rtt_avg": _ratio(path["rtt"]["avg_ms"], baseline["rtt"]["avg_ms"]),
            }
    return table


def _mib(values: list[int]) -> str:
    return " / ".join(f"{value / 2**20:.1f}" for value in values) if values else DASH


def markdown(results: dict[str, Any]) -> str:
    paths: dict[str, dict[str, Any]] = results["paths"]
    lines = [
        "| path | MTU | TCP 1 stream (Mbit/s) | TCP 4 streams (Mbit/s) | RTT avg / min (ms) "
        "| tunnel CPU s per Gbit (1 / 4 streams) | tunnel RSS MiB (each end) | setup (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, path in paths.items():
        one, four, rtt = path["tcp_1"], path["tcp_4"], path["rtt"]
        cpu = (
            f"{_num(one['tunnel_cpu_seconds_per_gbit'], 2)} / {_num(four['tunnel_cpu_seconds_per_gbit'], 2)}"
            if one["tunnel_cpu_seconds_per_gbit"] is not None
            else DASH
        )
        throughput = f"{_num(one['mbit_per_second'])} | {_num(four['mbit_per_second'])}"
        latency = f"{_num(rtt['avg_ms'], 3)} / {_num(rtt['min_ms'], 3)}"
        rss = _mib(four["tunnel_rss_bytes"])
        setup = _num(path.get("setup_s"), 1)
        lines.append(
            f"| {name} | {path['mtu'] or DASH} | {throughput} | {latency} | {cpu} | {rss} | {setup} |"
        )
    table = ratios(paths)
    rows = [(name, by_baseline) for name, by_baseline in table.items() if by_baseline]
    if rows:
        lines += [
            "",
            "| path | vs | TCP 1 stream | TCP 4 streams | RTT avg |",
            "|---|---|---:|---:|---:|",
        ]
        for name, by_baseline in rows:
            for baseline_name, values in by_baseline.items():
                cells = " | ".join(
                    DASH if values[key] is None else f"{values[key]:.3f}x"
                    for key in ("tcp_1", "tcp_4", "rtt_avg")
                )
                lines.append(f"| {name} | {baseline_name} | {cells} |")
    return "\n".join(lines) + "\n"
