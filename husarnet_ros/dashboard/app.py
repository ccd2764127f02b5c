"""The Dashboard's web application: ``create_app(settings)``.

At creation it migrates the database, loads (or makes) the license key and records the installation and its
device limit, so a server that starts has a usable database and key. Routes: the REST API (api.py),
``GET /license.json`` (no authentication), and the routers of optional modules beside this one
(``OPTIONAL_ROUTERS``): each exposes ``router(ctx: DashboardContext) -> fastapi.APIRouter``.

Errors: every refusal is ``{"detail": "..."}`` with a 4xx status (errors.py kinds, validation, unknown
routes); a database that cannot be reached is 503.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..core.license import LicenseError
from . import api, meta
from .clock import utc_now
from .context import DashboardContext
from .db import create_db_engine, migrate, session_factory, transaction
from .errors import Conflict, DashboardError, Forbidden, Invalid, NotFound, Unauthenticated
from .license_key import load_or_create_license_key
from .login_guard import TooManyAttempts
from .settings import DashboardSettings

# Modules other parts of the Dashboard add; each is included if it exists.
OPTIONAL_ROUTERS = ("ui", "picture_api")
MAX_LISTED_ERRORS = 5
STATUS_OF: dict[type[DashboardError], int] = {
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    Invalid: 422,
    Unauthenticated: 401,
    TooManyAttempts: 429,
}


def create_context(settings: DashboardSettings) -> DashboardContext:
    """Migrate, load the key, record the installation: everything create_app needs before serving."""
    migrate(settings.url)
    key = load_or_create_license_key(settings.data_dir)
    engine = create_db_engine(settings.url)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        installation = meta.ensure_installation(session, settings.name, utc_now())
        meta.set_device_limit(session, settings.max_devices)
        installation_id = installation.id
    ctx = DashboardContext(settings, engine, sessions, key, installation_id)
    if settings.websetup_address is not None:
        try:
            ctx.license()  # a setting the license refuses should stop the start, not every daemon later
        except LicenseError:
            engine.dispose()
            raise
    return ctx


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:MAX_LISTED_ERRORS]:
        location = tuple(error.get("loc", ()))
        if location == ("body",) and error.get("type") in ("model_attributes_type", "dict_type", "missing"):
            # FastAPI reads a body as JSON only when it says it is (against cross-site form posts).
            parts.append("the body must be a JSON object, sent with Content-Type: application/json")
            continue
        where = ".".join(str(part) for part in location if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - MAX_LISTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _allowed_methods(request: Request) -> str:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _child_scope = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    async def on_dashboard_error(request: Request, exc: Exception) -> Response:
        status = next((code for kind, code in STATUS_OF.items() if isinstance(exc, kind)), 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, TooManyAttempts):
            headers = {"Retry-After": str(math.ceil(exc.retry_after))}
        return _error(status, str(exc), headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(422, _validation_message(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; a path has one route per method.
            headers["Allow"] = _allowed_methods(request)
        return _error(exc.status_code, str(exc.detail), headers or None)

    async def on_integrity_error(request: Request, exc: Exception) -> Response:
        # Two requests at once made the same name or code: the later one lost the race.
        return _error(409, "this conflicts with a change made at the same time: reload and try again")

    async def on_data_error(request: Request, exc: Exception) -> Response:
        # The service layer checks values first; this is the net for one that slipped through (a NUL byte).
        return _error(422, "a value in the request cannot be stored: use printable text of the allowed size")

    async def on_database_down(request: Request, exc: Exception) -> Response:
        return _error(503, "the database cannot be reached: try again later, or check the Dashboard's log")

    app.add_exception_handler(DashboardError, on_dashboard_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(IntegrityError, on_integrity_error)
    app.add_exception_handler(DataError, on_data_error)
    app.add_exception_handler(OperationalError, on_database_down)


def _include_optional_routers(app: FastAPI, ctx: DashboardContext) -> None:
    for name in OPTIONAL_ROUTERS:
        module_name = f"{__package__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not written (or not installed): the Dashboard works without it
            raise
        app.include_router(module.router(ctx))


def create_app(settings: DashboardSettings, ctx: DashboardContext | None = None) -> FastAPI:
    """The Dashboard as an ASGI app (``ctx``: one made by create_context, else made here)."""
    context = ctx or create_context(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        context.engine.dispose()

    app = FastAPI(
        title="husarnet-ros Dashboard",
        version=__version__,
        description="Accounts, devices, networks, shares and join codes of a self-hosted installation.",
        lifespan=lifespan,
    )
    app.state.context = context
    install_error_handlers(app)

    @app.get("/license.json", tags=["license"], responses={503: {"description": "No Websetup configured"}})
    def license_json() -> Response:
        """The installation's signed license: daemons fetch it with husarnet-ros setup-server."""
        try:
            document = context.license().to_json()
        except LicenseError as exc:
            return _error(503, str(exc))
        return Response(document, media_type="application/json")

    # curl -I and monitoring probes ask with HEAD; one operation in the schema is enough.
    app.add_api_route("/license.json", license_json, methods=["HEAD"], include_in_schema=False)

    app.include_router(api.router(context))
    _include_optional_routers(app, context)
    return app


def app_context(app: FastAPI) -> DashboardContext:
    """The context of an app made by create_app (for code and tests that get only the app)."""
    context = app.state.context
    assert isinstance(context, DashboardContext)
    return context
