"""The HTTP API (SPEC.md "HTTP API"): handlers over the store, the intake and the channels.

Routing lives in :mod:`gateway.http.router`, the wire in :mod:`gateway.http.server`; this module
decides what each request means. Requests are decoded into msgspec Structs; every error is
``{"error": {"code", "message"[, "field"]}}`` with the status SPEC.md names, and bad input never
reaches the store and never answers 500.
"""

from __future__ import annotations

import logging
import math
import re
import time
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from . import kannel
from .channel import Channel
from .config import Config
from .errors import GatewayError, StoreError, StoreUnavailable
from .events import EventBus, LimitEvent
from .http import Request, Response, Router
from .intake import Intake
from .metrics import Metrics
from .compliance import MerchantDirectory
from .router import AccountLimiter, DailyQuota, TokenBucket
from .router.compliance import MARKETING, with_signature
from .store import Account, AcceptRequest, AcceptResult, NewMessage, Store
from .text import EmptyText, InvalidNumber, TooLong, plan
from .text import _parse_msisdn as parse_msisdn

log = logging.getLogger(__name__)

AUTH_CACHE_TTL = 60.0
"""Seconds an API key stays cached after a successful look-up (revocation takes this long)."""
AUTH_CACHE_MAX = 10_000


# --- wire models -------------------------------------------------------------------------------

ClientRef = Annotated[str, Meta(min_length=1, max_length=128)]
Sender = Annotated[str, Meta(pattern=r"^[0-9]{0,12}$", description="digits appended to the service number")]


class SendBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/messages``."""

    to: str | list[str]
    text: str
    client_ref: ClientRef | None = None
    priority: Annotated[int, Meta(ge=0, le=3)] = 0
    msg_class: Literal["transactional", "marketing"] = msgspec.field(default="transactional", name="class")
    validity_s: Annotated[int, Meta(ge=60, le=7 * 86400)] = 86400
    callback_url: Annotated[str, Meta(max_length=2048)] | None = None
    sender: Sender = ""


class MessageOut(msgspec.Struct, frozen=True):
    id: str
    to: str
    status: str
    parts: int


class SendResponse(msgspec.Struct, frozen=True):
    messages: list[MessageOut]


class EventOut(msgspec.Struct, frozen=True):
    status: str
    at: datetime
    detail: str


class MessageDetail(msgspec.Struct, frozen=True):
    id: str
    to: str
    text: str
    status: str
    channel: str | None
    parts: int
    created_at: datetime
    events: list[EventOut]


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


class Health(msgspec.Struct, frozen=True):
    status: str
    database: str
    channels: dict[str, str]


_send_decoder = msgspec.json.Decoder(SendBody)
_encoder = msgspec.json.Encoder()
_FIELD_RE = re.compile(r"`\$\.([^`\[]+)(?:\[(\d+)\])?")
_MISSING_RE = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(ErrorBody(code=code, message=message, field=field))
        self.headers = list(headers)

    def response(self) -> Response:
        return Response(status=self.status, body=_encoder.encode(self.body), headers=self.headers)


def error_response(status: int, code: str, message: str, **kw: object) -> Response:
    return ApiError(status, code, message, **kw).response()  # type: ignore[arg-type]


T = TypeVar("T")


def decode_body(body: bytes, type_: type[T], *, decoder: msgspec.json.Decoder[T] | None = None) -> T:
    """A JSON request body as ``type_`` (through ``decoder`` when given, one built once for it);
    raises a 400 :class:`ApiError`: ``invalid_json`` for an empty or malformed body,
    ``invalid_field`` naming the field for a wrong shape."""
    if not body:
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return decoder.decode(body) if decoder is not None else msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _MISSING_RE.search(text) or _FIELD_RE.search(text)
        raise ApiError(400, "invalid_field", text, field=m.group(1) if m else None) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None


def decode_send(body: bytes, *, max_recipients: int) -> SendBody:
    """Decode and validate a send request's shape; raises :class:`ApiError` naming the field."""
    req = decode_body(body, SendBody, decoder=_send_decoder)
    recipients = [req.to] if isinstance(req.to, str) else req.to
    if not recipients:
        raise ApiError(400, "invalid_field", "`to` names no recipient", field="to")
    if len(recipients) > max_recipients:
        raise ApiError(413, "too_many_recipients",
                       f"{len(recipients)} recipients; at most {max_recipients} in one request", field="to")
    if req.callback_url is not None:
        u = urllib.parse.urlsplit(req.callback_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ApiError(400, "invalid_field", "`callback_url` must be an absolute http(s) URL",
                           field="callback_url")
    return req


def build_accept(req: SendBody, account_id: int, *, max_parts: int, signature: str = "") -> AcceptRequest:
    """Normalize numbers, plan the parts: the whole request is valid or nothing is stored.

    A marketing text of a merchant's account gets the merchant's ``signature`` in front when
    it lacks it, before its parts are counted (:func:`gateway.router.compliance.with_signature`)."""
    recipients = [req.to] if isinstance(req.to, str) else req.to
    text = with_signature(req.text, signature, req.msg_class) if signature else req.text
    try:
        segments = plan(text, max_parts=max_parts)
    except EmptyText:
        raise ApiError(400, "invalid_field", "`text` is empty", field="text") from None
    except TooLong as exc:
        raise ApiError(413, "text_too_long", f"the text needs {exc.parts} parts; at most {max_parts}",
                       field="text") from None
    encoding = segments.encoding
    parts = len(segments.parts)
    seen: set[str] = set()
    messages = []
    for i, raw in enumerate(recipients):
        try:
            msisdn, operator = parse_msisdn(raw)  # normalize_msisdn and operator_of in one parse
        except InvalidNumber as exc:
            where = "to" if isinstance(req.to, str) else f"to[{i}]"
            raise ApiError(400, "invalid_number", f"{raw!r} is not a Chinese mobile number: {exc.reason}",
                           field=where) from None
        if msisdn in seen:  # one request sends a text to a number once
            continue
        seen.add(msisdn)
        messages.append(NewMessage(dest=msisdn, operator=operator.value, body=text, encoding=encoding, parts=parts))
    return AcceptRequest(
        account_id=account_id, messages=tuple(messages), client_ref=req.client_ref, priority=req.priority,
        msg_class=req.msg_class, validity_s=req.validity_s, callback_url=req.callback_url, sender=req.sender,
    )


def _nothing() -> None:
    pass


class PassOn(GatewayError):
    """Raised by a worker process's handlers (``pass_limited``) for a request the gateway's
    main process must answer: one from an account with a rate or daily quota, which holds
    exactly only where one process counts it."""


class Api:
    """The API's handlers; :meth:`router` wires them to paths."""

    def __init__(self, *, config: Config, store: Store, intake: Intake, metrics: Metrics,
                 channels: Callable[[], Iterable[Channel]] = tuple,
                 merchants: MerchantDirectory | None = None, bus: EventBus | None = None,
                 pass_limited: bool = False) -> None:
        self._bus = bus
        self._pass_limited = pass_limited
        self._config = config
        self._merchants = merchants
        self._store = store
        self._intake = intake
        self._metrics = metrics
        self._channels = channels
        self._keys: dict[str, tuple[Account, float]] = {}
        self._limit_config = {a.name: a for a in config.accounts}
        self._limiters: dict[int, AccountLimiter | None] = {}
        self._zone = zoneinfo.ZoneInfo(config.dispatcher.timezone)

    def router(self) -> Router:
        r = Router()
        r.add("POST", "/v1/messages", self._wrap("send", self.send))
        r.add("GET", "/v1/messages/{id}", self._wrap("message", self.message))
        r.add("GET", "/cgi-bin/sendsms", self._wrap("sendsms", self.sendsms))
        r.add("POST", "/cgi-bin/sendsms", self._wrap("sendsms", self.sendsms))
        r.add("GET", "/healthz", self._wrap("healthz", self.healthz))
        r.add("GET", "/metrics", self._wrap("metrics", self.metrics))
        return r

    def wrap(self, route: str, handler):
        """``handler`` with the API's error answers and metrics (for routes added elsewhere)."""
        return self._wrap(route, handler)

    async def signature_for(self, account_id: int, msg_class: str) -> str:
        """The merchant signature a send of ``msg_class`` by the account carries ("" for none);
        transactional sends never ask, so their path does not change."""
        if msg_class != MARKETING or self._merchants is None:
            return ""
        return await self._merchants.signature_for(account_id)

    def _wrap(self, route: str, handler):
        counters: dict[int, object] = {}  # label children by status, looked up once each
        latency = self._metrics.api_latency.labels(route)

        async def wrapped(request: Request, **params: str) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request, **params)
            except ApiError as exc:
                response = exc.response()
            except StoreUnavailable as exc:
                log.warning("database unavailable route=%s error=%s", route, exc)
                response = error_response(503, "database_unavailable", "the database is unreachable; retry later",
                                          headers=[("Retry-After", "5")])
            except StoreError as exc:
                log.error("store error route=%s error=%s", route, exc)
                response = error_response(503, "storage_error", "the message store failed; retry later",
                                          headers=[("Retry-After", "5")])
            latency.observe(time.perf_counter() - started)
            counter = counters.get(response.status)
            if counter is None:
                counter = counters[response.status] = self._metrics.api_requests.labels(route, str(response.status))
            counter.inc()
            return response

        return wrapped

    async def authenticate(self, request: Request) -> Account:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "send the API key as `Authorization: Bearer <key>`",
                           headers=[("WWW-Authenticate", 'Bearer realm="smsgw"')])
        account = await self._account_for_key(key.strip())
        if account is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key",
                           headers=[("WWW-Authenticate", 'Bearer realm="smsgw", error="invalid_token"')])
        return account

    async def _account_for_key(self, key: str) -> Account | None:
        now = time.monotonic()
        cached = self._keys.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        account = await self._store.account_for_key(key)
        if account is None:
            return None
        if len(self._keys) >= AUTH_CACHE_MAX:
            self._keys.clear()
        self._keys[key] = (account, now + AUTH_CACHE_TTL)
        return account

    async def sendsms(self, request: Request) -> Response:
        """Kannel's ``/cgi-bin/sendsms`` (see :mod:`gateway.kannel`)."""
        try:
            params = kannel.parse_params(request)
            username = params.get("username", params.get("user", b"")).decode("utf-8", "replace")
            password = params.get("password", params.get("pass", b"")).decode("utf-8", "replace")
            account = await self._account_for_key(password) if password else None
            if account is None or account.name != username:
                raise kannel.KannelError(403, "Authorization failed for sendsms")
            # Kannel requests are transactional (sendsms has no class): no signature is added.
            accept = kannel.sendsms_request(params, account.id, max_recipients=self._config.http.max_recipients,
                                            max_parts=self._config.http.max_parts, build=build_accept)
            await self._accept(account, accept)
        except kannel.KannelError as exc:
            return exc.response()
        except ApiError as exc:  # over the account's limits: Kannel's words, the same status
            return Response(status=exc.status, body=exc.body.error.message.encode(), headers=exc.headers,
                            content_type="text/plain; charset=utf-8")
        return kannel.accepted()

    def _limiter(self, account: Account) -> AccountLimiter | None:
        if account.id not in self._limiters:
            conf = self._limit_config.get(account.name)
            limiter = None
            if conf is not None and (conf.rate is not None or conf.daily_quota is not None):
                limiter = AccountLimiter(
                    bucket=TokenBucket(conf.rate, conf.burst or max(1.0, conf.rate), stamp=time.monotonic())
                    if conf.rate is not None else None,
                    quota=DailyQuota(conf.daily_quota) if conf.daily_quota is not None else None,
                )
            self._limiters[account.id] = limiter
        return self._limiters[account.id]

    async def _admit(self, account: Account, n: int) -> Callable[[], None]:
        """Check the account's quota and rate for ``n`` recipients; returns a function that
        gives the reservation back (for a duplicate or a failed commit). Raises a 429."""
        limiter = self._limiter(account)
        if limiter is None:
            return lambda: None
        if self._pass_limited:
            raise PassOn(f"account {account.name} has limits")
        if limiter.quota is not None:
            local_now = datetime.now(self._zone)
            today = local_now.date()
            if limiter.quota.needs_seed(today):
                day_start = datetime.combine(today, dtime(0), self._zone)
                limiter.quota.seed(today, await self._store.accepted_since(account.id, day_start))
            if not limiter.quota.reserve(n):
                midnight = datetime.combine(today + timedelta(days=1), dtime(0), self._zone)
                raise ApiError(429, "quota_exceeded",
                               f"the account's daily quota of {limiter.quota.limit} messages is used up",
                               headers=[("Retry-After", str(max(1, math.ceil((midnight - local_now).total_seconds()))))])
        if limiter.bucket is not None:
            wait = limiter.bucket.take(n, time.monotonic())
            if wait > 0:
                if limiter.quota is not None:
                    limiter.quota.release(n)
                raise ApiError(429, "rate_limited",
                               f"over the account's rate of {limiter.bucket.rate:g} messages a second",
                               headers=[("Retry-After", str(max(1, math.ceil(wait))))])

        def give_back() -> None:
            if limiter.quota is not None:
                limiter.quota.release(n)
            if limiter.bucket is not None:
                limiter.bucket.give_back(n)

        return give_back

    async def _accept(self, account: Account, accept: AcceptRequest) -> AcceptResult:
        """Admit by the account's limits, then store durably."""
        try:
            give_back = await self._admit(account, len(accept.messages))
        except ApiError as exc:
            # A replay of a request already accepted returns its messages whatever the limits.
            if accept.client_ref is None or not await self._store.client_ref_taken(account.id, accept.client_ref):
                self._note_limit(account, exc, len(accept.messages))
                raise
            give_back = _nothing
        try:
            result = await self._intake.accept(accept, timeout=self._config.http.accept_timeout)
        except BaseException:
            give_back()
            raise
        if result.duplicate:
            give_back()
        return result

    async def send(self, request: Request) -> Response:
        account = await self.authenticate(request)
        body = decode_send(request.body, max_recipients=self._config.http.max_recipients)
        signature = await self.signature_for(account.id, body.msg_class) if body.msg_class == MARKETING else ""
        accept = build_accept(body, account.id, max_parts=self._config.http.max_parts, signature=signature)
        result = await self._accept(account, accept)
        out = SendResponse([MessageOut(str(m.id), m.dest, m.status, m.parts) for m in result.messages])
        return Response(status=202, body=_encoder.encode(out))

    async def message(self, request: Request, id: str) -> Response:
        account = await self.authenticate(request)
        if not id.isdigit() or len(id) > 18:
            raise ApiError(404, "not_found", f"no message {id!r}")
        view = await self._store.message(int(id), account.id)
        if view is None:
            raise ApiError(404, "not_found", f"no message {id!r}")
        out = MessageDetail(
            id=str(view.id), to=view.dest, text=view.body, status=view.status, channel=view.channel,
            parts=view.parts, created_at=view.created_at,
            events=[EventOut(e.status, e.at, e.detail) for e in view.events],
        )
        return Response(status=200, body=_encoder.encode(out))

    async def healthz(self, request: Request) -> Response:
        db_ok = await self._store.ping()
        channels = {c.name: ("up" if c.up else "down") for c in self._channels()}
        ok = db_ok and any(state == "up" for state in channels.values())
        body = Health(status="ok" if ok else "degraded", database="ok" if db_ok else "unreachable",
                      channels=channels)
        return Response(status=200 if ok else 503, body=_encoder.encode(body))

    async def metrics(self, request: Request) -> Response:
        try:
            await self._metrics.sample_queue(self._store)
        except StoreError as exc:  # the exposition still serves; the gauge keeps its last value
            log.debug("queue depth unavailable for /metrics: %s", exc)
        return Response(status=200, body=self._metrics.exposition(), content_type=self._metrics.content_type)

    def _note_limit(self, account: Account, exc: ApiError, n: int) -> None:
        """An account over its rate or quota: counted, and an ``account`` limit event."""
        if exc.status != 429:
            return
        self._metrics.limit_waits.labels("account").inc(n)
        if self._bus is not None:
            retry = next((float(v) for k, v in exc.headers if k == "Retry-After"), 0.0)
            self._bus.publish(LimitEvent(scope="account", name=account.name, wait_s=retry, count=n, at=time.time()))
