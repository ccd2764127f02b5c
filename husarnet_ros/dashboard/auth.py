"""Who is asking: an API token (``Authorization: Bearer hnt_...``) or a browser session (cookie
``hnr_session``), and, for a browser, the CSRF token on every state-changing request.

A token is not sent by browsers on their own, so it needs no CSRF token; a cookie is, so a state-changing
request that came with only the cookie must also carry the session's CSRF token (header ``X-CSRF-Token`` or
form field ``csrf_token``): another site can make the browser send the cookie, but cannot read the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from . import accounts
from .errors import Forbidden, Unauthenticated
from .models import Account, BrowserSession

SESSION_COOKIE = "hnr_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"

_bearer = HTTPBearer(auto_error=False, description="An API token: hnt_ and 43 characters")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="The browser session")
_csrf = APIKeyHeader(name=CSRF_HEADER, auto_error=False, description="The session's CSRF token")


@dataclass(frozen=True)
class Credentials:
    """What a request presented, before the database is asked about it."""

    bearer: str | None
    cookie: str | None
    csrf: str | None


@dataclass(frozen=True)
class Caller:
    account: Account
    # None when the caller used an API token.
    browser_session: BrowserSession | None


def credentials(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
    csrf: Annotated[str | None, Depends(_csrf)],
) -> Credentials:
    """FastAPI dependency: the request's credentials (checked later, inside the request's transaction)."""
    return Credentials(bearer.credentials if bearer else None, cookie, csrf)


CredentialsDep = Annotated[Credentials, Depends(credentials)]


def resolve(
    session: Session, creds: Credentials, now: datetime, *, changes: bool, csrf_form: str | None = None
) -> Caller:
    """The caller of a request; ``changes``: the request changes something, so a browser needs CSRF."""
    if creds.bearer is not None:
        account = accounts.account_for_token(session, creds.bearer, now)
        if account is None:
            raise Unauthenticated("unknown API token: create one with husarnet-ros dashboard create-token")
        return Caller(account, None)
    if creds.cookie is not None:
        found = accounts.browser_session(session, creds.cookie, now)
        if found is None:
            raise Unauthenticated("the session has expired or ended: log in again")
        account, row = found
        if changes and not accounts.csrf_matches(row, creds.csrf or csrf_form):
            raise Forbidden(
                f"missing or wrong CSRF token: send the session's token in the {CSRF_HEADER} header "
                f"(or the {CSRF_FORM_FIELD} form field)"
            )
        return Caller(account, row)
    raise Unauthenticated(
        "not logged in: send Authorization: Bearer <API token>, or log in (POST /api/v1/session)"
    )
