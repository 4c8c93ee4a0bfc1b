"""Per-merchant CRM settings: the SMS command keywords and the points rules.

A merchant starts with the defaults (``1`` join, ``2`` points, ``CJ`` lottery; one point per
yuan; points never expire); owners change them through ``PATCH /v1/crm/settings``. Keywords
are stored normalized the way :func:`gateway.router.commands.parse_command` normalizes what a
consumer texts (NFKC, upper-case), so ``ｊｏｉｎ`` and ``join`` both become ``JOIN``.
"""

from __future__ import annotations

import re

import msgspec

from gateway.router.commands import normalize_text
from gateway.store import Merchant, Store

from .errors import InvalidInput, NotFound

DEFAULT_JOIN_KEYWORD = "1"
DEFAULT_POINTS_KEYWORD = "2"
DEFAULT_LOTTERY_KEYWORD = "CJ"
MAX_KEYWORD_LENGTH = 10
RESERVED_KEYWORDS = frozenset({"TD", "T", "退订", "SP", "HELP", "?"})
"""Keywords the gateway (unsubscribe) or other command parts (approvals) already answer."""
_KEYWORD_RE = re.compile(r"^[0-9A-Z\u4e00-\u9fff]{1,%d}$" % MAX_KEYWORD_LENGTH)
_DECISION_RE = re.compile(r"^[YN][0-9]+$")


class MerchantSettings(msgspec.Struct, frozen=True, kw_only=True):
    merchant_id: int
    join_keyword: str = DEFAULT_JOIN_KEYWORD
    points_keyword: str = DEFAULT_POINTS_KEYWORD
    lottery_keyword: str = DEFAULT_LOTTERY_KEYWORD
    points_per_yuan: int = 1
    """Points earned per whole yuan (100 fen) of a purchase; fractions of a yuan earn nothing."""
    points_expire_days: int | None = None
    """Points earned more than this many days ago expire (first in, first out); None: never."""


_COLUMNS = "merchant_id, join_keyword, points_keyword, lottery_keyword, points_per_yuan, points_expire_days"


def normalize_keyword(field: str, raw: str) -> str:
    """The keyword as a consumer's text is compared with it; raises :class:`InvalidInput`."""
    keyword = normalize_text(raw)
    if keyword.startswith("代码"):
        keyword = keyword[2:].strip()
    if not _KEYWORD_RE.fullmatch(keyword):
        raise InvalidInput(field, f"{field}: a keyword is 1 to {MAX_KEYWORD_LENGTH} letters, digits or Chinese"
                                  f" characters without spaces, got {raw!r}")
    if keyword in RESERVED_KEYWORDS or _DECISION_RE.fullmatch(keyword):
        raise InvalidInput(field, f"{field}: {keyword!r} is reserved for another command")
    return keyword


async def ensure_settings(store, merchant_id: int) -> None:
    """Create the merchant's settings row with the defaults if it is missing (``store`` may be
    a :class:`~gateway.store.Store` or a transaction)."""
    await store.execute("INSERT INTO crm_settings (merchant_id) VALUES ($1) ON CONFLICT DO NOTHING", merchant_id)


async def settings_for(store: Store, merchant_id: int) -> MerchantSettings:
    """The merchant's settings (the defaults when never changed)."""
    row = await store.fetchrow(f"SELECT {_COLUMNS} FROM crm_settings WHERE merchant_id = $1", merchant_id)
    if row is None:
        return MerchantSettings(merchant_id=merchant_id)
    return MerchantSettings(**dict(row))


async def settings_for_many(store: Store, merchant_ids: list[int]) -> dict[int, MerchantSettings]:
    """:func:`settings_for` for several merchants in one query."""
    wanted = sorted(set(merchant_ids))
    rows = await store.fetch(f"SELECT {_COLUMNS} FROM crm_settings WHERE merchant_id = ANY($1::bigint[])", wanted)
    found = {r["merchant_id"]: MerchantSettings(**dict(r)) for r in rows}
    return {m: found.get(m) or MerchantSettings(merchant_id=m) for m in wanted}


async def update_settings(store: Store, merchant_id: int, *, join_keyword: str | None = None,
                          points_keyword: str | None = None, lottery_keyword: str | None = None,
                          points_per_yuan: int | None = None,
                          points_expire_days: int | None | msgspec.UnsetType = msgspec.UNSET) -> MerchantSettings:
    """Change some settings; ``points_expire_days=None`` means points never expire. Raises
    :class:`InvalidInput` for a malformed, reserved or repeated keyword or an out-of-range rule."""
    current = await settings_for(store, merchant_id)
    new = {
        "join_keyword": current.join_keyword if join_keyword is None else normalize_keyword("join_keyword", join_keyword),
        "points_keyword": current.points_keyword if points_keyword is None
        else normalize_keyword("points_keyword", points_keyword),
        "lottery_keyword": current.lottery_keyword if lottery_keyword is None
        else normalize_keyword("lottery_keyword", lottery_keyword),
        "points_per_yuan": current.points_per_yuan if points_per_yuan is None else points_per_yuan,
        "points_expire_days": current.points_expire_days if points_expire_days is msgspec.UNSET
        else points_expire_days,
    }
    keywords = [("join_keyword", new["join_keyword"]), ("points_keyword", new["points_keyword"]),
                ("lottery_keyword", new["lottery_keyword"])]
    for i, (field, keyword) in enumerate(keywords):
        for other, theirs in keywords[:i]:
            if keyword == theirs:
                raise InvalidInput(field, f"{field} {keyword!r} is already the {other}")
    if not 0 <= new["points_per_yuan"] <= 1000:
        raise InvalidInput("points_per_yuan", "points_per_yuan must be between 0 and 1000")
    days = new["points_expire_days"]
    if days is not None and not 1 <= days <= 3650:
        raise InvalidInput("points_expire_days", "points_expire_days must be between 1 and 3650, or null (never)")
    async with store.transaction() as tx:
        await ensure_settings(tx, merchant_id)
        row = await tx.fetchrow(
            "UPDATE crm_settings SET join_keyword = $2, points_keyword = $3, lottery_keyword = $4,"
            f" points_per_yuan = $5, points_expire_days = $6, updated_at = now() WHERE merchant_id = $1"
            f" RETURNING {_COLUMNS}",
            merchant_id, new["join_keyword"], new["points_keyword"], new["lottery_keyword"],
            new["points_per_yuan"], days)
    assert row is not None
    return MerchantSettings(**dict(row))


async def merchant_by_id(store: Store, merchant_id: int) -> Merchant:
    """The merchant with this id (its name, account, service number and signature, for the
    notices the CRM sends); :class:`~crm_lite.errors.NotFound` if there is none."""
    row = await store.fetchrow("SELECT id, name, account_id, service_number, signature FROM merchants"
                               " WHERE id = $1", merchant_id)
    if row is None:
        raise NotFound(None, f"no merchant {merchant_id}")
    return Merchant(**dict(row))
