"""Demo data for the CRM: the demo merchant's staff and settings.

Called by ``smsgw demo`` on every start; safe to call again (staff who exist are kept, and get a
fresh API token so the demo can show a working one).
"""

from __future__ import annotations

from gateway.errors import StoreConflict
from gateway.store import Merchant, Store

from .settings import ensure_settings, settings_for
from .staff import Role, create_staff, rotate_staff_token, staff_by_phone

DEMO_STAFF = (
    ("owner", "13900000009", "王老板", Role.OWNER),
    ("manager", "13900000008", "李经理", Role.MANAGER),
    ("cashier", "13900000007", "张收银", Role.CASHIER),
)
"""(label, phone, name, role): the cashier's requests go to the manager, the manager's to the owner."""


async def seed_demo(store: Store, merchant: Merchant) -> dict:
    """Create (or refresh) the demo merchant's staff and settings. Returns
    ``{"staff": {"owner": {"id", "phone", "name", "role", "token"}, "manager": ..., "cashier": ...},
    "settings": {...}}``."""
    await ensure_settings(store, merchant.id)
    staff: dict[str, dict] = {}
    approver_id = None
    for label, phone, name, role in DEMO_STAFF:
        member = await staff_by_phone(store, merchant.id, phone)
        if member is None:
            try:
                member, token = await create_staff(store, merchant.id, phone, name, role, approver_id=approver_id)
            except StoreConflict:  # another node seeded it at the same moment, or it was deactivated
                await store.execute("UPDATE crm_staff SET active = true WHERE merchant_id = $1 AND phone = $2",
                                    merchant.id, phone)
                member = await staff_by_phone(store, merchant.id, phone)
                assert member is not None
                token = await rotate_staff_token(store, member.id)
        else:
            token = await rotate_staff_token(store, member.id)
        staff[label] = {"id": member.id, "phone": phone, "name": member.name, "role": str(member.role),
                        "token": token}
        approver_id = member.id
    settings = await settings_for(store, merchant.id)
    return {"staff": staff, "settings": {"join_keyword": settings.join_keyword,
                                         "points_keyword": settings.points_keyword,
                                         "lottery_keyword": settings.lottery_keyword,
                                         "points_per_yuan": settings.points_per_yuan,
                                         "points_expire_days": settings.points_expire_days}}
