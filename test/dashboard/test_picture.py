"""The network picture (husarnet_ros/dashboard/picture.py): well-formed SVG whatever devices are called, one
link per pair drawn as its fresher end reports it, and the same drawing for the same network."""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from husarnet_ros.dashboard.picture import (
    NODE_RADIUS,
    STALE_REPORT_S,
    LinkObservation,
    PictureDevice,
    address_tail,
    draw_network,
    merge_links,
)

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 12, 1, 3, 0, 0, tzinfo=timezone.utc)
A = "fc94::a"
B = "fc94::b"
C = "fc94::c"
OUTSIDER = "fc94::ff"


def device(address: str, hostname: str, online: bool = True) -> PictureDevice:
    return PictureDevice(address=address, hostname=hostname, online=online)


def seen(reporter: str, peer: str, path: str, seconds: float = 0.0, **extra: object) -> LinkObservation:
    return LinkObservation(
        reporter=reporter,
        peer=peer,
        path=path,  # type: ignore[arg-type]
        reported_at=T0 + timedelta(seconds=seconds),
        **extra,  # type: ignore[arg-type]
    )


THREE = [device(A, "alpha"), device(B, "bravo"), device(C, "charlie", online=False)]


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def groups(root: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if kind in (g.get("class") or "").split()]


def tooltip(element: ET.Element) -> str:
    title = element.find(f"{SVG}title")
    assert title is not None
    return title.text or ""


def circle_centres(root: ET.Element) -> list[tuple[float, float]]:
    centres = []
    for g in groups(root, "device"):
        circle = g.find(f"{SVG}circle")
        assert circle is not None
        centres.append((float(circle.get("cx", "nan")), float(circle.get("cy", "nan"))))
    return centres


def test_no_devices_says_how_to_add_one() -> None:
    root = parse(draw_network([], [], title="empty"))
    assert groups(root, "device") == []
    assert groups(root, "link") == []
    empty = [t for t in root.iter(f"{SVG}text") if t.get("class") == "empty"]
    assert len(empty) == 1
    assert "join code" in (empty[0].text or "")


def test_one_device_is_drawn_in_the_middle_with_its_name_and_address_tail() -> None:
    root = parse(draw_network([device("fc94:1:2:3:4:5:7639:932a", "solo")], []))
    (node,) = groups(root, "device")
    assert node.get("class") == "device online"
    texts = "".join(node.itertext())
    assert "solo" in texts
    assert "…7639:932a" in texts
    ((x, _y),) = circle_centres(root)
    assert x == pytest.approx(float(root.get("width", "nan")) / 2, abs=0.1)


def test_online_and_offline_devices_look_different() -> None:
    root = parse(draw_network(THREE, []))
    by_name = {tooltip(g).split(" ")[0]: g for g in groups(root, "device")}
    assert "online" in (by_name["alpha"].get("class") or "").split()
    assert "offline" in (by_name["charlie"].get("class") or "").split()
    fills = {name: g.find(f"{SVG}circle").get("fill") for name, g in by_name.items()}  # type: ignore[union-attr]
    assert fills["alpha"] == fills["bravo"] != fills["charlie"]


@pytest.mark.parametrize("count", [2, 3, 17, 50, 200])
def test_many_devices_sit_on_a_circle_in_hostname_order_without_overlapping(count: int) -> None:
    devices = [device(f"fc94::{index + 1:x}", f"robot-{index:03d}") for index in range(count)]
    random.Random(count).shuffle(devices)
    root = parse(draw_network(devices, []))
    nodes = groups(root, "device")
    assert [tooltip(g).split(" ")[0] for g in nodes] == [f"robot-{index:03d}" for index in range(count)]
    centres = circle_centres(root)
    width, height = float(root.get("width", "nan")), float(root.get("height", "nan"))
    closest = min(math.dist(p, q) for i, p in enumerate(centres) for q in centres[i + 1 :])
    assert closest > 3 * NODE_RADIUS
    assert all(
        NODE_RADIUS < x < width - NODE_RADIUS and NODE_RADIUS < y < height - NODE_RADIUS for x, y in centres
    )
    # The first device (alphabetically) is at the top, the circle goes clockwise.
    assert centres[0][1] == min(y for _x, y in centres)


def test_a_direct_link_is_a_solid_line_with_its_rtt() -> None:
    root = parse(draw_network(THREE, [seen(A, B, "direct", rtt_ms=12.34)]))
    (link,) = groups(root, "link")
    assert link.get("class") == "link direct"
    line = link.find(f"{SVG}line")
    assert line is not None
    assert line.get("stroke-dasharray") is None
    assert "12.3 ms" in "".join(link.itertext())
    assert tooltip(link) == "alpha - bravo: direct, RTT 12.3 ms"


def test_a_tunnelled_link_is_dashed_and_names_its_base_server() -> None:
    observation = seen(B, C, "tunnelled", base_server="base.example:5582", rtt_ms=80)
    root = parse(draw_network(THREE, [observation]))
    (link,) = groups(root, "link")
    assert link.get("class") == "link tunnelled"
    line = link.find(f"{SVG}line")
    assert line is not None
    assert line.get("stroke-dasharray")
    label = link.find(f"{SVG}text")
    assert label is not None
    assert label.text == "80.0 ms via base.example:5582"
    assert tooltip(link) == "bravo - charlie: tunnelled via base.example:5582, RTT 80.0 ms"


