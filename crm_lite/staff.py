"""A merchant's staff, their roles and what each role may do.

Every CRM API call names an actor (a staff member, by API token) and is checked with
:func:`require` against :data:`PERMISSIONS`; SMS commands for staff (approvals) find the
sender by phone with :func:`staff_by_phone`. Tokens are 256-bit random values stored hashed
(SHA-256), shown once at creation.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

import msgspec

from gateway.store import Store

from .errors import Forbidden

TOKEN_PREFIX = "crm_"


class Role(StrEnum):
    OWNER = "owner"
    MANAGER = "manager"
    CASHIER = "cashier"
    WAITER = "waiter"


class Permission(StrEnum):
    MEMBERS_READ = "members.read"
    MEMBERS_WRITE = "members.write"
    MEMBERS_IMPORT = "members.import"
    MEMBERS_EXPORT = "members.export"
    POINTS_EARN = "points.earn"
    POINTS_REDEEM = "points.redeem"
    POINTS_ADJUST = "points.adjust"
    LOTTERY_MANAGE = "lottery.manage"
    LOTTERY_DRAW = "lottery.draw"
    APPROVALS_FILE = "approvals.file"
    APPROVALS_DECIDE = "approvals.decide"
    STAFF_MANAGE = "staff.manage"
    CAMPAIGNS_SEND = "campaigns.send"


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.MANAGER: frozenset(Permission) - {Permission.STAFF_MANAGE},
    Role.CASHIER: frozenset({Permission.MEMBERS_READ, Permission.MEMBERS_WRITE, Permission.POINTS_EARN,
                             Permission.POINTS_REDEEM, Permission.APPROVALS_FILE}),
    Role.WAITER: frozenset({Permission.MEMBERS_READ, Permission.APPROVALS_FILE}),
}
"""What each role may do. Owners manage staff; managers everything else; cashiers serve
members at the till; waiters look members up and file requests."""


class Staff(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    merchant_id: int
    phone: str
    name: str
    role: Role
    approver_id: int | None = None
    active: bool = True


def allowed(role: Role, permission: Permission) -> bool:
    return permission in PERMISSIONS[role]


def require(actor: Staff, permission: Permission) -> None:
    """Raise :class:`Forbidden` unless ``actor`` may do ``permission``."""
    if not actor.active or not allowed(actor.role, permission):
        raise Forbidden(actor.role, permission)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_COLUMNS = "id, merchant_id, phone, name, role, approver_id, active"


def _staff(row) -> Staff:
    return Staff(id=row["id"], merchant_id=row["merchant_id"], phone=row["phone"], name=row["name"],
                 role=Role(row["role"]), approver_id=row["approver_id"], active=row["active"])


async def create_staff(store: Store, merchant_id: int, phone: str, name: str, role: Role, *,
                       approver_id: int | None = None, with_token: bool = True) -> tuple[Staff, str | None]:
    """A new staff member; returns it and its API token (shown once), or ``None`` without one.
    Raises :class:`~gateway.errors.StoreConflict` if the phone is already on the staff."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32) if with_token else None
    row = await store.fetchrow(
        f"INSERT INTO crm_staff (merchant_id, phone, name, role, approver_id, token_hash)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
        merchant_id, phone, name, str(role), approver_id, hash_token(token) if token else None)
    assert row is not None
    return _staff(row), token


async def staff_by_phone(store: Store, merchant_id: int, phone: str) -> Staff | None:
    row = await store.fetchrow(
        f"SELECT {_COLUMNS} FROM crm_staff WHERE merchant_id = $1 AND phone = $2 AND active", merchant_id, phone)
    return None if row is None else _staff(row)


async def staff_by_id(store: Store, staff_id: int) -> Staff | None:
    row = await store.fetchrow(f"SELECT {_COLUMNS} FROM crm_staff WHERE id = $1", staff_id)
    return None if row is None else _staff(row)


async def staff_by_token(store: Store, token: str) -> Staff | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = await store.fetchrow(f"SELECT {_COLUMNS} FROM crm_staff WHERE token_hash = $1 AND active",
                               hash_token(token))
    return None if row is None else _staff(row)


async def rotate_staff_token(store: Store, staff_id: int) -> str:
    """A new API token for the staff member (the old one stops working); shown once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.execute("UPDATE crm_staff SET token_hash = $2 WHERE id = $1", staff_id, hash_token(token))
    return token
