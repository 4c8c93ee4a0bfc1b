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

Plain-``http`` URLs go through :class:`gateway.httpclient.HttpClient` (pre-rendered requests on
kept-alive Trio sockets, answers parsed by httptools); ``https`` and anything else it cannot
send go through httpx (TLS, redirects off). Either way :data:`TIMEOUT` bounds an attempt.
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
from .httpclient import HttpClient, HttpClientError, target
from .kannel import expand_dlr_url
from .metrics import Metrics
from .store import Store

log = logging.getLogger(__name__)

BACKOFF = (0.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 3600.0, 3600.0, 3600.0)
"""Delay before each attempt: ten attempts over about four hours."""
BATCH = 200
"""Outbox rows claimed by one statement."""
QUEUE = 64
"""Claimed rows waiting for a free worker; the claimer blocks when it is full."""
LEASE = 120.0
"""Seconds a claimed callback is reserved for one sender: longer than the rows ahead of it
(at most :data:`BATCH` + :data:`QUEUE` + :data:`CONCURRENCY`) can take at :data:`TIMEOUT` each
across :data:`CONCURRENCY` workers."""
FINISH_WINDOW = 0.005
"""Seconds the finisher gathers outcomes after the first before one UPDATE records them."""
FINISH_BATCH = 500
"""Outcomes recorded by one UPDATE at most."""
FINISH_BUFFER = 1024
"""Outcomes waiting for the finisher; workers block when it is full."""
STOP_FLUSH = 2.0
"""Seconds a stopping sender spends recording the outcomes it holds; what is left is resent
after its lease."""
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


_FINISH = """
UPDATE webhook_outbox w
SET state = v.state, last_error = v.error, lease_until = NULL, updated_at = now(),
    next_attempt_at = CASE WHEN v.state = 'pending' THEN now() + make_interval(secs => v.delay)
                           ELSE w.next_attempt_at END
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[]) AS v(id, state, error, delay)
WHERE w.id = v.id
"""


class Outcome(msgspec.Struct, frozen=True):
    """What one attempt left to record: ``delivered``, ``failed`` or ``pending`` (retry after ``delay``)."""

    id: int
    state: str
    error: str
    delay: float = 0.0


