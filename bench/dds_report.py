"""What bench/dds.py makes of one phase's publisher report and the subscriber's arrivals, and its tables."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

STALL_S = 2.0  # no message for longer than this while the publisher is still publishing: stalled
RATIO_FLOOR = 0.95  # the target: the overlay delivers at least this fraction of what the raw path does
DASH = "-"


def phase_result(
    phase: int, published: dict[str, Any], arrivals: dict[str, list[Any]], size: int
) -> dict[str, Any]:
    """Delivery of one phase: messages, goodput, the longest silence while publishing.

    ``published``: the publisher's PhaseReport (start, end, sent, failed, rate_hz); ``arrivals``: the
    subscriber's parallel lists (phase, seq, t). Goodput is the bytes of distinct messages of this phase
    divided by the time from the phase's start to its last arrival (at least the phase's length), so a
    backlog that drains after the publisher stopped does not count as faster delivery.
    """
    start, end = float(published["start"]), float(published["end"])
    seen: dict[int, float] = {}
    for p, seq, t in zip(arrivals["phase"], arrivals["seq"], arrivals["t"], strict=True):
        if p == phase and seq not in seen:
            seen[seq] = float(t)
    times = sorted(seen.values())
    length = max(end - start, 1e-9)
    span = max(length, (times[-1] - start) if times else 0.0)
    in_window = [t for t in times if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *in_window], [*in_window, end], strict=True)]
    longest_gap = max(gaps) if gaps else length
    sent = int(published["sent"])
    return {
        "rate_hz": float(published["rate_hz"]),
        "seconds": length,
        "sent": sent,
        "refused": int(published.get("failed", 0)),
        "offered_mbit_s": sent * size * 8 / length / 1e6,
        "delivered": len(times),
        "delivered_fraction": len(times) / sent if sent else None,
        "delivered_mbit_s": len(times) * size * 8 / span / 1e6,
        "longest_gap_s": longest_gap,
        "stalled": longest_gap > STALL_S,
        "first_latency_s": (times[0] - start) if times else None,
    }


def median_min_max(values: Iterable[float | None]) -> tuple[float, float, float] | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return statistics.median(present), min(present), max(present)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell over several runs: medians with min and max, and stalled if any run stalled."""
    keys = ("offered_mbit_s", "delivered_mbit_s", "delivered_fraction", "longest_gap_s")
    summary: dict[str, Any] = {key: median_min_max(run[key] for run in runs) for key in keys}
    summary["delivered"] = median_min_max(run["delivered"] for run in runs)
    summary["sent"] = median_min_max(run["sent"] for run in runs)
    summary["ip_fragments"] = median_min_max(run.get("ip_fragments") for run in runs)
    summary["overlay_packets"] = median_min_max(run.get("overlay_packets") for run in runs)
    summary["stalled_runs"] = sum(1 for run in runs if run["stalled"])
    summary["runs"] = len(runs)
    return summary


def _num(value: float | None, digits: int = 0) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _spread(stats: tuple[float, float, float] | None, digits: int = 0) -> str:
    if stats is None:
        return DASH
    median, low, high = stats
    if low == high:
        return _num(median, digits)
    return f"{_num(median, digits)} ({_num(low, digits)}-{_num(high, digits)})"


def _size_label(size: int) -> str:
    return f"{size / 1e6:g} MB" if size >= 1_000_000 else f"{size / 1e3:g} KB"


def ratio(cell: dict[str, Any], baseline: dict[str, Any] | None) -> float | None:
    if baseline is None or cell["delivered_mbit_s"] is None or baseline["delivered_mbit_s"] is None:
        return None
    base = baseline["delivered_mbit_s"][0]
    return cell["delivered_mbit_s"][0] / base if base > 0 else None


def _stalled(per_path: dict[str, dict[str, Any]], paths: list[str]) -> str:
    stalled = [
        f"{path} {per_path[path]['stalled_runs']}/{per_path[path]['runs']}"
        for path in paths
        if path in per_path and per_path[path]["stalled_runs"]
    ]
    return ", ".join(stalled) or "no"


def markdown(results: dict[str, Any]) -> str:
    """One row per (middleware, reliability, size, rate): each path's delivery, overlay ÷ the others."""
    paths: list[str] = results["meta"]["paths"]
    overlay = results.get("capacity", {}).get("overlay", {})
    overlay_tcp, overlay_udp = overlay.get("mbit_per_second"), overlay.get("udp_mbit_per_second")
    baselines = [path for path in paths if path != "overlay"] if "overlay" in paths else []
    header = ["middleware", "QoS", "size", "rate (Hz)", "nominal (Mbit/s)"]
    for path in paths:
        header += [f"{path}: delivered / sent", f"{path}: Mbit/s"]
    header += [f"overlay ÷ {path}" for path in baselines]
    header += ["stalled", "IP fragments (" + " / ".join(paths) + ")", "above overlay capacity (TCP / UDP)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key: dict[tuple[str, str, int, float], dict[str, dict[str, Any]]] = {}
    for cell in results["cells"]:
        key = (cell["middleware"], cell["reliability"], cell["size"], cell["rate_hz"])
        by_key.setdefault(key, {})[cell["path"]] = cell["summary"]
    for (middleware, reliability, size, rate), per_path in by_key.items():
        nominal = (
            rate * size * 8 / 1e6
        )  # what the publisher was asked to send; delivered / sent shows the rest
        row = [middleware, reliability.upper(), _size_label(size), f"{rate:g}", _num(nominal)]
        for path in paths:
            summary = per_path.get(path)
            if summary is None:
                row += [DASH, DASH]
                continue
            row += [f"{_spread(summary['delivered'])} / {_spread(summary['sent'])}"]
            row += [_spread(summary["delivered_mbit_s"], 1)]
        for path in baselines:
            value = ratio(per_path["overlay"], per_path.get(path)) if "overlay" in per_path else None
            row.append(DASH if value is None else f"{value:.2f}x")
        row.append(_stalled(per_path, paths))
        row.append(" / ".join(_spread(per_path[p]["ip_fragments"]) if p in per_path else DASH for p in paths))
        limits = (overlay_tcp, overlay_udp)
        above = " / ".join(
            DASH if limit is None else ("yes" if nominal > limit else "no") for limit in limits
        )
        lines.append("| " + " | ".join([*row, above]) + " |")
    return "\n".join(lines) + "\n"


def capacity_lines(results: dict[str, Any]) -> str:
    capacity = results.get("capacity", {})
    tcp = [f"{name} {value['mbit_per_second']:,.0f} Mbit/s" for name, value in capacity.items() if value]
    udp = [
        f"{name} {value['udp_mbit_per_second']:,.0f} Mbit/s ({value['udp_lost_percent']:.1f}% lost)"
        for name, value in capacity.items()
        if value and "udp_mbit_per_second" in value
    ]
    lines = "TCP capacity (iperf3, 1 stream): " + (", ".join(tcp) if tcp else "not measured") + "\n"
    if udp:
        size = next(iter(capacity.values()))["udp_datagram_bytes"]
        lines += f"UDP, {size} B datagrams offered at 2 Gbit/s, received: " + ", ".join(udp) + "\n"
    return lines
