"""The Dashboard's web UI (husarnet_ros/dashboard/ui.py) route by route, with httpx against a real uvicorn
server of ``create_app``: not logged in → /login, a form without the session's CSRF token → 403 with a message
and no change, bad form values → a 4xx page that says what to do, another account's network → 404 that names
nothing of it, a read-only share sees no controls and is refused changes, and every page is HTML that loads
nothing from elsewhere. Each test runs on SQLite and on PostgreSQL (``database_url``); the whole flow in a
real browser is test_ui_browser.py."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from sqlalchemy.orm import Session

from husarnet_ros.dashboard import service
from husarnet_ros.dashboard.app import create_app
from husarnet_ros.dashboard.clock import utc_now
from husarnet_ros.dashboard.context import DashboardContext
from husarnet_ros.dashboard.server import BackgroundServer, LateApp
from husarnet_ros.dashboard.settings import DashboardSettings

T = TypeVar("T")
PASSWORD = "correct horse battery staple"
ROBOT1 = "fc94:b01d:1803:8dd8:b293:5c7d:7639:932a"
ROBOT2 = "fc94::2"
TIMEOUT_S = 15.0
CSRF_VALUE = re.compile(r'name="csrf_token" value="([^"]+)"')
ALERT = re.compile(r'role="alert">(.*?)</p>', re.S)
NOTICE = re.compile(r'role="status">(.*?)</p>', re.S)


@dataclass
class Dashboard:
    url: str
    ctx: DashboardContext

    def run(self, work: Callable[[Session], T]) -> T:
        with self.ctx.transaction() as session:
            return work(session)

    def add_account(self, username: str) -> None:
        self.run(lambda s: service.create_account(s, username, PASSWORD, utc_now()))

    def network_id(self, owner: str, name: str) -> int:
        def find(session: Session) -> int:
            account = service.account_by_username(session, owner)
            assert account is not None
            views = [v for v in service.list_networks(session, account) if v.network.name == name]
            assert len(views) == 1, f"{owner} has no network {name!r}"
            return views[0].network.id

        return self.run(find)

    def network_names(self, username: str) -> list[str]:
        def names(session: Session) -> list[str]:
            account = service.account_by_username(session, username)
            assert account is not None
            return [v.network.name for v in service.list_networks(session, account)]

        return self.run(names)

    def claim(self, code: str, address: str, hostname: str) -> int:
        """A device joins with a join code, as Websetup's POST /join does."""
        return self.run(lambda s: service.claim_device(s, code, address, hostname)[0].id)

    def join_code(self, owner: str, name: str) -> str:
        network_id = self.network_id(owner, name)

        def code(session: Session) -> str:
            account = service.account_by_username(session, owner)
            assert account is not None
            found = service.get_network(session, account, network_id).network.join_code
            assert found is not None
            return found

        return self.run(code)


@pytest.fixture
def dashboard(tmp_path: Path, database_url: str) -> Iterator[Dashboard]:
    late = LateApp()
    server = BackgroundServer(late)
    try:
        settings = DashboardSettings(data_dir=tmp_path, database_url=database_url, public_url=server.url)
        app = create_app(settings)
        late.app = app
        server.start()
        yield Dashboard(server.url, app.state.context)
    finally:
        server.stop()


@pytest.fixture
def client(dashboard: Dashboard) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dashboard.url, timeout=TIMEOUT_S, follow_redirects=False) as browser:
        yield browser


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_VALUE.search(page.text)
    assert found is not None, f"no csrf_token field in {page.url}"
    return html.unescape(found.group(1))


def alert(page: httpx.Response) -> str:
    found = ALERT.search(page.text)
    assert found is not None, f"no error message on the page ({page.status_code}): {page.text[:500]}"
    return html.unescape(found.group(1))


def notice(page: httpx.Response) -> str:
    found = NOTICE.search(page.text)
    assert found is not None, f"no notice on the page ({page.status_code})"
    return html.unescape(found.group(1))


def is_page(response: httpx.Response) -> bool:
    return response.headers["content-type"].startswith("text/html") and "Traceback" not in response.text


