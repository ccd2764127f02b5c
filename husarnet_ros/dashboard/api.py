"""The REST API under /api/v1 (docs/CONTROL_PLANE.md, "Dashboard REST API").

Each request is one transaction: the caller is identified (auth.py) and the service layer does the work
inside it, so a refused request changes nothing. Handlers are plain functions: FastAPI runs them in its
thread pool, where blocking database calls belong.

    POST   /session                          LoginIn -> SessionOut (+ cookie hnr_session)
    GET    /session                          SessionOut (who is logged in)
    DELETE /session                          log out
    GET    /account                          AccountOut
    POST   /account/join-code                JoinCodeOut (a new account join code)
    PUT    /account/password                 PasswordChangeIn
    GET    /installation                     InstallationOut
    GET    /tokens                           list[TokenOut]
    POST   /tokens                           NameIn -> NewTokenOut
    DELETE /tokens/{id}
    GET    /networks                         list[NetworkOut]
    POST   /networks                         NameIn -> NetworkOut
    GET    /networks/{id}                    NetworkOut
    PATCH  /networks/{id}                    NameIn -> NetworkOut
    DELETE /networks/{id}
    POST   /networks/{id}/join-code          JoinCodeOut
    GET    /networks/{id}/devices            list[DeviceOut]
    PUT    /networks/{id}/devices/{device}   add a device
    DELETE /networks/{id}/devices/{device}   take it out
    GET    /networks/{id}/shares             list[ShareOut]
    PUT    /networks/{id}/shares/{username}  ShareIn -> ShareOut
    DELETE /networks/{id}/shares/{username}
    GET    /networks/{id}/links              NetworkLinksOut
    GET    /devices                          list[DeviceOut]
    GET    /devices/{id}                     DeviceOut
    PATCH  /devices/{id}                     HostnameIn -> DeviceOut
    DELETE /devices/{id}
    GET    /audit?limit=N&before=ID          list[AuditOut]
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import service
from .auth import SESSION_COOKIE, Caller, CredentialsDep, resolve
from .clock import utc_now
from .context import DashboardContext
from .errors import NotFound
from .fleet import DeviceView, NetworkView
from .login import client_address, password_login, set_session_cookie
from .models import Account, ApiToken, AuditEntry, Device
from .schemas import (
    AccountOut,
    AuditOut,
    DeviceOut,
    ErrorOut,
    HostnameIn,
    InstallationOut,
    JoinCodeOut,
    LinkDeviceOut,
    LinkOut,
    LoginIn,
    NameIn,
    NetworkLinksOut,
    NetworkOut,
    NewTokenOut,
    PasswordChangeIn,
    SessionOut,
    ShareIn,
    ShareOut,
    TokenOut,
)

API_PREFIX = "/api/v1"
MAX_ID = 2**31 - 1  # PostgreSQL's integer: a larger id cannot exist, and must not reach the database
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Username = Annotated[str, Path(max_length=64)]

T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422)
}


def network_out(view: NetworkView) -> NetworkOut:
    network = view.network
    return NetworkOut(
        id=network.id,
        name=network.name,
        owner=view.owner,
        role=view.role,
        join_code=network.join_code if view.role == "owner" else None,
        device_count=view.device_count,
        created_at=network.created_at,
    )


def device_out(view: DeviceView) -> DeviceOut:
    device = view.device
    return DeviceOut(
        id=device.id,
        hostname=device.hostname,
        address=device.address,
        owner=view.owner,
        online=view.online,
        last_seen_at=device.last_seen_at,
        created_at=device.created_at,
        networks=list(view.network_ids),
    )


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id, name=token.name, created_at=token.created_at, last_used_at=token.last_used_at
    )


def audit_out(entry: AuditEntry) -> AuditOut:
    return AuditOut(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        object=entry.object,
        details=entry.details,
    )


def router(ctx: DashboardContext) -> APIRouter:
    """The API's routes, bound to one running Dashboard."""
    api = APIRouter(prefix=API_PREFIX, responses=ERRORS)

    def run(creds: CredentialsDep, work: Callable[[Session, Account, datetime], T], *, changes: bool) -> T:
        now = utc_now()

        def in_transaction(session: Session) -> T:
            caller = resolve(session, creds, now, changes=changes)
            return work(session, caller.account, now)

        return ctx.run(in_transaction)

    def read(creds: CredentialsDep, work: Callable[[Session, Account, datetime], T]) -> T:
        return run(creds, work, changes=False)

    def change(creds: CredentialsDep, work: Callable[[Session, Account, datetime], T]) -> T:
        return run(creds, work, changes=True)

    # --- session ---

    @api.post("/session", response_model=SessionOut, tags=["session"])
    def log_in(body: LoginIn, request: Request, response: Response) -> SessionOut:
        """Log in with a username and password: sets the session cookie and returns the CSRF token."""
        address = client_address(request)
        logged_in = password_login(ctx, ctx.transaction, body.username, body.password, address)
        set_session_cookie(response, request, ctx, logged_in.cookie)
        return SessionOut(
            username=logged_in.username, csrf_token=logged_in.csrf_token, expires_at=logged_in.expires_at
        )

    @api.get("/session", response_model=SessionOut, tags=["session"])
    def who_am_i(creds: CredentialsDep) -> SessionOut:
        now = utc_now()
        with ctx.transaction() as session:
            caller: Caller = resolve(session, creds, now, changes=False)
            row = caller.browser_session
            return SessionOut(
                username=caller.account.username,
                csrf_token=row.csrf_token if row else None,
                expires_at=row.expires_at if row else None,
            )

    @api.delete("/session", status_code=status.HTTP_204_NO_CONTENT, tags=["session"])
    def log_out(creds: CredentialsDep, response: Response) -> None:
        now = utc_now()
        with ctx.transaction() as session:
            caller = resolve(session, creds, now, changes=True)
            if caller.browser_session is None or creds.cookie is None:
                raise NotFound(
                    "no browser session to end: an API token is revoked with DELETE /api/v1/tokens/ID"
                )
            service.end_browser_session(session, creds.cookie)
        response.delete_cookie(SESSION_COOKIE, path="/")

    # --- account, installation, tokens ---

    @api.get("/account", response_model=AccountOut, tags=["account"])
    def get_account(creds: CredentialsDep) -> AccountOut:
        def work(session: Session, account: Account, now: datetime) -> AccountOut:
            code = service.account_join_code(session, account)
            return AccountOut(username=account.username, created_at=account.created_at, join_code=code)

        return read(creds, work)

    @api.post("/account/join-code", response_model=JoinCodeOut, tags=["account"])
    def new_account_join_code(creds: CredentialsDep) -> JoinCodeOut:
        return change(
            creds,
            lambda s, a, now: JoinCodeOut(join_code=service.regenerate_account_join_code(s, a, now)),
        )

    @api.put("/account/password", status_code=status.HTTP_204_NO_CONTENT, tags=["account"])
    def change_password(creds: CredentialsDep, body: PasswordChangeIn) -> None:
        """Other browser sessions of the account end; the one asking (if any) stays logged in."""
        now = utc_now()

        def work(session: Session) -> None:
            caller = resolve(session, creds, now, changes=True)
            service.change_password(
                session, caller.account, body.current_password, body.new_password, now, caller.browser_session
            )

        ctx.run(work)

    @api.get("/installation", response_model=InstallationOut, tags=["account"])
    def installation(creds: CredentialsDep) -> InstallationOut:
        def work(session: Session, account: Account, now: datetime) -> InstallationOut:
            count = session.scalar(select(func.count()).select_from(Device)) or 0
            return InstallationOut(
                installation_id=ctx.installation_id,
                name=ctx.settings.name,
                dashboard_url=ctx.settings.public_url,
                fingerprint=ctx.fingerprint,
                max_devices=ctx.settings.max_devices,
                devices=count,
            )

        return read(creds, work)

    @api.get("/tokens", response_model=list[TokenOut], tags=["tokens"])
    def list_tokens(creds: CredentialsDep) -> list[TokenOut]:
        return read(creds, lambda s, a, now: [token_out(t) for t in service.list_tokens(s, a)])

    @api.post("/tokens", response_model=NewTokenOut, status_code=status.HTTP_201_CREATED, tags=["tokens"])
    def create_token(creds: CredentialsDep, body: NameIn) -> NewTokenOut:
        def work(session: Session, account: Account, now: datetime) -> NewTokenOut:
            token, secret = service.create_token(session, account, body.name, now)
            return NewTokenOut(**token_out(token).model_dump(), token=secret)

        return change(creds, work)

    @api.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["tokens"])
    def delete_token(creds: CredentialsDep, token_id: Id) -> None:
        change(creds, lambda s, a, now: service.delete_token(s, a, token_id, now))

    # --- networks ---

    @api.get("/networks", response_model=list[NetworkOut], tags=["networks"])
    def list_networks(creds: CredentialsDep) -> list[NetworkOut]:
        return read(creds, lambda s, a, now: [network_out(v) for v in service.list_networks(s, a)])

    @api.post("/networks", response_model=NetworkOut, status_code=status.HTTP_201_CREATED, tags=["networks"])
    def create_network(creds: CredentialsDep, body: NameIn) -> NetworkOut:
        return change(creds, lambda s, a, now: network_out(service.create_network(s, a, body.name, now)))

    @api.get("/networks/{network_id}", response_model=NetworkOut, tags=["networks"])
    def get_network(creds: CredentialsDep, network_id: Id) -> NetworkOut:
        return read(creds, lambda s, a, now: network_out(service.get_network(s, a, network_id)))

    @api.patch("/networks/{network_id}", response_model=NetworkOut, tags=["networks"])
    def rename_network(creds: CredentialsDep, network_id: Id, body: NameIn) -> NetworkOut:
        return change(
            creds, lambda s, a, now: network_out(service.rename_network(s, a, network_id, body.name, now))
        )

    @api.delete("/networks/{network_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["networks"])
    def delete_network(creds: CredentialsDep, network_id: Id) -> None:
        change(creds, lambda s, a, now: service.delete_network(s, a, network_id, now))

    @api.post("/networks/{network_id}/join-code", response_model=JoinCodeOut, tags=["networks"])
    def new_network_join_code(creds: CredentialsDep, network_id: Id) -> JoinCodeOut:
        return change(
            creds,
            lambda s, a, now: JoinCodeOut(
                join_code=service.regenerate_network_join_code(s, a, network_id, now)
            ),
        )

    @api.get("/networks/{network_id}/devices", response_model=list[DeviceOut], tags=["networks"])
    def network_devices(creds: CredentialsDep, network_id: Id) -> list[DeviceOut]:
        return read(
            creds, lambda s, a, now: [device_out(v) for v in service.network_devices(s, a, network_id, now)]
        )

    @api.put(
        "/networks/{network_id}/devices/{device_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["networks"],
    )
    def add_member(creds: CredentialsDep, network_id: Id, device_id: Id) -> None:
        change(creds, lambda s, a, now: service.add_member(s, a, network_id, device_id, now))

    @api.delete(
        "/networks/{network_id}/devices/{device_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["networks"],
    )
    def remove_member(creds: CredentialsDep, network_id: Id, device_id: Id) -> None:
        change(creds, lambda s, a, now: service.remove_member(s, a, network_id, device_id, now))

    @api.get("/networks/{network_id}/shares", response_model=list[ShareOut], tags=["networks"])
    def list_shares(creds: CredentialsDep, network_id: Id) -> list[ShareOut]:
        return read(
            creds,
            lambda s, a, now: [
                ShareOut(username=v.username, role=v.role)  # type: ignore[arg-type]
                for v in service.list_shares(s, a, network_id)
            ],
        )

    @api.put("/networks/{network_id}/shares/{username}", response_model=ShareOut, tags=["networks"])
    def share_network(creds: CredentialsDep, network_id: Id, username: Username, body: ShareIn) -> ShareOut:
        def work(session: Session, account: Account, now: datetime) -> ShareOut:
            view = service.share_network(session, account, network_id, username, body.role, now)
            return ShareOut(username=view.username, role=body.role)

        return change(creds, work)

    @api.delete(
        "/networks/{network_id}/shares/{username}", status_code=status.HTTP_204_NO_CONTENT, tags=["networks"]
    )
    def unshare_network(creds: CredentialsDep, network_id: Id, username: Username) -> None:
        change(creds, lambda s, a, now: service.unshare_network(s, a, network_id, username, now))

    @api.get("/networks/{network_id}/links", response_model=NetworkLinksOut, tags=["networks"])
    def network_links(creds: CredentialsDep, network_id: Id) -> NetworkLinksOut:
        def work(session: Session, account: Account, now: datetime) -> NetworkLinksOut:
            links = service.network_links(session, account, network_id, now)
            return NetworkLinksOut(
                network_id=links.network_id,
                name=links.name,
                devices=[
                    LinkDeviceOut(
                        id=d.id,
                        hostname=d.hostname,
                        address=d.address,
                        online=d.online,
                        last_seen_at=d.last_seen_at,
                    )
                    for d in links.devices
                ],
                links=[
                    LinkOut(
                        source_id=k.source_id,
                        target_id=k.target_id,
                        path=k.path,  # type: ignore[arg-type]
                        base_server=k.base_server,
                        rtt_ms=k.rtt_ms,
                        reported_at=k.reported_at,
                    )
                    for k in links.links
                ],
            )

        return read(creds, work)

    # --- devices ---

    @api.get("/devices", response_model=list[DeviceOut], tags=["devices"])
    def list_devices(creds: CredentialsDep) -> list[DeviceOut]:
        return read(creds, lambda s, a, now: [device_out(v) for v in service.list_devices(s, a, now)])

    @api.get("/devices/{device_id}", response_model=DeviceOut, tags=["devices"])
    def get_device(creds: CredentialsDep, device_id: Id) -> DeviceOut:
        return read(creds, lambda s, a, now: device_out(service.get_device(s, a, device_id, now)))

    @api.patch("/devices/{device_id}", response_model=DeviceOut, tags=["devices"])
    def rename_device(creds: CredentialsDep, device_id: Id, body: HostnameIn) -> DeviceOut:
        return change(
            creds, lambda s, a, now: device_out(service.rename_device(s, a, device_id, body.hostname, now))
        )

    @api.delete("/devices/{device_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["devices"])
    def remove_device(creds: CredentialsDep, device_id: Id) -> None:
        change(creds, lambda s, a, now: service.remove_device(s, a, device_id, now))

    # --- audit ---

    @api.get("/audit", response_model=list[AuditOut], tags=["audit"])
    def audit_log(
        creds: CredentialsDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ) -> list[AuditOut]:
        return read(
            creds,
            lambda s, a, now: [audit_out(e) for e in service.list_audit(s, a, limit=limit, before_id=before)],
        )

    return api
