"""The Dashboard's web UI: server-rendered pages (Jinja2, autoescaped) over the service layer.

``app.py`` includes ``router(ctx)`` (docs/CONTROL_PLANE.md, "Web UI"). A page is a browser session's view:
the cookie ``hnr_session`` names the account (auth.resolve), and every form that changes something carries the
session's CSRF token in the ``csrf_token`` field. What an account may see or change is decided by the service
layer alone; this module only hides the controls a role cannot use and shows the service's refusals as
messages on the page (with the refusal's 4xx status), never as JSON or a traceback.

A request that is not logged in is sent to /login. After a change the browser is redirected (303) to the page
it came from, with ``?done=KEY`` naming one of a few fixed notices (``NOTICES``): nothing typed by anyone is
reflected from the URL. The network page refreshes its device list and picture from two fragment routes
(``/networks/{id}/live/...``) every ``LIVE_REFRESH_MS``; they answer 401 / 404 instead of redirecting, so the
script stops rather than filling the page with the login form.

Everything a page loads comes from this app (``/static/...``): no CDN, no external fonts; the
Content-Security-Policy header says so to the browser as well.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import service
from .access import ROLES_THAT_MANAGE, can_manage_device
from .api import MAX_ID
from .auth import CSRF_FORM_FIELD, SESSION_COOKIE, Credentials, resolve
from .clock import utc_now
from .context import DashboardContext
from .errors import Conflict, DashboardError, Forbidden, Invalid, NotFound, Unauthenticated
from .login import client_address, password_login, set_session_cookie
from .login_guard import TooManyAttempts
from .models import Account
from .picture_api import render_network

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

# The login form has no session yet, so its CSRF token is a random value kept in a cookie of its own and
# repeated in the form (double submit): another site can make a browser post the form, but cannot read it.
LOGIN_COOKIE = "hnr_login"
LOGIN_COOKIE_MAX_AGE_S = 3600
LIVE_REFRESH_MS = 2500
AUDIT_PAGE = 100
MAX_FORM_FIELDS = 20


class DatabaseUnavailable(DashboardError):
    """The database did not answer (HTTP 503): nothing the user did wrong, and trying again may work."""


class UnreadableForm(DashboardError):
    """The request's form could not be parsed (HTTP 400)."""


STATUS_OF: tuple[tuple[type[DashboardError], int], ...] = (
    (NotFound, 404),
    (Forbidden, 403),
    (Invalid, 422),
    (Unauthenticated, 401),
    (TooManyAttempts, 429),
    (Conflict, 409),
    (DatabaseUnavailable, 503),
    (UnreadableForm, 400),
)

# What a page says after a change that worked (``?done=KEY``); unknown keys are ignored.
NOTICES = {
    "network-created": "Network created. Robots join it with the commands below.",
    "network-renamed": "Network renamed.",
    "network-deleted": "Network deleted.",
    "join-code": "New join code made: the old one no longer works (devices that joined with it stay).",
    "device-added": "Device added to the network.",
    "device-taken-out": "Device taken out of the network.",
    "shared": "Network shared.",
    "unshared": "The account no longer sees this network.",
    "left": "You left the network: it is no longer shared with you.",
    "device-renamed": "Device renamed.",
    "device-removed": "Device removed: it must join again with a join code to come back.",
    "token-revoked": "Token revoked: programs using it are refused from now on.",
    "logged-out": "Logged out.",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Work = Callable[[Session, Account, datetime], "Page | Response"]
Render = Callable[[Session, Account, datetime], "Page"]


class _NotLoggedIn(Exception):
    """The request carries no valid session: a page answers with a redirect to /login."""


@dataclass(frozen=True)
class Viewer:
    """Who is looking, as plain values (usable after the request's transaction ended)."""

    username: str
    csrf_token: str


@dataclass
class Page:
    """A template, what it shows, and the status it is sent with."""

    template: str
    title: str
    values: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    error: str | None = None


@dataclass(frozen=True)
class Form:
    """The fields of a posted form (text fields only), or why it could not be read."""

    fields: Mapping[str, str]
    problem: str | None = None

    def text(self, name: str) -> str:
        return self.fields.get(name, "")


async def read_form(request: Request) -> Form:
    """FastAPI dependency: the request's form, read before the (threaded) handler runs."""
    try:
        data = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    except StarletteHTTPException as exc:
        return Form({}, f"the form could not be read ({exc.detail}): reload the page and try again")
    return Form({key: value for key, value in data.multi_items() if isinstance(value, str)})


FormDep = Annotated[Form, Depends(read_form)]


def status_of(exc: DashboardError) -> int:
    return next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)