def log_in(client: httpx.Client, username: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token (from the page the login leads to)."""
    form = client.get("/login")
    answer = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": csrf_of(form)}
    )
    assert answer.status_code == 303, alert(answer)
    return csrf_of(client.get("/"))


def post(client: httpx.Client, path: str, csrf: str | None, **fields: str) -> httpx.Response:
    data = dict(fields)
    if csrf is not None:
        data["csrf_token"] = csrf
    return client.post(path, data=data)


def test_pages_send_a_visitor_who_is_not_logged_in_to_login(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    for path in ("/", "/devices", "/audit", "/account", "/networks/1"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login"), path
    assert client.get("/networks/1").headers["location"] == "/login?next=%2Fnetworks%2F1"
    refused = client.post("/networks", data={"name": "lab", "csrf_token": "x"})
    assert refused.status_code == 303
    assert refused.headers["location"] == "/login"
    assert dashboard.network_names("alice") == []
    # The live fragments answer 401 (the page's script stops) rather than a login form to paste into the page.
    fragment = client.get("/networks/1/live/devices")
    assert fragment.status_code == 401
    assert "log in" in fragment.text
    # After logging in from such a redirect the browser goes back where it was going, on this site only.
    form = client.get("/login?next=/audit")
    answer = client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(form), "next": "/audit"},
    )
    assert answer.headers["location"] == "/audit"
    client.cookies.clear()
    form = client.get("/login")
    answer = client.post(
        "/login",
        data={
            "username": "alice",
            "password": PASSWORD,
            "csrf_token": csrf_of(form),
            "next": "//evil.example/",
        },
    )
    assert answer.headers["location"] == "/"


def test_login_with_a_wrong_password_says_so_and_keeps_the_username(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    form = client.get("/login")
    assert form.status_code == 200
    assert is_page(form)
    wrong = client.post(
        "/login", data={"username": "alice", "password": "not it", "csrf_token": csrf_of(form)}
    )
    assert wrong.status_code == 401
    assert is_page(wrong)
    assert "wrong username or password" in alert(wrong)
    assert 'name="username" value="alice"' in wrong.text
    assert "hnr_session" not in wrong.cookies
    unknown = client.post(
        "/login", data={"username": "Nobody Here", "password": "x", "csrf_token": csrf_of(wrong)}
    )
    assert unknown.status_code == 401
    assert "wrong username or password" in alert(unknown)
    right = client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(unknown)}
    )
    assert right.status_code == 303
    assert right.headers["location"] == "/"
    assert "HttpOnly" in right.headers["set-cookie"]
    overview = client.get("/")
    assert overview.status_code == 200
    assert '<span class="who">alice</span>' in overview.text
    # Logged in already: the login page sends the browser on.
    assert client.get("/login").status_code == 303


def test_login_without_the_login_forms_token_is_refused(dashboard: Dashboard, client: httpx.Client) -> None:
    dashboard.add_account("alice")
    # Another site posting the login form (login CSRF) has neither the form's cookie nor its token.
    forged = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert forged.status_code == 403
    assert is_page(forged)
    assert "log in again" in alert(forged)
    assert "hnr_session" not in forged.cookies
    client.cookies.clear()
    client.get("/login")
    mismatched = client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": "guess"}
    )
    assert mismatched.status_code == 403


def test_a_change_without_the_sessions_csrf_token_is_403_and_changes_nothing(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    for token in (None, "", "not-the-token"):
        refused = post(client, "/networks", token, name="lab")
        assert refused.status_code == 403
        assert is_page(refused)
        assert "security token" in alert(refused)
        assert "nothing was changed" in alert(refused)
    assert dashboard.network_names("alice") == []
    made = post(client, "/networks", csrf, name="lab")
    assert made.status_code == 303
    network_id = dashboard.network_id("alice", "lab")
    assert made.headers["location"] == f"/networks/{network_id}?done=network-created"
    for path in (f"/networks/{network_id}/delete", f"/networks/{network_id}/join-code", "/logout"):
        assert post(client, path, "wrong").status_code == 403, path
    assert dashboard.network_names("alice") == ["lab"]
    assert client.get("/").status_code == 200  # still logged in: logout needed the token too


def test_bad_form_values_give_a_4xx_page_with_the_message(dashboard: Dashboard, client: httpx.Client) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("/networks", {"name": ""}, 422, "network name must be 1 to 100 printable characters"),
        ("/networks", {}, 422, "network name must be"),
        ("/networks", {"name": "x" * 101}, 422, "network name must be"),
    ]
    for path, fields, status, message in cases:
        answer = post(client, path, csrf, **fields)
        assert answer.status_code == status, (path, fields)
        assert is_page(answer), (path, fields)
        assert message in alert(answer), (path, fields)
        assert 'id="create-network"' in answer.text  # the page itself, to try again
    assert post(client, "/networks", csrf, name="lab").status_code == 303
    network_id = dashboard.network_id("alice", "lab")
    device_id = dashboard.claim(dashboard.join_code("alice", "lab"), ROBOT1, "robot-1")
    taken = post(client, "/networks", csrf, name="lab")
    assert taken.status_code == 409
    assert "a network named 'lab' exists" in alert(taken)
    assert 'value="lab"' in taken.text  # what was typed stays in the form
    on_network_page: list[tuple[str, dict[str, str], int, str]] = [
        (
            f"/networks/{network_id}/shares",
            {"username": "nobody", "role": "read"},
            404,
            "no account named 'nobody'",
        ),
        (f"/networks/{network_id}/shares", {"username": "", "role": "read"}, 422, "type the username"),
        (
            f"/networks/{network_id}/shares",
            {"username": "alice", "role": "owner"},
            422,
            "role must be one of",
        ),
        (f"/networks/{network_id}/devices", {"device_id": ""}, 422, "choose a device"),
        (f"/networks/{network_id}/devices", {"device_id": "abc"}, 404, "no device 'abc'"),
        (f"/networks/{network_id}/devices", {"device_id": "999"}, 404, "no device 999"),
        (f"/networks/{network_id}/rename", {"name": "  "}, 422, "network name must be"),
        (f"/networks/{network_id}/devices/999/remove", {}, 404, "not in network 'lab'"),
    ]
    for path, fields, status, message in on_network_page:
        answer = post(client, path, csrf, **fields)
        assert answer.status_code == status, (path, fields, answer.text[:300])
        assert is_page(answer), (path, fields)
        assert message in alert(answer), (path, fields)
        assert 'id="join-code"' in answer.text, path  # shown on the network page, which stays usable
    typed = post(client, f"/networks/{network_id}/shares", csrf, username="nobody", role="manage")
    assert 'id="share-username" name="username" value="nobody"' in typed.text  # what was typed stays
    assert '<option value="manage" selected>' in typed.text
    bad_name = post(client, f"/devices/{device_id}/rename", csrf, hostname="not a hostname!")
    assert bad_name.status_code == 422
    assert is_page(bad_name)
    assert 'id="device-list"' in bad_name.text
    assert alert(bad_name)
    assert 'name="hostname" value="not a hostname!"' in bad_name.text
    taken_name = post(client, "/account/tokens", csrf, name="ci")
    assert taken_name.status_code == 201
    taken_name = post(client, "/account/tokens", csrf, name="ci")
    assert taken_name.status_code == 409
    assert "a token named 'ci' exists" in alert(taken_name)
    assert 'id="token-name" name="name" value="ci"' in taken_name.text
    no_token_name = post(client, "/account/tokens", csrf, name="")
    assert no_token_name.status_code == 422
    assert "token name must be" in alert(no_token_name)
    bad_page = client.get("/audit?before=soon")
    assert bad_page.status_code == 422
    assert "before must be" in alert(bad_page)
    # Nothing of it changed anything.
    assert dashboard.network_names("alice") == ["lab"]


def test_another_accounts_network_is_not_found_and_named_nowhere(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    dashboard.add_account("bob")
    with httpx.Client(base_url=dashboard.url, timeout=TIMEOUT_S) as bob:
        post(bob, "/networks", log_in(bob, "bob"), name="bobs-secret-lab")
    secret_id = dashboard.network_id("bob", "bobs-secret-lab")
    csrf = log_in(client, "alice")
    pages = [client.get(f"/networks/{secret_id}")]
    pages += [client.get(f"/networks/{secret_id}/live/{part}") for part in ("devices", "picture")]
    pages += [
        post(client, f"/networks/{secret_id}/{action}", csrf, name="mine", username="alice", role="read")
        for action in ("rename", "delete", "join-code", "shares")
    ]
    for answer in pages:
        assert answer.status_code == 404, answer.url
        assert "bobs-secret-lab" not in answer.text
        assert f"no network {secret_id} in this account" in answer.text
    for path in ("/networks/abc", "/networks/0", "/networks/99999999999999", f"/networks/{secret_id + 1}"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert is_page(answer), path
    assert dashboard.network_names("bob") == ["bobs-secret-lab"]
    assert "bobs-secret-lab" not in client.get("/").text


def test_a_read_only_share_shows_no_controls_and_refuses_changes(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    dashboard.add_account("bob")
    with httpx.Client(base_url=dashboard.url, timeout=TIMEOUT_S) as alice:
        alice_csrf = log_in(alice, "alice")
        post(alice, "/networks", alice_csrf, name="lab")
        network_id = dashboard.network_id("alice", "lab")
        device_id = dashboard.claim(dashboard.join_code("alice", "lab"), ROBOT1, "robot-1")
        shared = post(alice, f"/networks/{network_id}/shares", alice_csrf, username="bob", role="read")
        assert shared.status_code == 303
        assert notice(alice.get(shared.headers["location"])) == "Network shared."
    csrf = log_in(client, "bob")
    overview = client.get("/")
    assert f'href="/networks/{network_id}">lab</a>' in overview.text
    assert '<span class="role read">read</span>' in overview.text
    page = client.get(f"/networks/{network_id}")
    assert page.status_code == 200
    assert "robot-1" in page.text
    assert 'id="read-only"' in page.text
    for control in ("Take out", 'id="add-device"', 'id="join-code"', 'id="sharing"', 'id="rename-network"'):
        assert control not in page.text, control
    assert dashboard.join_code("alice", "lab") not in page.text
    refused = post(client, f"/networks/{network_id}/devices/{device_id}/remove", csrf)
    assert refused.status_code == 403
    assert "read-only" in alert(refused)
    assert "robot-1" in refused.text  # the device is still there, on the page that says no
    rename = post(client, f"/devices/{device_id}/rename", csrf, hostname="mine")
    assert rename.status_code == 403
    assert is_page(rename)
    devices = client.get("/devices")
    assert "robot-1" in devices.text
    assert f"/devices/{device_id}/rename" not in devices.text
    left = post(client, f"/networks/{network_id}/shares/bob/remove", csrf)
    assert left.status_code == 303
    assert left.headers["location"] == "/?done=left"
    assert client.get(f"/networks/{network_id}").status_code == 404


def test_the_network_page_shows_the_join_commands_and_regenerates_the_code(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    post(client, "/networks", csrf, name="lab")
    network_id = dashboard.network_id("alice", "lab")
    old_code = dashboard.join_code("alice", "lab")
    page = client.get(f"/networks/{network_id}").text
    host = dashboard.url.removeprefix("http://")
    assert f"husarnet-ros setup-server {host} --fingerprint {dashboard.ctx.fingerprint}" in page
    assert f"husarnet-ros join {old_code} HOSTNAME" in page
    answer = post(client, f"/networks/{network_id}/join-code", csrf)
    assert answer.headers["location"] == f"/networks/{network_id}?done=join-code"
    new_code = dashboard.join_code("alice", "lab")
    page = client.get(answer.headers["location"]).text
    assert new_code != old_code
    assert f"husarnet-ros join {new_code} HOSTNAME" in page
    assert old_code not in page
    dashboard.claim(new_code, ROBOT2, "robot-2")
    live = client.get(f"/networks/{network_id}/live/devices")
    assert live.status_code == 200
    assert "robot-2" in live.text
    assert "online" in live.text
    picture = client.get(f"/networks/{network_id}/live/picture")
    assert picture.status_code == 200
    assert "<svg" in picture.text
    assert "robot-2" in picture.text


def test_an_api_token_is_shown_once_and_works_until_revoked(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    made = post(client, "/account/tokens", csrf, name="ci")
    assert made.status_code == 201
    secret = re.search(r'id="new-token-secret">(hnt_[A-Za-z0-9_-]{43})</pre>', made.text)
    assert secret is not None
    bearer = {"Authorization": f"Bearer {secret.group(1)}"}
    with httpx.Client(base_url=dashboard.url, timeout=TIMEOUT_S) as program:
        assert program.get("/api/v1/session", headers=bearer).json()["username"] == "alice"
        account = client.get("/account")
        assert secret.group(1) not in account.text
        assert ">ci</td>" in account.text
        token_id = re.search(r'action="/account/tokens/(\d+)/revoke"', account.text)
        assert token_id is not None
        revoked = post(client, f"/account/tokens/{token_id.group(1)}/revoke", csrf)
        assert revoked.headers["location"] == "/account?done=token-revoked"
        assert program.get("/api/v1/session", headers=bearer).status_code == 401
    # The browser's cookie does not make the API token's pages: a token is for the API only.
    with httpx.Client(base_url=dashboard.url, timeout=TIMEOUT_S) as program:
        assert program.get("/", headers=bearer).status_code == 303


def test_names_are_escaped_and_pages_load_nothing_from_elsewhere(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    post(client, "/networks", csrf, name='<script>alert("x")</script>')
    network_id = dashboard.network_id("alice", '<script>alert("x")</script>')
    dashboard.claim(dashboard.join_code("alice", '<script>alert("x")</script>'), ROBOT1, "robot-1")
    pages = [client.get(path) for path in ("/", f"/networks/{network_id}", "/devices", "/audit", "/account")]
    for page in pages:
        assert page.status_code == 200, page.url
        assert is_page(page), page.url
        assert "<script>alert" not in page.text, page.url
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        for reference in re.findall(r'(?:src|href|action)="([^"]*)"', page.text):
            assert reference.startswith("/"), (page.url, reference)
            assert not reference.startswith("//"), (page.url, reference)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages[1].text
    for name, kind in (("style.css", "text/css"), ("dashboard.js", "text/javascript")):
        static = client.get(f"/static/{name}")
        assert static.status_code == 200
        assert static.headers["content-type"].startswith(kind)
        assert "http://" not in static.text
        assert "https://" not in static.text
    assert client.get("/static/..%2Fui.py").status_code == 404
    assert client.get("/static/missing.css").status_code == 404
    # The UI is not part of the API's OpenAPI document.
    assert not any(
        path.startswith(("/networks", "/login")) for path in client.get("/openapi.json").json()["paths"]
    )


def test_logout_ends_the_session(dashboard: Dashboard, client: httpx.Client) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    old_cookie = client.cookies["hnr_session"]
    out = post(client, "/logout", csrf)
    assert out.status_code == 303
    assert out.headers["location"] == "/login?done=logged-out"
    assert notice(client.get(out.headers["location"])) == "Logged out."
    assert client.get("/").status_code == 303
    # The old cookie no longer opens anything, even if it was kept.
    with httpx.Client(base_url=dashboard.url, timeout=TIMEOUT_S, cookies={"hnr_session": old_cookie}) as kept:
        assert kept.get("/").status_code == 303


def test_the_audit_page_lists_the_accounts_changes(dashboard: Dashboard, client: httpx.Client) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    post(client, "/networks", csrf, name="lab")
    device_id = dashboard.claim(dashboard.join_code("alice", "lab"), ROBOT1, "robot-1")
    assert post(client, f"/devices/{device_id}/rename", csrf, hostname="arm-1").status_code == 303
    page = client.get("/audit")
    actions = re.findall(r'<td class="action">([a-z_.]+)</td>', page.text)
    assert actions[:4] == ["device.rename", "network.add_device", "device.join", "network.create"]
    assert "&#34;to&#34;: &#34;arm-1&#34;" in page.text


def test_a_form_that_cannot_be_read_gets_a_400_page(dashboard: Dashboard, client: httpx.Client) -> None:
    dashboard.add_account("alice")
    csrf = log_in(client, "alice")
    too_many = "&".join(f"field{i}=1" for i in range(50)) + f"&csrf_token={csrf}&name=lab"
    answer = client.post(
        "/networks", content=too_many, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 400
    assert is_page(answer)
    assert "the form could not be read" in alert(answer)
    with_a_file = client.post("/networks", data={"csrf_token": csrf}, files={"name": ("lab.txt", b"lab")})
    assert with_a_file.status_code == 400
    assert "the form could not be read" in alert(with_a_file)
    assert dashboard.network_names("alice") == []


def test_the_owner_and_a_manage_share_change_membership_from_the_network_page(
    dashboard: Dashboard, client: httpx.Client
) -> None:
    dashboard.add_account("alice")
    dashboard.add_account("bob")
    csrf = log_in(client, "alice")
    post(client, "/networks", csrf, name="lab")
    network_id = dashboard.network_id("alice", "lab")
    # A device of the account in no network yet (joined with the account's code) can be added from the page.
    with dashboard.ctx.transaction() as session:
        alice = service.account_by_username(session, "alice")
        assert alice is not None
        alice_code = service.account_join_code(session, alice)
    device_id = dashboard.claim(alice_code, ROBOT1, "robot-1")
    page = client.get(f"/networks/{network_id}")
    assert f'<option value="{device_id}">robot-1 ({ROBOT1})</option>' in page.text
    added = post(client, f"/networks/{network_id}/devices", csrf, device_id=str(device_id))
    assert added.headers["location"] == f"/networks/{network_id}?done=device-added"
    page = client.get(added.headers["location"])
    assert notice(page) == "Device added to the network."
    assert f'data-device-id="{device_id}"' in page.text
    assert "1 device, 1 online" in page.text
    assert f'<option value="{device_id}">' not in page.text
    out = post(client, f"/networks/{network_id}/devices/{device_id}/remove", csrf)
    assert out.headers["location"] == f"/networks/{network_id}?done=device-taken-out"
    assert f'data-device-id="{device_id}"' not in client.get(f"/networks/{network_id}").text
    # bob manages the network: he adds his own device and takes alice's out, but sees no owner's controls.
    post(client, f"/networks/{network_id}/devices", csrf, device_id=str(device_id))
    post(client, f"/networks/{network_id}/shares", csrf, username="bob", role="manage")
    with dashboard.ctx.transaction() as session:
        bob_account = service.account_by_username(session, "bob")
        assert bob_account is not None
        bob_code = service.account_join_code(session, bob_account)
    bob_device = dashboard.claim(bob_code, ROBOT2, "bob-robot")
    with httpx.Client(base_url=dashboard.url, timeout=TIMEOUT_S, follow_redirects=False) as bob:
        bob_csrf = log_in(bob, "bob")
        page = bob.get(f"/networks/{network_id}")
        assert 'id="add-device"' in page.text
        assert "Take out" in page.text
        for owners_only in ('id="join-code"', 'id="sharing"', 'id="rename-network"'):
            assert owners_only not in page.text
        assert (
            post(bob, f"/networks/{network_id}/devices", bob_csrf, device_id=str(bob_device)).status_code
            == 303
        )
        assert post(bob, f"/networks/{network_id}/devices/{device_id}/remove", bob_csrf).status_code == 303
        members = bob.get(f"/networks/{network_id}/live/devices").text
        assert "bob-robot" in members
        assert "robot-1" not in members
        refused = post(bob, f"/networks/{network_id}/rename", bob_csrf, name="bobs")
        assert refused.status_code == 403
        assert "only the owner" in alert(refused)
    # The owner renames and deletes the network.
    renamed = post(client, f"/networks/{network_id}/rename", csrf, name="workshop")
    assert notice(client.get(renamed.headers["location"])) == "Network renamed."
    assert dashboard.network_names("alice") == ["workshop"]
    deleted = post(client, f"/networks/{network_id}/delete", csrf)
    assert deleted.headers["location"] == "/?done=network-deleted"
    assert dashboard.network_names("alice") == []
    assert client.get(f"/networks/{network_id}").status_code == 404
