"""crm_lite as the gateway runs it: the command handler composed of every part, every REST
route, and the services that run beside them (approval escalation, points expiry).

The gateway's assembly point (:func:`gateway.app.serve_gateway`) calls these; nothing else in
``gateway`` imports crm_lite.
"""

from __future__ import annotations

import functools

import trio

from gateway.http import Router
from gateway.router.commands import Outbox
from gateway.store import Store

from . import approvals, approvals_api, expiry, lottery, lottery_api
from .api import authenticate, register_crm
from .handler import CrmHandler, members_handler
from .members import member_by_phone
from .settings import settings_for

DEFAULT_APPROVAL_TIMEOUT_S = approvals.DEFAULT_TIMEOUT_S


def _membership(store: Store):
    async def is_member(merchant_id: int, phone: str) -> bool:
        return await member_by_phone(store, merchant_id, phone) is not None

    return is_member


def _lottery_keyword(store: Store):
    async def keyword_for(merchant_id: int) -> str:
        return (await settings_for(store, merchant_id)).lottery_keyword

    return keyword_for


def build_handler(store: Store, *, timezone: str,
                  approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S) -> CrmHandler:
    """Members (join, points), then the lottery, then approvals; the help lists them all."""
    return members_handler(
        store,
        lottery.LotteryHandler(store, is_member=_membership(store), timezone=timezone,
                               keyword_for=_lottery_keyword(store)),
        approvals.ApprovalHandler(store, timeout_s=approval_timeout_s),
    )


def register_all(router: Router, running, *, approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S) -> None:
    """Every ``/v1/crm/...`` route: members, points, settings, staff, lotteries, approvals."""
    register_crm(router, running)
    auth = functools.partial(authenticate, running.store)
    lottery_api.register_routes(router, running.store, running.outbox, auth,
                                keyword_for=_lottery_keyword(running.store))
    approvals_api.register_routes(router, running.store, running.outbox, auth, timeout_s=approval_timeout_s)


async def serve_crm(store: Store, outbox: Outbox, *, escalation_interval: float = approvals.DEFAULT_INTERVAL_S,
                    expiry_interval: float = expiry.DEFAULT_INTERVAL_S, timezone: str = "Asia/Shanghai",
                    metrics=None, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The CRM's background work: escalating approvals past their deadline, and expiring the
    points of merchants whose points expire (once at start, then every ``expiry_interval``)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(approvals.serve_escalations, store, outbox,
                                              interval=escalation_interval))
        points_expiry = expiry.PointsExpiry(store, interval=expiry_interval, timezone=timezone, metrics=metrics)
        await nursery.start(points_expiry.run)
        task_status.started()
