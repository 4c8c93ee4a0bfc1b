"""The members part's REST routes under ``/v1/crm/``: settings, staff, attributes, groups,
members (with CSV import and export), purchases and points.

Every call is authenticated (``authenticate(request) -> Staff``, see :mod:`crm_lite.api`) and
checked with :func:`crm_lite.staff.require`; the plumbing (decoding, ids, query parameters, the
error answers) is :mod:`crm_lite.restkit`'s. Errors use the API's shape
``{"error": {"code", "message"[, "field"]}}``: 400 naming the field (``attributes.<name>``
for a custom attribute), 401, 403 ``forbidden``, 404 ``<thing>_not_found``, 409
(``insufficient_points``, ``member_exists``, ...), 503 ``database_unavailable`` when the database
is unreachable.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.api import ApiError
from gateway.errors import StoreConflict
from gateway.http import Request, Response, Router
from gateway.router.commands import Outbox
from gateway.store import Store

from . import csvio, members, points
from .errors import NotFound
from .profile import STANDARD_FIELDS, AttributeDef, clean_field, clean_profile
from .restkit import Authenticate, add_routes, decode, json_response, path_id, query_int, query_str
from .settings import settings_for, update_settings
from .staff import Permission, Role, Staff, create_staff, require, rotate_staff_token, staff_by_id

log = logging.getLogger(__name__)

CSV_TYPE = "text/csv; charset=utf-8"


# --- wire models -------------------------------------------------------------------------------

Key = Annotated[str, Meta(min_length=1, max_length=128)]
Note = Annotated[str, Meta(max_length=200)]


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class SettingsBody(_Body, kw_only=True):
    join_keyword: str | None = None
    points_keyword: str | None = None
    lottery_keyword: str | None = None
    points_per_yuan: Annotated[int, Meta(ge=0, le=1000)] | None = None
    points_expire_days: Annotated[int, Meta(ge=1, le=3650)] | None | msgspec.UnsetType = msgspec.UNSET


class StaffBody(_Body, kw_only=True):
    phone: str
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    role: Role
    approver_id: int | None = None


class StaffPatch(_Body, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    role: Role | None = None
    approver_id: int | None | msgspec.UnsetType = msgspec.UNSET
    active: bool | None = None


class AttributeBody(_Body, kw_only=True):
    name: str
    label: str = ""
    type: Literal["text", "number", "date", "choice"]
    choices: list[str] = []


class GroupBody(_Body, kw_only=True):
    name: str
    parent_id: int | None = None


class GroupPatch(_Body, kw_only=True):
    name: str | None = None
    parent_id: int | None | msgspec.UnsetType = msgspec.UNSET


class GroupMembersBody(_Body, kw_only=True):
    members: Annotated[list[int | str], Meta(min_length=1, max_length=1000)]


class MemberBody(_Body, kw_only=True):
    phone: str | msgspec.UnsetType = msgspec.UNSET
    name: str | None | msgspec.UnsetType = msgspec.UNSET
    gender: str | None | msgspec.UnsetType = msgspec.UNSET
    birthday: str | None | msgspec.UnsetType = msgspec.UNSET
    email: str | None | msgspec.UnsetType = msgspec.UNSET
    note: str | None | msgspec.UnsetType = msgspec.UNSET
    attributes: dict[str, Any] = {}
    groups: list[int] | msgspec.UnsetType = msgspec.UNSET


class PurchaseBody(_Body, kw_only=True):
    member: int | str | None = None
    phone: str | None = None
    amount_fen: Annotated[int, Meta(ge=0, le=10**12)]
    key: Key
    note: Note = ""


class PointsBody(_Body, kw_only=True):
    member: int | str | None = None
    phone: str | None = None
    points: int
    key: Key
    note: Note = ""


class ExpireBody(_Body, kw_only=True):
    run: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    days: Annotated[int, Meta(ge=1, le=3650)] | None = None


class StaffOut(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    phone: str
    name: str
    role: str
    approver_id: int | None
    active: bool
    token: str | None = None


class MemberOut(msgspec.Struct, frozen=True, kw_only=True):
    id: int
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
    points: int
    groups: list[int]


def _staff_id(raw: str) -> int:
    return path_id(raw, "staff", code="staff_not_found")


def _group_id(raw: str) -> int:
    return path_id(raw, "group", code="group_not_found")


def _staff_out(s: Staff, token: str | None = None) -> StaffOut:
    return StaffOut(id=s.id, phone=s.phone, name=s.name, role=str(s.role), approver_id=s.approver_id,
                    active=s.active, token=token)


class MembersApi:
    """The handlers; :func:`register_routes` wires them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- settings ------------------------------------------------------------------------------

    async def get_settings(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_READ)
        return json_response(await settings_for(self.store, actor.merchant_id))

    async def patch_settings(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.STAFF_MANAGE)
        body = decode(request.body, SettingsBody)
        return json_response(await update_settings(
            self.store, actor.merchant_id, join_keyword=body.join_keyword, points_keyword=body.points_keyword,
            lottery_keyword=body.lottery_keyword, points_per_yuan=body.points_per_yuan,
            points_expire_days=body.points_expire_days))

    # -- staff ---------------------------------------------------------------------------------

    async def list_staff(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.STAFF_MANAGE)
        rows = await self.store.fetch("SELECT id FROM crm_staff WHERE merchant_id = $1 ORDER BY id", actor.merchant_id)
        found = [await staff_by_id(self.store, r["id"]) for r in rows]
        return json_response({"staff": [_staff_out(s) for s in found if s is not None]})

    async def create_staff(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.STAFF_MANAGE)
        body = decode(request.body, StaffBody)
        phone = clean_field("phone", body.phone)
        if body.approver_id is not None:
            await self._own_staff(actor, body.approver_id, "approver_id")
        try:
            staff, token = await create_staff(self.store, actor.merchant_id, phone, body.name, body.role,
                                              approver_id=body.approver_id)
        except StoreConflict:
            raise ApiError(409, "staff_exists", f"{phone} is on the staff already", field="phone") from None
        return json_response(_staff_out(staff, token), 201)

    async def _own_staff(self, actor: Staff, staff_id: int, field: str | None = None) -> Staff:
        staff = await staff_by_id(self.store, staff_id)
        if staff is None or staff.merchant_id != actor.merchant_id:
            if field is not None:
                raise ApiError(400, "invalid_field", f"{field}: no staff member {staff_id}", field=field)
            raise ApiError(404, "staff_not_found", f"no staff member {staff_id}")
        return staff

    async def patch_staff(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.STAFF_MANAGE)
        staff = await self._own_staff(actor, _staff_id(id))
        body = decode(request.body, StaffPatch)
        if staff.id == actor.id and (body.active is False or (body.role is not None and body.role != Role.OWNER)):
            raise ApiError(409, "last_owner", "an owner cannot demote or deactivate themselves")
        if body.approver_id is not msgspec.UNSET and body.approver_id is not None:
            if body.approver_id == staff.id:
                raise ApiError(400, "invalid_field", "a staff member cannot approve their own requests",
                               field="approver_id")
            await self._own_staff(actor, body.approver_id, "approver_id")
        await self.store.execute(
            "UPDATE crm_staff SET name = coalesce($2, name), role = coalesce($3, role),"
            " approver_id = CASE WHEN $4 THEN $5 ELSE approver_id END, active = coalesce($6, active) WHERE id = $1",
            staff.id, body.name, None if body.role is None else str(body.role), body.approver_id is not msgspec.UNSET,
            None if body.approver_id is msgspec.UNSET else body.approver_id, body.active)
        updated = await staff_by_id(self.store, staff.id)
        assert updated is not None
        return json_response(_staff_out(updated))

    async def rotate_token(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.STAFF_MANAGE)
        staff = await self._own_staff(actor, _staff_id(id))
        token = await rotate_staff_token(self.store, staff.id)
        return json_response(_staff_out(staff, token))

    # -- attributes ----------------------------------------------------------------------------

    async def list_attributes(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_READ)
        defs = await members.attribute_definitions(self.store, actor.merchant_id)
        return json_response({"attributes": list(defs.values())})

    async def create_attribute(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_IMPORT)
        body = decode(request.body, AttributeBody)
        defn = await members.define_attribute(self.store, actor.merchant_id, AttributeDef(
            name=body.name, label=body.label, type=body.type, choices=tuple(body.choices)))
        return json_response(defn, 201)

    # -- groups --------------------------------------------------------------------------------

    async def list_groups(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_READ)
        return json_response({"groups": await members.list_groups(self.store, actor.merchant_id)})

    async def create_group(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_WRITE)
        body = decode(request.body, GroupBody)
        if body.parent_id is not None:
            try:
                await members.group_chain(self.store, actor.merchant_id, body.parent_id)
            except NotFound:
                raise ApiError(400, "invalid_field", f"parent_id: no group {body.parent_id}", field="parent_id") from None
        group = await members.create_group(self.store, actor.merchant_id, body.name, body.parent_id)
        return json_response(group, 201)

    async def patch_group(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.MEMBERS_WRITE)
        body = decode(request.body, GroupPatch)
        return json_response(await members.update_group(self.store, actor.merchant_id, _group_id(id),
                                                     name=body.name, parent_id=body.parent_id))

    async def group_members(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.MEMBERS_READ)
        group_id = _group_id(id)
        await members.group_chain(self.store, actor.merchant_id, group_id)
        sub = (query_str(request, "subgroups") or "true").lower()
        if sub not in ("true", "false", "1", "0"):
            raise ApiError(400, "invalid_field", "subgroups is true or false", field="subgroups")
        after = query_int(request, "after", 0)
        limit = query_int(request, "limit", 100, low=1, high=members.MAX_PAGE)
        found = await members.list_members(self.store, actor.merchant_id, group_id=group_id,
                                           subgroups=sub in ("true", "1"), after=after, limit=limit)
        return await self._page(found, limit)

    async def add_group_members(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.MEMBERS_WRITE)
        body = decode(request.body, GroupMembersBody)
        ids = [(await members.member_by_ref(self.store, actor.merchant_id, ref)).id for ref in body.members]
        group_id = _group_id(id)
        await members.add_to_group(self.store, actor.merchant_id, group_id, ids)
        return json_response({"group_id": group_id, "added": sorted(set(ids))})

    async def remove_group_member(self, request: Request, actor: Staff, *, id: str, member: str) -> Response:
        require(actor, Permission.MEMBERS_WRITE)
        found = await members.member_by_ref(self.store, actor.merchant_id, member)
        removed = await members.remove_from_group(self.store, actor.merchant_id, _group_id(id), found.id)
        if not removed:
            raise ApiError(404, "member_not_found", f"member {member} is not in group {id}")
        return Response(status=204)

    # -- members -------------------------------------------------------------------------------

    async def _out(self, found: list[members.Member]) -> list[MemberOut]:
        ids = [m.id for m in found]
        groups = await members.groups_of(self.store, ids)
        balances = {r["member_id"]: r["balance"] for r in await self.store.fetch(
            "SELECT member_id, balance FROM crm_points_balances WHERE member_id = ANY($1)", ids)}
        return [MemberOut(id=m.id, member_no=m.member_no, phone=m.phone, name=m.name, gender=m.gender,
                          birthday=m.birthday, email=m.email, note=m.note, attributes=m.attributes, source=m.source,
                          joined_at=m.joined_at, points=balances.get(m.id, 0), groups=groups[m.id]) for m in found]

    async def _page(self, found: list[members.Member], limit: int) -> Response:
        next_after = found[-1].id if len(found) == limit else None
        return json_response({"members": await self._out(found), "next_after": next_after})

    async def _profile(self, merchant_id: int, body: MemberBody):
        values = {f: getattr(body, f) for f in STANDARD_FIELDS if getattr(body, f) is not msgspec.UNSET}
        definitions = await members.attribute_definitions(self.store, merchant_id)
        return clean_profile(values, body.attributes, definitions)

    async def list_members(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_READ)
        phone = query_str(request, "phone")
        if phone is not None:
            phone = clean_field("phone", phone)
        group = query_str(request, "group")
        group_id = None
        if group is not None:
            group_id = query_int(request, "group", 0)
            await members.group_chain(self.store, actor.merchant_id, group_id)
        limit = query_int(request, "limit", 100, low=1, high=members.MAX_PAGE)
        found = await members.list_members(self.store, actor.merchant_id, phone=phone, group_id=group_id,
                                           after=query_int(request, "after", 0), limit=limit)
        return await self._page(found, limit)

    async def create_member(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_WRITE)
        body = decode(request.body, MemberBody)
        if body.phone is msgspec.UNSET:
            raise ApiError(400, "invalid_field", "phone is required", field="phone")
        profile = await self._profile(actor.merchant_id, body)
        if body.groups is not msgspec.UNSET:
            await self._check_groups(actor.merchant_id, body.groups)
        member = await members.create_member(self.store, actor.merchant_id, profile)
        if body.groups is not msgspec.UNSET:
            await members.set_member_groups(self.store, actor.merchant_id, member.id, body.groups)
        log.info("member created merchant_id=%d member=%s by=%d", actor.merchant_id, member.member_no, actor.id)
        return json_response((await self._out([member]))[0], 201)

    async def _check_groups(self, merchant_id: int, group_ids: list[int]) -> None:
        for g in group_ids:
            try:
                await members.group_chain(self.store, merchant_id, g)
            except NotFound:
                raise ApiError(400, "invalid_field", f"groups: no group {g}", field="groups") from None

    async def get_member(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.MEMBERS_READ)
        member = await members.member_by_ref(self.store, actor.merchant_id, id)
        return json_response((await self._out([member]))[0])

    async def patch_member(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.MEMBERS_WRITE)
        member = await members.member_by_ref(self.store, actor.merchant_id, id)
        body = decode(request.body, MemberBody)
        profile = await self._profile(actor.merchant_id, body)
        if body.groups is not msgspec.UNSET:
            await self._check_groups(actor.merchant_id, body.groups)
        member = await members.update_member(self.store, actor.merchant_id, member.id, profile)
        if body.groups is not msgspec.UNSET:
            await members.set_member_groups(self.store, actor.merchant_id, member.id, body.groups)
        return json_response((await self._out([member]))[0])

    async def member_points(self, request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.MEMBERS_READ)
        member = await members.member_by_ref(self.store, actor.merchant_id, id)
        limit = query_int(request, "limit", 50, low=1, high=500)
        return json_response({"member_id": member.id, "member_no": member.member_no,
                           "balance": await points.balance_of(self.store, member.id),
                           "transactions": await points.history(self.store, actor.merchant_id, member.id,
                                                                limit=limit)})

    async def import_members(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_IMPORT)
        content_type = request.headers.get("content-type", "text/csv").split(";")[0].strip().lower()
        if content_type not in ("text/csv", "application/csv", "text/plain", "application/octet-stream"):
            raise ApiError(415, "unsupported_media_type", "send the file as text/csv")
        report = await csvio.import_members(self.store, actor.merchant_id, request.body)
        log.info("members imported merchant_id=%d rows=%d created=%d updated=%d bad=%d", actor.merchant_id,
                 report.rows, report.created, report.updated, report.bad_rows)
        return json_response(report)

    async def export_members(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.MEMBERS_EXPORT)
        body = await csvio.export_members(self.store, actor.merchant_id)
        return Response(status=200, body=body, content_type=CSV_TYPE,
                        headers=[("Content-Disposition", 'attachment; filename="members.csv"')])

    # -- points --------------------------------------------------------------------------------

    async def _target(self, merchant_id: int, member: int | str | None, phone: str | None) -> members.Member:
        if (member is None) == (phone is None):
            raise ApiError(400, "invalid_field", "name the member by `member` (id or member number) or `phone`",
                           field="member")
        if phone is not None:
            found = await members.member_by_phone(self.store, merchant_id, clean_field("phone", phone))
            if found is None:
                raise ApiError(404, "member_not_found", "that phone is not a member")
            return found
        return await members.member_by_ref(self.store, merchant_id, member)

    async def purchase(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.POINTS_EARN)
        body = decode(request.body, PurchaseBody)
        member = await self._target(actor.merchant_id, body.member, body.phone)
        earned = points.points_for_purchase(body.amount_fen, (await settings_for(self.store, actor.merchant_id)).points_per_yuan)
        if earned == 0:
            original = await points.transaction_by_key(self.store, actor.merchant_id, body.key)
            if original is not None:
                return json_response(original)
            return json_response({"member_id": member.id, "points": 0, "balance": await points.balance_of(
                self.store, member.id), "key": body.key, "note": "the purchase earns no points"})
        tx = await points.record(self.store, actor.merchant_id, member.id, "earn", earned, body.key,
                                 amount_fen=body.amount_fen, note=body.note, staff_id=actor.id)
        return json_response(tx, 200 if tx.duplicate else 201)

    async def redeem(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.POINTS_REDEEM)
        body = decode(request.body, PointsBody)
        if body.points <= 0:
            raise ApiError(400, "invalid_field", "points to redeem must be a positive whole number", field="points")
        member = await self._target(actor.merchant_id, body.member, body.phone)
        tx = await points.record(self.store, actor.merchant_id, member.id, "redeem", -body.points, body.key,
                                 note=body.note, staff_id=actor.id)
        return json_response(tx, 200 if tx.duplicate else 201)

    async def adjust(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.POINTS_ADJUST)
        body = decode(request.body, PointsBody)
        if body.points == 0:
            raise ApiError(400, "invalid_field", "an adjustment moves a non-zero number of points", field="points")
        member = await self._target(actor.merchant_id, body.member, body.phone)
        tx = await points.record(self.store, actor.merchant_id, member.id, "adjust", body.points, body.key,
                                 note=body.note, staff_id=actor.id)
        return json_response(tx, 200 if tx.duplicate else 201)

    async def expire(self, request: Request, actor: Staff) -> Response:
        require(actor, Permission.POINTS_ADJUST)
        body = decode(request.body or b"{}", ExpireBody)
        days = body.days or (await settings_for(self.store, actor.merchant_id)).points_expire_days
        if days is None:
            raise ApiError(400, "invalid_field", "points never expire for this merchant; set points_expire_days"
                           " in the settings or pass days", field="days")
        now = datetime.now(timezone.utc)
        run = body.run or f"{now.date().isoformat()}-{days}d"
        result = await points.expire(self.store, actor.merchant_id, cutoff=points.expiry_cutoff(now, days), run=run)
        log.info("points expired merchant_id=%d run=%s members=%d points=%d", actor.merchant_id, run,
                 result.members, result.points)
        return json_response(result)


