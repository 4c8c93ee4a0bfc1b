"""The admin page and its JSON look-up, served by the gateway's HTTP server (SPEC "Ports").

``GET /admin`` is a plain HTML page with its script and style (package data in
``admin_ws/static``, no build step); it asks for the admin token, opens the admin websocket
with it and shows the live stream. ``GET /v1/admin/messages?id=N`` or ``?to=NUMBER`` returns
messages with their full history, authenticated by the admin token (``Authorization: Bearer``).
Numbers and texts are masked for the plain token; a look-up by number needs the privileged one.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from datetime import datetime
from importlib import resources

import msgspec

from gateway.errors import StoreError
from gateway.http import Request, Response, Router
from gateway.metrics import Metrics
from gateway.store import MessageView, Store
from gateway.text import InvalidNumber, mask_msisdn, normalize_msisdn

from .server import AdminServer

log = logging.getLogger(__name__)

LOOKUP_LIMIT = 20
"""Messages a look-up by number returns at most (the newest)."""

_STATIC = {
    "/admin/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "/admin/admin.css": ("admin.css", "text/css; charset=utf-8"),
}
_PORT_MARK = "{{ADMIN_WS_PORT}}"


class HistoryEntry(msgspec.Struct, frozen=True):
    status: str
    at: datetime
    detail: str


class MessageOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    account: str
    to: str
    text: str | None
    status: str
    channel: str | None
    parts: int
    error_code: str | None
    created_at: datetime
    events: list[HistoryEntry]


class Lookup(msgspec.Struct, frozen=True, kw_only=True):
    privileged: bool
    messages: list[MessageOut]


_encoder = msgspec.json.Encoder()


def _error(status: int, code: str, message: str, field: str | None = None,
           headers: list[tuple[str, str]] | None = None) -> Response:
    body: dict[str, object] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return Response(status=status, body=_encoder.encode({"error": body}), headers=headers or [])


def _static(name: str) -> bytes:
    return resources.files("admin_ws").joinpath("static", name).read_bytes()


def admin_routes(router: Router, server: AdminServer, store: Store, metrics: Metrics) -> None:
    """Register ``/admin``, its files and ``/v1/admin/messages`` on the gateway's router."""
    page = _static("admin.html").decode().replace(_PORT_MARK, str(server.port)).encode()
    files = {path: (_static(name), kind) for path, (name, kind) in _STATIC.items()}
    no_cache = [("Cache-Control", "no-cache")]

    def timed(route: str, handler):
        latency = metrics.api_latency.labels(route)

        async def wrapped(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except StoreError as exc:
                log.warning("admin look-up failed error=%s", exc)
                response = _error(503, "database_unavailable", "the database is unreachable; retry later",
                                  headers=[("Retry-After", "5")])
            latency.observe(time.perf_counter() - started)
            metrics.api_requests.labels(route, str(response.status)).inc()
            return response

        return wrapped

    async def admin_page(request: Request) -> Response:
        return Response(status=200, body=page, content_type="text/html; charset=utf-8", headers=no_cache)

    def static_file(path: str):
        body, kind = files[path]

        async def serve(request: Request) -> Response:
            return Response(status=200, body=body, content_type=kind, headers=no_cache)

        return serve

    async def messages(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        privileged = server.privilege(token.strip()) if scheme.lower() == "bearer" else None
        if privileged is None:
            log.warning("admin look-up refused remote=%s reason=%s", request.remote,
                        "missing_token" if not token.strip() else "invalid_token")
            return _error(401, "unauthorized", "send the admin token as `Authorization: Bearer <token>`",
                          headers=[("WWW-Authenticate", 'Bearer realm="smsgw-admin"')])
        params = urllib.parse.parse_qs(request.query, keep_blank_values=True)
        ident = (params.get("id") or [""])[0].strip()
        number = (params.get("to") or [""])[0].strip()
        if bool(ident) == bool(number):
            return _error(400, "invalid_field", "give exactly one of `id` (a message id) and `to` (a number)",
                          field="id")
        if ident:
            if not ident.isdigit() or len(ident) > 18:
                return _error(400, "invalid_field", f"{ident!r} is not a message id", field="id")
            view = await store.message(int(ident))
            views = [view] if view is not None else []
        else:
            if not privileged:
                return _error(403, "forbidden", "a look-up by number needs the privileged admin token", field="to")
            try:
                dest = normalize_msisdn(number)
            except InvalidNumber as exc:
                return _error(400, "invalid_number", f"{number!r}: {exc.reason}", field="to")
            views = await store.messages_to(dest, LOOKUP_LIMIT)
        if ident and not views:
            return _error(404, "not_found", f"no message {ident!r}")
        names = await store.account_names(sorted({v.account_id for v in views})) if views else {}
        out = Lookup(privileged=privileged, messages=[_message_out(v, names, privileged) for v in views])
        return Response(status=200, body=_encoder.encode(out), headers=no_cache)

    router.add("GET", "/admin", timed("admin_page", admin_page))
    for path in files:
        router.add("GET", path, timed("admin_page", static_file(path)))
    router.add("GET", "/v1/admin/messages", timed("admin_messages", messages))


def _message_out(view: MessageView, names: dict[int, str], privileged: bool) -> MessageOut:
    return MessageOut(
        id=str(view.id), account=names.get(view.account_id, str(view.account_id)),
        to=view.dest if privileged else mask_msisdn(view.dest), text=view.body if privileged else None,
        status=view.status, channel=view.channel, parts=view.parts, error_code=view.error_code,
        created_at=view.created_at, events=[HistoryEntry(e.status, e.at, e.detail) for e in view.events])
