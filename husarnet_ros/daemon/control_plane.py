"""The daemon's side of a self-hosted control plane: the pinned license, `setup-server`, `join`, and the
managed whitelist and hosts Websetup gives (docs/CONTROL_PLANE.md, "Daemon side").

- ``setup_server`` fetches ``http://ADDR/license.json``, checks it (signature, the pinned key or the expected
  fingerprint, its dates), saves it (``license.json``) and applies it at once: the base servers become the
  license's, Websetup's address is always allowed, the Websetup client (re)starts.
- ``join`` sends a join code to Websetup over the overlay and applies the config it answers.
- The Websetup client (websetup_client.py) keeps the config current; every config is saved first
  (``managed.json``), then applied: effective whitelist = local + managed + Websetup, hosts = local + managed
  (the node controller keeps the local ones apart and does the applying).
- At start, a cached license is applied (no network needed); an expired one is logged with what to do and not
  applied.

Threads: ``setup_server``, ``join`` and ``wait_joined`` run on the control API's loop; ``apply_config`` and
``release`` on the Websetup client's thread. ``_lock`` guards the license, the held config and the client
(never held during network I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Protocol

import httpx
from pydantic import ValidationError

from ..api import JoinInfo, LicenseInfo, Status, bound_message
from ..core import hosts as hosts_model
from ..core.address import format_address, parse_overlay
from ..core.errors import AddressError, HusarnetError
from ..core.license import License, LicenseError, normalise_fingerprint, parse_license
from ..core.websetup import API_PREFIX, DeviceConfig, JoinRequest, JoinResult
from .controller import BadValue, Conflict, InvalidRequest, NotFound, StorageError, Unreachable
from .license_fetch import connect_failure, fetch_license, license_url
from .state import StateDir, StateError
from .websetup_client import WebsetupClient, websetup_base_url

log = logging.getLogger("husarnet_ros.daemon")
# httpx logs every request at INFO: a long poll every 25 s would fill the log. Failures are logged here.
logging.getLogger("httpx").setLevel(logging.WARNING)

JOIN_TIMEOUT_S = 15.0
WAIT_POLL_S = 0.1
# What is loaded only on first use: by httpx on its first request (found by comparing sys.modules before
# and after one), by datetime.strptime (license dates). Imported ahead by a daemon that will not be able to
# read the interpreter's files once it switched accounts.
_LOADED_ON_FIRST_USE = (
    "_strptime",
    "anyio._backends._asyncio",
    "anyio.lowlevel",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "anyio.to_thread",
    "certifi",
    "concurrent.futures.thread",
    "h11",
    "httpcore",
    "importlib.readers",
    "importlib.resources._adapters",
    "queue",
)


def preload_http_client() -> None:
    """Import what the HTTP client loads lazily (_LOADED_ON_FIRST_USE), while the files are readable."""
    for name in _LOADED_ON_FIRST_USE:
        with contextlib.suppress(ImportError):  # a module another version does without
            importlib.import_module(name)


class ManagedTarget(Protocol):
    """Where the control plane's decisions take effect (the node controller)."""

    def set_managed(self, allowed: frozenset[bytes], hosts: list[hosts_model.HostEntry]) -> None:
        """Make ``allowed`` and ``hosts`` the managed whitelist and hosts (beside the local ones)."""
        ...

    def set_base_servers(self, names: list[str]) -> None:
        """Use exactly these base servers from now on (saved as `husarnet-ros base` saves them)."""
        ...

    def status(self) -> Status: ...


def overlay_websetup_url(license_: License) -> str:
    """Websetup's base URL: its overlay address and port, reached through this daemon's own interface."""
    return websetup_base_url(format_address(license_.websetup_address), license_.websetup_port)


def _now_utc() -> datetime:
    return datetime.now(timezone.utc)