def register_routes(router: Router, store: Store, outbox: Outbox, authenticate: Authenticate) -> MembersApi:
    """Add the members part's routes to ``router`` (``outbox`` unused: REST calls send nothing)."""
    api = MembersApi(store)
    routes = [
        ("GET", "/v1/crm/settings", api.get_settings), ("PATCH", "/v1/crm/settings", api.patch_settings),
        ("GET", "/v1/crm/staff", api.list_staff), ("POST", "/v1/crm/staff", api.create_staff),
        ("PATCH", "/v1/crm/staff/{id}", api.patch_staff), ("POST", "/v1/crm/staff/{id}/token", api.rotate_token),
        ("GET", "/v1/crm/attributes", api.list_attributes), ("POST", "/v1/crm/attributes", api.create_attribute),
        ("GET", "/v1/crm/groups", api.list_groups), ("POST", "/v1/crm/groups", api.create_group),
        ("PATCH", "/v1/crm/groups/{id}", api.patch_group),
        ("GET", "/v1/crm/groups/{id}/members", api.group_members),
        ("POST", "/v1/crm/groups/{id}/members", api.add_group_members),
        ("DELETE", "/v1/crm/groups/{id}/members/{member}", api.remove_group_member),
        ("GET", "/v1/crm/members", api.list_members), ("POST", "/v1/crm/members", api.create_member),
        ("POST", "/v1/crm/members/import", api.import_members),
        ("GET", "/v1/crm/members/export", api.export_members),
        ("GET", "/v1/crm/members/{id}", api.get_member), ("PATCH", "/v1/crm/members/{id}", api.patch_member),
        ("GET", "/v1/crm/members/{id}/points", api.member_points),
        ("POST", "/v1/crm/purchases", api.purchase),
        ("POST", "/v1/crm/points/redeem", api.redeem), ("POST", "/v1/crm/points/adjust", api.adjust),
        ("POST", "/v1/crm/points/expire", api.expire),
    ]
    add_routes(router, authenticate, routes)
    return api
