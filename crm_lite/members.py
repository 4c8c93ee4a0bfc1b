"""Members, their custom attributes and their groups, over the store.

A member is bound to one phone number per merchant and numbered by the merchant's own counter
(``crm_settings.next_member_no``, shown as ``M000123``). Joining by SMS is idempotent by the
inbound message id (``join_mo_id``) and by phone, so a re-dispatched ``1`` neither creates a
second member nor changes the first.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import msgspec

from gateway.errors import StoreConflict
from gateway.store import Store

from .errors import Conflict, InvalidInput, NotFound
from .profile import (
    MAX_ATTRIBUTES,
    AttributeDef,
    Profile,
    member_no_text,
    parse_member_no,
    validate_definition,
)
from .settings import ensure_settings

MAX_PAGE = 500
"""Members one list call returns at most."""
MAX_GROUP_DEPTH = 16
"""Levels of nested groups (a group's ancestors, itself included)."""


class Member(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    merchant_id: int
    member_no: str
    phone: str
    name: str
    gender: str
    birthday: date | None
    email: str
    note: str
    attributes: dict[str, Any]
    source: str
    joined_at: datetime


class Group(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    parent_id: int | None


MEMBER_COLUMNS = ("id, merchant_id, member_no, phone, name, gender, birthday, email, note, attrs, source,"
                  " joined_at, join_mo_id")


def member_from_row(row) -> Member:
    attrs = row["attrs"]
    return Member(id=row["id"], merchant_id=row["merchant_id"], member_no=member_no_text(row["member_no"]),
                  phone=row["phone"], name=row["name"], gender=row["gender"], birthday=row["birthday"],
                  email=row["email"], note=row["note"], attributes=json.loads(attrs) if isinstance(attrs, str) else attrs,
                  source=row["source"], joined_at=row["joined_at"])


# -- custom attributes ------------------------------------------------------------------------


async def attribute_definitions(store, merchant_id: int) -> dict[str, AttributeDef]:
    """The merchant's custom attributes by name, in the order they were defined."""
    rows = await store.fetch("SELECT name, label, type, choices FROM crm_attributes WHERE merchant_id = $1"
                             " ORDER BY id", merchant_id)
    return {r["name"]: AttributeDef(name=r["name"], label=r["label"], type=r["type"], choices=tuple(r["choices"]))
            for r in rows}


async def define_attribute(store: Store, merchant_id: int, defn: AttributeDef) -> AttributeDef:
    """Add a custom attribute; :class:`Conflict` when the name is taken or the merchant has
    :data:`MAX_ATTRIBUTES` already."""
    defn = validate_definition(defn)
    async with store.transaction() as tx:
        await ensure_settings(tx, merchant_id)
        # The settings row serializes definitions per merchant, so the count below holds.
        await tx.execute("SELECT 1 FROM crm_settings WHERE merchant_id = $1 FOR UPDATE", merchant_id)
        count = await tx.fetchval("SELECT count(*) FROM crm_attributes WHERE merchant_id = $1", merchant_id)
        if count >= MAX_ATTRIBUTES:
            raise Conflict("too_many_attributes", f"a merchant has at most {MAX_ATTRIBUTES} custom attributes")
        try:
            await tx.execute("INSERT INTO crm_attributes (merchant_id, name, label, type, choices)"
                             " VALUES ($1, $2, $3, $4, $5)", merchant_id, defn.name, defn.label, defn.type,
                             list(defn.choices))
        except StoreConflict:
            raise Conflict("attribute_exists", f"an attribute named {defn.name!r} exists already") from None
    return defn


# -- members ----------------------------------------------------------------------------------


async def allocate_member_numbers(tx, merchant_id: int, count: int) -> int:
    """The first of ``count`` consecutive new member numbers (locks the merchant's counter
    until the transaction ends)."""
    await ensure_settings(tx, merchant_id)
    return await tx.fetchval(
        "UPDATE crm_settings SET next_member_no = next_member_no + $2 WHERE merchant_id = $1"
        " RETURNING next_member_no - $2", merchant_id, count)


async def member_by_phone(store, merchant_id: int, phone: str) -> Member | None:
    row = await store.fetchrow(f"SELECT {MEMBER_COLUMNS} FROM crm_members WHERE merchant_id = $1 AND phone = $2",
                               merchant_id, phone)
    return None if row is None else member_from_row(row)


async def members_with_balances(store, keys: list[tuple[int, str]]) -> dict[tuple[int, str], tuple[Member, int]]:
    """For several (merchant_id, phone), in one query: the member and their points balance
    (keys with no member are left out)."""
    if not keys:
        return {}
    rows = await store.fetch(
        f"SELECT {MEMBER_COLUMNS}, coalesce((SELECT b.balance FROM crm_points_balances b"
        "                                   WHERE b.member_id = crm_members.id), 0) AS balance"
        " FROM crm_members WHERE (merchant_id, phone) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["merchant_id"], r["phone"]): (member_from_row(r), r["balance"]) for r in rows}


async def member_by_ref(store, merchant_id: int, ref: str | int) -> Member:
    """A member by database id (``123``) or member number (``M000123``); :class:`NotFound`."""
    row = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and len(ref) <= 18):
        row = await store.fetchrow(f"SELECT {MEMBER_COLUMNS} FROM crm_members WHERE merchant_id = $1 AND id = $2",
                                   merchant_id, int(ref))
    else:
        number = parse_member_no(ref)
        if number is not None:
            row = await store.fetchrow(
                f"SELECT {MEMBER_COLUMNS} FROM crm_members WHERE merchant_id = $1 AND member_no = $2",
                merchant_id, number)
    if row is None:
        raise NotFound("member", f"no member {ref}")
    return member_from_row(row)


async def join(store: Store, merchant_id: int, phone: str, *, mo_id: int | None = None) -> tuple[Member, bool]:
    """Make ``phone`` a member (source ``sms``): ``(member, True)`` when this call (or an earlier
    dispatch of the same inbound message ``mo_id``) created it, ``(member, False)`` when the
    phone was a member already."""
    existing = await member_by_phone(store, merchant_id, phone)
    if existing is None:
        async with store.transaction() as tx:
            number = await allocate_member_numbers(tx, merchant_id, 1)
            await tx.execute(
                "INSERT INTO crm_members (merchant_id, member_no, phone, source, join_mo_id)"
                " VALUES ($1, $2, $3, 'sms', $4) ON CONFLICT DO NOTHING", merchant_id, number, phone, mo_id)
    row = await store.fetchrow(f"SELECT {MEMBER_COLUMNS} FROM crm_members WHERE merchant_id = $1 AND phone = $2",
                               merchant_id, phone)
    if row is None:  # the inbound message id made a member elsewhere: a misuse, not a race
        raise Conflict("member_exists", f"inbound message {mo_id} already made a member")
    return member_from_row(row), mo_id is not None and row["join_mo_id"] == mo_id


async def create_member(store: Store, merchant_id: int, profile: Profile, *, source: str = "api") -> Member:
    """A new member from a validated profile (phone required); :class:`Conflict`
    ``member_exists`` when the phone is a member already."""
    if profile.phone is msgspec.UNSET:
        raise InvalidInput("phone", "phone is required")
    attrs = {k: v for k, v in profile.attributes.items() if v is not None}
    async with store.transaction() as tx:
        number = await allocate_member_numbers(tx, merchant_id, 1)
        row = await tx.fetchrow(
            "INSERT INTO crm_members (merchant_id, member_no, phone, name, gender, birthday, email, note, attrs,"
            " source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)"
            f" ON CONFLICT (merchant_id, phone) DO NOTHING RETURNING {MEMBER_COLUMNS}",
            merchant_id, number, profile.phone, _or(profile.name, ""), _or(profile.gender, ""),
            _or(profile.birthday, None), _or(profile.email, ""), _or(profile.note, ""), json.dumps(attrs), source)
        if row is None:
            raise Conflict("member_exists", f"{profile.phone} is a member already")
    return member_from_row(row)


def _or(value: Any, default: Any) -> Any:
    return default if value is msgspec.UNSET else value


async def update_member(store: Store, merchant_id: int, member_id: int, profile: Profile) -> Member:
    """Apply the fields set in ``profile``; attributes mapped to ``None`` are removed."""
    sets, args = [], [merchant_id, member_id]
    for field in ("phone", "name", "gender", "birthday", "email", "note"):
        value = getattr(profile, field)
        if value is not msgspec.UNSET:
            args.append(value)
            sets.append(f"{field} = ${len(args)}")
    if profile.attributes:
        args.append(json.dumps({k: v for k, v in profile.attributes.items() if v is not None}))
        args.append([k for k, v in profile.attributes.items() if v is None])
        sets.append(f"attrs = (attrs - ${len(args)}::text[]) || ${len(args) - 1}::jsonb")
    sets.append("updated_at = now()")
    try:
        row = await store.fetchrow(f"UPDATE crm_members SET {', '.join(sets)} WHERE merchant_id = $1 AND id = $2"
                                   f" RETURNING {MEMBER_COLUMNS}", *args)
    except StoreConflict:
        raise Conflict("member_exists", f"{profile.phone} is another member's phone") from None
    if row is None:
        raise NotFound("member", f"no member {member_id}")
    return member_from_row(row)


async def list_members(store, merchant_id: int, *, phone: str | None = None, group_id: int | None = None,
                       subgroups: bool = True, after: int = 0, limit: int = 100) -> list[Member]:
    """Members by ascending id after ``after``; with ``group_id``, those in the group or (with
    ``subgroups``) any of its sub-groups."""
    limit = max(1, min(limit, MAX_PAGE))
    if group_id is not None and not subgroups:
        rows = await store.fetch(
            f"SELECT {MEMBER_COLUMNS} FROM crm_members WHERE merchant_id = $1 AND id > $3 AND id IN"
            " (SELECT member_id FROM crm_group_members WHERE group_id = $2)"
            " AND ($5::text IS NULL OR phone = $5) ORDER BY id LIMIT $4",
            merchant_id, group_id, after, limit, phone)
    elif group_id is not None:
        rows = await store.fetch(
            f"WITH RECURSIVE tree(id) AS (SELECT id FROM crm_groups WHERE merchant_id = $1 AND id = $2"
            f"  UNION SELECT g.id FROM crm_groups g JOIN tree t ON g.parent_id = t.id)"
            f" SELECT {MEMBER_COLUMNS} FROM crm_members WHERE merchant_id = $1 AND id > $3"
            f"  AND id IN (SELECT member_id FROM crm_group_members WHERE group_id IN (SELECT id FROM tree))"
            f"  AND ($5::text IS NULL OR phone = $5) ORDER BY id LIMIT $4",
            merchant_id, group_id, after, limit, phone)
    else:
        rows = await store.fetch(
            f"SELECT {MEMBER_COLUMNS} FROM crm_members WHERE merchant_id = $1 AND id > $2"
            f" AND ($4::text IS NULL OR phone = $4) ORDER BY id LIMIT $3", merchant_id, after, limit, phone)
    return [member_from_row(r) for r in rows]


# -- groups -----------------------------------------------------------------------------------


async def create_group(store: Store, merchant_id: int, name: str, parent_id: int | None = None) -> Group:
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise InvalidInput("name", "a group name is 1 to 64 characters")
    if parent_id is not None:
        depth = len(await group_chain(store, merchant_id, parent_id))
        if depth >= MAX_GROUP_DEPTH:
            raise InvalidInput("parent_id", f"groups nest at most {MAX_GROUP_DEPTH} levels deep")
    try:
        row = await store.fetchrow("INSERT INTO crm_groups (merchant_id, name, parent_id) VALUES ($1, $2, $3)"
                                   " RETURNING id, name, parent_id", merchant_id, name, parent_id)
    except StoreConflict:
        raise Conflict("group_exists", f"a group named {name!r} exists already at that level") from None
    return Group(**dict(row))


async def group_chain(store, merchant_id: int, group_id: int) -> list[int]:
    """The group and its ancestors, nearest first; :class:`NotFound` for no such group."""
    rows = await store.fetch(
        "WITH RECURSIVE up(id, parent_id, depth) AS ("
        " SELECT id, parent_id, 1 FROM crm_groups WHERE merchant_id = $1 AND id = $2"
        " UNION ALL SELECT g.id, g.parent_id, u.depth + 1 FROM crm_groups g JOIN up u ON g.id = u.parent_id"
        f"  WHERE u.depth <= {MAX_GROUP_DEPTH + 1})"
        " SELECT id FROM up ORDER BY depth", merchant_id, group_id)
    if not rows:
        raise NotFound("group", f"no group {group_id}")
    return [r["id"] for r in rows]


async def update_group(store: Store, merchant_id: int, group_id: int, *, name: str | None = None,
                       parent_id: int | None | msgspec.UnsetType = msgspec.UNSET) -> Group:
    """Rename or move a group; moving it under itself or one of its sub-groups is refused."""
    await group_chain(store, merchant_id, group_id)
    if parent_id is not msgspec.UNSET and parent_id is not None:
        chain = await group_chain(store, merchant_id, parent_id)
        if group_id in chain:
            raise InvalidInput("parent_id", "a group cannot be moved under itself or one of its sub-groups")
    sets, args = [], [merchant_id, group_id]
    if name is not None:
        name = name.strip()
        if not 1 <= len(name) <= 64:
            raise InvalidInput("name", "a group name is 1 to 64 characters")
        args.append(name)
        sets.append(f"name = ${len(args)}")
    if parent_id is not msgspec.UNSET:
        args.append(parent_id)
        sets.append(f"parent_id = ${len(args)}")
    if not sets:
        sets.append("name = name")
    try:
        row = await store.fetchrow(f"UPDATE crm_groups SET {', '.join(sets)} WHERE merchant_id = $1 AND id = $2"
                                   " RETURNING id, name, parent_id", *args)
    except StoreConflict:
        raise Conflict("group_exists", "a group of that name exists already at that level") from None
    assert row is not None
    return Group(**dict(row))


async def list_groups(store, merchant_id: int) -> list[Group]:
    return [Group(**dict(r)) for r in await store.fetch(
        "SELECT id, name, parent_id FROM crm_groups WHERE merchant_id = $1 ORDER BY id", merchant_id)]


async def set_member_groups(store: Store, merchant_id: int, member_id: int, group_ids: list[int]) -> list[int]:
    """Make the member's groups exactly ``group_ids``; :class:`NotFound` names a missing group."""
    wanted = sorted(set(group_ids))
    async with store.transaction() as tx:
        found = {r["id"] for r in await tx.fetch("SELECT id FROM crm_groups WHERE merchant_id = $1 AND id = ANY($2)",
                                                 merchant_id, wanted)}
        missing = [g for g in wanted if g not in found]
        if missing:
            raise NotFound("group", f"no group {missing[0]}")
        await tx.execute("DELETE FROM crm_group_members WHERE member_id = $1 AND NOT group_id = ANY($2)",
                         member_id, wanted)
        await tx.execute("INSERT INTO crm_group_members (group_id, member_id) SELECT g, $1 FROM unnest($2::bigint[]) g"
                         " ON CONFLICT DO NOTHING", member_id, wanted)
    return wanted


async def add_to_group(store: Store, merchant_id: int, group_id: int, member_ids: list[int]) -> None:
    await group_chain(store, merchant_id, group_id)
    ids = sorted(set(member_ids))
    found = {r["id"] for r in await store.fetch("SELECT id FROM crm_members WHERE merchant_id = $1 AND id = ANY($2)",
                                                merchant_id, ids)}
    missing = [m for m in ids if m not in found]
    if missing:
        raise NotFound("member", f"no member {missing[0]}")
    await store.execute("INSERT INTO crm_group_members (group_id, member_id) SELECT $1, m FROM unnest($2::bigint[]) m"
                        " ON CONFLICT DO NOTHING", group_id, ids)


async def remove_from_group(store: Store, merchant_id: int, group_id: int, member_id: int) -> bool:
    await group_chain(store, merchant_id, group_id)
    status = await store.execute("DELETE FROM crm_group_members WHERE group_id = $1 AND member_id = $2",
                                 group_id, member_id)
    return status.endswith(" 1")


async def groups_of(store, member_ids: list[int]) -> dict[int, list[int]]:
    """Each member's direct groups."""
    out: dict[int, list[int]] = {m: [] for m in member_ids}
    for r in await store.fetch("SELECT member_id, group_id FROM crm_group_members WHERE member_id = ANY($1)"
                               " ORDER BY group_id", member_ids):
        out[r["member_id"]].append(r["group_id"])
    return out
