"""Staff, roles and permissions."""

from __future__ import annotations

import pytest

from crm_lite.errors import Forbidden
from crm_lite.staff import (
    Permission,
    Role,
    create_staff,
    require,
    staff_by_phone,
    staff_by_token,
)
from gateway.errors import StoreConflict


def test_roles_narrow_down():
    owner, manager, cashier, waiter = (set(p for p in Permission if require_ok(r, p)) for r in Role)
    assert waiter < cashier < manager < owner
    assert Permission.STAFF_MANAGE in owner and Permission.STAFF_MANAGE not in manager


def require_ok(role, permission) -> bool:
    from crm_lite.staff import Staff

    try:
        require(Staff(id=1, merchant_id=1, phone="13800138000", name="x", role=role), permission)
    except Forbidden:
        return False
    return True


async def test_staff_found_by_phone_and_token(store):
    acct = await store.ensure_account("mall")
    merchant = await store.ensure_merchant("mall", acct.id, "10658888001")
    boss, boss_token = await create_staff(store, merchant.id, "13900000009", "Boss", Role.OWNER)
    clerk, token = await create_staff(store, merchant.id, "13900000001", "Li", Role.CASHIER, approver_id=boss.id)
    assert (await staff_by_phone(store, merchant.id, "13900000001")) == clerk
    assert (await staff_by_token(store, token)) == clerk and clerk.approver_id == boss.id
    assert await staff_by_token(store, "crm_wrong") is None and await staff_by_token(store, "x") is None
    with pytest.raises(Forbidden, match="cashier may not staff.manage"):
        require(clerk, Permission.STAFF_MANAGE)
    with pytest.raises(StoreConflict):
        await create_staff(store, merchant.id, "13900000001", "Again", Role.WAITER)
