"""Delivery webhooks (SPEC.md "Delivery webhooks").

When a message with a ``callback_url`` reaches a final state, the statement that records the
state also writes a row to ``webhook_outbox`` (see the store), so a callback is never lost.
:class:`WebhookSender` claims due rows by lease — any node may send any callback — and POSTs
``{"id", "to", "status", "channel", "at", "error_code"}`` signed with
``X-Smsgw-Signature: sha256=<hex HMAC-SHA256 of the body with the account's webhook secret>``.
Kannel-style ``dlr-url`` callbacks go the same way, as GETs with Kannel's escapes expanded
(:func:`gateway.kannel.expand_dlr_url`), one per event the ``dlr-mask`` selects. Callbacks of
one message go in order: only its oldest pending one may be sent. A non-2xx answer or a
network error is retried with growing delays until :data:`BACKOFF` is
spent; then the row is marked ``failed`` with the last error.

MO callbacks (kind ``mo``) go the same way: MO dispatch queues one per subscribed app in the
transaction that marks the MO dispatched; the POST carries
``{"id", "from", "to", "text", "keyword", "received_at"}``, signed alike with the subscribing
account's secret, retried on the same schedule.

httpx does the client side (connection pooling, TLS, redirects off, timeouts) on Trio.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime

import httpx
import msgspec
import trio

from .errors import StoreError
from .events import EventBus, WebhookEvent
from .events import now as events_now
from .kannel import expand_dlr_url
from .metrics import Metrics
from .store import Store

log = logging.getLogger(__name__)

BACKOFF = (0.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 3600.0, 3600.0, 3600.0)
"""Delay before each attempt: ten attempts over about four hours."""
BATCH = 100
LEASE = 60.0
"""Seconds a claimed callback is reserved for one sender."""
CONCURRENCY = 32
"""Callbacks in flight at once."""
TIMEOUT = 10.0
IDLE_POLL = 0.5
SIGNATURE_HEADER = "X-Smsgw-Signature"


class DeliveryCallback(msgspec.Struct, frozen=True):
    """The body of a delivery webhook."""

    id: str
    to: str
    status: str
    channel: str | None
    at: datetime
    error_code: str | None


class MoCallback(msgspec.Struct, frozen=True):
    """The body of an MO callback (kind ``mo``): a consumer's text to a subscribed number."""

    id: str
    sender: str = msgspec.field(name="from")
    to: str = ""
    text: str = ""
    keyword: str = ""
    """The first word, normalized as the command language has it (``"CJ"``, ``"1"``)."""
    received_at: datetime | None = None


_encoder = msgspec.json.Encoder()


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


_CLAIM = """
WITH c AS (
    SELECT w.id FROM webhook_outbox w
    WHERE w.state = 'pending' AND w.next_attempt_at <= now() AND (w.lease_until IS NULL OR w.lease_until < now())
      -- in order per message: only a message's oldest pending callback may go
      AND NOT EXISTS (SELECT 1 FROM webhook_outbox p
                      WHERE p.message_id = w.message_id AND p.state = 'pending' AND p.id < w.id)
    ORDER BY w.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
),
u AS (
    UPDATE webhook_outbox w SET lease_until = now() + make_interval(secs => $2), attempts = w.attempts + 1
    FROM c WHERE w.id = c.id
    RETURNING w.id, w.url, w.attempts, w.kind, w.dlr_type, w.event_status, w.event_at, w.message_id, w.mo_id,
              w.account_id
)
SELECT u.id, u.url, u.attempts, u.kind, u.dlr_type, u.event_status, u.event_at, u.message_id, m.dest,
       m.channel, m.error_code, m.sender, a.webhook_secret, u.mo_id, i.sender AS mo_sender,
       i.service_number AS mo_service_number, i.body AS mo_body, i.command AS mo_command,
       i.received_at AS mo_received_at
FROM u LEFT JOIN messages m ON m.id = u.message_id
       LEFT JOIN inbound_messages i ON i.id = u.mo_id
       JOIN accounts a ON a.id = coalesce(m.account_id, u.account_id)
"""


