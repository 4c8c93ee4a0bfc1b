"""REST for lottery campaigns, under ``/v1/crm/lotteries`` (staff token; see README "CRM:
lottery and approvals").

| route | permission |
| --- | --- |
| ``POST /v1/crm/lotteries`` create (with prizes) | ``lottery.manage`` |
| ``GET /v1/crm/lotteries``, ``GET /v1/crm/lotteries/{id}`` | ``lottery.manage`` |
| ``POST /v1/crm/lotteries/{id}/prizes`` add a prize | ``lottery.manage`` |
| ``POST /v1/crm/lotteries/{id}/close`` stop entries | ``lottery.manage`` |
| ``GET /v1/crm/lotteries/{id}/entries?after=&limit=`` | ``lottery.manage`` |
| ``GET /v1/crm/lotteries/{id}/audit`` seed (after the draw), seed hash, entries, winners | ``lottery.manage`` |
| ``POST /v1/crm/lotteries/{id}/draw`` draw once and tell the winners | ``lottery.draw`` |
| ``POST /v1/crm/lotteries/{id}/notify`` tell winners not told yet | ``lottery.draw`` |

A campaign of another merchant is a 404, like one that does not exist.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from gateway.errors import GatewayError
from gateway.http import Request, Response, Router
from gateway.router.commands import Outbox
from gateway.store import Store

from . import lottery as lt
from .restkit import Authenticate, add_routes, decode, json_response, path_id, query_int
from .settings import merchant_by_id
from .staff import Permission, Staff, require

log = logging.getLogger(__name__)

AwareTime = Annotated[datetime, Meta(tz=True)]
PrizeName = Annotated[str, Meta(min_length=1, max_length=40)]
Stock = Annotated[int, Meta(ge=1, le=100_000)]
Limit = Annotated[int, Meta(ge=1, le=10_000)]
MAX_ENTRIES_PAGE = 1000


class PrizeIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: PrizeName
    stock: Stock


class LotteryIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=40)]
    starts_at: AwareTime
    ends_at: AwareTime
    keyword: Annotated[str, Meta(min_length=1, max_length=10)] | None = None
    """Default: the merchant's lottery keyword (``CJ`` unless it chose another)."""
    max_entries: Limit = 1
    max_entries_per_day: Limit | None = None
    max_wins: Limit | None = 1
    members_only: bool = False
    prizes: Annotated[list[PrizeIn], Meta(max_length=lt.MAX_PRIZES)] = []


