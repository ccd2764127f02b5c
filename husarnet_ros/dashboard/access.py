"""Who may see and change what (docs/CONTROL_PLANE.md, "Authorisation").

An account sees a network it owns or that is shared with it; ``read`` only sees, ``manage`` also changes the
network's membership and the devices in it; only the owner renames or deletes a network, shares it and
handles its join code. A device is visible to its owner and to every account that sees a network it is in.
Anything an account may not see is "not found"; what it sees but may not change is "forbidden".
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from .errors import Forbidden, NotFound
from .models import ROLE_MANAGE, Account, Device, Membership, Network, Share

Role = Literal["owner", "manage", "read"]
ROLES_THAT_MANAGE: tuple[Role, ...] = ("owner", "manage")


def visible_network_ids(account: Account) -> Select[tuple[int]]:
    """A subquery: the ids of the networks ``account`` sees."""
    owned = select(Network.id).where(Network.owner_id == account.id)
    shared = select(Share.network_id).where(Share.account_id == account.id)
    return owned.union(shared)  # type: ignore[return-value]


def _managed_network_ids(account: Account) -> Select[tuple[int]]:
    owned = select(Network.id).where(Network.owner_id == account.id)
    shared = select(Share.network_id).where(Share.account_id == account.id, Share.role == ROLE_MANAGE)
    return owned.union(shared)  # type: ignore[return-value]


def visible_devices_query(account: Account) -> Select[Device]:
    in_visible = select(Membership.device_id).where(Membership.network_id.in_(visible_network_ids(account)))
    return select(Device).where((Device.owner_id == account.id) | Device.id.in_(in_visible))


def network_role(session: Session, account: Account, network: Network) -> Role | None:
    if network.owner_id == account.id:
        return "owner"
    role = session.scalar(
        select(Share.role).where(Share.network_id == network.id, Share.account_id == account.id)
    )
    if role == ROLE_MANAGE:
        return "manage"
    return "read" if role is not None else None


def network_for(session: Session, account: Account, network_id: int) -> tuple[Network, Role]:
    """The network and the account's role in it; NotFound if it does not see it."""
    network = session.get(Network, network_id)
    role = None if network is None else network_role(session, account, network)
    if network is None or role is None:
        raise NotFound(f"no network {network_id} in this account or shared with it")
    return network, role


def require_owner(network: Network, role: Role, what: str) -> None:
    if role != "owner":
        raise Forbidden(f"only the owner of network {network.name!r} can {what}; ask them")


def require_manage(network: Network, role: Role, what: str) -> None:
    if role not in ROLES_THAT_MANAGE:
        raise Forbidden(
            f"network {network.name!r} is shared with this account read-only: {what} needs the manage role"
        )


def device_for(session: Session, account: Account, device_id: int) -> Device:
    """The device, if the account sees it; NotFound otherwise."""
    device = session.scalars(visible_devices_query(account).where(Device.id == device_id)).first()
    if device is None:
        raise NotFound(f"no device {device_id} in this account or its shared networks")
    return device


def can_manage_device(session: Session, account: Account, device: Device) -> bool:
    """Its owner, or an account that manages a network the device is in."""
    if device.owner_id == account.id:
        return True
    found = session.scalar(
        select(Membership.device_id).where(
            Membership.device_id == device.id, Membership.network_id.in_(_managed_network_ids(account))
        )
    )
    return found is not None


def require_manage_device(session: Session, account: Account, device: Device, what: str) -> None:
    if not can_manage_device(session, account, device):
        raise Forbidden(
            f"device {device.hostname!r} is visible to this account only read-only: {what} needs its "
            "owner or the manage role on one of its networks"
        )
