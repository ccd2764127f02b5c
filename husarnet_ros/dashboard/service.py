"""Everything the Dashboard does, in one import: accounts (accounts.py), networks, devices, membership and
shares (fleet.py), the audit log (audit.py), and here what Websetup needs: claiming a device with a join
code, a device's configuration, last-seen times and link reports, and the links of one network.

Every function takes a SQLAlchemy ``Session`` inside a transaction the caller owns (``db.transaction``) and
never commits: one unit of work is one transaction, and a refusal (errors.py) rolls all of it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..core.address import format_address, parse_overlay
from ..core.errors import AddressError
from ..core.websetup import DeviceConfig, HostRecord, JoinResult, PeerLink, PeerReport
from . import audit
from .access import network_for
from .accounts import (
    account_by_username,
    account_for_token,
    account_join_code,
    authenticate,
    browser_session,
    change_password,
    create_account,
    create_browser_session,
    create_token,
    csrf_matches,
    delete_token,
    end_browser_session,
    list_tokens,
    regenerate_account_join_code,
)
from .audit import list_audit
from .clock import utc_now
from .errors import Conflict, Invalid, NotFound
from .fleet import (
    DeviceView,
    NetworkView,
    ShareView,
    add_member,
    check_hostname,
    create_network,
    delete_network,
    get_device,
    get_network,
    hostname_taken,
    is_online,
    list_devices,
    list_networks,
    list_shares,
    network_devices,
    regenerate_network_join_code,
    remove_device,
    remove_member,
    rename_device,
    rename_network,
    share_network,
    unshare_network,
)
from .meta import bump_revision, current_revision, device_limit, lock_revision, set_device_limit
from .models import Account, AccountJoinCode, Device, Membership, Network, PeerReportRow

__all__ = [
    "DeviceView",
    "LinkDevice",
    "NetworkLinks",
    "NetworkView",
    "ReportedLink",
    "ShareView",
    "account_by_username",
    "account_for_token",
    "account_join_code",
    "add_member",
    "authenticate",
    "browser_session",
    "bump_revision",
    "change_password",
    "claim_device",
    "create_account",
    "create_browser_session",
    "create_network",
    "create_token",
    "csrf_matches",
    "current_revision",
    "delete_network",
    "delete_token",
    "device_config",
    "device_limit",
    "end_browser_session",
    "get_device",
    "get_network",
    "list_audit",
    "list_devices",
    "list_networks",
    "list_shares",
    "list_tokens",
    "network_devices",
    "network_links",
    "record_report",
    "regenerate_account_join_code",
    "regenerate_network_join_code",
    "remove_device",
    "remove_member",
    "rename_device",
    "rename_network",
    "set_device_limit",
    "share_network",
    "touch_device",
    "unshare_network",
]


def canonical_address(address: str) -> str:
    """The canonical text of an fc94::/16 address; Invalid otherwise."""
    try:
        return format_address(parse_overlay(address))
    except AddressError as exc:
        raise Invalid(str(exc)) from None


def _device_by_address(session: Session, address: str) -> Device | None:
    return session.scalars(select(Device).where(Device.address == canonical_address(address))).first()


def _default_hostname(address: str) -> str:
    return "device-" + parse_overlay(address)[-4:].hex()


# --- claims ---


def _code_owner(session: Session, code: str) -> tuple[Account, Network | None]:
    network = session.scalars(select(Network).where(Network.join_code == code)).first()
    if network is not None:
        return network.owner, network
    row = session.scalars(select(AccountJoinCode).where(AccountJoinCode.code == code)).first()
    account = None if row is None else session.get(Account, row.account_id)
    if account is None:
        raise NotFound("unknown join code: copy it again from the Dashboard (it may have been regenerated)")
    return account, None


def claim_device(
    session: Session, code: str, address: str, hostname: str | None, now: datetime | None = None
) -> tuple[Device, JoinResult]:
    """Claim the device at ``address`` with a join code (Websetup's ``POST /join``).

    A new device joins the code's account (and its network, for a network code) under ``hostname`` (or
    ``device-`` and its address's last 4 bytes). A device its account already has only joins the code's
    network (its hostname stays); a device of another account is refused, as is a new device beyond the
    license's ``max_devices`` or with a hostname its account already uses.
    """
    moment = now or utc_now()
    address = canonical_address(address)
    account, network = _code_owner(session, code)
    lock_revision(session)  # serialises claims: the device count below cannot change under us
    device = _device_by_address(session, address)
    changed = False
    if device is None:
        limit = device_limit(session)
        count = session.scalar(select(func.count()).select_from(Device)) or 0
        if limit is not None and count >= limit:
            raise Conflict(
                f"this installation's license allows {limit} devices and all are claimed: remove a device in "
                "the Dashboard, or ask its operator to raise --max-devices"
            )
        name = check_hostname(hostname) if hostname is not None else _default_hostname(address)
        if hostname_taken(session, account.id, name):
            raise Conflict(
                f"hostname {name!r} is taken by another device of this account: join with another hostname, "
                "or rename or remove the other device in the Dashboard"
            )
        device = Device(owner_id=account.id, address=address, hostname=name, created_at=moment)
        session.add(device)
        session.flush()
        audit.record(
            session,
            actor=audit.device_actor(address),
            action="device.join",
            object=f"device:{address}",
            now=moment,
            account_id=account.id,
            network_id=network.id if network else None,
            details={"hostname": name, "network": network.name if network else None},
        )
        changed = True
    elif device.owner_id != account.id:
        raise Conflict(
            "this device is claimed by another account: its owner must remove it in the Dashboard before it "
            "can join with this code"
        )
    if network is not None and session.get(Membership, (network.id, device.id)) is None:
        session.add(Membership(network_id=network.id, device_id=device.id))
        session.flush()
        audit.record(
            session,
            actor=audit.device_actor(address),
            action="network.add_device",
            object=f"network:{network.id}",
            now=moment,
            account_id=account.id,
            network_id=network.id,
            details={"device": address, "hostname": device.hostname},
        )
        changed = True
    if changed:
        bump_revision(session)
    device.last_seen_at = moment
    config = _config_of(session, device)
    result = JoinResult(
        device_id=device.id,
        account=account.username,
        network=network.name if network else None,
        config=config,
    )
    return device, result


# --- configuration ---


def _config_of(session: Session, device: Device) -> DeviceConfig:
    my_networks = select(Membership.network_id).where(Membership.device_id == device.id)
    peers = session.scalars(
        select(Device)
        .join(Membership, Membership.device_id == Device.id)
        .where(Membership.network_id.in_(my_networks), Device.id != device.id)
        .distinct()
        .order_by(Device.id)
    ).all()
    # Hostnames are unique per account only: two accounts' devices in one shared network may share a name.
    # A hosts file maps a name to one address, so the first claimed keeps it; the others stay reachable by
    # address (they are whitelisted all the same). The device's own name is never pointed at a peer.
    hosts: list[HostRecord] = []
    names = {device.hostname}
    for peer in peers:
        if peer.hostname not in names:
            names.add(peer.hostname)
            hosts.append(HostRecord(hostname=peer.hostname, address=peer.address))
    hosts.sort(key=lambda record: record.hostname)
    return DeviceConfig(
        revision=current_revision(session),
        hostname=device.hostname,
        whitelist=[peer.address for peer in peers],
        hosts=hosts,
    )


def device_config(session: Session, address: str) -> DeviceConfig | None:
    """The whitelist and hosts of the device at ``address`` (None: no account claimed it)."""
    device = _device_by_address(session, address)
    return None if device is None else _config_of(session, device)


def touch_device(session: Session, address: str, now: datetime) -> None:
    """The device at ``address`` was just heard from (no effect if it is not claimed)."""
    device = _device_by_address(session, address)
    if device is not None:
        device.last_seen_at = now
        session.flush()


def record_report(session: Session, address: str, report: PeerReport, now: datetime) -> None:
    """Keep the device's latest view of its links (for the network picture)."""
    device = _device_by_address(session, address)
    if device is None:
        raise NotFound("not claimed: run husarnet-ros join CODE")
    links = [link.model_dump(mode="json") for link in report.peers]
    row = session.get(PeerReportRow, device.id)
    if row is None:
        session.add(PeerReportRow(device_id=device.id, reported_at=now, links=links))
    else:
        row.reported_at = now
        row.links = links
    device.last_seen_at = now
    session.flush()


# --- the network picture ---


@dataclass(frozen=True)
class LinkDevice:
    id: int
    hostname: str
    address: str
    online: bool
    last_seen_at: datetime | None


@dataclass(frozen=True)
class ReportedLink:
    """One end's view of a link: ``source`` reported how it reaches ``target``."""

    source_id: int
    target_id: int
    path: str
    base_server: str | None
    rtt_ms: float | None
    reported_at: datetime


@dataclass(frozen=True)
class NetworkLinks:
    network_id: int
    name: str
    devices: list[LinkDevice]
    links: list[ReportedLink]


def network_links(
    session: Session, account: Account, network_id: int, now: datetime | None = None
) -> NetworkLinks:
    """A network's devices and the latest links they reported between each other (a link to a device outside
    the network is left out)."""
    moment = now or utc_now()
    network, _role = network_for(session, account, network_id)
    members = session.scalars(
        select(Device)
        .join(Membership, Membership.device_id == Device.id)
        .where(Membership.network_id == network.id)
        .order_by(Device.hostname, Device.id)
    ).all()
    by_address = {device.address: device for device in members}
    devices = [LinkDevice(d.id, d.hostname, d.address, is_online(d, moment), d.last_seen_at) for d in members]
    links: list[ReportedLink] = []
    reports = session.scalars(
        select(PeerReportRow).where(PeerReportRow.device_id.in_([d.id for d in members]))
    ).all()
    for report in sorted(reports, key=lambda row: row.device_id):
        for raw in report.links:
            try:
                link = PeerLink.model_validate(raw)
            except ValidationError:
                continue  # written by an older version: not worth failing the picture for
            target = by_address.get(link.address)
            if target is None or target.id == report.device_id:
                continue
            links.append(
                ReportedLink(
                    report.device_id, target.id, link.path, link.base_server, link.rtt_ms, report.reported_at
                )
            )
    return NetworkLinks(network.id, network.name, devices, links)
