"""REST for approval requests, under ``/v1/crm/approvals`` (staff token; see README "CRM:
lottery and approvals"). Requests are addressed by their number, as staff know them.

| route | who |
| --- | --- |
| ``POST /v1/crm/approvals`` file ``{kind, amount_fen, reason, client_key?}`` | ``approvals.file`` |
| ``GET /v1/crm/approvals?status=&limit=`` | managers and owners see all; others their own and those they approve |
| ``GET /v1/crm/approvals/{number}`` with its audit trail | as above |
| ``POST /v1/crm/approvals/{number}/decision`` ``{"decision": "approve" \\| "reject"}`` | the current approver only |
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.api import ApiError
from gateway.errors import GatewayError
from gateway.http import Request, Response, Router
from gateway.router.commands import Outbox
from gateway.store import Store

from . import approvals as ap
from .errors import Conflict
from .restkit import Authenticate, add_routes, decode, json_response, path_id, query_int, query_str
from .staff import Permission, Staff, require, staff_by_id

log = logging.getLogger(__name__)

MAX_LIST = 500


class FileIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Annotated[str, Meta(min_length=1, max_length=ap.MAX_KIND)]
    amount_fen: Annotated[int, Meta(ge=1, le=ap.MAX_AMOUNT_FEN)]
    reason: Annotated[str, Meta(min_length=1, max_length=ap.MAX_REASON)]
    client_key: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    """Idempotency key: the same key from the same staff member returns the original request."""


class DecisionIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: Literal["approve", "reject"]


class RequestOut(msgspec.Struct, frozen=True, kw_only=True):
    request: ap.ApprovalRequest
    events: list[ap.ApprovalEvent]


def register_routes(router: Router, store: Store, outbox: Outbox, authenticate: Authenticate, *,
                    timeout_s: float = ap.DEFAULT_TIMEOUT_S) -> None:
    """Add the approval routes to ``router``; requests filed here escalate after ``timeout_s``."""

    async def detail(request: ap.ApprovalRequest) -> RequestOut:
        return RequestOut(request=request, events=await ap.history(store, request.id))

    async def visible(actor: Staff, number: str) -> ap.ApprovalRequest:
        req = await ap.request_by_number(store, actor.merchant_id, path_id(number, "approval request"))
        if not ap.may_see(actor, req):
            raise ApiError(403, "forbidden", f"request #{req.number} is neither yours nor waiting for you")
        return req

    async def in_person(actor: Staff) -> None:
        """Filing and deciding name a person in the audit trail: an account key acting for
        the owner (no staff row) may read, not act."""
        if await staff_by_id(store, actor.id) is None:
            raise ApiError(403, "forbidden", "filing or deciding needs a staff member's own token (crm_...)")

    async def file(request: Request, actor: Staff) -> Response:
        require(actor, Permission.APPROVALS_FILE)
        await in_person(actor)
        body = decode(request.body, FileIn)
        filed, created = await ap.file_request(store, actor, kind=body.kind, amount_fen=body.amount_fen,
                                               reason=body.reason, timeout_s=timeout_s, client_key=body.client_key)
        if created:
            try:
                await ap.notify_approver(store, outbox, await ap.merchant_by_id(store, actor.merchant_id), filed.id)
            except GatewayError as exc:  # filed all the same; serve_escalations sends the notice
                log.warning("approver not told yet request=%s error=%s", filed.id, exc)
        return json_response(await detail(filed), 201 if created else 200)

    async def list_(request: Request, actor: Staff) -> Response:
        status = query_str(request, "status")
        if status is not None and status not in {s.value for s in ap.Status}:
            raise ApiError(400, "invalid_field", "status must be pending, approved or rejected", field="status")
        limit = query_int(request, "limit", 100, low=1, high=MAX_LIST)
        return json_response({"requests": await ap.requests_for(store, actor, status=status, limit=limit)})

    async def get(request: Request, actor: Staff, *, number: str) -> Response:
        return json_response(await detail(await visible(actor, number)))

    async def decide(request: Request, actor: Staff, *, number: str) -> Response:
        body = decode(request.body, DecisionIn)
        req = await visible(actor, number)
        await in_person(actor)
        outcome, decided = await ap.decide(store, actor, req.number, body.decision == "approve")
        if outcome == ap.Decision.NOT_APPROVER:
            raise ApiError(403, "not_approver", f"request #{req.number} waits for {decided.approver_name}")
        if outcome == ap.Decision.ALREADY:
            raise Conflict("already_decided", f"request #{req.number} is already {decided.status}")
        try:
            await ap.tell_requester(store, outbox, await ap.merchant_by_id(store, actor.merchant_id), decided.id)
        except GatewayError as exc:  # decided all the same; serve_escalations sends the notice
            log.warning("requester not told yet request=%s error=%s", decided.id, exc)
        return json_response(await detail(decided))

    base = "/v1/crm/approvals"
    add_routes(router, authenticate, [
        ("POST", base, file), ("GET", base, list_), ("GET", base + "/{number}", get),
        ("POST", base + "/{number}/decision", decide),
    ])

