"""Accounts, their passwords, API tokens, browser sessions and account join codes.

Passwords are kept as argon2 hashes; there is no default account or password (the operator creates one with
``husarnet-ros dashboard create-user``). API token secrets (``hnt_`` + 43 url-safe base64 characters) and
browser session cookies are shown once and stored only as their SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from . import audit
from .errors import Conflict, Invalid, NotFound, Unauthenticated
from .models import (
    NAME_MAX_LENGTH,
    USERNAME_MAX_LENGTH,
    Account,
    AccountJoinCode,
    ApiToken,
    BrowserSession,
)

USERNAME_MIN_LENGTH = 3
USERNAME_PATTERN = re.compile(rf"[a-z0-9._-]{{{USERNAME_MIN_LENGTH},{USERNAME_MAX_LENGTH}}}")
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024  # argon2 hashes anything, but a megabyte "password" is an attack on the CPU
TOKEN_PREFIX = "hnt_"
TOKEN_SECRET_BYTES = 32  # 43 url-safe base64 characters
DEFAULT_SESSION_LIFETIME = timedelta(hours=12)
JOIN_CODE_BYTES = 18  # 24 url-safe characters, what core.websetup.JoinRequest accepts

_hasher = PasswordHasher()
# Verified against when the username is unknown, so that the answer takes as long as for a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_join_code() -> str:
    return secrets.token_urlsafe(JOIN_CODE_BYTES)


def check_username(username: str) -> str:
    if not USERNAME_PATTERN.fullmatch(username):
        raise Invalid(
            f"username must be {USERNAME_MIN_LENGTH} to {USERNAME_MAX_LENGTH} characters of a-z, 0-9, '.', "
            "'_' and '-' (lowercase)"
        )
    return username


def check_password(password: str) -> str:
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise Invalid(f"password must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters long")
    return password


def check_name(name: str, what: str) -> str:
    """A display name (network, token): trimmed, 1 to 100 printable characters."""
    value = name.strip()
    if not value or len(value) > NAME_MAX_LENGTH or not value.isprintable():
        raise Invalid(f"{what} must be 1 to {NAME_MAX_LENGTH} printable characters")
    return value


def account_by_username(session: Session, username: str) -> Account | None:
    if not USERNAME_PATTERN.fullmatch(username):
        return None  # no such account can exist, and a NUL byte must not reach PostgreSQL
    return session.scalars(select(Account).where(Account.username == username)).first()


def create_account(session: Session, username: str, password: str, now: datetime) -> Account:
    check_username(username)
    check_password(password)
    if account_by_username(session, username) is not None:
        raise Conflict(f"username {username!r} is taken: choose another")
    account = Account(username=username, password_hash=_hasher.hash(password), created_at=now)
    session.add(account)
    session.flush()
    session.add(AccountJoinCode(account_id=account.id, code=new_join_code()))
    audit.record(
        session,
        actor=audit.SYSTEM_ACTOR,
        action="account.create",
        object=f"account:{username}",
        now=now,
        account_id=account.id,
    )
    return account


def authenticate(session: Session, username: str, password: str) -> Account:
    """The account whose password this is; Unauthenticated (one message for every reason) otherwise."""
    account = account_by_username(session, username) if len(password) <= PASSWORD_MAX_LENGTH else None
    try:
        _hasher.verify(account.password_hash if account else _DUMMY_HASH, password[:PASSWORD_MAX_LENGTH])
    except (VerificationError, InvalidHashError):
        account = None
    if account is None:
        raise Unauthenticated("wrong username or password")
    if _hasher.check_needs_rehash(account.password_hash):
        account.password_hash = _hasher.hash(password)
    return account


def change_password(
    session: Session,
    account: Account,
    current: str,
    new: str,
    now: datetime,
    keep_session: BrowserSession | None = None,
) -> None:
    """Replace the password; every browser session but ``keep_session`` (the one asking) is ended."""
    try:
        _hasher.verify(account.password_hash, current[:PASSWORD_MAX_LENGTH])
    except (VerificationError, InvalidHashError):
        raise Invalid("the current password is wrong") from None
    check_password(new)
    account.password_hash = _hasher.hash(new)
    # Other browsers logged in with the old password are logged out.
    others = delete(BrowserSession).where(BrowserSession.account_id == account.id)
    if keep_session is not None:
        others = others.where(BrowserSession.id_hash != keep_session.id_hash)
    session.execute(others)
    audit.record_account_change(session, account, "account.password", f"account:{account.username}", now)


# --- API tokens ---


def create_token(session: Session, account: Account, name: str, now: datetime) -> tuple[ApiToken, str]:
    """A new token and its secret (shown once; only its hash is kept)."""
    name = check_name(name, "token name")
    taken = session.scalar(
        select(ApiToken.id).where(ApiToken.account_id == account.id, ApiToken.name == name)
    )
    if taken is not None:
        raise Conflict(f"a token named {name!r} exists: delete it first or choose another name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_SECRET_BYTES)
    token = ApiToken(account_id=account.id, name=name, token_hash=sha256_hex(secret), created_at=now)
    session.add(token)
    session.flush()
    audit.record_account_change(session, account, "token.create", f"token:{token.id}", now, {"name": name})
    return token, secret


def list_tokens(session: Session, account: Account) -> list[ApiToken]:
    return list(
        session.scalars(select(ApiToken).where(ApiToken.account_id == account.id).order_by(ApiToken.id))
    )


def delete_token(session: Session, account: Account, token_id: int, now: datetime) -> None:
    token = session.get(ApiToken, token_id)
    if token is None or token.account_id != account.id:
        raise NotFound(f"no token {token_id} in this account")
    session.delete(token)
    audit.record_account_change(
        session, account, "token.delete", f"token:{token_id}", now, {"name": token.name}
    )


def account_for_token(session: Session, secret: str, now: datetime) -> Account | None:
    """The account of an API token secret (and the token's ``last_used_at`` is refreshed); None if unknown."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = session.scalars(select(ApiToken).where(ApiToken.token_hash == sha256_hex(secret))).first()
    if token is None:
        return None
    token.last_used_at = now
    return session.get(Account, token.account_id)


# --- browser sessions ---


def create_browser_session(
    session: Session, account: Account, now: datetime, lifetime: timedelta = DEFAULT_SESSION_LIFETIME
) -> tuple[str, BrowserSession]:
    """A new session: the cookie value (shown once) and the row, which holds the CSRF token."""
    session.execute(delete(BrowserSession).where(BrowserSession.expires_at <= now))
    cookie = secrets.token_urlsafe(32)
    row = BrowserSession(
        id_hash=sha256_hex(cookie),
        account_id=account.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(row)
    session.flush()
    return cookie, row


def browser_session(session: Session, cookie: str, now: datetime) -> tuple[Account, BrowserSession] | None:
    """The account and session of a cookie value; None if unknown or expired."""
    if not cookie or len(cookie) > 200:
        return None
    row = session.get(BrowserSession, sha256_hex(cookie))
    if row is None or row.expires_at <= now:
        return None
    account = session.get(Account, row.account_id)
    return None if account is None else (account, row)


def end_browser_session(session: Session, cookie: str) -> None:
    session.execute(delete(BrowserSession).where(BrowserSession.id_hash == sha256_hex(cookie)))


def csrf_matches(row: BrowserSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(row.csrf_token.encode(), presented.encode())


# --- the account's join code ---


def account_join_code(session: Session, account: Account) -> str:
    row = session.get(AccountJoinCode, account.id)
    if row is None:  # not expected (made with the account), but a code is always there to show
        row = AccountJoinCode(account_id=account.id, code=new_join_code())
        session.add(row)
        session.flush()
    return row.code


def regenerate_account_join_code(session: Session, account: Account, now: datetime) -> str:
    """A new code for the account; the old one stops working (devices claimed with it stay)."""
    row = session.get(AccountJoinCode, account.id)
    if row is None:
        row = AccountJoinCode(account_id=account.id, code=new_join_code())
        session.add(row)
    else:
        row.code = new_join_code()
    session.flush()
    audit.record_account_change(session, account, "account.join_code", f"account:{account.username}", now)
    return row.code
