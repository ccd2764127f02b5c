"""Logging in with a password, the same for the REST API and the web UI: the brake on guessing
(login_guard.py), the password check, a new browser session, and the cookie that carries it."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request, Response
from sqlalchemy.orm import Session

from . import service
from .accounts import USERNAME_PATTERN
from .auth import SESSION_COOKIE
from .clock import utc_now
from .context import DashboardContext
from .errors import Unauthenticated


@dataclass(frozen=True)
class LoggedIn:
    username: str
    cookie: str  # the session's secret, for the cookie only
    csrf_token: str
    expires_at: datetime


def password_login(
    ctx: DashboardContext,
    transaction: Callable[[], AbstractContextManager[Session]],
    username: str,
    password: str,
    address: str,
) -> LoggedIn:
    """A new browser session for ``username`` if ``password`` is its password. TooManyAttempts before anything
    is checked when ``username`` or ``address`` failed too often lately; Unauthenticated (one message for
    every reason) otherwise."""
    now, clock = utc_now(), time.monotonic()
    ctx.login_guard.check(username, address, clock)
    try:
        with transaction() as session:
            if not USERNAME_PATTERN.fullmatch(username):
                raise Unauthenticated("wrong username or password")
            account = service.authenticate(session, username, password)
            cookie, row = service.create_browser_session(session, account, now, ctx.settings.session_lifetime)
            logged_in = LoggedIn(account.username, cookie, row.csrf_token, row.expires_at)
    except Unauthenticated:
        ctx.login_guard.failed(username, address, clock)
        raise
    ctx.login_guard.succeeded(username)
    return logged_in


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def set_session_cookie(response: Response, request: Request, ctx: DashboardContext, cookie: str) -> None:
    """The session cookie: not readable by scripts, not sent along cross-site posts, only over HTTPS when the
    Dashboard is reached that way."""
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(ctx.settings.session_lifetime.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https" or ctx.settings.public_url.startswith("https://"),
        path="/",
    )
