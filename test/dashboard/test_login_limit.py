"""Password guessing against the Dashboard is bounded: after too many failed logins the API answers 429 with
Retry-After, and the web UI shows the same refusal, even for the right password, until the window passes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from husarnet_ros.dashboard.app import create_app
from husarnet_ros.dashboard.login_guard import MAX_FAILURES_PER_ACCOUNT, WINDOW_S
from husarnet_ros.dashboard.server import BackgroundServer

from .test_api import PASSWORD, Running, seed, settings_for


@pytest.fixture
def dashboard(sqlite_url: str, tmp_path: Path) -> Iterator[Running]:
    settings = settings_for(sqlite_url, tmp_path / "data")
    app = create_app(settings)
    tokens = seed(app.state.context, "alice", "bob")
    with BackgroundServer(app) as server:
        yield Running(server.url, app.state.context, settings, tokens)


def test_the_api_refuses_logins_after_too_many_failures(dashboard: Running) -> None:
    with dashboard.client() as client:
        for _ in range(MAX_FAILURES_PER_ACCOUNT):
            answer = client.post("/api/v1/session", json={"username": "alice", "password": "guess"})
            assert answer.status_code == 401
        refused = client.post("/api/v1/session", json={"username": "alice", "password": PASSWORD})
        assert refused.status_code == 429
        assert "too many failed logins" in refused.json()["detail"]
        assert 0 < int(refused.headers["Retry-After"]) <= WINDOW_S
        assert "hnr_session" not in refused.cookies
        # Other accounts still log in; a token still works for alice (only password logins are slowed).
        bob = client.post("/api/v1/session", json={"username": "bob", "password": PASSWORD})
        assert bob.status_code == 200
    with dashboard.client("alice") as client:
        assert client.get("/api/v1/account").status_code == 200


def test_a_successful_login_resets_the_count(dashboard: Running) -> None:
    with dashboard.client() as client:
        for _round in range(3):
            for _ in range(MAX_FAILURES_PER_ACCOUNT - 1):
                answer = client.post("/api/v1/session", json={"username": "alice", "password": "guess"})
                assert answer.status_code == 401
            ok = client.post("/api/v1/session", json={"username": "alice", "password": PASSWORD})
            assert ok.status_code == 200


def test_the_login_page_says_so(dashboard: Running) -> None:
    with httpx.Client(base_url=dashboard.url, timeout=30) as browser:
        for attempt in range(MAX_FAILURES_PER_ACCOUNT + 1):
            page = browser.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            password = PASSWORD if attempt == MAX_FAILURES_PER_ACCOUNT else "guess"
            form = {"username": "alice", "password": password, "csrf_token": token.group(1), "next": "/"}
            answer = browser.post("/login", data=form)
        assert answer.status_code == 429
        assert "too many failed logins" in answer.text
