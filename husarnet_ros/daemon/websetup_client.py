"""The Websetup client: a thread of the daemon that follows this device's config at the pinned Websetup.

It long-polls ``GET /websetup/v1/config?after=N&wait=25`` over the overlay (the daemon's own interface carries
it; the whitelist always lets Websetup's address in), hands every new config to its target (which saves it
as ``managed.json`` and applies it), and posts the links it sees to ``/websetup/v1/report`` every 30 s. What
to do and when is decided by ``websetup_sync`` (no I/O there); this module only does the requests.

Threads: the client runs its own asyncio loop on its own thread, started when a license is pinned and
stopped (cancelled, so an open long poll ends at once) on shutdown or when another server is set up.
``joined`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import httpx
from pydantic import ValidationError

from ..api import Status
from ..core.errors import HusarnetError
from ..core.websetup import API_PREFIX, DeviceConfig, PeerReport
from .license_fetch import connect_failure
from .websetup_sync import ConfigFollower, ReportSchedule, peer_links

log = logging.getLogger("husarnet_ros.daemon.websetup")

CONNECT_TIMEOUT_S = 10.0
# A long poll's answer may take its whole wait; more than this beyond it is a dead connection.
READ_MARGIN_S = 10.0
STOP_TIMEOUT_S = 5.0
HTTP_NOT_FOUND = 404


class WebsetupTarget(Protocol):
    """What the client changes and reads (the daemon's control plane)."""

    def apply_config(self, config: DeviceConfig) -> None:
        """Save ``config`` as the managed one and apply it; a HusarnetError if it could not be saved."""
        ...

    def release(self) -> None:
        """Websetup no longer knows this device: drop the managed entries."""
        ...

    def licensed(self) -> bool:
        """False once the license expired: the client stops."""
        ...

    def status(self) -> Status:
        """The daemon's status (its peers are reported)."""
        ...


def websetup_base_url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}"


