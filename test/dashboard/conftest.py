"""Fixtures of the Dashboard tests: a database URL for SQLite and PostgreSQL, and a page of a real browser.

- ``database_url``: every test that takes it runs twice, ids ``sqlite`` (a file in tmp_path) and
  ``postgresql`` (a fresh database on a PostgreSQL server the session starts itself on 127.0.0.1, see
  husarnet_ros/testing/postgres.py). ``sqlite_url`` is SQLite only, for tests that need no second run.
- ``browser_page``: a playwright Page of Debian's headless Chromium (husarnet_ros/testing/browser.py) in a
  fresh browser context (own cookies); every wait of the page is bounded (15 s).

Without PostgreSQL or Chromium those tests are skipped with the reason, or fail under HUSARNET_ROS_STRICT=1
(CI), like every other requirement (husarnet_ros/testing/requirements.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from husarnet_ros.testing.postgres import PostgresServer
from husarnet_ros.testing.requirements import (
    STRICT_ENV,
    browser_unavailable,
    postgresql_unavailable,
    strict,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

DATABASE_KINDS = ["sqlite", "postgresql"]
BROWSER_FIXTURE = "browser_page"


def _require(reason: str | None, what: str) -> None:
    if reason is None:
        return
    if strict():
        pytest.fail(f"{what} cannot run: {reason} ({STRICT_ENV}=1)", pytrace=False)
    pytest.skip(f"{what}: {reason}")


def _sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'dashboard.sqlite3'}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the run, started at first use, stopped (its files removed) at the end."""
    _require(postgresql_unavailable(), "PostgreSQL tests")
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database: a SQLite file, then a fresh PostgreSQL one (dropped after)."""
    if request.param == "sqlite":
        yield _sqlite_url(tmp_path)
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty SQLite database file in tmp_path."""
    return _sqlite_url(tmp_path)


class _SharedBrowser:
    """One Chromium for consecutive browser tests, started when the first needs it.

    While playwright's sync API is running it marks its event loop as running in this thread, so that
    ``asyncio.run`` fails in any later test of the session. The browser is therefore closed as soon as the
    next test does not use it (``pytest_runtest_teardown`` below) and at the end of the session.
    """

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self._browser: Browser | None = None

    def get(self) -> Browser:
        if self._browser is None:
            from husarnet_ros.testing.browser import launch_chromium

            stack = contextlib.ExitStack()
            self._browser = stack.enter_context(launch_chromium())
            self._stack = stack
        return self._browser

    def close(self) -> None:
        stack, self._stack, self._browser = self._stack, None, None
        if stack is not None:
            stack.close()


_SHARED_BROWSER = _SharedBrowser()


@pytest.fixture(scope="session")
def _browser_session() -> Iterator[_SharedBrowser]:
    yield _SHARED_BROWSER
    _SHARED_BROWSER.close()


@pytest.fixture
def browser_page(_browser_session: _SharedBrowser) -> Iterator[Page]:
    """A page of headless Chromium in its own browser context, closed after the test.

    Do not call ``asyncio.run`` in a test that uses it: playwright's sync API holds this thread's event loop.
    """
    _require(browser_unavailable(), "browser tests")
    from husarnet_ros.testing.browser import open_page

    with open_page(_browser_session.get()) as page:
        yield page


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, None]:
    yield  # after the test's own fixtures (its browser context) are torn down
    if nextitem is None or BROWSER_FIXTURE not in getattr(nextitem, "fixturenames", ()):
        _SHARED_BROWSER.close()