def parse_id(text: str, what: str) -> int:
    """A path's or form's id; a value that cannot be one is an object that does not exist."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise NotFound(f"no {what} {text[:40]!r}: follow a link from the lists instead of typing the address")
    return int(text)


def safe_next(target: str) -> str:
    """Where to go after logging in: a path of this site only (never ``//host`` or a full URL)."""
    if re.fullmatch(r"/(?![/\\])[\x21-\x7e]*", target) and len(target) <= 300:
        return target
    return "/"


def dashboard_host(public_url: str) -> str:
    """The ``host[:port]`` a robot gives to ``husarnet-ros setup-server``."""
    return urlsplit(public_url).netloc or public_url


def when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a template that names a missing value fails its test
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["compact_json"] = compact_json
    return env


def load_static() -> dict[str, tuple[bytes, str]]:
    """The static files by name, read once: only these names are ever served."""
    files = {}
    for path in sorted(STATIC_DIR.iterdir()):
        media_type = STATIC_TYPES.get(path.suffix)
        if media_type is not None and path.is_file():
            files[path.name] = (path.read_bytes(), media_type)
    return files


def redirect(path: str, done: str | None = None, **query: str) -> RedirectResponse:
    if done is not None:
        query["done"] = done
    target = f"{path}?{urlencode(query)}" if query else path
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


def to_login(request: Request) -> RedirectResponse:
    here = request.url.path
    return redirect("/login", next=here) if request.method == "GET" and here != "/" else redirect("/login")


def router(ctx: DashboardContext) -> APIRouter:
    """The UI's pages, bound to one running Dashboard (left out of the OpenAPI document: not the API)."""
    ui = APIRouter(include_in_schema=False)
    templates = make_templates()
    static_files = load_static()
    host = dashboard_host(ctx.settings.public_url)
    secure_cookies = ctx.settings.public_url.startswith("https://")

    # --- rendering ---

    def html(template: str, values: Mapping[str, Any], status: int = 200) -> HTMLResponse:
        text = templates.get_template(template).render(values)
        return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)

    def render(request: Request, page: Page, viewer: Viewer | None) -> HTMLResponse:
        notice = NOTICES.get(request.query_params.get("done", ""))
        values = {
            "title": page.title,
            "viewer": viewer,
            "csrf_field": CSRF_FORM_FIELD,
            "error": page.error,
            "notice": None if page.error else notice,
            "path": request.url.path,
            **page.values,
        }
        return html(page.template, values, page.status)

    def error_page(request: Request, viewer: Viewer | None, exc: DashboardError) -> HTMLResponse:
        status = status_of(exc)
        title = {404: "Not found", 403: "Not allowed"}.get(status, "Not possible")
        page = Page("error.html", title, status=status, error=str(exc))
        return render(request, page, viewer)

    @contextmanager
    def unit_of_work() -> Iterator[Session]:
        """``ctx.transaction()``, with the database's own refusals said as page messages (the app's handlers
        would answer them with JSON)."""
        try:
            with ctx.transaction() as session:
                yield session
        except IntegrityError:
            # Two requests at once made the same name or code: the later one lost the race.
            raise Conflict(
                "this conflicts with a change made at the same time: reload the page and try again"
            ) from None
        except OperationalError:
            raise DatabaseUnavailable(
                "the database cannot be reached: try again later, or check the Dashboard's log"
            ) from None

    # --- who is asking ---

    def credentials_of(request: Request) -> Credentials:
        # Pages are for browsers: only the session cookie counts (an API token is for the API).
        return Credentials(bearer=None, cookie=request.cookies.get(SESSION_COOKIE), csrf=None)

    def viewer_in(session: Session, request: Request, now: datetime) -> tuple[Account, Viewer]:
        try:
            caller = resolve(session, credentials_of(request), now, changes=False)
        except Unauthenticated:
            raise _NotLoggedIn() from None
        assert caller.browser_session is not None  # only a cookie was presented
        return caller.account, Viewer(caller.account.username, caller.browser_session.csrf_token)

    def check_csrf(session: Session, request: Request, now: datetime, form: Form) -> None:
        # The API's own check (a cookie alone may not change anything), said the way a page user can act on.
        try:
            resolve(session, credentials_of(request), now, changes=True, csrf_form=form.text(CSRF_FORM_FIELD))
        except Forbidden:
            raise Forbidden(
                "this form does not carry your session's security token (it is from an older page or another "
                "site): nothing was changed; reload the page and try again"
            ) from None

    def show(request: Request, build: Render) -> Response:
        """A page that only reads."""
        now = utc_now()
        viewer = None
        try:
            with unit_of_work() as session:
                account, viewer = viewer_in(session, request, now)
                page = build(session, account, now)
        except _NotLoggedIn:
            return to_login(request)
        except DashboardError as exc:
            return error_page(request, viewer, exc)
        return render(request, page, viewer)

    def act(request: Request, form: Form, work: Work, on_error: Render | None = None) -> Response:
        """A form that changes something: one transaction, after the session's CSRF token is checked.

        Success: ``work``'s redirect (or page). A refusal changes nothing; its message is shown on the page
        ``on_error`` renders (in a new transaction), or on the error page."""
        now = utc_now()
        viewer = None
        try:
            if form.problem is not None:
                raise UnreadableForm(form.problem)
            with unit_of_work() as session:
                account, viewer = viewer_in(session, request, now)
                check_csrf(session, request, now, form)
                result = work(session, account, now)
        except _NotLoggedIn:
            return to_login(request)
        except DashboardError as exc:
            if on_error is None or viewer is None:
                return error_page(request, viewer, exc)
            return show_refusal(request, exc, on_error)
        return result if isinstance(result, Response) else render(request, result, viewer)

    def show_refusal(request: Request, exc: DashboardError, build: Render) -> Response:
        def page_with_message(session: Session, account: Account, now: datetime) -> Page:
            page = build(session, account, now)
            page.status, page.error = status_of(exc), str(exc)
            return page

        return show(request, page_with_message)

    # --- pages' contents ---

    def overview(session: Session, account: Account, now: datetime, name: str = "") -> Page:
        networks = service.list_networks(session, account)
        return Page("overview.html", "Networks", {"networks": networks, "new_name": name})

    def network_page(network_id: int, typed: Mapping[str, str] | None = None) -> Render:
        """The network page; ``typed``: the fields of a refused form, shown again in their inputs."""

        def build(session: Session, account: Account, now: datetime) -> Page:
            view = service.get_network(session, account, network_id)
            manages = view.role in ROLES_THAT_MANAGE
            members = service.network_devices(session, account, network_id, now)
            candidates = []
            if manages:
                candidates = [
                    d
                    for d in service.list_devices(session, account, now)
                    if network_id not in d.network_ids and can_manage_device(session, account, d.device)
                ]
            owner = view.role == "owner"
            values = {
                "network": view,
                "manages": manages,
                "owner": owner,
                "devices": members,
                "candidates": candidates,
                "shares": service.list_shares(session, account, network_id) if owner else [],
                "picture": picture(session, account, network_id, now),
                "dashboard_host": host,
                "fingerprint": ctx.fingerprint,
                "refresh_ms": LIVE_REFRESH_MS,
                "typed": typed or {},
            }
            return Page("network.html", view.network.name, values)

        return build

    def picture(session: Session, account: Account, network_id: int, now: datetime) -> Markup:
        # picture.py escapes every name it draws, so its SVG is markup we made, not text someone typed.
        return Markup(render_network(service.network_links(session, account, network_id, now), now))

    def devices_page(
        session: Session, account: Account, now: datetime, typed: tuple[int, str] | None = None
    ) -> Page:
        """The devices page; ``typed``: a device's refused new hostname, shown again in its input."""
        views = service.list_devices(session, account, now)
        names = {v.network.id: v.network.name for v in service.list_networks(session, account)}
        rows = [
            {
                "view": v,
                "networks": [(i, names.get(i, f"network {i}")) for i in v.network_ids],
                "manage": can_manage_device(session, account, v.device),
                "own": v.device.owner_id == account.id,
                "hostname": typed[1] if typed and typed[0] == v.device.id else v.device.hostname,
            }
            for v in views
        ]
        return Page("devices.html", "Devices", {"rows": rows})

    def account_page(new_token: tuple[str, str] | None = None, token_name: str = "") -> Render:
        """The account page; ``new_token``: one just made (name, secret); ``token_name``: a refused name."""

        def build(session: Session, account: Account, now: datetime) -> Page:
            values = {
                "join_code": service.account_join_code(session, account),
                "tokens": service.list_tokens(session, account),
                "new_token": new_token,
                "token_name": token_name,
                "dashboard_host": host,
                "fingerprint": ctx.fingerprint,
            }
            return Page("account.html", "Account", values, status=201 if new_token else 200)

        return build

    # --- logging in and out ---

    def login_form(
        request: Request,
        next_path: str,
        *,
        username: str = "",
        error: str | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        page = Page(
            "login.html",
            "Log in",
            {
                "username": username,
                "login_token": token,
                "next": safe_next(next_path),
            },
            status=status,
            error=error,
        )
        response = render(request, page, None)
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=LOGIN_COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
            path="/login",
        )
        return response

    @ui.get("/login")
    def login_page(request: Request) -> Response:
        next_path = request.query_params.get("next", "/")
        try:
            with unit_of_work() as session:
                viewer_in(session, request, utc_now())
        except _NotLoggedIn:
            return login_form(request, next_path)
        except DashboardError as exc:
            return error_page(request, None, exc)
        return redirect(safe_next(next_path))

    @ui.post("/login")
    def log_in(request: Request, form: FormDep) -> Response:
        username = form.text("username").strip()
        password = form.text("password")
        next_path = form.text("next") or "/"
        expected = request.cookies.get(LOGIN_COOKIE, "")
        presented = form.text(CSRF_FORM_FIELD)
        if form.problem is not None:
            return login_form(request, next_path, username=username, error=form.problem, status=400)
        if not expected or not secrets.compare_digest(expected.encode(), presented.encode()):
            return login_form(
                request,
                next_path,
                username=username,
                error="this login form expired (or the browser refuses cookies): log in again with this form",
                status=403,
            )
        try:
            # TooManyAttempts is shown like any other refusal.
            logged_in = password_login(ctx, unit_of_work, username, password, client_address(request))
        except Unauthenticated:
            return login_form(
                request,
                next_path,
                username=username,
                error="wrong username or password: try again",
                status=401,
            )
        except DashboardError as exc:
            return login_form(request, next_path, username=username, error=str(exc), status=status_of(exc))
        response = redirect(safe_next(next_path))
        set_session_cookie(response, request, ctx, logged_in.cookie)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @ui.post("/logout")
    def log_out(request: Request, form: FormDep) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Response:
            service.end_browser_session(session, request.cookies.get(SESSION_COOKIE, ""))
            response = redirect("/login", "logged-out")
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response

        return act(request, form, work)

    # --- networks ---

    @ui.get("/")
    def home(request: Request) -> Response:
        return show(request, overview)

    @ui.post("/networks")
    def create_network(request: Request, form: FormDep) -> Response:
        name = form.text("name")

        def work(session: Session, account: Account, now: datetime) -> Response:
            view = service.create_network(session, account, name, now)
            return redirect(f"/networks/{view.network.id}", "network-created")

        return act(request, form, work, lambda s, a, now: overview(s, a, now, name))

    @ui.get("/networks/{network_id}")
    def network(request: Request, network_id: str) -> Response:
        return show(request, lambda s, a, now: network_page(parse_id(network_id, "network"))(s, a, now))

    def live(
        request: Request, network_id: str, template: str, build: Callable[..., dict[str, Any]]
    ) -> Response:
        now = utc_now()
        try:
            with unit_of_work() as session:
                account, viewer = viewer_in(session, request, now)
                number = parse_id(network_id, "network")
                values = build(session, account, number, now)
        except _NotLoggedIn:
            return html(
                "_live_stopped.html", {"message": "the session ended: reload the page to log in"}, 401
            )
        except DashboardError as exc:
            return html("_live_stopped.html", {"message": str(exc)}, status_of(exc))
        return html(template, {"viewer": viewer, "csrf_field": CSRF_FORM_FIELD, **values})

    @ui.get("/networks/{network_id}/live/devices")
    def live_devices(request: Request, network_id: str) -> Response:
        def build(session: Session, account: Account, number: int, now: datetime) -> dict[str, Any]:
            view = service.get_network(session, account, number)
            return {
                "network": view,
                "manages": view.role in ROLES_THAT_MANAGE,
                "devices": service.network_devices(session, account, number, now),
            }

        return live(request, network_id, "_network_devices.html", build)

    @ui.get("/networks/{network_id}/live/picture")
    def live_picture(request: Request, network_id: str) -> Response:
        return live(
            request,
            network_id,
            "_network_picture.html",
            lambda s, a, number, now: {"picture": picture(s, a, number, now)},
        )

    def network_action(
        request: Request,
        form: FormDep,
        network_id: str,
        change: Callable[[Session, Account, int, datetime], str],
    ) -> Response:
        """A change on the network page: back to it with the notice ``change`` returns, or its message."""
        holder: dict[str, int] = {}

        def work(session: Session, account: Account, now: datetime) -> Response:
            holder["id"] = number = parse_id(network_id, "network")
            return redirect(f"/networks/{number}", change(session, account, number, now))

        def again(session: Session, account: Account, now: datetime) -> Page:
            return (
                network_page(holder["id"], form.fields)(session, account, now)
                if "id" in holder
                else overview(session, account, now)
            )

        return act(request, form, work, again)

    @ui.post("/networks/{network_id}/rename")
    def rename_network(request: Request, form: FormDep, network_id: str) -> Response:
        def change(session: Session, account: Account, number: int, now: datetime) -> str:
            service.rename_network(session, account, number, form.text("name"), now)
            return "network-renamed"

        return network_action(request, form, network_id, change)

    @ui.post("/networks/{network_id}/delete")
    def delete_network(request: Request, form: FormDep, network_id: str) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Response:
            service.delete_network(session, account, parse_id(network_id, "network"), now)
            return redirect("/", "network-deleted")

        return act(request, form, work)

    @ui.post("/networks/{network_id}/join-code")
    def regenerate_join_code(request: Request, form: FormDep, network_id: str) -> Response:
        def change(session: Session, account: Account, number: int, now: datetime) -> str:
            service.regenerate_network_join_code(session, account, number, now)
            return "join-code"

        return network_action(request, form, network_id, change)

    @ui.post("/networks/{network_id}/devices")
    def add_device(request: Request, form: FormDep, network_id: str) -> Response:
        def change(session: Session, account: Account, number: int, now: datetime) -> str:
            if not form.text("device_id"):
                raise Invalid("choose a device to add")
            service.add_member(session, account, number, parse_id(form.text("device_id"), "device"), now)
            return "device-added"

        return network_action(request, form, network_id, change)

    @ui.post("/networks/{network_id}/devices/{device_id}/remove")
    def take_device_out(request: Request, form: FormDep, network_id: str, device_id: str) -> Response:
        def change(session: Session, account: Account, number: int, now: datetime) -> str:
            service.remove_member(session, account, number, parse_id(device_id, "device"), now)
            return "device-taken-out"

        return network_action(request, form, network_id, change)

    @ui.post("/networks/{network_id}/shares")
    def share(request: Request, form: FormDep, network_id: str) -> Response:
        def change(session: Session, account: Account, number: int, now: datetime) -> str:
            username = form.text("username").strip()
            if not username:
                raise Invalid("type the username of the account to share the network with")
            service.share_network(session, account, number, username[:100], form.text("role"), now)
            return "shared"

        return network_action(request, form, network_id, change)

    @ui.post("/networks/{network_id}/shares/{username}/remove")
    def unshare(request: Request, form: FormDep, network_id: str, username: str) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Response:
            number = parse_id(network_id, "network")
            service.unshare_network(session, account, number, username[:100], now)
            if username == account.username:  # left a network shared with it: it no longer sees the page
                return redirect("/", "left")
            return redirect(f"/networks/{number}", "unshared")

        def again(session: Session, account: Account, now: datetime) -> Page:
            return network_page(parse_id(network_id, "network"))(session, account, now)

        return act(request, form, work, again)

    # --- devices ---

    @ui.get("/devices")
    def devices(request: Request) -> Response:
        return show(request, devices_page)

    @ui.post("/devices/{device_id}/rename")
    def rename_device(request: Request, form: FormDep, device_id: str) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Response:
            service.rename_device(session, account, parse_id(device_id, "device"), form.text("hostname"), now)
            return redirect("/devices", "device-renamed")

        def again(session: Session, account: Account, now: datetime) -> Page:
            typed = (
                (int(device_id), form.text("hostname"))
                if device_id.isascii() and device_id.isdigit()
                else None
            )
            return devices_page(session, account, now, typed)

        return act(request, form, work, again)

    @ui.post("/devices/{device_id}/remove")
    def remove_device(request: Request, form: FormDep, device_id: str) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Response:
            service.remove_device(session, account, parse_id(device_id, "device"), now)
            return redirect("/devices", "device-removed")

        return act(request, form, work, devices_page)

    # --- audit ---

    @ui.get("/audit")
    def audit(request: Request) -> Response:
        before_text = request.query_params.get("before")

        def build(session: Session, account: Account, now: datetime) -> Page:
            before = None
            if before_text:
                if (
                    not before_text.isascii()
                    or not before_text.isdigit()
                    or not 1 <= int(before_text) <= MAX_ID
                ):
                    raise Invalid("before must be an entry number from this page's 'older' link")
                before = int(before_text)
            entries = service.list_audit(session, account, limit=AUDIT_PAGE, before_id=before)
            older = entries[-1].id if len(entries) == AUDIT_PAGE else None
            return Page("audit.html", "Audit log", {"entries": entries, "older": older})

        return show(request, build)

    # --- account ---

    @ui.get("/account")
    def account(request: Request) -> Response:
        return show(request, account_page())

    @ui.post("/account/join-code")
    def regenerate_account_code(request: Request, form: FormDep) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Response:
            service.regenerate_account_join_code(session, account, now)
            return redirect("/account", "join-code")

        return act(request, form, work, account_page())

    @ui.post("/account/tokens")
    def create_token(request: Request, form: FormDep) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Page:
            token, secret = service.create_token(session, account, form.text("name"), now)
            # The secret is shown in this answer only: the database keeps its hash.
            return account_page((token.name, secret))(session, account, now)

        return act(request, form, work, account_page(token_name=form.text("name")))

    @ui.post("/account/tokens/{token_id}/revoke")
    def revoke_token(request: Request, form: FormDep, token_id: str) -> Response:
        def work(session: Session, account: Account, now: datetime) -> Response:
            service.delete_token(session, account, parse_id(token_id, "token"), now)
            return redirect("/account", "token-revoked")

        return act(request, form, work, account_page())

    # --- static files ---

    @ui.get("/static/{name}")
    def static(name: str) -> Response:
        found = static_files.get(name)
        if found is None:
            return Response("no such file", status_code=404, media_type="text/plain")
        content, media_type = found
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return ui