class WebhookSender:
    """Claims due outbox rows in batches, sends them from :data:`CONCURRENCY` workers and records
    the outcomes in batches (one UPDATE per :data:`FINISH_WINDOW`, at most :data:`FINISH_BATCH` rows).

    A row stays ``pending`` under its lease until its outcome is recorded, so neither another
    sender nor the next callback of the same message can overtake it; outcomes lost before
    their UPDATE (a crash, a cancellation, a database error) leave the lease to run out and the
    callback is sent again: at least once, never skipped.
    """

    def __init__(self, store: Store, metrics: Metrics, *, client: httpx.AsyncClient | None = None,
                 backoff: tuple[float, ...] = BACKOFF, idle_poll: float = IDLE_POLL,
                 bus: EventBus | None = None, lease: float = LEASE, finish_window: float = FINISH_WINDOW) -> None:
        self._store = store
        self._bus = bus
        self._backoff = backoff
        self._idle_poll = idle_poll
        self._lease = lease
        self._finish_window = finish_window
        self._metrics = metrics
        self._client = client
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with (self._client or httpx.AsyncClient(timeout=TIMEOUT, limits=limits,
                                                       follow_redirects=False)) as https, HttpClient() as plain:
            client = _Clients(plain, https)
            send_rows, receive_rows = trio.open_memory_channel[object](QUEUE)
            send_done, receive_done = trio.open_memory_channel[Outcome](FINISH_BUFFER)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._finisher, receive_done)
                async with receive_rows, send_done:
                    for _ in range(CONCURRENCY):
                        nursery.start_soon(self._worker, client, receive_rows.clone(), send_done.clone())
                task_status.started()
                await self._claimer(send_rows)

    async def _claimer(self, rows: trio.MemorySendChannel) -> None:
        async with rows:
            while True:
                try:
                    claimed = await self._store.fetch(_CLAIM, BATCH, self._lease)
                except StoreError as exc:
                    log.warning("claiming webhooks failed: %s", exc)
                    claimed = []
                for row in claimed:
                    await rows.send(row)
                if len(claimed) < BATCH:
                    with trio.move_on_after(self._idle_poll):
                        await self._wake.wait()
                    self._wake = trio.Event()

    async def _worker(self, client: _Clients, rows: trio.MemoryReceiveChannel,
                      done: trio.MemorySendChannel[Outcome]) -> None:
        async with rows, done:
            async for row in rows:
                await done.send(await self._deliver(client, row))

    async def _finisher(self, done: trio.MemoryReceiveChannel[Outcome]) -> None:
        """Records outcomes in batches: whatever arrives within :data:`FINISH_WINDOW` of the first.

        When the sender stops, what it already knows is recorded within :data:`STOP_FLUSH`
        seconds, so a restart does not send those callbacks again."""
        batch: list[Outcome] = []
        try:
            while True:
                try:
                    batch.append(await done.receive())
                except trio.EndOfChannel:
                    return
                with trio.move_on_after(self._finish_window):
                    while len(batch) < FINISH_BATCH:
                        try:
                            batch.append(await done.receive())
                        except trio.EndOfChannel:
                            break
                await self._record(batch)
                batch = []
        finally:
            with trio.move_on_after(STOP_FLUSH, shield=True):
                while True:
                    try:
                        batch.append(done.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if batch:
                    try:
                        await self._record(batch)
                    except RuntimeError as exc:  # the database's event loop already closed
                        log.warning("recording webhook attempts at stop failed count=%d: %s", len(batch), exc)
            done.close()

    async def _record(self, batch: list[Outcome]) -> None:
        try:
            await self._store.execute(_FINISH, [o.id for o in batch], [o.state for o in batch],
                                      [o.error for o in batch], [o.delay for o in batch])
        except StoreError as exc:  # the leases run out and these callbacks are sent again
            log.warning("recording webhook attempts failed count=%d: %s", len(batch), exc)
            return
        self.wake()  # the next callback of each finished message may go now

    async def _deliver(self, client: _Clients, row) -> Outcome:
        error = ""
        code = 0
        try:
            code = await self._request(client, row)
            if 200 <= code < 300:
                self._publish(row, True, code, "")
                self._metrics.webhooks.labels("delivered").inc()
                return Outcome(row["id"], "delivered", "")
            error = f"HTTP {code}"
        except (httpx.HTTPError, HttpClientError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        except trio.TooSlowError:
            error = f"no answer within {TIMEOUT:g} s"
        except ValueError as exc:  # a URL httpx cannot use; retrying will not help
            error = f"bad URL: {exc}"[:500]
            row = {**row, "attempts": len(self._backoff)}
        attempts = row["attempts"]
        self._publish(row, False, code, error)
        if attempts >= len(self._backoff):
            log.warning("webhook given up kind=%s message_id=%s mo_id=%s attempts=%d error=%s", row["kind"],
                        row["message_id"], row["mo_id"], attempts, error)
            self._metrics.webhooks.labels("failed").inc()
            return Outcome(row["id"], "failed", error)
        self._metrics.webhooks.labels("retry").inc()
        return Outcome(row["id"], "pending", error, self._backoff[attempts])

    def _publish(self, row, ok: bool, status_code: int, detail: str) -> None:
        if self._bus is not None and self._bus.active:
            self._bus.publish(WebhookEvent(message_id=row["message_id"], kind=row["kind"], attempt=row["attempts"],
                                           ok=ok, status_code=status_code, detail=detail, at=events_now()))

    async def _request(self, client: _Clients, row) -> int:
        """Send one callback; its answer's status code."""
        if row["kind"] == "kannel":
            url = expand_dlr_url(
                row["url"], dlr_type=row["dlr_type"], to=row["dest"], sender=row["sender"], at=row["event_at"],
                reply=row["error_code"] or row["event_status"].upper(), channel=row["channel"] or "",
                message_id=row["message_id"])
            return await client.send("GET", url, _DLR_HEADERS, b"", {"User-Agent": "smsgw-dlr"})
        if row["kind"] == "mo":
            body = _encoder.encode(MoCallback(
                id=str(row["mo_id"]), sender=row["mo_sender"], to=row["mo_service_number"], text=row["mo_body"],
                keyword=row["mo_command"], received_at=row["mo_received_at"]))
            agent = "smsgw-mo"
        else:
            body = _encoder.encode(DeliveryCallback(
                id=str(row["message_id"]), to=row["dest"], status=row["event_status"], channel=row["channel"],
                at=row["event_at"], error_code=row["error_code"]))
            agent = "smsgw-webhook"
        signature = sign(row["webhook_secret"], body)
        return await client.send(
            "POST", row["url"], b"%s%s: %s\r\nUser-Agent: %s\r\n" % (
                _JSON_HEADER, SIGNATURE_HEADER.encode(), signature.encode(), agent.encode()), body,
            {"Content-Type": "application/json", SIGNATURE_HEADER: signature, "User-Agent": agent})


_DLR_HEADERS = b"User-Agent: smsgw-dlr\r\n"
_JSON_HEADER = b"Content-Type: application/json\r\n"


class _Clients:
    """The two clients: the lean one for plain http, httpx for the rest."""

    def __init__(self, plain: HttpClient, https: httpx.AsyncClient) -> None:
        self.plain = plain
        self.https = https

    async def send(self, method: str, url: str, rendered: bytes, body: bytes, headers: dict[str, str]) -> int:
        """Status code of the answer. Raises HttpClientError or httpx.HTTPError on failure,
        trio.TooSlowError after :data:`TIMEOUT`, ValueError for a URL no client can use."""
        t = target(url)
        if t is None:
            response = await self.https.request(method, url, content=body or None, headers=headers)
            return response.status_code
        with trio.fail_after(TIMEOUT):
            return (await self.plain.request(method, t, rendered, body)).status