class ControlPlane:
    def __init__(
        self,
        state: StateDir,
        target: ManagedTarget,
        *,
        wall_clock: Callable[[], datetime] = _now_utc,
        websetup_url: Callable[[License], str] = overlay_websetup_url,
    ) -> None:
        """``websetup_url``: where Websetup is reached (tests serve it on loopback); ``wall_clock``: the UTC
        time the license's dates are checked against."""
        self.state = state
        self._target = target
        self._wall_clock = wall_clock
        self._websetup_url = websetup_url
        self._lock = threading.Lock()
        self.license: License | None = None
        self.active = False  # the license is applied (pinned and not expired at start or setup)
        self.managed: DeviceConfig | None = None
        self.client: WebsetupClient | None = None

    # --- start and stop (at start-up before the control API serves; at shutdown) ----------------------------

    def start(self) -> None:
        """Apply the cached license and managed config, if any (works offline). StateError for a damaged
        file (the daemon does not start: the message says which file and what to do)."""
        license_ = self.state.load_license()
        if license_ is None:
            return
        self.license = license_
        try:
            license_.check_valid_at(self._wall_clock())
        except LicenseError as exc:
            log.error(
                "%s; until then its Websetup and managed whitelist are not used (the base servers stay). "
                "Run husarnet-ros setup-server ADDR once it is renewed",
                exc,
            )
            return
        saved = self.state.load_managed()
        if saved is not None and saved[0] != license_.installation_id:
            log.warning(
                "%s belongs to another installation than the pinned license of %r: not used",
                self.state.managed_path,
                license_.name,
            )
            saved = None
        with self._lock:
            self.active = True
            self.managed = saved[1] if saved is not None else None
            self._apply_managed_locked()
            self._restart_client_locked()
        log.info(
            "set up with %r (%s), Websetup [%s]:%d%s",
            license_.name,
            license_.fingerprint,
            format_address(license_.websetup_address),
            license_.websetup_port,
            f", managed config revision {self.managed.revision}" if self.managed else ", not joined yet",
        )

    def stop(self) -> None:
        with self._lock:
            client, self.client = self.client, None
        if client is not None:
            client.stop()

    # --- what status shows ---------------------------------------------------------------------------------

    def info(self) -> LicenseInfo | None:
        with self._lock:
            license_, managed, client, active = self.license, self.managed, self.client, self.active
        if license_ is None:
            return None
        return _info(license_, managed, client.state if client is not None else "stopped", active)

    # --- setup-server (the control API's loop) -------------------------------------------------------------

    async def setup_server(self, address: str, fingerprint: str | None, replace: bool) -> LicenseInfo:
        url = license_url(address)
        expected = None
        if fingerprint is not None:
            try:
                expected = normalise_fingerprint(fingerprint)
            except LicenseError as exc:
                raise BadValue(str(exc)) from None
        if replace and expected is None:
            raise BadValue(
                "--replace needs --fingerprint of the new key (as the Dashboard shows it): a replaced key "
                "is never trusted on first use"
            )
        data = await fetch_license(url)
        try:
            fetched = parse_license(data, expected_fingerprint=expected)
        except LicenseError as exc:
            raise InvalidRequest(f"{url}: {exc}") from None
        with self._lock:
            pinned = self.license
        if pinned is not None and fetched.license_key != pinned.license_key and not replace:
            try:
                parse_license(data, pinned_key=pinned.license_key)
            except LicenseError as exc:
                raise Conflict(str(exc)) from None
        try:
            fetched.check_valid_at(self._wall_clock())
        except LicenseError as exc:
            raise InvalidRequest(str(exc)) from None
        first_use = pinned is None
        replaced = pinned is not None and fetched.license_key != pinned.license_key
        other_installation = pinned is not None and pinned.installation_id != fetched.installation_id
        try:
            self.state.save_license(fetched)
        except StateError as exc:
            raise StorageError(f"could not save the license: {exc}; nothing was changed") from None
        if other_installation:
            try:
                self.state.forget_managed()
            except StateError as exc:  # harmless: a managed.json of another installation is never used
                log.warning("%s", exc)
        if fetched.base_servers:
            self._target.set_base_servers(fetched.base_servers)
        with self._lock:
            self.license = fetched
            self.active = True
            if other_installation:
                self.managed = None
            self._apply_managed_locked()
            old_client = self.client
            self.client = None
        if old_client is not None:
            await asyncio.to_thread(old_client.stop)
        with self._lock:
            if self.license is fetched:
                self._restart_client_locked()
            managed, client = self.managed, self.client
        log.info(
            "%s %r (%s) from %s; base servers %s; Websetup [%s]:%d",
            "pinned" if first_use else "replaced the key with" if replaced else "renewed the license of",
            fetched.name,
            fetched.fingerprint,
            url,
            ", ".join(fetched.base_servers) or "unchanged",
            format_address(fetched.websetup_address),
            fetched.websetup_port,
        )
        info = _info(fetched, managed, client.state if client is not None else "stopped", True)
        return info.model_copy(update={"first_use": first_use, "replaced": replaced})

    # --- join (the control API's loop) ---------------------------------------------------------------------

    async def join(self, code: str, hostname: str | None) -> JoinInfo:
        with self._lock:
            license_, active = self.license, self.active
        if license_ is None:
            raise InvalidRequest("no server is set up: run husarnet-ros setup-server ADDR first")
        if not active:
            raise InvalidRequest(
                f"the license of {license_.name!r} expired: run husarnet-ros setup-server ADDR once it is "
                "renewed"
            )
        try:
            request = JoinRequest(code=code, hostname=hostname)
        except ValidationError as exc:
            raise BadValue(
                bound_message("invalid join: " + "; ".join(str(e["msg"]) for e in exc.errors()))
            ) from None
        base_url = self._websetup_url(license_)
        where = f"Websetup at {base_url}"
        try:
            async with httpx.AsyncClient(
                base_url=base_url, timeout=JOIN_TIMEOUT_S, trust_env=False, verify=False
            ) as http:
                response = await http.post(
                    f"{API_PREFIX}/join",
                    content=request.model_dump_json(),
                    headers={"Content-Type": "application/json"},
                )
        except httpx.TimeoutException:
            raise Unreachable(
                f"{where} did not answer within {JOIN_TIMEOUT_S:g} s: can this daemon reach the server over "
                f"the overlay (husarnet-ros ping {format_address(license_.websetup_address)})?"
            ) from None
        except httpx.ConnectError as exc:
            raise Unreachable(f"cannot reach {where}: {connect_failure(exc)}") from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach {where}: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            detail = _detail(response)
            refused = f"Websetup refused the join: {detail}"
            if response.status_code == 404:
                raise NotFound(refused)
            if response.status_code == 409:
                raise Conflict(refused)
            if response.status_code < 500:
                raise InvalidRequest(refused)
            raise Unreachable(f"{where} failed: HTTP {response.status_code}: {detail}")
        try:
            result = JoinResult.model_validate_json(response.content)
        except ValidationError:
            raise Unreachable(f"{where} answered the join with something that is not a join result") from None
        try:
            self.apply_config(result.config)
        except StateError as exc:
            raise StorageError(f"joined, but could not save the config: {exc}") from None
        with self._lock:
            client = self.client
        if client is not None:
            client.joined(result.config)
        log.info(
            "joined %r as %s (account %s%s), config revision %d",
            license_.name,
            result.config.hostname,
            result.account,
            f", network {result.network}" if result.network else "",
            result.config.revision,
        )
        return JoinInfo(
            account=result.account,
            network=result.network,
            hostname=result.config.hostname,
            revision=result.config.revision,
            peers=len(result.config.whitelist),
        )

    async def wait_joined(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.managed is None or not self.active:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(WAIT_POLL_S)
        return True

    # --- the Websetup client's target (its thread) ---------------------------------------------------------

    def apply_config(self, config: DeviceConfig) -> None:
        """Save ``config`` as the managed one, then apply it. StateError (nothing changed) if not saved."""
        with self._lock:
            license_ = self.license
            if license_ is None or not self.active:
                return
            self.state.save_managed(license_.installation_id, config)
            self.managed = config
            self._apply_managed_locked()

    def licensed(self) -> bool:
        """Whether the license is still valid; once it expires (the daemon ran past ``valid_until``), it is no
        longer applied, as at a start: logged once, Websetup and the managed entries leave the whitelist."""
        with self._lock:
            license_ = self.license
            if license_ is None or not self.active:
                return False
            try:
                license_.check_valid_at(self._wall_clock())
            except LicenseError as exc:
                log.error("%s; its Websetup and managed whitelist are no longer used", exc)
                self.active = False
                self._apply_managed_locked()
                return False
        return True

    def release(self) -> None:
        with self._lock:
            self.state.forget_managed()
            self.managed = None
            self._apply_managed_locked()

    def status(self) -> Status:
        return self._target.status()

    # --- helpers (under _lock) -----------------------------------------------------------------------------

    def _apply_managed_locked(self) -> None:
        license_ = self.license
        allowed: set[bytes] = set()
        hosts: list[hosts_model.HostEntry] = []
        if license_ is not None and self.active:
            allowed.add(license_.websetup_address)
            if self.managed is not None:
                for text in self.managed.whitelist:
                    with contextlib.suppress(AddressError):  # DeviceConfig validated them already
                        allowed.add(parse_overlay(text))
                for record in self.managed.hosts:
                    try:
                        hosts.append(hosts_model.HostEntry.from_text(record.hostname, record.address))
                    except (AddressError, ValueError):
                        continue
        try:
            self._target.set_managed(frozenset(allowed), hosts)
        except HusarnetError as exc:
            log.error("could not apply the managed whitelist and hosts: %s", exc)

    def _restart_client_locked(self) -> None:
        license_ = self.license
        if license_ is None or not self.active or self.client is not None:
            return
        address = format_address(license_.websetup_address)
        client = WebsetupClient(self._websetup_url(license_), address, self, self.managed)
        client.start()
        self.client = client


def _info(license_: License, managed: DeviceConfig | None, websetup_state: str, active: bool) -> LicenseInfo:
    return LicenseInfo(
        name=license_.name,
        installation_id=license_.installation_id,
        fingerprint=license_.fingerprint,
        dashboard_url=license_.dashboard_url,
        base_servers=list(license_.base_servers),
        websetup_address=format_address(license_.websetup_address),
        websetup_port=license_.websetup_port,
        valid_until=license_.document["valid_until"],
        expired=not active,
        joined=managed is not None and active,
        managed_revision=managed.revision if managed is not None else None,
        dashboard_hostname=managed.hostname if managed is not None else None,
        websetup_state=websetup_state,
    )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return bound_message(body["detail"])
    text = response.text.strip().splitlines()[0] if response.text.strip() else response.reason_phrase
    return bound_message(f"HTTP {response.status_code}: {text}")