def test_a_down_link_is_grey_and_unlabelled() -> None:
    root = parse(draw_network(THREE, [seen(A, C, "down"), seen(A, B, "direct", rtt_ms=1)]))
    links = {g.get("class"): g for g in groups(root, "link")}
    down = links["link down"]
    assert down.find(f"{SVG}text") is None
    down_line, direct_line = down.find(f"{SVG}line"), links["link direct"].find(f"{SVG}line")
    assert down_line is not None
    assert direct_line is not None
    assert down_line.get("stroke") != direct_line.get("stroke")
    assert float(down_line.get("stroke-width", "0")) < float(direct_line.get("stroke-width", "0"))


def test_both_ends_make_one_link_and_the_fresher_report_wins() -> None:
    observations = [
        seen(A, B, "direct", seconds=0, rtt_ms=5),
        seen(B, A, "direct", seconds=10, rtt_ms=7),
    ]
    (link,) = merge_links(THREE, observations)
    assert link.ends == (A, B)
    assert link.rtt_ms == 7
    assert link.reported_by == B
    assert not link.disagree
    root = parse(draw_network(THREE, observations))
    assert len(groups(root, "link")) == 1


def test_a_reporters_older_reports_do_not_count() -> None:
    observations = [seen(A, B, "direct", seconds=20, rtt_ms=3), seen(A, B, "tunnelled", seconds=0, rtt_ms=90)]
    (link,) = merge_links(THREE, observations)
    assert (link.path, link.rtt_ms, link.other_path) == ("direct", 3, None)


def test_ends_that_disagree_on_the_path_are_shown_as_such() -> None:
    observations = [
        seen(A, B, "direct", seconds=30, rtt_ms=4),
        seen(B, A, "tunnelled", seconds=5, base_server="base.example:443"),
    ]
    (link,) = merge_links(THREE, observations)
    assert (link.path, link.other_path, link.disagree) == ("direct", "tunnelled", True)
    root = parse(draw_network(THREE, observations))
    (drawn,) = groups(root, "link")
    assert drawn.get("class") == "link direct disagree"
    assert tooltip(drawn).endswith(
        "the ends disagree: alpha (fresher) reports direct, bravo reports tunnelled"
    )
    assert "ends disagree" in "".join(drawn.itertext())


def test_reports_about_devices_outside_the_network_or_itself_are_ignored() -> None:
    observations = [seen(A, OUTSIDER, "direct"), seen(OUTSIDER, A, "direct"), seen(A, A, "direct")]
    assert merge_links(THREE, observations) == []
    assert groups(parse(draw_network(THREE, observations)), "link") == []


def test_stale_reports_are_left_out_when_the_time_is_given() -> None:
    observations = [seen(A, B, "direct"), seen(B, C, "direct", seconds=100)]
    now = T0 + timedelta(seconds=STALE_REPORT_S + 1)
    assert [link.ends for link in merge_links(THREE, observations, now)] == [(B, C)]
    assert len(merge_links(THREE, observations)) == 2


def test_the_same_network_gives_the_same_bytes_whatever_the_input_order() -> None:
    devices = [device(f"fc94::{index + 1:x}", f"host-{index % 7}-{index}") for index in range(30)]
    observations = [
        seen(
            devices[i].address,
            devices[j].address,
            ("direct", "tunnelled", "down")[(i + j) % 3],
            i + j,
            rtt_ms=i,
        )
        for i in range(30)
        for j in range(30)
        if (i * j) % 5 == 1
    ]
    first = draw_network(devices, observations, title="fleet")
    for seed in range(3):
        shuffled_devices, shuffled_observations = list(devices), list(observations)
        random.Random(seed).shuffle(shuffled_devices)
        random.Random(seed).shuffle(shuffled_observations)
        assert draw_network(shuffled_devices, shuffled_observations, title="fleet") == first


def test_many_links_keep_their_rtt_in_the_tooltip() -> None:
    devices = [device(f"fc94::{index + 1:x}", f"r{index:03d}") for index in range(40)]
    observations = [
        seen(p.address, q.address, "direct", rtt_ms=2.5)
        for p in devices
        for q in devices
        if p.address < q.address
    ]
    root = parse(draw_network(devices, observations))
    links = groups(root, "link")
    assert len(links) == 40 * 39 // 2
    assert all(tooltip(link).endswith("RTT 2.5 ms") for link in links)


def test_address_tail() -> None:
    assert address_tail("fc94:b01d:1803:8dd8:b293:5c7d:0639:932a") == "…639:932a"
    assert address_tail("fc94::1") == "…0:1"


# Characters XML 1.0 cannot carry are replaced; everything else must come back out of the parser unchanged.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def carried(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


@given(
    hostnames=st.lists(st.text(max_size=60), min_size=1, max_size=4),
    base_server=st.text(max_size=60),
    title=st.text(max_size=60),
)
def test_no_name_can_add_markup(hostnames: list[str], base_server: str, title: str) -> None:
    devices = [device(f"fc94::{index + 1:x}", name) for index, name in enumerate(hostnames)]
    observations = [
        seen(devices[0].address, other.address, "tunnelled", base_server=base_server, rtt_ms=1)
        for other in devices[1:]
    ]
    root = parse(draw_network(devices, observations, title=title))
    allowed = {f"{SVG}{tag}" for tag in ("svg", "title", "g", "line", "circle", "text", "tspan")}
    assert {element.tag for element in root.iter()} <= allowed
    svg_title = root.find(f"{SVG}title")
    assert svg_title is not None
    assert svg_title.text == carried(title or "network")
    nodes = groups(root, "device")
    assert len(nodes) == len(devices)
    tooltips = sorted(tooltip(node) for node in nodes)
    assert tooltips == sorted(carried(f"{d.hostname} ({d.address}), online") for d in devices)
    for link in groups(root, "link"):
        assert carried(f"tunnelled via {base_server}" if base_server else "tunnelled") in tooltip(link)