class WebsetupClient:
    """Follows the config of this device at ``base_url`` (Websetup at ``websetup_address``)."""

    def __init__(
        self,
        base_url: str,
        websetup_address: str,
        target: WebsetupTarget,
        held: DeviceConfig | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait_s: float | None = None,
    ) -> None:
        self.base_url = base_url
        self.websetup_address = websetup_address
        self._target = target
        self._clock = clock
        now = clock()
        self.follower = (
            ConfigFollower(held, now) if wait_s is None else ConfigFollower(held, now, wait_s=wait_s)
        )
        self.reports = ReportSchedule(now)
        self._loop = asyncio.new_event_loop()
        self._main_task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._poll_wake: asyncio.Event | None = None
        self._report_wake: asyncio.Event | None = None
        self._last_logged_state = ""

    @property
    def state(self) -> str:
        return self.follower.state if self._thread is not None else "stopped"

    # --- life cycle (any thread) ---------------------------------------------------------------------------

    def start(self) -> None:
        self._main_task = self._loop.create_task(self._main())
        self._thread = threading.Thread(target=self._run, name="websetup", daemon=True)
        self._thread.start()
        log.info("Websetup client started: %s", self.base_url)

    def stop(self) -> None:
        """Cancel the requests under way and wait (bounded) for the thread to end."""
        task = self._main_task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: the thread ended
                self._loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the Websetup client did not stop within %g s", STOP_TIMEOUT_S)
        self._thread = None

    def joined(self, config: DeviceConfig) -> None:
        """A join gave (and applied) ``config``: follow it and report soon."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_joined, config)

    def _run(self) -> None:
        assert self._main_task is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main_task)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug: the daemon goes on without the client, and says so
            log.exception("the Websetup client stopped on an unexpected error")
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    # --- on the client's loop ------------------------------------------------------------------------------

    def _on_joined(self, config: DeviceConfig) -> None:
        now = self._clock()
        self.follower.on_joined(config, now)
        self.reports.soon(now)
        self._note_state()
        for event in (self._poll_wake, self._report_wake):
            if event is not None:
                event.set()

    async def _main(self) -> None:
        self._poll_wake = asyncio.Event()
        self._report_wake = asyncio.Event()
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=self.follower.wait_s + READ_MARGIN_S)
        # verify off: plain http:// over the overlay (which authenticates both ends); no CA files to load.
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, trust_env=False, verify=False
        ) as http:
            tasks = {
                asyncio.ensure_future(self._poll_forever(http)),
                asyncio.ensure_future(self._report_forever(http)),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:  # one ended (the license expired), or the client is stopping: both end
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep_until(self, at: float | None, wake: asyncio.Event) -> None:
        wake.clear()
        delay = None if at is None else at - self._clock()
        if delay is not None and delay <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin one before Python 3.11
            await asyncio.wait_for(wake.wait(), delay)

    async def _poll_forever(self, http: httpx.AsyncClient) -> None:
        assert self._poll_wake is not None
        follower = self.follower
        while True:
            due = follower.poll_due_at()
            await self._sleep_until(due, self._poll_wake)
            due = follower.poll_due_at()
            if due is None or due > self._clock():
                continue  # woken early (a join moved the time up, or nothing to do yet)
            if not self._target.licensed():
                follower.state = "stopped (the license expired)"
                return  # _main ends the reports too, and the thread ends
            await self._poll_once(http)
            self._note_state()

    async def _poll_once(self, http: httpx.AsyncClient) -> None:
        follower = self.follower
        request = follower.request()
        params = {"after": request.after, "wait": request.wait_s}
        try:
            response = await http.get(f"{API_PREFIX}/config", params=params)
        except httpx.HTTPError as exc:
            follower.on_error(_reason(exc), self._clock())
            return
        now = self._clock()
        if response.status_code == HTTP_NOT_FOUND:
            if follower.on_not_claimed(now):
                log.warning(
                    "Websetup no longer knows this device (released in the Dashboard?): its managed "
                    "whitelist and hosts are removed"
                )
                self._safely(self._target.release)
            self.reports.on_not_claimed(now)
            return
        if response.status_code != 200:
            follower.on_error(f"HTTP {response.status_code}", now)
            return
        try:
            config = DeviceConfig.model_validate_json(response.content)
        except ValidationError:
            follower.on_error("the answer is not a device config", now)
            return
        previous = follower.held
        change = follower.on_config(config, now)
        if change is None:
            return
        try:
            self._target.apply_config(config)
        except HusarnetError as exc:
            follower.held = previous  # asked again with the old revision after the back-off
            follower.on_error(f"cannot apply revision {config.revision}: {exc}", now)
            return
        log.info(
            "Websetup config revision %d applied: %d allowed, %d no longer, hosts %s",
            config.revision,
            len(change.allowed),
            len(change.disallowed),
            "changed" if change.hosts_changed else "unchanged",
        )

    async def _report_forever(self, http: httpx.AsyncClient) -> None:
        assert self._report_wake is not None
        while True:
            await self._sleep_until(self.reports.due_at(), self._report_wake)
            now = self._clock()
            if self.reports.due_at() > now:
                continue
            if not self.follower.claimed:
                self.reports.on_not_claimed(now)
                continue
            try:
                status = await asyncio.to_thread(self._target.status)
                body = PeerReport(peers=peer_links(status, self.websetup_address))
            except HusarnetError as exc:
                log.debug("no report this time: %s", exc)
                self.reports.on_error(self._clock())
                continue
            try:
                response = await http.post(
                    f"{API_PREFIX}/report",
                    content=body.model_dump_json(),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                log.debug("report to Websetup failed: %s", _reason(exc))
                self.reports.on_error(self._clock())
                continue
            if response.status_code == HTTP_NOT_FOUND:
                self.reports.on_not_claimed(self._clock())
            elif response.is_success:
                self.reports.on_sent(self._clock())
            else:
                log.debug("report to Websetup refused: HTTP %d", response.status_code)
                self.reports.on_error(self._clock())

    def _note_state(self) -> None:
        state = self.follower.state
        if state == self._last_logged_state:
            return
        self._last_logged_state = state
        if state.startswith("backing off"):
            log.warning("Websetup at %s: %s", self.base_url, state)
        elif state == "not claimed":
            log.info("Websetup at %s: this device is not claimed yet (husarnet-ros join CODE)", self.base_url)
        else:
            log.info("Websetup at %s: %s", self.base_url, state)

    @staticmethod
    def _safely(action: Callable[[], None]) -> None:
        try:
            action()
        except HusarnetError as exc:
            log.error("%s", exc)


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "no answer (is the server's daemon up and reachable over the overlay?)"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {connect_failure(exc)}"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
