"""HTTP endpoints for MO callbacks and the blocklist (issue 5, "Webhooks" and "Compliance guards").

MO subscriptions belong to the account of the API key (``Authorization: Bearer <api key>``)::

    POST   /v1/mo/subscriptions        {"service_number": "10658888001", "keyword": "CJ", "url": "https://…"}
    GET    /v1/mo/subscriptions
    DELETE /v1/mo/subscriptions/{id}

The blocklist is the operator's, behind the admin token (``[admin] token`` as Bearer; 403
``admin_disabled`` when none is configured)::

    GET    /v1/admin/blocklist
    POST   /v1/admin/blocklist         {"phone": "13800138000", "reason": "optional"}
    DELETE /v1/admin/blocklist/{phone}  (or DELETE /v1/admin/blocklist with {"phone": …})

Errors have SPEC.md's shape, ``{"error": {"code", "message", "field"?}}``.
"""

from __future__ import annotations

import hmac
import urllib.parse
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from .api import Api, ApiError, decode_body
from .config import Config
from .http import Request, Response, Router
from .router.mo_dispatch import normalize_keyword
from .store import BlockedNumber, MoSubscription, Store
from .text import InvalidNumber, normalize_msisdn

MAX_SUBSCRIPTIONS = 100
"""MO subscriptions one account may hold."""
MAX_URL = 2048


class SubscriptionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    service_number: Annotated[str, Meta(pattern=r"^[0-9]{3,21}$")]
    url: Annotated[str, Meta(max_length=MAX_URL)]
    keyword: Annotated[str, Meta(max_length=64)] = ""


class SubscriptionOut(msgspec.Struct, frozen=True):
    id: str
    service_number: str
    keyword: str
    url: str
    created_at: datetime | None


class SubscriptionList(msgspec.Struct, frozen=True):
    subscriptions: list[SubscriptionOut]


class BlockBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    phone: str
    reason: Annotated[str, Meta(max_length=200)] = ""


class UnblockBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    phone: str


class BlockedOut(msgspec.Struct, frozen=True):
    phone: str
    reason: str
    source: str
    created_at: datetime


class BlockList(msgspec.Struct, frozen=True):
    numbers: list[BlockedOut]


_encoder = msgspec.json.Encoder()


def _phone(raw: str, field: str = "phone") -> str:
    try:
        return normalize_msisdn(raw)
    except InvalidNumber as exc:
        raise ApiError(400, "invalid_number", f"{raw!r} is not a Chinese mobile number: {exc.reason}",
                       field=field) from None


def _subscription_out(s: MoSubscription) -> SubscriptionOut:
    return SubscriptionOut(str(s.id), s.service_number, s.keyword, s.url, s.created_at)


def _blocked_out(b: BlockedNumber) -> BlockedOut:
    return BlockedOut(b.phone, b.reason, b.source, b.created_at)


def _json(status: int, value: object) -> Response:
    return Response(status=status, body=_encoder.encode(value))


class MoApi:
    """The handlers; :meth:`add_routes` wires them next to the API's."""

    def __init__(self, *, api: Api, store: Store, config: Config) -> None:
        self._api = api
        self._store = store
        self._admin_token = config.admin.token

    def add_routes(self, router: Router) -> None:
        w = self._api.wrap
        router.add("POST", "/v1/mo/subscriptions", w("mo_subscriptions", self.subscribe))
        router.add("GET", "/v1/mo/subscriptions", w("mo_subscriptions", self.subscriptions))
        router.add("DELETE", "/v1/mo/subscriptions/{id}", w("mo_subscriptions", self.unsubscribe))
        router.add("GET", "/v1/admin/blocklist", w("blocklist", self.blocklist))
        router.add("POST", "/v1/admin/blocklist", w("blocklist", self.block))
        router.add("DELETE", "/v1/admin/blocklist", w("blocklist", self.unblock))
        router.add("DELETE", "/v1/admin/blocklist/{phone}", w("blocklist", self.unblock))

    # -- MO subscriptions (the account's) -----------------------------------------------------

    async def subscribe(self, request: Request) -> Response:
        account = await self._api.authenticate(request)
        body: SubscriptionBody = decode_body(request.body, SubscriptionBody)
        u = urllib.parse.urlsplit(body.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ApiError(400, "invalid_field", "`url` must be an absolute http(s) URL", field="url")
        try:
            keyword = normalize_keyword(body.keyword)
        except ValueError as exc:
            raise ApiError(400, "invalid_field", f"`keyword`: {exc}", field="keyword") from None
        merchant = await self._store.merchant_for_number(body.service_number)
        if merchant is not None and merchant.account_id != account.id:
            raise ApiError(403, "forbidden", f"{body.service_number} is another account's merchant's number",
                           field="service_number")
        existing = await self._store.mo_subscriptions(account.id)
        if len(existing) >= MAX_SUBSCRIPTIONS and not any(
                (s.service_number, s.keyword, s.url) == (body.service_number, keyword, body.url) for s in existing):
            raise ApiError(409, "too_many_subscriptions",
                           f"the account has {len(existing)} MO subscriptions; at most {MAX_SUBSCRIPTIONS}")
        sub, created = await self._store.add_mo_subscription(account.id, body.service_number, keyword, body.url)
        return _json(201 if created else 200, _subscription_out(sub))

    async def subscriptions(self, request: Request) -> Response:
        account = await self._api.authenticate(request)
        subs = await self._store.mo_subscriptions(account.id)
        return _json(200, SubscriptionList([_subscription_out(s) for s in subs]))

    async def unsubscribe(self, request: Request, id: str) -> Response:
        account = await self._api.authenticate(request)
        if not id.isdigit() or len(id) > 18 or not await self._store.delete_mo_subscription(account.id, int(id)):
            raise ApiError(404, "not_found", f"no MO subscription {id!r}")
        return Response(status=204)

    # -- the blocklist (the operator's) ---------------------------------------------------------

    def _admin(self, request: Request) -> None:
        if not self._admin_token:
            raise ApiError(403, "admin_disabled", "no admin token is configured ([admin] token)")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._admin_token.encode()):
            raise ApiError(401, "unauthorized", "send the admin token as `Authorization: Bearer <token>`",
                           headers=[("WWW-Authenticate", 'Bearer realm="smsgw-admin"')])

    async def blocklist(self, request: Request) -> Response:
        self._admin(request)
        return _json(200, BlockList([_blocked_out(b) for b in await self._store.blocklist()]))

    async def block(self, request: Request) -> Response:
        self._admin(request)
        body: BlockBody = decode_body(request.body, BlockBody)
        entry, created = await self._store.block(_phone(body.phone), body.reason, "admin")
        return _json(201 if created else 200, _blocked_out(entry))

    async def unblock(self, request: Request, phone: str | None = None) -> Response:
        self._admin(request)
        if phone is None:
            query = urllib.parse.parse_qs(request.query)
            if "phone" in query:
                phone = query["phone"][0]
            else:
                phone = decode_body(request.body, UnblockBody).phone
            number = _phone(phone)
        else:
            number = _phone(urllib.parse.unquote(phone))
        if not await self._store.unblock(number):
            raise ApiError(404, "not_found", f"{number} is not on the blocklist")
        return Response(status=204)
