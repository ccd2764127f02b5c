"""Websetup over real TCP, as daemons reach it: `husarnet-ros websetup` listens on an fc94 address in one
network namespace, and clients in another namespace connect from fc94 source addresses (standing in for the
overlay's TUN) or from their underlay address. The device is whoever the kernel says the source is."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from husarnet_ros.dashboard import db, service
from husarnet_ros.testing.netlab import Host, Lab, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WEBSETUP, CLAIMED, UNCLAIMED = "fc94::1", "fc94::2", "fc94::3"
PORT = 5590
START_TIMEOUT_S = 30.0

# Run inside the client namespace: one request from a chosen source address; prints status and body.
CLIENT = """
import json, sys, httpx
source, method, url, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
transport = httpx.HTTPTransport(local_address=source)
with httpx.Client(transport=transport, timeout=20) as http:
    response = http.request(method, url, json=json.loads(body) if body else None)
print(json.dumps({"status": response.status_code, "body": response.json() if response.content else None}))
"""


def overlay_route(host: Host, *addresses: str) -> None:
    for address in addresses:
        host.run(["ip", "-6", "addr", "add", f"{address}/128", "dev", host.ifname, "nodad"])
    host.run(["ip", "-6", "route", "add", "fc94::/16", "dev", host.ifname])


def ask(client: Host, source: str, method: str, path: str, body: object = None) -> tuple[int, object]:
    url = f"http://[{WEBSETUP}]:{PORT}/websetup/v1{path}"
    argv = [sys.executable, "-c", CLIENT, source, method, url, "" if body is None else json.dumps(body)]
    done = client.run(argv, env={**os.environ, "PYTHONPATH": str(REPO)})
    answer = json.loads(done.stdout)
    return answer["status"], answer["body"]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Host, str]]:
    """Websetup at [fc94::1]:5590 in one namespace; the other namespace and an account's join code."""
    url = db.default_url(tmp_path)
    db.migrate(url)
    engine = db.create_db_engine(url)
    try:
        with db.transaction(db.session_factory(engine)) as session:
            account = service.create_account(
                session, "alice", "correct horse battery staple", datetime.now(timezone.utc)
            )
            code = service.account_join_code(session, account)
    finally:
        engine.dispose()
    with Lab() as lab:
        server, client = lab.pair(["websetup", "robot"])
        overlay_route(server, WEBSETUP)
        overlay_route(client, CLAIMED, UNCLAIMED)
        command = [sys.executable, "-m", "husarnet_ros.cli", "websetup", "--listen", f"[{WEBSETUP}]:{PORT}"]
        server.popen(
            [*command, "--data-dir", str(tmp_path), "--log-level", "warning"],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        wait_until(lambda: server.tcp_listening(PORT), timeout=START_TIMEOUT_S, what="Websetup listening")
        yield client, code


def test_devices_are_known_by_their_source_address(network: tuple[Host, str]) -> None:
    client, code = network
    status, body = ask(client, CLAIMED, "POST", "/join", {"code": code, "hostname": "robot1"})
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["config"]["hostname"] == "robot1"

    status, body = ask(client, CLAIMED, "GET", "/config?after=-1&wait=0")
    assert (status, isinstance(body, dict) and body["hostname"]) == (200, "robot1")
    # The same machine from another overlay address is another device, not yet claimed.
    status, body = ask(client, UNCLAIMED, "GET", "/config?after=-1&wait=0")
    assert status == 404, body
    # From its underlay address it is no device at all.
    status, body = ask(client, client.ipv6, "GET", "/config?after=-1&wait=0")
    assert status == 403, body
    assert isinstance(body, dict)
    assert "overlay" in body["detail"]
