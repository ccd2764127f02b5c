"""The Dashboard's web UI in a real browser (Debian's Chromium through playwright, the ``browser_page``
fixture) against a real uvicorn server of ``create_app``: an operator logs in (after a wrong password),
creates a network, and sees a robot that joins it through Websetup appear on the open page without reloading
it, with the picture; renames the robot, shares the network read-only with a second account, which sees it in
a fresh browser context without any control to change it; the audit log shows the changes, and logging out
ends the session. A screenshot of the network page is kept (tmp_path, and /tmp/ui-network.png for a person
to look at).

Websetup is called in memory through httpx's ASGITransport, which sets the device's fc94 source address; that
runs in a worker thread, because playwright's sync API holds this thread's event loop (see conftest.py).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import delete
from sqlalchemy.orm import Session

from husarnet_ros.core.websetup import API_PREFIX as WEBSETUP_PREFIX
from husarnet_ros.dashboard import service
from husarnet_ros.dashboard.app import create_app
from husarnet_ros.dashboard.clock import utc_now
from husarnet_ros.dashboard.context import DashboardContext
from husarnet_ros.dashboard.models import BrowserSession
from husarnet_ros.dashboard.server import BackgroundServer, LateApp
from husarnet_ros.dashboard.settings import DashboardSettings
from husarnet_ros.dashboard.websetup import create_websetup_app
from husarnet_ros.testing.browser import ACTION_TIMEOUT_MS

PASSWORD = "correct horse battery staple"
ROBOT1 = "fc94:b01d:1803:8dd8:b293:5c7d:7639:932a"
ROBOT2 = "fc94:b01d:1803:8dd8::2"
WEBSETUP_TIMEOUT_S = 30.0
SCREENSHOT_COPY = Path("/tmp/ui-network.png")
# What a page changed by its live refresh (every 2.5 s) may take to show: playwright's expectations wait 5 s
# unless told otherwise, too little on a loaded CI machine.
LIVE = ACTION_TIMEOUT_MS


@dataclass
class Dashboard:
    url: str
    ctx: DashboardContext

    def add_account(self, username: str) -> None:
        with self.ctx.transaction() as session:
            service.create_account(session, username, PASSWORD, utc_now())

    def websetup(self, device: str, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST to Websetup (on this Dashboard's database) as the device at fc94 address ``device``."""
        app = create_websetup_app(self.ctx.sessions)

        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(device, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://[fc94::1]:5590") as client:
                return await client.post(WEBSETUP_PREFIX + path, json=body)

        with ThreadPoolExecutor(max_workers=1) as worker:
            return worker.submit(asyncio.run, call()).result(timeout=WEBSETUP_TIMEOUT_S)

    def audit_actions(self, username: str) -> list[str]:
        def actions(session: Session) -> list[str]:
            account = service.account_by_username(session, username)
            assert account is not None
            return [entry.action for entry in service.list_audit(session, account)]

        with self.ctx.transaction() as session:
            return actions(session)


@pytest.fixture
def dashboard(tmp_path: Path, sqlite_url: str) -> Iterator[Dashboard]:
    late = LateApp()
    server = BackgroundServer(late)
    try:
        settings = DashboardSettings(data_dir=tmp_path, database_url=sqlite_url, public_url=server.url)
        app = create_app(settings)
        late.app = app
        server.start()
        yield Dashboard(server.url, app.state.context)
    finally:
        server.stop()


def log_in(page: Page, dashboard: Dashboard, username: str) -> None:
    page.goto(f"{dashboard.url}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login button[type=submit]")
    expect(page.locator(".who")).to_have_text(username, timeout=LIVE)


def test_an_operator_runs_a_network_from_the_browser(
    dashboard: Dashboard, browser_page: Page, tmp_path: Path
) -> None:
    page = browser_page
    dashboard.add_account("alice")
    dashboard.add_account("bob")

    # Not logged in: the Dashboard sends the browser to the login form; a wrong password says so.
    page.goto(f"{dashboard.url}/devices")
    expect(page).to_have_url(f"{dashboard.url}/login?next=%2Fdevices", timeout=LIVE)
    page.fill("#username", "alice")
    page.fill("#password", "not the password")
    page.click("#login button[type=submit]")
    expect(page.locator(".message.error")).to_contain_text("wrong username or password", timeout=LIVE)
    expect(page.locator("#username")).to_have_value("alice", timeout=LIVE)
    page.fill("#password", PASSWORD)
    page.click("#login button[type=submit]")
    expect(page).to_have_url(f"{dashboard.url}/devices", timeout=LIVE)
    expect(page.locator(".who")).to_have_text("alice", timeout=LIVE)

    # A network, and the commands a robot runs to join it.
    page.click("nav >> text=Networks")
    page.fill("#network-name", "lab")
    page.click("#create-network button[type=submit]")
    expect(page.locator("h1")).to_have_text("lab", timeout=LIVE)
    expect(page.locator(".message.notice")).to_contain_text("Network created", timeout=LIVE)
    code = page.locator("#join-code").inner_text()
    host = dashboard.url.removeprefix("http://")
    expect(page.locator("#join-commands")).to_contain_text(
        f"husarnet-ros setup-server {host} --fingerprint SHA256:", timeout=LIVE
    )
    expect(page.locator("#join-commands")).to_contain_text(f"husarnet-ros join {code} HOSTNAME", timeout=LIVE)
    expect(page.locator("#devices")).to_contain_text("No devices in this network yet", timeout=LIVE)

    # Robots join through Websetup while the page is open: they appear without a reload, and so do their
    # links in the picture.
    page.evaluate("window.stillTheSamePage = true")
    joined = dashboard.websetup(ROBOT1, "/join", {"code": code, "hostname": "robot-1"})
    assert joined.status_code == 200, joined.text
    robot1_row = page.locator("#devices tr", has_text="robot-1")
    expect(robot1_row).to_contain_text(ROBOT1, timeout=LIVE)
    expect(robot1_row.locator(".status")).to_have_text("online", timeout=LIVE)
    joined = dashboard.websetup(ROBOT2, "/join", {"code": code, "hostname": "robot-2"})
    assert joined.status_code == 200, joined.text
    reported = dashboard.websetup(
        ROBOT1, "/report", {"peers": [{"address": ROBOT2, "path": "direct", "rtt_ms": 3.5}]}
    )
    assert reported.status_code == 204, reported.text
    expect(page.locator("#devices tr", has_text="robot-2")).to_contain_text("online", timeout=LIVE)
    expect(page.locator("#devices caption")).to_have_text("2 devices, 2 online", timeout=LIVE)
    picture = page.locator("#picture svg")
    expect(picture.locator("g.device")).to_have_count(2, timeout=LIVE)
    expect(picture.locator("g.device", has_text="robot-1")).to_have_count(1, timeout=LIVE)
    expect(picture.locator("g.link.direct")).to_have_count(1, timeout=LIVE)
    expect(picture.locator("g.link.direct")).to_contain_text("3.5", timeout=LIVE)
    assert page.evaluate("window.stillTheSamePage") is True
    shot = tmp_path / "network.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)

    # Rename a robot on the devices page.
    page.click("nav >> text=Devices")
    row = page.locator("#device-list tr", has_text=ROBOT1)
    expect(row.locator("td a")).to_have_text("lab", timeout=LIVE)
    row.locator("input[name=hostname]").fill("arm-1")
    row.locator("button", has_text="Rename").click()
    expect(page.locator(".message.notice")).to_have_text("Device renamed.", timeout=LIVE)
    expect(page.locator("#device-list tr", has_text=ROBOT1).locator(".hostname")).to_have_text(
        "arm-1", timeout=LIVE
    )

    # Share the network read-only with bob.
    page.locator("#device-list tr", has_text=ROBOT1).locator("td a", has_text="lab").click()
    expect(page.locator("#picture svg g.device", has_text="arm-1")).to_have_count(1, timeout=LIVE)
    page.fill("#share-username", "bob")
    page.select_option("#share-role", "read")
    page.click("#share button[type=submit]")
    expect(page.locator(".message.notice")).to_have_text("Network shared.", timeout=LIVE)
    expect(page.locator("#sharing tr", has_text="bob")).to_contain_text("read", timeout=LIVE)

    # bob, in a browser context of his own, sees the network and its devices, and no control to change them.
    bob_context = page.context.browser.new_context() if page.context.browser else None
    assert bob_context is not None
    try:
        bob_context.set_default_timeout(ACTION_TIMEOUT_MS)
        bob = bob_context.new_page()
        log_in(bob, dashboard, "bob")
        shared = bob.locator("#networks tr", has_text="lab")
        expect(shared).to_contain_text("alice", timeout=LIVE)
        expect(shared.locator(".role")).to_have_text("read", timeout=LIVE)
        shared.locator("a").click()
        expect(bob.locator("h1")).to_have_text("lab", timeout=LIVE)
        expect(bob.locator("#read-only")).to_be_visible(timeout=LIVE)
        expect(bob.locator("#devices tr", has_text="arm-1")).to_contain_text("online", timeout=LIVE)
        expect(bob.locator("#picture svg g.device")).to_have_count(2, timeout=LIVE)
        for control in ("#add-device", "#join", "#sharing", "#settings", "#devices button"):
            expect(bob.locator(control)).to_have_count(0, timeout=LIVE)
        assert code not in bob.content()
        bob.click("nav >> text=Devices")
        expect(bob.locator("#device-list tr", has_text="arm-1")).to_be_visible(timeout=LIVE)
        expect(bob.locator("#device-list input[name=hostname]")).to_have_count(0, timeout=LIVE)
    finally:
        bob_context.close()

    # The audit log shows what happened, newest first.
    page.click("nav >> text=Audit log")
    actions = page.locator("#audit td.action").all_inner_texts()
    expected = ["network.share", "device.rename", "network.add_device", "device.join", "network.create"]
    assert [action for action in actions if action in expected] == [
        "network.share",
        "device.rename",
        "network.add_device",
        "device.join",
        "network.add_device",
        "device.join",
        "network.create",
    ]
    assert actions == dashboard.audit_actions("alice")
    expect(page.locator("#audit tr", has_text="device.rename")).to_contain_text("arm-1", timeout=LIVE)

    # Logging out ends the session: the pages send the browser to the login form again.
    page.click("header .logout button[type=submit]")
    expect(page).to_have_url(f"{dashboard.url}/login?done=logged-out", timeout=LIVE)
    expect(page.locator(".message.notice")).to_have_text("Logged out.", timeout=LIVE)
    page.goto(f"{dashboard.url}/networks/1")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fnetworks%2F1$"), timeout=LIVE)


def test_live_updates_stop_with_a_message_when_the_session_ends(
    dashboard: Dashboard, browser_page: Page
) -> None:
    page = browser_page
    dashboard.add_account("alice")
    log_in(page, dashboard, "alice")
    page.fill("#network-name", "lab")
    page.click("#create-network button[type=submit]")
    expect(page.locator("h1")).to_have_text("lab", timeout=LIVE)
    # The session ends elsewhere (its row deleted, as a password change does): the open page's script gets
    # 401 from the fragment routes and says so instead of pasting a login form into the page.
    with dashboard.ctx.transaction() as session:
        session.execute(delete(BrowserSession))
    for part in ("#devices", "#picture"):
        expect(page.locator(f"{part} [data-live-stopped]")).to_contain_text("the session ended", timeout=LIVE)
    expect(page.locator("#login")).to_have_count(0, timeout=LIVE)