class WebhookSender:
    def __init__(self, store: Store, metrics: Metrics, *, client: httpx.AsyncClient | None = None,
                 backoff: tuple[float, ...] = BACKOFF, idle_poll: float = IDLE_POLL,
                 bus: EventBus | None = None) -> None:
        self._store = store
        self._bus = bus
        self._backoff = backoff
        self._idle_poll = idle_poll
        self._metrics = metrics
        self._client = client
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with (self._client or httpx.AsyncClient(timeout=TIMEOUT, limits=limits,
                                                       follow_redirects=False)) as client:
            task_status.started()
            limiter = trio.Semaphore(CONCURRENCY)
            while True:
                try:
                    rows = await self._store.fetch(_CLAIM, BATCH, LEASE)
                except StoreError as exc:
                    log.warning("claiming webhooks failed: %s", exc)
                    rows = []
                if rows:
                    async with trio.open_nursery() as nursery:
                        for row in rows:
                            await limiter.acquire()
                            nursery.start_soon(self._deliver, client, row, limiter)
                if len(rows) < BATCH:
                    with trio.move_on_after(self._idle_poll):
                        await self._wake.wait()
                    self._wake = trio.Event()

    async def _deliver(self, client: httpx.AsyncClient, row, limiter: trio.Semaphore) -> None:
        try:
            error = ""
            code = 0
            try:
                response = await self._request(client, row)
                code = response.status_code
                if 200 <= response.status_code < 300:
                    self._publish(row, True, code, "")
                    await self._finish(row["id"], "delivered", "")
                    self._metrics.webhooks.labels("delivered").inc()
                    return
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            except ValueError as exc:  # a URL httpx cannot use; retrying will not help
                error = f"bad URL: {exc}"[:500]
                row = {**row, "attempts": len(self._backoff)}
            attempts = row["attempts"]
            self._publish(row, False, code, error)
            if attempts >= len(self._backoff):
                log.warning("webhook given up kind=%s message_id=%s mo_id=%s attempts=%d error=%s", row["kind"],
                            row["message_id"], row["mo_id"], attempts, error)
                await self._finish(row["id"], "failed", error)
                self._metrics.webhooks.labels("failed").inc()
            else:
                await self._store.execute(
                    "UPDATE webhook_outbox SET lease_until = NULL, last_error = $2, updated_at = now(),"
                    " next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                    row["id"], error, self._backoff[attempts])
                self._metrics.webhooks.labels("retry").inc()
        except StoreError as exc:  # the lease runs out and another attempt follows
            log.warning("recording a webhook attempt failed id=%s: %s", row["id"], exc)
        finally:
            limiter.release()

    def _publish(self, row, ok: bool, status_code: int, detail: str) -> None:
        if self._bus is not None and self._bus.active:
            self._bus.publish(WebhookEvent(message_id=row["message_id"], kind=row["kind"], attempt=row["attempts"],
                                           ok=ok, status_code=status_code, detail=detail, at=events_now()))

    async def _request(self, client: httpx.AsyncClient, row) -> httpx.Response:
        if row["kind"] == "kannel":
            url = expand_dlr_url(
                row["url"], dlr_type=row["dlr_type"], to=row["dest"], sender=row["sender"], at=row["event_at"],
                reply=row["error_code"] or row["event_status"].upper(), channel=row["channel"] or "",
                message_id=row["message_id"])
            return await client.get(url, headers={"User-Agent": "smsgw-dlr"})
        if row["kind"] == "mo":
            body = _encoder.encode(MoCallback(
                id=str(row["mo_id"]), sender=row["mo_sender"], to=row["mo_service_number"], text=row["mo_body"],
                keyword=row["mo_command"], received_at=row["mo_received_at"]))
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(row["webhook_secret"], body),
                       "User-Agent": "smsgw-mo"}
            return await client.post(row["url"], content=body, headers=headers)
        body = _encoder.encode(DeliveryCallback(
            id=str(row["message_id"]), to=row["dest"], status=row["event_status"], channel=row["channel"],
            at=row["event_at"], error_code=row["error_code"]))
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(row["webhook_secret"], body),
                   "User-Agent": "smsgw-webhook"}
        return await client.post(row["url"], content=body, headers=headers)

    async def _finish(self, outbox_id: int, state: str, error: str) -> None:
        await self._store.execute(
            "UPDATE webhook_outbox SET state = $2, last_error = $3, lease_until = NULL, updated_at = now()"
            " WHERE id = $1", outbox_id, state, error)
