"""``GET /api/v1/networks/{id}/picture.svg`` (husarnet_ros/dashboard/picture_api.py) in the Dashboard's app,
with Websetup in the same process on the same session factory: devices join and report through Websetup, and
the picture shows what they reported, to the accounts that may see the network and to no one else."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from husarnet_ros.core.websetup import API_PREFIX as WEBSETUP_PREFIX
from husarnet_ros.dashboard import service
from husarnet_ros.dashboard.app import app_context, create_app
from husarnet_ros.dashboard.picture import STALE_REPORT_S
from husarnet_ros.dashboard.picture_api import SVG_MEDIA_TYPE, picture_input, render_network
from husarnet_ros.dashboard.service import LinkDevice, NetworkLinks, ReportedLink
from husarnet_ros.dashboard.settings import DashboardSettings
from husarnet_ros.dashboard.websetup import create_websetup_app

SVG = "{http://www.w3.org/2000/svg}"
PASSWORD = "correct horse battery staple"
ROBOT1, ROBOT2, ROBOT3 = "fc94::1", "fc94::2", "fc94::3"


@dataclass
class Dashboard:
    app: Any
    websetup: Any
    tokens: dict[str, str]
    lab_id: int
    lab_code: str


@pytest.fixture
def dashboard(database_url: str, tmp_path: Path) -> Iterator[Dashboard]:
    app = create_app(DashboardSettings(data_dir=tmp_path, database_url=database_url))
    ctx = app_context(app)
    now = datetime.now(timezone.utc)
    try:
        tokens = {}
        with ctx.transaction() as session:
            accounts = {
                name: service.create_account(session, name, PASSWORD, now)
                for name in ("alice", "bob", "carol")
            }
            for name, account in accounts.items():
                tokens[name] = service.create_token(session, account, "test", now)[1]
            lab = service.create_network(session, accounts["alice"], 'lab <&> "fleet"', now).network
            service.share_network(session, accounts["alice"], lab.id, "bob", "read", now)
        assert lab.join_code is not None
        yield Dashboard(app, create_websetup_app(ctx.sessions), tokens, lab.id, lab.join_code)
    finally:
        ctx.engine.dispose()


def call(app: Any, method: str, path: str, source: str = "127.0.0.1", **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(source, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard", timeout=30) as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


def picture(env: Dashboard, account: str | None, network_id: int | None = None) -> httpx.Response:
    headers = {} if account is None else {"Authorization": f"Bearer {env.tokens[account]}"}
    return call(env.app, "GET", f"/api/v1/networks/{network_id or env.lab_id}/picture.svg", headers=headers)


def device_names(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    names = []
    for group in root.iter(f"{SVG}g"):
        if "device" in (group.get("class") or "").split():
            title = group.find(f"{SVG}title")
            assert title is not None
            names.append((title.text or "").split(" ")[0])
    return names


def link_classes(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [
        group.get("class") or ""
        for group in root.iter(f"{SVG}g")
        if "link" in (group.get("class") or "").split()
    ]


def test_the_picture_shows_what_the_devices_reported(dashboard: Dashboard) -> None:
    for address, hostname in [(ROBOT1, "robot1"), (ROBOT2, "robot2"), (ROBOT3, "robot3")]:
        joined = call(
            dashboard.websetup,
            "POST",
            f"{WEBSETUP_PREFIX}/join",
            address,
            json={"code": dashboard.lab_code, "hostname": hostname},
        )
        assert joined.status_code == 200, joined.text
    reports = {
        ROBOT1: [{"address": ROBOT2, "path": "direct", "rtt_ms": 3.5}],
        ROBOT2: [{"address": ROBOT3, "path": "tunnelled", "base_server": "198.18.0.1:5582", "rtt_ms": 40}],
    }
    for address, peers in reports.items():
        sent = call(dashboard.websetup, "POST", f"{WEBSETUP_PREFIX}/report", address, json={"peers": peers})
        assert sent.status_code == 204, sent.text

    response = picture(dashboard, "alice")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(SVG_MEDIA_TYPE)
    assert "default-src 'none'" in response.headers["content-security-policy"]
    svg = response.text
    assert device_names(svg) == ["robot1", "robot2", "robot3"]
    assert sorted(link_classes(svg)) == ["link direct", "link tunnelled"]
    assert "3.5 ms" in svg
    assert "via 198.18.0.1:5582" in svg
    # The network's name is the picture's title, escaped.
    title = ET.fromstring(svg).find(f"{SVG}title")
    assert title is not None
    assert title.text == 'lab <&> "fleet"'


def test_an_empty_network_is_a_picture_too(dashboard: Dashboard) -> None:
    response = picture(dashboard, "alice")
    assert response.status_code == 200, response.text
    assert device_names(response.text) == []


def test_a_shared_network_is_visible_to_a_reader(dashboard: Dashboard) -> None:
    assert picture(dashboard, "bob").status_code == 200


@pytest.mark.parametrize("account", ["carol", None])
def test_no_one_else_sees_the_picture(dashboard: Dashboard, account: str | None) -> None:
    response = picture(dashboard, account)
    assert response.status_code == (401 if account is None else 404)
    assert set(response.json()) == {"detail"}


def test_an_unknown_or_malformed_network_is_a_4xx(dashboard: Dashboard) -> None:
    assert picture(dashboard, "alice", network_id=dashboard.lab_id + 1000).status_code == 404
    bad = call(
        dashboard.app,
        "GET",
        "/api/v1/networks/abc/picture.svg",
        headers={"Authorization": f"Bearer {dashboard.tokens['alice']}"},
    )
    assert bad.status_code == 422
    assert isinstance(bad.json()["detail"], str)


def test_the_route_is_in_the_openapi_schema(dashboard: Dashboard) -> None:
    schema = call(dashboard.app, "GET", "/openapi.json").json()
    route = schema["paths"]["/api/v1/networks/{network_id}/picture.svg"]["get"]
    assert SVG_MEDIA_TYPE in route["responses"]["200"]["content"]


def test_stale_reports_leave_the_picture() -> None:
    now = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    links = NetworkLinks(
        network_id=1,
        name="lab",
        devices=[
            LinkDevice(1, "robot1", ROBOT1, True, now),
            LinkDevice(2, "robot2", ROBOT2, False, None),
            LinkDevice(3, "robot3", ROBOT3, True, now),
        ],
        links=[
            ReportedLink(1, 2, "direct", None, 1.0, now - timedelta(seconds=STALE_REPORT_S + 5)),
            ReportedLink(1, 3, "tunnelled", "198.18.0.1:443", 9.0, now - timedelta(seconds=10)),
            ReportedLink(3, 1, "tunnelled", "198.18.0.1:443", 8.0, now - timedelta(seconds=5)),
        ],
    )
    devices, observations = picture_input(links)
    assert [(d.address, d.online) for d in devices] == [(ROBOT1, True), (ROBOT2, False), (ROBOT3, True)]
    assert [(o.reporter, o.peer) for o in observations] == [
        (ROBOT1, ROBOT2),
        (ROBOT1, ROBOT3),
        (ROBOT3, ROBOT1),
    ]
    svg = render_network(links, now)
    assert link_classes(svg) == ["link tunnelled"]
    assert "8.0 ms" in svg
