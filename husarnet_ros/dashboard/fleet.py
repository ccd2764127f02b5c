"""Networks, devices, membership and shares, each change authorised, audited, and (when it can alter a
device's whitelist or hosts) followed by a revision bump in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ..core.hosts import HostnameError, normalize_hostname
from . import audit
from .access import (
    Role,
    device_for,
    network_for,
    network_role,
    require_manage,
    require_manage_device,
    require_owner,
    visible_devices_query,
    visible_network_ids,
)
from .accounts import account_by_username, check_name, new_join_code
from .errors import Conflict, Forbidden, Invalid, NotFound
from .meta import bump_revision
from .models import ROLE_MANAGE, ROLE_READ, Account, Device, Membership, Network, Share

ONLINE_WINDOW = timedelta(seconds=60)
SHARE_ROLES = (ROLE_READ, ROLE_MANAGE)


@dataclass(frozen=True)
class NetworkView:
    network: Network
    role: Role
    owner: str
    device_count: int


@dataclass(frozen=True)
class DeviceView:
    device: Device
    owner: str
    online: bool
    network_ids: tuple[int, ...]


@dataclass(frozen=True)
class ShareView:
    username: str
    role: str


def is_online(device: Device, now: datetime) -> bool:
    return device.last_seen_at is not None and now - device.last_seen_at <= ONLINE_WINDOW


def check_hostname(hostname: str) -> str:
    try:
        return normalize_hostname(hostname)
    except HostnameError as exc:
        raise Invalid(str(exc)) from None


def _device_count(session: Session, network_id: int) -> int:
    return session.scalar(select(func.count()).where(Membership.network_id == network_id)) or 0


def _view(session: Session, network: Network, role: Role) -> NetworkView:
    return NetworkView(network, role, network.owner.username, _device_count(session, network.id))


# --- networks ---


def create_network(session: Session, account: Account, name: str, now: datetime) -> NetworkView:
    name = check_name(name, "network name")
    taken = session.scalar(select(Network.id).where(Network.owner_id == account.id, Network.name == name))
    if taken is not None:
        raise Conflict(f"a network named {name!r} exists in this account: choose another name")
    network = Network(owner_id=account.id, name=name, join_code=new_join_code(), created_at=now)
    session.add(network)
    session.flush()
    audit.record_network_change(session, account, network, "network.create", now, {"name": name})
    return _view(session, network, "owner")


def list_networks(session: Session, account: Account) -> list[NetworkView]:
    networks = session.scalars(
        select(Network).where(Network.id.in_(visible_network_ids(account))).order_by(Network.name, Network.id)
    )
    views = []
    for network in networks:
        role = network_role(session, account, network)
        if role is not None:
            views.append(_view(session, network, role))
    return views


def get_network(session: Session, account: Account, network_id: int) -> NetworkView:
    network, role = network_for(session, account, network_id)
    return _view(session, network, role)


def rename_network(
    session: Session, account: Account, network_id: int, name: str, now: datetime
) -> NetworkView:
    network, role = network_for(session, account, network_id)
    require_owner(network, role, "rename it")
    name = check_name(name, "network name")
    if name != network.name:
        taken = session.scalar(
            select(Network.id).where(Network.owner_id == network.owner_id, Network.name == name)
        )
        if taken is not None:
            raise Conflict(f"a network named {name!r} exists in this account: choose another name")
        details = {"from": network.name, "to": name}
        audit.record_network_change(session, account, network, "network.rename", now, details)
        network.name = name
        session.flush()
    return _view(session, network, role)


def delete_network(session: Session, account: Account, network_id: int, now: datetime) -> None:
    network, role = network_for(session, account, network_id)
    require_owner(network, role, "delete it")
    audit.record_network_change(session, account, network, "network.delete", now, {"name": network.name})
    # Explicit deletes: the database cascades too, but the session must not keep stale members around.
    session.execute(delete(Membership).where(Membership.network_id == network.id))
    session.execute(delete(Share).where(Share.network_id == network.id))
    session.delete(network)
    session.flush()
    bump_revision(session)


def regenerate_network_join_code(session: Session, account: Account, network_id: int, now: datetime) -> str:
    network, role = network_for(session, account, network_id)
    require_owner(network, role, "change its join code")
    network.join_code = new_join_code()
    session.flush()
    audit.record_network_change(session, account, network, "network.join_code", now)
    return network.join_code


# --- shares ---


def list_shares(session: Session, account: Account, network_id: int) -> list[ShareView]:
    network, _role = network_for(session, account, network_id)
    rows = session.execute(
        select(Account.username, Share.role)
        .join(Share, Share.account_id == Account.id)
        .where(Share.network_id == network.id)
        .order_by(Account.username)
    )
    return [ShareView(username, role) for username, role in rows]


def share_network(
    session: Session, account: Account, network_id: int, username: str, role: str, now: datetime
) -> ShareView:
    """Share the network with another account as ``read`` or ``manage`` (or change the role)."""
    network, my_role = network_for(session, account, network_id)
    require_owner(network, my_role, "share it")
    if role not in SHARE_ROLES:
        raise Invalid(f"role must be one of {', '.join(SHARE_ROLES)}")
    other = account_by_username(session, username)
    if other is None:
        raise NotFound(f"no account named {username!r}: check the username")
    if other.id == network.owner_id:
        raise Invalid("the owner of a network always has every right on it: share it with another account")
    share = session.get(Share, (network.id, other.id))
    if share is None:
        session.add(Share(network_id=network.id, account_id=other.id, role=role))
    else:
        share.role = role
    session.flush()
    audit.record_network_change(
        session, account, network, "network.share", now, {"account": other.username, "role": role}
    )
    return ShareView(other.username, role)


def unshare_network(
    session: Session, account: Account, network_id: int, username: str, now: datetime
) -> None:
    network, my_role = network_for(session, account, network_id)
    other = account_by_username(session, username)
    # An account may leave a network shared with it; only the owner takes it from others.
    if other is None or other.id != account.id:
        require_owner(network, my_role, "change who it is shared with")
    share = None if other is None else session.get(Share, (network.id, other.id))
    if share is None or other is None:
        raise NotFound(f"network {network.name!r} is not shared with an account named {username!r}")
    session.delete(share)
    session.flush()
    audit.record_network_change(
        session, account, network, "network.unshare", now, {"account": other.username}
    )


# --- devices ---


def _device_view(session: Session, device: Device, now: datetime, account: Account | None) -> DeviceView:
    query = select(Membership.network_id).where(Membership.device_id == device.id)
    if account is not None:
        query = query.where(Membership.network_id.in_(visible_network_ids(account)))
    ids = tuple(sorted(session.scalars(query)))
    return DeviceView(device, device.owner.username, is_online(device, now), ids)


def list_devices(session: Session, account: Account, now: datetime) -> list[DeviceView]:
    devices = session.scalars(visible_devices_query(account).order_by(Device.hostname, Device.id))
    return [_device_view(session, device, now, account) for device in devices]


def get_device(session: Session, account: Account, device_id: int, now: datetime) -> DeviceView:
    return _device_view(session, device_for(session, account, device_id), now, account)


def network_devices(session: Session, account: Account, network_id: int, now: datetime) -> list[DeviceView]:
    network, _role = network_for(session, account, network_id)
    devices = session.scalars(
        select(Device)
        .join(Membership, Membership.device_id == Device.id)
        .where(Membership.network_id == network.id)
        .order_by(Device.hostname, Device.id)
    )
    return [_device_view(session, device, now, account) for device in devices]


def hostname_taken(session: Session, owner_id: int, hostname: str, except_id: int | None = None) -> bool:
    query = select(Device.id).where(Device.owner_id == owner_id, Device.hostname == hostname)
    if except_id is not None:
        query = query.where(Device.id != except_id)
    return session.scalar(query) is not None


def rename_device(
    session: Session, account: Account, device_id: int, hostname: str, now: datetime
) -> DeviceView:
    device = device_for(session, account, device_id)
    require_manage_device(session, account, device, "renaming it")
    hostname = check_hostname(hostname)
    if hostname != device.hostname:
        if hostname_taken(session, device.owner_id, hostname, except_id=device.id):
            raise Conflict(f"hostname {hostname!r} is taken by another device of {device.owner.username!r}")
        audit.record(
            session,
            actor=account.username,
            action="device.rename",
            object=f"device:{device.address}",
            now=now,
            account_id=device.owner_id,
            details={"from": device.hostname, "to": hostname},
        )
        device.hostname = hostname
        session.flush()
        bump_revision(session)
    return _device_view(session, device, now, account)


def remove_device(session: Session, account: Account, device_id: int, now: datetime) -> None:
    """Forget the device: it leaves every network and must be claimed again to come back."""
    device = device_for(session, account, device_id)
    if device.owner_id != account.id:
        raise Forbidden(
            f"only the owner ({device.owner.username!r}) can remove device {device.hostname!r}; you can "
            "take it out of a network you manage instead"
        )
    audit.record(
        session,
        actor=account.username,
        action="device.remove",
        object=f"device:{device.address}",
        now=now,
        account_id=device.owner_id,
        details={"hostname": device.hostname},
    )
    session.execute(delete(Membership).where(Membership.device_id == device.id))
    session.delete(device)
    session.flush()
    bump_revision(session)


# --- membership ---


def add_member(session: Session, account: Account, network_id: int, device_id: int, now: datetime) -> None:
    """Put a device into a network (both must be the account's to manage); a member already: no change."""
    network, role = network_for(session, account, network_id)
    require_manage(network, role, "adding a device")
    device = device_for(session, account, device_id)
    require_manage_device(session, account, device, "adding it to a network")
    if session.get(Membership, (network.id, device.id)) is not None:
        return
    session.add(Membership(network_id=network.id, device_id=device.id))
    session.flush()
    audit.record_network_change(
        session,
        account,
        network,
        "network.add_device",
        now,
        {"device": device.address, "hostname": device.hostname},
    )
    bump_revision(session)


def remove_member(session: Session, account: Account, network_id: int, device_id: int, now: datetime) -> None:
    network, role = network_for(session, account, network_id)
    require_manage(network, role, "removing a device")
    membership = session.get(Membership, (network.id, device_id))
    if membership is None:
        raise NotFound(f"device {device_id} is not in network {network.name!r}")
    device = session.get(Device, device_id)
    session.delete(membership)
    session.flush()
    audit.record_network_change(
        session,
        account,
        network,
        "network.remove_device",
        now,
        {"device": device.address if device else str(device_id)},
    )
    bump_revision(session)
