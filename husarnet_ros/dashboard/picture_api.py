"""``GET /api/v1/networks/{id}/picture.svg``: the network picture (picture.py) for the UI and API clients.

Authorised like the rest of the API (an API token, or the browser session: reading needs no CSRF token), and
visible to exactly the accounts that see the network's links; anything else is the API's 404. ``app.py``
includes ``router(ctx)`` when this module exists (docs/CONTROL_PLANE.md, "Dashboard REST API").
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response

from .api import API_PREFIX, ERRORS, Id
from .auth import CredentialsDep, resolve
from .clock import utc_now
from .context import DashboardContext
from .picture import LinkObservation, PictureDevice, draw_network
from .service import NetworkLinks, network_links

SVG_MEDIA_TYPE = "image/svg+xml"
# The drawing is text and shapes only; if someone opens it as a document, it may load and run nothing.
PICTURE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def picture_input(links: NetworkLinks) -> tuple[list[PictureDevice], list[LinkObservation]]:
    """The service's view of a network's links as the picture's input (ids become addresses)."""
    devices = [PictureDevice(address=d.address, hostname=d.hostname, online=d.online) for d in links.devices]
    address_of = {d.id: d.address for d in links.devices}
    observations = [
        LinkObservation(
            reporter=address_of[link.source_id],
            peer=address_of[link.target_id],
            path=link.path,  # type: ignore[arg-type]  # PeerLink.path, checked when the report came in
            reported_at=link.reported_at,
            base_server=link.base_server,
            rtt_ms=link.rtt_ms,
        )
        for link in links.links
        if link.source_id in address_of and link.target_id in address_of
    ]
    return devices, observations


def render_network(links: NetworkLinks, now: datetime) -> str:
    """The SVG of one network; reports older than picture.STALE_REPORT_S at ``now`` are left out."""
    devices, observations = picture_input(links)
    return draw_network(devices, observations, title=links.name, now=now)


def router(ctx: DashboardContext) -> APIRouter:
    api = APIRouter(prefix=API_PREFIX, responses=ERRORS)

    @api.get(
        "/networks/{network_id}/picture.svg",
        response_class=Response,
        responses={200: {"content": {SVG_MEDIA_TYPE: {}}, "description": "The network as an SVG drawing"}},
        tags=["networks"],
        summary="The network's devices and links as an SVG picture",
    )
    def network_picture(creds: CredentialsDep, network_id: Id) -> Response:
        """Devices on a circle in hostname order (green: seen by Websetup within 60 s), links as their ends
        last reported them: solid direct, dashed tunnelled through a base server, grey down, orange when the
        two ends disagree; RTT on each link."""
        now = utc_now()
        with ctx.transaction() as session:
            caller = resolve(session, creds, now, changes=False)
            links = network_links(session, caller.account, network_id, now)
        return Response(render_network(links, now), media_type=SVG_MEDIA_TYPE, headers=PICTURE_HEADERS)

    return api
