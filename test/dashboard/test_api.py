"""The Dashboard's REST API through a real uvicorn server on 127.0.0.1: authentication by token or by session
with CSRF, authorisation as the service layer enforces it, bad input refused with a 4xx and a message while
nothing changes, license.json, and a restart that loses nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from husarnet_ros.core.license import parse_license
from husarnet_ros.dashboard import service
from husarnet_ros.dashboard.app import create_app
from husarnet_ros.dashboard.clock import utc_now
from husarnet_ros.dashboard.context import DashboardContext
from husarnet_ros.dashboard.models import Base
from husarnet_ros.dashboard.server import BackgroundServer
from husarnet_ros.dashboard.settings import DashboardSettings

PASSWORD = "correct horse battery"
WEBSETUP = "fc94:5e7::1"
TIMEOUT_S = 30.0


@dataclass
class Running:
    url: str
    ctx: DashboardContext
    settings: DashboardSettings
    tokens: dict[str, str]

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S)


def settings_for(database_url: str, data_dir: Path) -> DashboardSettings:
    return DashboardSettings(
        data_dir=data_dir,
        database_url=database_url,
        name="test lab",
        public_url="http://127.0.0.1:8080",
        base_servers=("198.18.0.1:5582",),
        websetup_address=WEBSETUP,
        max_devices=5,
    )


def seed(ctx: DashboardContext, *usernames: str) -> dict[str, str]:
    tokens = {}
    with ctx.transaction() as session:
        for username in usernames:
            account = service.create_account(session, username, PASSWORD, utc_now())
            _token, secret = service.create_token(session, account, "tests", utc_now())
            tokens[username] = secret
    return tokens


@pytest.fixture
def dashboard(database_url: str, tmp_path: Path) -> Iterator[Running]:
    settings = settings_for(database_url, tmp_path / "data")
    app = create_app(settings)
    ctx: DashboardContext = app.state.context
    tokens = seed(ctx, "alice", "bob")
    with BackgroundServer(app) as server:
        yield Running(server.url, ctx, settings, tokens)


def snapshot(ctx: DashboardContext) -> dict[str, list[Any]]:
    """Every row of every table: what a refused request must leave as it was."""
    with ctx.transaction() as session:
        return {
            table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)))
            for table in Base.metadata.sorted_tables
        }


def claim(ctx: DashboardContext, code: str, address: str, hostname: str) -> int:
    with ctx.transaction() as session:
        device, _result = service.claim_device(session, code, address, hostname)
        return device.id


def test_token_authentication(dashboard: Running) -> None:
    with dashboard.client() as anonymous:
        answer = anonymous.get("/api/v1/networks")
        assert answer.status_code == 401
        assert "not logged in" in answer.json()["detail"]
        answer = anonymous.get("/api/v1/networks", headers={"Authorization": "Bearer hnt_" + "x" * 43})
        assert answer.status_code == 401
        assert "unknown API token" in answer.json()["detail"]
    with dashboard.client("alice") as alice:
        assert alice.get("/api/v1/account").json()["username"] == "alice"
        created = alice.post("/api/v1/tokens", json={"name": "robot-ci"})
        assert created.status_code == 201
        secret = created.json()["token"]
        assert secret.startswith("hnt_")
        listed = alice.get("/api/v1/tokens").json()
        assert [t["name"] for t in listed] == ["tests", "robot-ci"]
        assert all("token" not in t for t in listed)  # the secret is shown once
        with dashboard.client() as other:
            headers = {"Authorization": f"Bearer {secret}"}
            assert other.get("/api/v1/account", headers=headers).json()["username"] == "alice"
            assert alice.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 204
            assert other.get("/api/v1/account", headers=headers).status_code == 401


def test_session_login_and_csrf(dashboard: Running) -> None:
    with dashboard.client() as browser:
        wrong = browser.post("/api/v1/session", json={"username": "alice", "password": "wrong password"})
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "wrong username or password"}
        login = browser.post("/api/v1/session", json={"username": "alice", "password": PASSWORD})
        assert login.status_code == 200
        csrf = login.json()["csrf_token"]
        assert "hnr_session" in browser.cookies
        assert "httponly" in login.headers["set-cookie"].lower()
        # Reading needs only the cookie; changing needs the CSRF token too.
        assert browser.get("/api/v1/networks").status_code == 200
        wrong_csrf = csrf[:-1] + ("B" if csrf.endswith("A") else "A")
        for headers in ({}, {"X-CSRF-Token": wrong_csrf}):
            refused = browser.post("/api/v1/networks", json={"name": "lab"}, headers=headers)
            assert refused.status_code == 403
            assert "CSRF" in refused.json()["detail"]
        assert browser.get("/api/v1/networks").json() == []
        made = browser.post("/api/v1/networks", json={"name": "lab"}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201
        assert browser.get("/api/v1/session").json()["csrf_token"] == csrf
        assert browser.delete("/api/v1/session").status_code == 403  # logging out is a change too
        assert browser.delete("/api/v1/session", headers={"X-CSRF-Token": csrf}).status_code == 204
        browser.cookies.clear()
        browser.cookies.set("hnr_session", login.cookies["hnr_session"])
        assert browser.get("/api/v1/networks").status_code == 401


def test_accounts_see_only_their_own_and_shared(dashboard: Running) -> None:
    with dashboard.client("alice") as alice, dashboard.client("bob") as bob:
        network = alice.post("/api/v1/networks", json={"name": "lab"}).json()
        device_id = claim(dashboard.ctx, network["join_code"], "fc94:a::1", "robot1")
        paths = [
            f"/api/v1/networks/{network['id']}",
            f"/api/v1/networks/{network['id']}/devices",
            f"/api/v1/networks/{network['id']}/shares",
            f"/api/v1/networks/{network['id']}/links",
            f"/api/v1/devices/{device_id}",
        ]
        for path in paths:
            assert bob.get(path).status_code == 404, path
        assert bob.patch(f"/api/v1/devices/{device_id}", json={"hostname": "mine"}).status_code == 404
        assert bob.get("/api/v1/devices").json() == []
        shared = alice.put(f"/api/v1/networks/{network['id']}/shares/bob", json={"role": "read"})
        assert shared.json() == {"username": "bob", "role": "read"}
        for path in paths:
            assert bob.get(path).status_code == 200, path
        seen = bob.get(f"/api/v1/networks/{network['id']}").json()
        assert seen["role"] == "read"
        assert seen["join_code"] is None  # only the owner sees the code
        refused = bob.patch(f"/api/v1/devices/{device_id}", json={"hostname": "mine"})
        assert refused.status_code == 403
        assert "manage" in refused.json()["detail"]
        alice.put(f"/api/v1/networks/{network['id']}/shares/bob", json={"role": "manage"})
        renamed = bob.patch(f"/api/v1/devices/{device_id}", json={"hostname": "Robot-One"})
        assert renamed.json()["hostname"] == "robot-one"
        actions = [entry["action"] for entry in alice.get("/api/v1/audit").json()]
        assert actions[:3] == ["device.rename", "network.share", "network.share"]


def test_device_in_two_networks_through_the_api(dashboard: Running) -> None:
    with dashboard.client("alice") as alice:
        lab = alice.post("/api/v1/networks", json={"name": "lab"}).json()
        field = alice.post("/api/v1/networks", json={"name": "field"}).json()
        hub = claim(dashboard.ctx, lab["join_code"], "fc94:a::1", "hub")
        claim(dashboard.ctx, lab["join_code"], "fc94:a::2", "robot2")
        robot3 = claim(dashboard.ctx, field["join_code"], "fc94:a::3", "robot3")
        assert alice.put(f"/api/v1/networks/{field['id']}/devices/{hub}").status_code == 204
        assert sorted(alice.get(f"/api/v1/devices/{hub}").json()["networks"]) == sorted(
            [lab["id"], field["id"]]
        )
        with dashboard.ctx.transaction() as session:
            config = service.device_config(session, "fc94:a::1")
        assert config is not None
        assert config.whitelist == ["fc94:a::2", "fc94:a::3"]
        assert alice.delete(f"/api/v1/networks/{field['id']}/devices/{robot3}").status_code == 204
        members = alice.get(f"/api/v1/networks/{field['id']}/devices").json()
        assert [d["hostname"] for d in members] == ["hub"]


BAD_REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/networks", {"name": ""}),
    ("POST", "/api/v1/networks", {"name": "x" * 101}),
    ("POST", "/api/v1/networks", {"name": "tab\there"}),
    ("POST", "/api/v1/networks", {"name": "nul\x00"}),
    ("POST", "/api/v1/networks", {"name": "lab"}),  # taken (made below)
    ("POST", "/api/v1/networks", {"title": "lab"}),
    ("POST", "/api/v1/networks", ["lab"]),
    ("POST", "/api/v1/networks", "not json"),
    ("GET", "/api/v1/networks/0", None),
    ("GET", "/api/v1/networks/abc", None),
    ("GET", "/api/v1/networks/99999999999999999999", None),
    ("PATCH", "/api/v1/networks/{lab}", {"name": 5}),
    ("PATCH", "/api/v1/networks/{lab}", {"name": "field"}),
    ("DELETE", "/api/v1/networks/{other}", None),
    ("POST", "/api/v1/networks/{other}/join-code", None),
    ("PUT", "/api/v1/networks/{lab}/devices/{other_device}", None),
    ("PUT", "/api/v1/networks/{lab}/devices/2147483648", None),
    ("DELETE", "/api/v1/networks/{lab}/devices/7", None),
    ("PUT", "/api/v1/networks/{lab}/shares/bob", {"role": "admin"}),
    ("PUT", "/api/v1/networks/{lab}/shares/nobody", {"role": "read"}),
    ("PUT", "/api/v1/networks/{lab}/shares/alice", {"role": "read"}),
    ("PUT", "/api/v1/networks/{lab}/shares/N%00UL", {"role": "read"}),
    ("DELETE", "/api/v1/networks/{lab}/shares/bob", None),
    ("PATCH", "/api/v1/devices/{device}", {"hostname": "-bad-"}),
    ("PATCH", "/api/v1/devices/{device}", {"hostname": "robot2"}),
    ("PATCH", "/api/v1/devices/{device}", {"hostname": "x" * 300}),
    ("PATCH", "/api/v1/devices/{other_device}", {"hostname": "mine"}),
    ("DELETE", "/api/v1/devices/{other_device}", None),
    ("POST", "/api/v1/tokens", {"name": ""}),
    ("POST", "/api/v1/tokens", {"name": "tests"}),
    ("DELETE", "/api/v1/tokens/{bob_token}", None),
    ("PUT", "/api/v1/account/password", {"current_password": "wrong", "new_password": "long enough"}),
    ("PUT", "/api/v1/account/password", {"current_password": PASSWORD, "new_password": "short"}),
    ("GET", "/api/v1/audit?limit=0", None),
    ("GET", "/api/v1/audit?limit=100000", None),
    ("GET", "/api/v1/audit?before=-1", None),
    ("POST", "/api/v1/session", {"username": "alice"}),
    ("POST", "/api/v1/session", {"username": "Al\x00ce", "password": PASSWORD}),
    ("DELETE", "/api/v1/session", None),  # a token has no session to end
    ("GET", "/api/v1/nothing-here", None),
]


def test_bad_input_gets_a_4xx_with_a_message_and_changes_nothing(dashboard: Running) -> None:
    with dashboard.client("alice") as alice, dashboard.client("bob") as bob:
        lab = alice.post("/api/v1/networks", json={"name": "lab"}).json()
        alice.post("/api/v1/networks", json={"name": "field"})
        other = bob.post("/api/v1/networks", json={"name": "bobs"}).json()
        ids = {
            "lab": lab["id"],
            "other": other["id"],
            "device": claim(dashboard.ctx, lab["join_code"], "fc94:a::1", "robot1"),
            "other_device": claim(dashboard.ctx, other["join_code"], "fc94:b::1", "robot1"),
            "bob_token": bob.get("/api/v1/tokens").json()[0]["id"],
        }
        claim(dashboard.ctx, lab["join_code"], "fc94:a::2", "robot2")
        before = snapshot(dashboard.ctx)
        for method, path, body in BAD_REQUESTS:
            url = path.format(**ids)
            if isinstance(body, str):
                answer = alice.request(
                    method, url, content=body, headers={"Content-Type": "application/json"}
                )
            else:
                answer = alice.request(method, url, json=body)
            assert 400 <= answer.status_code < 500, (method, url, answer.status_code, answer.text)
            detail = answer.json()["detail"]
            assert isinstance(detail, str), (method, url)
            assert detail, (method, url)
        assert snapshot(dashboard.ctx) == before


def test_license_json_is_signed_and_needs_no_login(dashboard: Running) -> None:
    with dashboard.client() as anonymous, dashboard.client("alice") as alice:
        answer = anonymous.get("/license.json")
        assert answer.status_code == 200
        license_ = parse_license(answer.content)
        installation = alice.get("/api/v1/installation").json()
    assert license_.fingerprint == installation["fingerprint"] == dashboard.ctx.fingerprint
    assert license_.installation_id == installation["installation_id"]
    assert license_.name == "test lab"
    assert license_.base_servers == ["198.18.0.1:5582"]
    assert license_.max_devices == 5
    assert license_.valid_until > license_.issued
    assert (dashboard.settings.data_dir / "license.key").stat().st_mode & 0o777 == 0o600


def test_openapi_lists_the_api(dashboard: Running) -> None:
    with dashboard.client() as anonymous:
        document = anonymous.get("/openapi.json").json()
    assert "/api/v1/networks" in document["paths"]
    assert "/api/v1/session" in document["paths"]
    assert "/license.json" in document["paths"]


def test_restart_on_the_same_database_loses_nothing(database_url: str, tmp_path: Path) -> None:
    settings = settings_for(database_url, tmp_path / "data")
    app = create_app(settings)
    tokens = seed(app.state.context, "alice")
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
        http.headers["Authorization"] = f"Bearer {tokens['alice']}"
        network = http.post("/api/v1/networks", json={"name": "lab"}).json()
        claim(app.state.context, network["join_code"], "fc94:a::1", "robot1")
        before = {
            path: http.get(path).json()
            for path in ("/api/v1/networks", "/api/v1/devices", "/api/v1/audit", "/api/v1/installation")
        }
        first_license = parse_license(http.get("/license.json").content)
    with app.state.context.transaction() as session:
        revision = service.current_revision(session)
    again = create_app(replace(settings, name="renamed lab"))
    with BackgroundServer(again) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
        http.headers["Authorization"] = f"Bearer {tokens['alice']}"
        after = {path: http.get(path).json() for path in before}
        second_license = parse_license(http.get("/license.json").content)
    for entry in after["/api/v1/devices"]:
        entry.pop("online")
    for entry in before["/api/v1/devices"]:
        entry.pop("online")
    assert after["/api/v1/installation"].pop("name") == "renamed lab"
    assert before["/api/v1/installation"].pop("name") == "test lab"
    assert after == before
    assert second_license.name == "renamed lab"
    assert second_license.license_key == first_license.license_key
    assert second_license.installation_id == first_license.installation_id
    with again.state.context.transaction() as session:
        assert service.current_revision(session) == revision
        assert session.execute(text("SELECT count(*) FROM installation")).scalar() == 1


def test_password_change_keeps_this_browser_and_ends_the_others(dashboard: Running) -> None:
    new_password = "a much better passphrase"
    with dashboard.client() as here, dashboard.client() as elsewhere:
        csrf = here.post("/api/v1/session", json={"username": "alice", "password": PASSWORD}).json()[
            "csrf_token"
        ]
        elsewhere.post("/api/v1/session", json={"username": "alice", "password": PASSWORD})
        body = {"current_password": PASSWORD, "new_password": new_password}
        changed = here.put("/api/v1/account/password", json=body, headers={"X-CSRF-Token": csrf})
        assert changed.status_code == 204, changed.text
        assert here.get("/api/v1/account").status_code == 200
        assert elsewhere.get("/api/v1/account").status_code == 401
        old = elsewhere.post("/api/v1/session", json={"username": "alice", "password": PASSWORD})
        assert old.status_code == 401
        new = elsewhere.post("/api/v1/session", json={"username": "alice", "password": new_password})
        assert new.status_code == 200
    with dashboard.client("alice") as alice:
        assert alice.get("/api/v1/audit").json()[0]["action"] == "account.password"


def test_a_login_posted_as_a_form_or_text_sets_no_cookie(dashboard: Running) -> None:
    """Another site can make a browser post a form or text, not JSON: such a login must not work."""
    body = json.dumps({"username": "alice", "password": PASSWORD})
    with dashboard.client() as browser:
        as_text = browser.post("/api/v1/session", content=body, headers={"Content-Type": "text/plain"})
        as_form = browser.post("/api/v1/session", data={"username": "alice", "password": PASSWORD})
        for answer in (as_text, as_form):
            assert answer.status_code == 422
            assert "Content-Type: application/json" in answer.json()["detail"]
            assert "set-cookie" not in answer.headers
        assert browser.head("/license.json").status_code == 200
