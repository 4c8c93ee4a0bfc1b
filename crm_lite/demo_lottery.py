"""Demo data for the lottery and approvals: a running ``CJ`` lottery with prizes, and a small
staff (owner ← manager ← cashier) to play approvals with. Safe to run at every demo start:
what exists is reused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from gateway.errors import StoreConflict
from gateway.store import Merchant, Store

from . import lottery as lt
from .staff import Role, create_staff, staff_by_phone

DEMO_STAFF_PHONES: dict[str, str] = {"owner": "13900000009", "manager": "13900000008", "cashier": "13900000007"}
DEMO_STAFF_NAMES: dict[str, str] = {"owner": "王老板", "manager": "李经理", "cashier": "张收银"}
DEMO_LOTTERY = "开业抽奖"
DEMO_PRIZES: tuple[tuple[str, int], ...] = (("一等奖 电饭煲", 1), ("二等奖 保温杯", 5), ("三等奖 10元代金券", 20))
DEMO_DAYS = 30
"""Days the demo lottery takes entries."""
_CHAIN = ("owner", "manager", "cashier")  # each one's approver is the one before


async def seed_demo(store: Store, merchant: Merchant,
                    staff_phones: Mapping[str, str] | Sequence[str] = DEMO_STAFF_PHONES) -> dict:
    """Ensure the demo staff and a lottery taking entries now; returns what a newcomer needs:
    ``{"lottery": {...}, "staff": {"owner": {"id", "phone", "name", "token"}, ...}}`` (a token
    only for staff created by this call; tokens are stored hashed and shown once)."""
    phones = dict(staff_phones) if isinstance(staff_phones, Mapping) else dict(zip(_CHAIN, staff_phones))
    staff: dict[str, dict] = {}
    above: int | None = None
    for role in _CHAIN:
        phone = phones.get(role)
        if phone is None:
            continue
        member = await staff_by_phone(store, merchant.id, phone)
        token = None
        if member is None:
            try:
                member, token = await create_staff(store, merchant.id, phone, DEMO_STAFF_NAMES[role], Role(role),
                                                   approver_id=above)
            except StoreConflict:  # deactivated, or seeded by another node this very moment
                await store.execute("UPDATE crm_staff SET active = true WHERE merchant_id = $1 AND phone = $2",
                                    merchant.id, phone)
                member = await staff_by_phone(store, merchant.id, phone)
                assert member is not None
        elif member.approver_id is None and above is not None and member.id != above:
            await store.execute("UPDATE crm_staff SET approver_id = $2 WHERE id = $1", member.id, above)
        staff[role] = {"id": member.id, "phone": member.phone, "name": member.name, "token": token}
        above = member.id

    now = datetime.now(timezone.utc)
    row = await store.fetchrow(
        "SELECT id FROM crm_lotteries WHERE merchant_id = $1 AND keyword = $2 AND status = 'open'"
        " AND starts_at <= $3 AND ends_at > $3 ORDER BY id LIMIT 1", merchant.id, lt.DEFAULT_KEYWORD, now)
    if row is None:
        lot = await lt.create_lottery(store, merchant.id, name=DEMO_LOTTERY, starts_at=now - timedelta(minutes=1),
                                      ends_at=now + timedelta(days=DEMO_DAYS), max_entries=3, max_entries_per_day=1,
                                      prizes=DEMO_PRIZES)
    else:
        lot = await lt.lottery(store, merchant.id, row["id"])
    return {
        "lottery": {"id": lot.id, "name": lot.name, "keyword": lot.keyword, "seed_hash": lot.seed_hash,
                    "starts_at": lot.starts_at.isoformat(), "ends_at": lot.ends_at.isoformat(),
                    "prizes": [{"name": p.name, "stock": p.stock} for p in await lt.prizes(store, lot.id)]},
        "staff": staff,
    }
