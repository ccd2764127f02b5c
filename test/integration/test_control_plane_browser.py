"""The control plane end to end through its web UI: a person in a real browser (Debian's Chromium, driven by
playwright) logs in to the self-hosted Dashboard running in a lab namespace, creates a network, gives its join
code to two robots (real daemons in namespaces), sees them appear and link up, and shares the network with a
second account. The robots then reach each other by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from husarnet_ros.testing.control_lab import ADMIN, ControlStack, self_hosted_fleet
from husarnet_ros.testing.lab_daemon import Daemon
from husarnet_ros.testing.netlab import Lab, wait_until
from husarnet_ros.testing.requirements import STRICT_ENV, browser_unavailable, strict

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

ROBOTS = ("robot-1", "robot-2")
LIVE_MS = 20_000  # the page refreshes its device list and picture every few seconds; a join takes a moment


@pytest.fixture
def stack_and_robots(lab: Lab) -> Iterator[tuple[ControlStack, list[Daemon]]]:
    reason = browser_unavailable()
    if reason is not None:
        if strict():
            pytest.fail(f"the browser test cannot run: {reason} ({STRICT_ENV}=1)", pytrace=False)
        pytest.skip(reason)
    # Websetup inside the Dashboard's process here (the other end-to-end test runs it on its own).
    with self_hosted_fleet(lab, ROBOTS, websetup_in_dashboard=True) as fleet:
        yield fleet


def test_a_person_builds_a_network_in_the_browser(
    stack_and_robots: tuple[ControlStack, list[Daemon]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from husarnet_ros.testing.browser import launch_chromium, open_page

    stack, robots = stack_and_robots
    stack.run_dashboard_cli("create-user", "bob", "--password-stdin", stdin="bob's password 1\n")
    for robot in robots:
        robot.cli("setup-server", stack.server_address, timeout=60)

    with launch_chromium() as browser:
        with open_page(browser) as page:
            page.goto(f"{stack.url}/login")
            page.fill("#username", ADMIN)
            page.fill("#password", stack.password)
            page.click("#login button[type=submit]")
            expect(page.locator(".who")).to_have_text(ADMIN)

            page.fill("#network-name", "arena")
            page.click("#create-network button[type=submit]")
            expect(page.locator("h1")).to_have_text("arena")
            code = page.locator("#join-code").inner_text().strip()
            # The page tells the robot what to run, with this Dashboard's own address.
            expect(page.locator("#join-commands")).to_contain_text(f"husarnet-ros join {code} HOSTNAME")

            # The robots join with the code from the page; the open page shows them without a reload.
            for robot in robots:
                robot.cli("join", code, robot.hostname, timeout=60)
            for robot in robots:
                row = page.locator("#devices tr", has_text=robot.hostname)
                expect(row).to_contain_text(robot.address, timeout=LIVE_MS)
                expect(row.locator(".status")).to_have_text("online", timeout=LIVE_MS)
            # ... and the picture draws them, with the direct link they report between them.
            picture = page.locator("#picture svg")
            expect(picture.locator("g.device")).to_have_count(2, timeout=LIVE_MS)
            expect(picture.locator("g.link.direct")).to_have_count(1, timeout=40_000)
            page.screenshot(path=str(tmp_path / "arena.png"), full_page=True)

            page.fill("#share-username", "bob")
            page.click("#share button[type=submit]")
            expect(page.locator("#sharing tr", has_text="bob")).to_contain_text("read")

        # Bob, in a browser of his own, sees the network and its robots, and nothing to change.
        with open_page(browser) as page:
            page.goto(f"{stack.url}/login")
            page.fill("#username", "bob")
            page.fill("#password", "bob's password 1")
            page.click("#login button[type=submit]")
            expect(page.locator(".who")).to_have_text("bob")
            page.click("text=arena")
            expect(page.locator("h1")).to_have_text("arena")
            for robot in robots:
                expect(page.locator("#devices tr", has_text=robot.hostname)).to_contain_text("online")
            expect(page.locator("#join-code")).to_have_count(0)
            expect(page.locator("#share")).to_have_count(0)

    # What the browser set up is what the robots got: each reaches the other by name.
    one, two = robots
    result = {}

    def pinged() -> bool:
        argv = ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "robot-2"]
        result["run"] = one.host.run(argv, check=False)
        return result["run"].returncode == 0

    wait_until(pinged, 30.0, interval=0.5, what="robot-1 pings robot-2 by name")
    assert two.address in result["run"].stdout
