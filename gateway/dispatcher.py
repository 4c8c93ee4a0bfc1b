"""The dispatcher: claims queued messages from the database and hands them to channels.

Two loops under one nursery. The *claim loop* asks the channels how much they can take, claims
that many due messages by lease (``FOR UPDATE SKIP LOCKED``, so several gateway processes share
one queue), marks them ``queued`` on the channel chosen, and submits them. The *event loop*
takes what the channels report — parts submitted, submit failures, delivery reports, MOs, link
changes — and writes them to the store in batches. A delivery report that arrives before its
submit is stored (another node's link, or a fast operator) is held in a bounded grace buffer
and retried, never dropped.

During quiet hours (``dispatcher.quiet_hours``) marketing messages are not claimed: they
wait in the queue, transactional ones go. Channel choice here is the simple rule of the first release: among channels that are up and
serve the destination's operator, the one with the most room. Ordered routing rules, rate
limits and retries across channels live in ``gateway/router/``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone

import trio

from .channel import (
    Channel,
    ChannelEvent,
    DeliveryReport,
    LinkState,
    MoReceived,
    OutboundMessage,
    Status,
    Submitted,
    SubmitFailed,
)
from .config import DispatcherConfig
from .events import EventBus, LinkEvent, MoEvent
from .events import now as events_now
from .errors import StoreError
from .metrics import Metrics
from .router import QuietHours
from .store import Store

log = logging.getLogger(__name__)

EVENT_BUFFER = 10_000
"""Channel events waiting to be written; a full buffer makes channels wait (backpressure)."""
EVENT_BATCH = 1_000
"""Events written in one transaction at most."""
EVENT_LINGER = 0.005
"""Seconds the event loop waits for more events to fill a batch."""
GRACE_PERIOD = 120.0
"""Seconds an unmatched delivery report is retried before it is logged as unmatched."""
GRACE_MAX = 100_000
"""Unmatched reports held at most; beyond it the oldest is given up (and counted)."""
GRACE_RETRY = 1.0
RETRY_BACKOFF = (1.0, 5.0, 15.0, 60.0, 300.0)
"""Delay before a transient failure is tried again, by attempt."""
STORE_RETRY = 1.0
EXPIRY_SWEEP = 5.0
"""Seconds between sweeps that end overdue messages ``expired``."""


Screen = Callable[[list[OutboundMessage]], Awaitable[dict[int, str]]]
"""Checks claimed messages before routing; returns the refused ones' ids with a reason code
(e.g. ``unsubscribed``, ``blocklisted``); those end ``rejected`` with that error code."""


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Dispatcher:
    def __init__(self, store: Store, channels: Sequence[Channel], config: DispatcherConfig,
                 metrics: Metrics, *, bus: EventBus | None = None, screen: Screen | None = None) -> None:
        self._store = store
        self._bus = bus or EventBus()
        self._screen = screen
        self.channels = list(channels)
        self._config = config
        self._metrics = metrics
        self.node = config.node_id or default_node_id()
        self._wake = trio.Event()
        self._grace: dict[tuple[str, str], tuple[DeliveryReport, float]] = {}
        self._retry_backoff = RETRY_BACKOFF
        self._quiet = QuietHours.parse(config.quiet_hours, config.timezone)
        self.mo_listeners: list[trio.MemorySendChannel[tuple[int, MoReceived]]] = []

    def wake(self) -> None:
        """New work was queued: claim now rather than at the next poll."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[ChannelEvent](EVENT_BUFFER)
        # The dispatcher keeps ``send`` open for its lifetime: channels may come and go.
        self._events = send
        async with trio.open_nursery() as nursery:
            for channel in self.channels:
                await nursery.start(channel.run, send.clone())
            nursery.start_soon(self._event_loop, receive)
            nursery.start_soon(self._claim_loop)
            nursery.start_soon(self._grace_loop)
            nursery.start_soon(self._expiry_loop)
            task_status.started()

    # -- claiming -------------------------------------------------------------------------------

    def _pick(self, message: OutboundMessage, room: dict[str, int]) -> Channel | None:
        best, best_room = None, 0
        for channel in self.channels:
            r = room.get(channel.name, 0)
            if r > best_room and message.operator in channel.operators:
                best, best_room = channel, r
        return best

    async def _claim_loop(self) -> None:
        while True:
            room = {c.name: c.capacity() for c in self.channels if c.up}
            total = sum(room.values())
            claimed: list[OutboundMessage] = []
            if total > 0:
                marketing = not self._quiet.active(datetime.now(timezone.utc))
                try:
                    claimed = await self._store.claim(self.node, min(total, self._config.batch_size),
                                                      self._config.lease, marketing=marketing)
                except StoreError as exc:
                    log.warning("claim failed node=%s error=%s", self.node, exc)
                    await trio.sleep(STORE_RETRY)
                    continue
            if claimed:
                await self._dispatch(claimed, room)
            if not claimed or len(claimed) < min(total, self._config.batch_size):
                with trio.move_on_after(self._config.idle_poll):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _dispatch(self, claimed: list[OutboundMessage], room: dict[str, int]) -> None:
        if self._screen is not None:
            refused = await self._screen(claimed)
            if refused:
                # Compliance (unsubscribed, blocklisted, ...): the message ends ``rejected``.
                await self._store.set_status([(mid, Status.REJECTED, None, code, f"rejected: {code}")
                                              for mid, code in refused.items()])
                for _ in refused:
                    self._metrics.messages.labels("rejected", "").inc()
                claimed = [m for m in claimed if m.id not in refused]
        now = datetime.now(timezone.utc)
        expired = [m for m in claimed if m.expires_at <= now]
        plan: list[tuple[OutboundMessage, Channel]] = []
        unroutable: list[int] = []
        for m in claimed:
            if m.expires_at <= now:
                continue
            channel = self._pick(m, room)
            if channel is None:
                unroutable.append(m.id)
                continue
            room[channel.name] -= 1
            plan.append((m, channel))
        rows = [(m.id, Status.EXPIRED, None, None, "validity ran out before submission") for m in expired]
        rows += [(m.id, Status.QUEUED, c.name, None, f"channel={c.name}") for m, c in plan]
        try:
            moved = await self._store.set_status(rows)
            # Unroutable now (no channel up for the operator): back to the queue, not failed.
            await self._store.release(unroutable, delay=1.0)
        except StoreError as exc:
            log.warning("dispatch bookkeeping failed; leases will expire and the messages be reclaimed: %s", exc)
            return
        for m in expired:
            self._metrics.messages.labels("expired", "").inc()
        for m, channel in plan:
            if m.id not in moved:  # final already (e.g. expired by another node)
                continue
            self._metrics.messages.labels("queued", channel.name).inc()
            await channel.submit(m)

    # -- events ---------------------------------------------------------------------------------

    async def _event_loop(self, receive: trio.MemoryReceiveChannel[ChannelEvent]) -> None:
        async with receive:
            while True:
                batch = [await receive.receive()]
                with trio.move_on_after(EVENT_LINGER):
                    while len(batch) < EVENT_BATCH:
                        batch.append(await receive.receive())
                while True:
                    try:
                        await self._apply(batch)
                        break
                    except StoreError as exc:
                        # Nothing the channels told us may be lost: keep the batch and retry.
                        log.warning("recording channel events failed, retrying events=%d error=%s", len(batch), exc)
                        await trio.sleep(STORE_RETRY)

    async def _apply(self, batch: list[ChannelEvent]) -> None:
        submitted = [(e.channel, e.message_id, e.part, e.ref) for e in batch if isinstance(e, Submitted)]
        failures = [e for e in batch if isinstance(e, SubmitFailed)]
        reports = [e for e in batch if isinstance(e, DeliveryReport)]
        mos = [e for e in batch if isinstance(e, MoReceived)]
        for e in batch:
            if isinstance(e, LinkState):
                self._bus.publish(LinkEvent(channel=e.channel, up=e.up, detail=e.detail, at=events_now()))
                self._metrics.channel_up.labels(e.channel).set(1 if e.up else 0)
                log.info("channel %s channel=%s detail=%s", "up" if e.up else "down", e.channel, e.detail)
        if submitted:
            done = await self._store.record_submitted(submitted)
            channel_of = {message_id: channel for channel, message_id, _, _ in submitted}
            for message_id in done:
                self._metrics.messages.labels("submitted", channel_of[message_id]).inc()
        if failures:
            await self._record_failures(failures)
        if reports:
            await self._record_reports(reports)
        if mos:
            ids = await self._store.record_mo(
                [(e.channel, e.sender, e.service_number, e.text, e.received_at) for e in mos])
            for mo_id, e in zip(ids, mos):
                self._metrics.mo_received.labels(e.channel).inc()
                self._bus.publish(MoEvent(id=mo_id, channel=e.channel, sender=e.sender,
                                          service_number=e.service_number, text=e.text, at=events_now()))
                for listener in self.mo_listeners:
                    await listener.send((mo_id, e))

    async def _record_failures(self, failures: list[SubmitFailed]) -> None:
        permanent = [(e.message_id, Status.FAILED, e.channel, e.error_code or None, e.reason)
                     for e in failures if not e.transient]
        transient = [e for e in failures if e.transient]
        if permanent:
            await self._store.set_status(permanent)
            for e in failures:
                if not e.transient:
                    self._metrics.messages.labels("failed", e.channel).inc()
        if transient:
            # Back to the queue with a history row; the next claim may pick another channel.
            await self._store.set_status([(e.message_id, Status.QUEUED, e.channel, e.error_code or None,
                                           f"retry: {e.reason}") for e in transient])
            await self._store.release([e.message_id for e in transient], backoff=self._retry_backoff)
            self.wake()

    async def _record_reports(self, reports: list[DeliveryReport]) -> None:
        outcomes = await self._store.record_reports(
            [(r.channel, r.ref, str(r.status), r.error_code) for r in reports])
        now = trio.current_time()
        for report, outcome in zip(reports, outcomes):
            key = (report.channel, report.ref)
            if outcome.matched:
                self._grace.pop(key, None)
                if outcome.status is not None:
                    self._metrics.messages.labels(outcome.status, report.channel).inc()
                continue
            first_seen = self._grace.get(key, (report, now))[1]
            if len(self._grace) >= GRACE_MAX and key not in self._grace:
                oldest = min(self._grace, key=lambda k: self._grace[k][1])
                self._give_up(self._grace.pop(oldest)[0])
            self._grace[key] = (report, first_seen)

    def _give_up(self, report: DeliveryReport) -> None:
        self._metrics.reports_unmatched.labels(report.channel).inc()
        log.warning("delivery report matched no message channel=%s ref=%s status=%s",
                    report.channel, report.ref, report.status)

    async def _grace_loop(self) -> None:
        while True:
            await trio.sleep(GRACE_RETRY)
            if not self._grace:
                continue
            now = trio.current_time()
            for key, (report, first_seen) in list(self._grace.items()):
                if now - first_seen > GRACE_PERIOD:
                    del self._grace[key]
                    self._give_up(report)
            pending = [r for r, _ in self._grace.values()]
            if pending:
                try:
                    await self._record_reports(pending)
                except StoreError as exc:
                    log.warning("retrying held delivery reports failed: %s", exc)

    async def _expiry_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_SWEEP)
            try:
                while (n := await self._store.expire_overdue()) > 0:
                    self._metrics.messages.labels("expired", "").inc(n)
            except StoreError as exc:
                log.warning("expiring overdue messages failed: %s", exc)

    def statistics(self) -> dict[str, int]:
        return {"held_reports": len(self._grace), "channels_up": sum(1 for c in self.channels if c.up)}