class LotteryOut(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    keyword: str
    starts_at: datetime
    ends_at: datetime
    max_entries: int
    max_entries_per_day: int | None
    max_wins: int | None
    members_only: bool
    status: str
    seed_hash: str
    entries: int
    prizes: list[lt.Prize]
    created_at: datetime
    closed_at: datetime | None
    drawn_at: datetime | None


def _out(lot: lt.Lottery, prizes: list[lt.Prize]) -> LotteryOut:
    return LotteryOut(id=lot.id, name=lot.name, keyword=lot.keyword, starts_at=lot.starts_at, ends_at=lot.ends_at,
                      max_entries=lot.max_entries, max_entries_per_day=lot.max_entries_per_day,
                      max_wins=lot.max_wins, members_only=lot.members_only, status=lot.status,
                      seed_hash=lot.seed_hash, entries=lot.entry_count, prizes=prizes, created_at=lot.created_at,
                      closed_at=lot.closed_at, drawn_at=lot.drawn_at)


def register_routes(router: Router, store: Store, outbox: Outbox, authenticate: Authenticate, *,
                    keyword_for: lt.KeywordFor | None = None) -> None:
    """Add the lottery routes to ``router``; ``authenticate`` turns a request into the acting
    staff member (or raises a 401 :class:`~gateway.api.ApiError`); ``keyword_for(merchant_id)``
    gives a campaign created without a keyword its merchant's lottery keyword (default ``CJ``)."""

    async def create(request: Request, actor: Staff) -> Response:
        require(actor, Permission.LOTTERY_MANAGE)
        body = decode(request.body, LotteryIn)
        lot = await lt.create_lottery(
            store, actor.merchant_id, name=body.name, starts_at=body.starts_at, ends_at=body.ends_at,
            keyword=body.keyword or await lt.merchant_keyword(keyword_for, actor.merchant_id),
            max_entries=body.max_entries, max_entries_per_day=body.max_entries_per_day,
            max_wins=body.max_wins, members_only=body.members_only,
            prizes=[(p.name, p.stock) for p in body.prizes])
        return json_response(_out(lot, await lt.prizes(store, lot.id)), 201)

    async def list_(request: Request, actor: Staff) -> Response:
        require(actor, Permission.LOTTERY_MANAGE)
        out = [_out(lot, await lt.prizes(store, lot.id)) for lot in await lt.lotteries(store, actor.merchant_id)]
        return json_response({"lotteries": out})

    async def get(request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.LOTTERY_MANAGE)
        lot = await lt.lottery(store, actor.merchant_id, path_id(id, "lottery"))
        return json_response(_out(lot, await lt.prizes(store, lot.id)))

    async def add_prize(request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.LOTTERY_MANAGE)
        lottery_id = path_id(id, "lottery")
        body = decode(request.body, PrizeIn)
        prize = await lt.add_prize(store, actor.merchant_id, lottery_id, body.name, body.stock)
        return json_response(prize, 201)

    async def close(request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.LOTTERY_MANAGE)
        lot = await lt.close_lottery(store, actor.merchant_id, path_id(id, "lottery"))
        return json_response(_out(lot, await lt.prizes(store, lot.id)))

    async def entries(request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.LOTTERY_MANAGE)
        lot = await lt.lottery(store, actor.merchant_id, path_id(id, "lottery"))
        after = query_int(request, "after", 0, low=0, high=2**31 - 1)
        limit = query_int(request, "limit", 100, low=1, high=MAX_ENTRIES_PAGE)
        page = await lt.entries(store, lot.id, after=after, limit=limit)
        return json_response({"entries": page, "next_after": page[-1].entry_no if len(page) == limit else None})

    async def audit(request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.LOTTERY_MANAGE)
        return json_response(await lt.audit(store, actor.merchant_id, path_id(id, "lottery")))

    async def draw(request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.LOTTERY_DRAW)
        lottery_id = path_id(id, "lottery")
        await lt.draw_lottery(store, actor.merchant_id, lottery_id)
        try:
            merchant = await merchant_by_id(store, actor.merchant_id)
            notified = await lt.notify_winners(store, outbox, merchant, lottery_id)
        except GatewayError as exc:  # the draw stands; POST .../notify tells the rest
            log.warning("lottery winners not all told lottery=%s error=%s", lottery_id, exc)
            notified = 0
        won = await lt.winners(store, lottery_id)
        return json_response({"lottery_id": lottery_id, "winners": won, "notified": notified,
                              "untold": sum(w.notified_at is None for w in won)})

    async def notify(request: Request, actor: Staff, *, id: str) -> Response:
        require(actor, Permission.LOTTERY_DRAW)
        lot = await lt.lottery(store, actor.merchant_id, path_id(id, "lottery"))
        notified = await lt.notify_winners(store, outbox, await merchant_by_id(store, actor.merchant_id), lot.id)
        return json_response({"lottery_id": lot.id, "notified": notified})

    base = "/v1/crm/lotteries"
    add_routes(router, authenticate, [
        ("POST", base, create), ("GET", base, list_), ("GET", base + "/{id}", get),
        ("POST", base + "/{id}/prizes", add_prize), ("POST", base + "/{id}/close", close),
        ("GET", base + "/{id}/entries", entries), ("GET", base + "/{id}/audit", audit),
        ("POST", base + "/{id}/draw", draw), ("POST", base + "/{id}/notify", notify),
    ])
