"""The CRM REST API's assembly: who is calling (:func:`authenticate`) and which routes exist
(:func:`register_crm`).

A caller is a staff member, by the API token made when they were added
(``Authorization: Bearer crm_...``). The merchant's account API key (the one its apps send SMS
with) acts as the merchant's owner; when one account sends for several merchants, the
``X-Merchant`` header names which one.
"""

from __future__ import annotations

import functools

from gateway.api import ApiError
from gateway.http import Request, Router
from gateway.store import Store

from .rest import register_routes
from .staff import TOKEN_PREFIX, Role, Staff, staff_by_token

ACCOUNT_OWNER_ID = 0
"""The ``Staff.id`` of an account API key acting as the merchant's owner (no staff row)."""

_CHALLENGE = [("WWW-Authenticate", 'Bearer realm="smsgw-crm"')]


async def authenticate(store: Store, request: Request) -> Staff:
    """The staff member making ``request``; :class:`~gateway.api.ApiError` 401 otherwise."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "send a staff token as `Authorization: Bearer crm_...`",
                       headers=_CHALLENGE)
    if token.startswith(TOKEN_PREFIX):
        staff = await staff_by_token(store, token)
        if staff is not None:
            return staff
        raise ApiError(401, "unauthorized", "unknown or revoked staff token", headers=_CHALLENGE)
    account = await store.account_for_key(token)
    if account is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token", headers=_CHALLENGE)
    wanted = request.headers.get("x-merchant")
    rows = await store.fetch("SELECT id, name FROM merchants WHERE account_id = $1 ORDER BY id", account.id)
    if wanted is not None:
        rows = [r for r in rows if r["name"] == wanted.strip()]
    if len(rows) != 1:
        if not rows:
            raise ApiError(403, "forbidden", "this API key's account serves no such merchant")
        raise ApiError(400, "invalid_field", "this account serves several merchants; name one in X-Merchant",
                       field="X-Merchant")
    return Staff(id=ACCOUNT_OWNER_ID, merchant_id=rows[0]["id"], phone="", name=account.name, role=Role.OWNER)


def register_crm(router: Router, running) -> None:
    """Add every CRM route to ``router``, for ``serve_gateway(extra_routes=register_crm)``;
    ``running`` is the gateway's :class:`gateway.app.Running` (its store and outbox)."""
    auth = functools.partial(authenticate, running.store)
    register_routes(router, running.store, running.outbox, auth)
