"""The dispatcher: claims queued messages from the database and hands them to channels.

Two loops under one nursery. The *claim loop* asks the channels how much they can take, claims
that many due messages by lease (``FOR UPDATE SKIP LOCKED``, so several gateway processes share
one queue), chooses a channel for each and submits them. The *event loop* takes what the
channels report — parts submitted, submit failures, delivery reports, MOs, link changes — and
writes them to the store in batches; a message's routing (``queued`` on its channel) is
stored with the first part the channel reports, or its failure, in the same statement, so
routing costs no write of its own. A delivery report that arrives before its
submit is stored (another node's link, or a fast operator) is held in a bounded grace buffer
and retried, never dropped.

During quiet hours (``dispatcher.quiet_hours``) marketing messages are not claimed: they
wait in the queue, transactional ones go. The channel is chosen by the routing table
(:mod:`gateway.router.routing`: ordered rules, fallbacks, a default route), among channels
that are up and have room; a message no channel can take now goes back to the queue for a
second, not failed, until one can or its validity runs out. A retry after a transient
failure prefers another channel than the one that failed it. Per-recipient limits
(``[limits]``, :mod:`gateway.router.recipients`) are counted in the database in one
transaction per claimed batch, so they hold across nodes; a message over them waits
in the queue until its window allows. Every wait on a limit is published as a
:class:`~gateway.events.LimitEvent`.

The routing table lives in the database (``routing_table``): ``[[routes]]`` seeds it at start
unless it was changed through ``PUT /v1/admin/routes``; each node reloads it when its version
changes (checked every ``ROUTES_POLL`` seconds, at once on the node that took the change).
"""

from __future__ import annotations

import logging
import os
import socket
import time
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
from .config import DispatcherConfig, LimitsConfig
from .events import EventBus, LimitEvent, LinkEvent, MoEvent
from .events import now as events_now
from .errors import GatewayError, StoreError
from .metrics import Metrics
from .router import QuietHours, RecipientLimit, RouteRule, RouteTable
from .router.routing import decode_rules, encode_rules
from .store import Store
from .text import mask_msisdn

log = logging.getLogger(__name__)

EVENT_BUFFER = 10_000
"""Channel events waiting to be written; a full buffer makes channels wait (backpressure)."""
EVENT_BATCH = 1_000
"""Events written in one transaction at most."""
EVENT_LINGER = 0.005
"""Seconds the event loop waits for more events to fill a batch (one sleep a batch: the
events that arrive meanwhile wait in the buffer and are taken at once)."""
MO_BUFFER = 10_000
"""MOs routed to the MO event loop and not yet stored (backpressure as above)."""
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
UNROUTABLE_DELAY = 1.0
"""Seconds a message no channel can take now waits before it is claimed again."""
ROUTES_POLL = 2.0
"""Seconds between checks for a routing table changed by another node."""
QUIET_EVENT_EVERY = 60.0
"""Seconds between ``quiet_hours`` limit events while quiet hours last."""
PRUNE_EVERY = 600.0
"""Seconds between deletions of recipient sends older than the longest window."""


Screen = Callable[[list[OutboundMessage]], Awaitable[dict[int, str]]]
"""Checks claimed messages before routing; returns the refused ones' ids with a reason code
(e.g. ``unsubscribed``, ``blocklisted``); those end ``rejected`` with that error code."""


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Dispatcher:
    def __init__(self, store: Store, channels: Sequence[Channel], config: DispatcherConfig,
                 metrics: Metrics, *, bus: EventBus | None = None, screen: Screen | None = None,
                 limits: LimitsConfig | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._wall_clock = wall_clock  # Unix seconds: what quiet hours are read against
        self._bus = bus or EventBus()
        self._screen = screen
        self.channels = list(channels)
        self._config = config
        self._metrics = metrics
        self.node = config.node_id or default_node_id()
        self._wake = trio.Event()
        self._grace: dict[tuple[str, str], tuple[DeliveryReport, float]] = {}
        self._routed: dict[int, float] = {}
        """Messages handed to a channel whose routing (``queued``) is not stored yet: it is,
        with the first part the channel reports (or its failure). By id, with the time."""
        self._retry_backoff = RETRY_BACKOFF
        self._quiet = QuietHours.parse(config.quiet_hours, config.timezone)
        self.mo_listeners: list[trio.MemorySendChannel[tuple[int, MoReceived]]] = []
        limits = limits or LimitsConfig()
        self._recipients = RecipientLimit(per_hour=limits.recipient_per_hour, per_day=limits.recipient_per_day)
        self._recipients_exempt = {"transactional"} if limits.recipient_exempt_transactional else set()
        self.routes = RouteTable.compile([], self.channel_operators())
        """The routing table in force (the default route until :meth:`load_routes`)."""
        self._quiet_was = False
        self._quiet_next_event = 0.0
        self._saturated: set[str] = set()
        self._message_counters: dict[tuple[str, str], object] = {}

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
            mt_send, mt_receive = trio.open_memory_channel[ChannelEvent](EVENT_BUFFER)
            mo_send, mo_receive = trio.open_memory_channel[ChannelEvent](MO_BUFFER)
            nursery.start_soon(self._route_events, receive, mt_send, mo_send)
            nursery.start_soon(self._event_loop, mt_receive)
            nursery.start_soon(self._event_loop, mo_receive)
            nursery.start_soon(self._claim_loop)
            nursery.start_soon(self._grace_loop)
            nursery.start_soon(self._expiry_loop)
            nursery.start_soon(self._routes_loop)
            task_status.started()

    # -- claiming -------------------------------------------------------------------------------

    def channel_operators(self) -> dict[str, frozenset[str]]:
        """Each channel's name and the operators it serves, in the dispatcher's order."""
        return {c.name: frozenset(c.operators) for c in self.channels}

    def compile_routes(self, rules: Sequence[RouteRule], accounts: dict[str, int], *, version: int = 0,
                       strict: bool = True) -> RouteTable:
        """``rules`` checked against this node's channels and ``accounts``; raises
        :class:`~gateway.router.RoutingError` naming the bad key (when ``strict``)."""
        return RouteTable.compile(rules, self.channel_operators(), accounts=accounts, version=version,
                                  strict=strict)

    async def load_routes(self, seed: Sequence[RouteRule] | None = None) -> RouteTable:
        """Seed the shared table with the configuration's rules (unless changed through the
        API: that one wins), then use what the database holds. Configuration rules naming a
        channel or account this node lacks are a :class:`~gateway.errors.ConfigError`."""
        accounts = await self._store.account_ids()
        if seed is not None:
            self.compile_routes(seed, accounts)  # the configuration's own mistakes fail the start
            rules_json, version, source = await self._store.seed_routing_table(encode_rules(seed))
        else:
            stored = await self._store.routing_table()
            if stored is None:
                return self.routes
            rules_json, version, source = stored
        rules = decode_rules(rules_json)
        # A table written through another node's admin API may name that node's channels:
        # here they are never available (the configuration's own rules were checked above).
        missing = sorted({c for r in rules for c in r.channels} - set(self.channel_operators()))
        if missing:
            log.warning("routing table names channels this node lacks channels=%s version=%d",
                        ",".join(missing), version)
        self.use_routes(self.compile_routes(rules, accounts, version=version, strict=False))
        log.info("routing table loaded version=%d source=%s rules=%d", version, source, len(rules))
        return self.routes

    def use_routes(self, table: RouteTable) -> None:
        """Route with ``table`` from the next claim on."""
        self.routes = table
        self._metrics.routing_version.set(table.version)

    def _note_saturation(self, room: dict[str, int]) -> None:
        """A channel that is up but full: messages for it wait (a ``channel`` limit event when
        it fills up; the per-batch counts come from :meth:`_dispatch`)."""
        full = {name for name, r in room.items() if r <= 0}
        for name in full - self._saturated:
            log.debug("channel saturated channel=%s", name)
            self._bus.publish(LimitEvent(scope="channel", name=name, count=0, at=events_now()))
        self._saturated = full

    def _quiet_check(self) -> bool:
        """Whether quiet hours hold marketing now; a ``quiet_hours`` limit event when they
        begin and every ``QUIET_EVENT_EVERY`` seconds while they last."""
        now = datetime.fromtimestamp(self._wall_clock(), timezone.utc)
        quiet = self._quiet.active(now)
        if quiet and (not self._quiet_was or trio.current_time() >= self._quiet_next_event):
            wait = self._quiet.remaining(now)
            if not self._quiet_was:
                log.info("quiet hours began; marketing waits wait_s=%.0f", wait)
            self._bus.publish(LimitEvent(scope="quiet_hours", name="marketing", wait_s=wait, count=0,
                                         at=events_now()))
            self._quiet_next_event = trio.current_time() + QUIET_EVENT_EVERY
        self._quiet_was = quiet
        return quiet

    async def _claim_loop(self) -> None:
        while True:
            room = {c.name: c.capacity() for c in self.channels if c.up}
            self._note_saturation(room)
            total = sum(room.values())
            claimed: list[OutboundMessage] = []
            if total > 0:
                marketing = not self._quiet_check()
                try:
                    claimed = await self._store.claim_routable(self.node, min(total, self._config.batch_size),
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

    async def _dispatch(self, claimed_with_last: list[tuple[OutboundMessage, str | None]],
                        room: dict[str, int]) -> None:
        last_channel = {m.id: last for m, last in claimed_with_last}
        claimed = [m for m, _ in claimed_with_last]
        if self._screen is not None:
            refused = await self._screen(claimed)
            if refused:
                # Compliance (unsubscribed, blocklisted, ...): the message ends ``rejected``.
                await self._store.set_status([(mid, Status.REJECTED, None, code, f"rejected: {code}")
                                              for mid, code in refused.items()])
                self._message_counter("rejected", "").inc(len(refused))
                claimed = [m for m in claimed if m.id not in refused]
        now = datetime.now(timezone.utc)
        expired = [m for m in claimed if m.expires_at <= now]
        plan: list[tuple[OutboundMessage, Channel]] = []
        unroutable: list[int] = []
        saturated: dict[str, int] = {}
        by_name = {c.name: c for c in self.channels}
        table = self.routes
        for m in claimed:
            if m.expires_at <= now:
                continue
            name = table.choose(m, room, avoid=last_channel.get(m.id))
            if name is None:
                unroutable.append(m.id)
                for candidate in table.candidates(m):
                    channel = by_name.get(candidate)
                    if channel is not None and channel.up and room.get(candidate, 0) <= 0:
                        saturated[candidate] = saturated.get(candidate, 0) + 1
                continue
            room[name] -= 1
            plan.append((m, by_name[name]))
        # The routing itself (``queued`` on the channel) is recorded with the first part the
        # channel submits (Store.record_submitted): one statement fewer per batch.
        rows = [(m.id, Status.EXPIRED, None, None, "validity ran out before submission") for m in expired]
        limited = []
        if self._recipients.enabled:
            limited = [(m.id, m.dest) for m, _ in plan if m.msg_class not in self._recipients_exempt]
        try:
            # Unroutable now (no channel up with room for it): back to the queue, not failed.
            _, held = await self._store.commit_routing(
                rows, unroutable=unroutable, unroutable_delay=UNROUTABLE_DELAY, recipients=limited,
                decide=self._decide_recipients)
        except StoreError as exc:
            log.warning("dispatch bookkeeping failed; leases will expire and the messages be reclaimed: %s", exc)
            return
        if expired:
            self._message_counter("expired", "").inc(len(expired))
        self._report_waits(saturated, {m.dest: held[m.id] for m, _ in plan if m.id in held},
                           sum(1 for m, _ in plan if m.id in held))
        go = [(m, channel) for m, channel in plan if m.id not in held]  # (held: waiting on a limit)
        self._count_messages("queued", [channel.name for _, channel in go])
        now_t = trio.current_time()
        for m, channel in go:
            self._routed[m.id] = now_t
            try:
                await channel.submit(m)
            except GatewayError as exc:  # a message the channel cannot carry fails alone
                log.warning("submit refused channel=%s message_id=%d error=%s", channel.name, m.id, exc)
                await self._record_failures([SubmitFailed(channel=channel.name, message_id=m.id, transient=False,
                                                          reason=f"the channel cannot send it: {exc}")])

    def _decide_recipients(self, candidates: Sequence[tuple[int, str]], history: dict[str, list[float]],
                           now: float) -> tuple[list[int], dict[int, float]]:
        admission = self._recipients.admit(candidates, history, now)
        return admission.allowed, admission.waits

    def _report_waits(self, saturated: dict[str, int], held_dests: dict[str, float], held: int) -> None:
        at = events_now()
        for name, count in saturated.items():
            self._metrics.limit_waits.labels("channel").inc(count)
            self._bus.publish(LimitEvent(scope="channel", name=name, wait_s=UNROUTABLE_DELAY, count=count, at=at))
        if held:
            self._metrics.limit_waits.labels("recipient").inc(held)
            for dest, wait in held_dests.items():
                log.debug("recipient limit reached to=%s wait_s=%.0f", mask_msisdn(dest), wait)
                self._bus.publish(LimitEvent(scope="recipient", name=mask_msisdn(dest), wait_s=wait, at=at))

    # -- events ---------------------------------------------------------------------------------

    def _message_counter(self, status: str, channel: str):
        """``smsgw_messages_total{status, channel}``'s child, looked up once."""
        counter = self._message_counters.get((status, channel))
        if counter is None:
            counter = self._message_counters[(status, channel)] = self._metrics.messages.labels(status, channel)
        return counter

    def _count_messages(self, status: str, channels: Sequence[str]) -> None:
        """Count one message of ``status`` per entry of ``channels`` (one increment a channel)."""
        if not channels:
            return
        if len(set(channels)) == 1:
            self._message_counter(status, channels[0]).inc(len(channels))
            return
        tally: dict[str, int] = {}
        for name in channels:
            tally[name] = tally.get(name, 0) + 1
        for name, n in tally.items():
            self._message_counter(status, name).inc(n)

    @staticmethod
    def _take_ready(receive: trio.MemoryReceiveChannel[ChannelEvent], batch: list[ChannelEvent]) -> None:
        """Move the events already buffered into ``batch`` (up to ``EVENT_BATCH``), without waiting."""
        while len(batch) < EVENT_BATCH:
            try:
                batch.append(receive.receive_nowait())
            except trio.WouldBlock:
                return
    async def _route_events(self, receive: trio.MemoryReceiveChannel[ChannelEvent],
                            mt: trio.MemorySendChannel[ChannelEvent],
                            mo: trio.MemorySendChannel[ChannelEvent]) -> None:
        """Channel events to two event loops: MOs to one, the rest (submitted parts, reports,
        link states) to the other, so that storing an MO never waits behind the MT bookkeeping
        and the consumer's reply starts sooner. A full loop makes the channels wait, as before."""
        async with receive, mt, mo:
            batch: list[ChannelEvent] = []
            while True:
                # One scheduler pass for what is buffered, not one per event.
                try:
                    batch.append(await receive.receive())
                except trio.EndOfChannel:
                    return
                self._take_ready(receive, batch)
                for event in batch:
                    out = mo if isinstance(event, MoReceived) else mt
                    try:  # no scheduler round trip while the loop's buffer has room
                        out.send_nowait(event)
                    except trio.WouldBlock:
                        await out.send(event)
                batch.clear()

    async def _event_loop(self, receive: trio.MemoryReceiveChannel[ChannelEvent]) -> None:
        async with receive:
            while True:
                batch = [await receive.receive()]
                self._take_ready(receive, batch)
                if len(batch) < EVENT_BATCH:
                    # Linger once for the batch, not once per event: what arrives meanwhile
                    # waits in the buffer (channels block only when it is full).
                    await trio.sleep(EVENT_LINGER)
                    self._take_ready(receive, batch)
                while True:
                    try:
                        await self._apply(batch)
                        break
                    except StoreError as exc:
                        # Nothing the channels told us may be lost: keep the batch and retry.
                        log.warning("recording channel events failed, retrying events=%d error=%s", len(batch), exc)
                        await trio.sleep(STORE_RETRY)

    async def _apply(self, batch: list[ChannelEvent]) -> None:
        submitted: list[tuple[str, int, int, str, int]] = []
        failures: list[SubmitFailed] = []
        reports: list[DeliveryReport] = []
        mos: list[MoReceived] = []
        for e in batch:  # one pass, the most frequent kinds first
            if isinstance(e, Submitted):
                submitted.append((e.channel, e.message_id, e.part, e.ref, e.total))
            elif isinstance(e, DeliveryReport):
                reports.append(e)
            elif isinstance(e, SubmitFailed):
                failures.append(e)
            elif isinstance(e, MoReceived):
                mos.append(e)
            elif isinstance(e, LinkState):
                self._bus.publish(LinkEvent(channel=e.channel, up=e.up, detail=e.detail, at=events_now()))
                self._metrics.channel_up.labels(e.channel).set(1 if e.up else 0)
                log.info("channel %s channel=%s detail=%s", "up" if e.up else "down", e.channel, e.detail)
        if submitted:
            routed = {item[1] for item in submitted if item[1] in self._routed}
            done = await self._store.record_submitted(submitted, routed=routed)
            for message_id in routed:
                self._routed.pop(message_id, None)
            channel_of = {item[1]: item[0] for item in submitted}
            self._count_messages("submitted", [channel_of[message_id] for message_id in done])
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
        routed = [e for e in failures if e.message_id in self._routed]
        if routed:  # the routing first, as the history has had it
            await self._store.set_status([(e.message_id, Status.QUEUED, e.channel, None, f"channel={e.channel}")
                                          for e in routed])
            for e in routed:
                self._routed.pop(e.message_id, None)
        permanent = [(e.message_id, Status.FAILED, e.channel, e.error_code or None, e.reason)
                     for e in failures if not e.transient]
        transient = [e for e in failures if e.transient]
        if permanent:
            await self._store.set_status(permanent)
            for e in failures:
                if not e.transient:
                    self._metrics.messages.labels("failed", e.channel).inc()
        if transient:
            # Back to the queue with a history row, due after the backoff; the failing channel
            # is remembered so that the next attempt prefers another one when the route allows.
            moved = await self._store.retry_later(
                [(e.message_id, e.channel, e.error_code or None, e.reason) for e in transient], self._retry_backoff)
            for e in transient:
                if e.message_id in moved:
                    self._metrics.retries.labels(e.channel).inc()
            self.wake()

    async def _record_reports(self, reports: list[DeliveryReport]) -> None:
        outcomes = await self._store.record_reports(
            [(r.channel, r.ref, str(r.status), r.error_code) for r in reports])
        now = trio.current_time()
        counted: dict[tuple[str, str], int] = {}
        grace = self._grace
        for report, outcome in zip(reports, outcomes):
            key = (report.channel, report.ref)
            if outcome.matched:
                if grace:
                    grace.pop(key, None)
                if outcome.status is not None:
                    label = (outcome.status, report.channel)
                    counted[label] = counted.get(label, 0) + 1
                continue
            first_seen = self._grace.get(key, (report, now))[1]
            if len(self._grace) >= GRACE_MAX and key not in self._grace:
                oldest = min(self._grace, key=lambda k: self._grace[k][1])
                self._give_up(self._grace.pop(oldest)[0])
            self._grace[key] = (report, first_seen)
        for (status, channel), n in counted.items():
            self._message_counter(status, channel).inc(n)

    def _give_up(self, report: DeliveryReport) -> None:
        self._metrics.reports_unmatched.labels(report.channel).inc()
        log.warning("delivery report matched no message channel=%s ref=%s status=%s",
                    report.channel, report.ref, report.status)

    async def _grace_loop(self) -> None:
        while True:
            await trio.sleep(GRACE_RETRY)
            if self._routed:  # a channel that never reported: the lease lets another claim it
                cutoff = trio.current_time() - 2 * self._config.lease
                for message_id in [i for i, t in self._routed.items() if t < cutoff]:
                    del self._routed[message_id]
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
        next_prune = trio.current_time()
        while True:
            await trio.sleep(EXPIRY_SWEEP)
            try:
                if (n := await self._store.expire_overdue()) > 0:
                    self._metrics.messages.labels("expired", "").inc(n)
                if self._recipients.enabled and trio.current_time() >= next_prune:
                    await self._store.prune_recipient_sends()
                    next_prune = trio.current_time() + PRUNE_EVERY
            except StoreError as exc:
                log.warning("expiring overdue messages failed: %s", exc)

    async def _routes_loop(self) -> None:
        """Pick up a routing table changed through another node's admin API."""
        while True:
            await trio.sleep(ROUTES_POLL)
            try:
                if await self._store.routing_version() != self.routes.version:
                    await self.load_routes()
            except StoreError as exc:
                log.warning("checking the routing table failed: %s", exc)
            except GatewayError as exc:  # a stored table this node cannot read: keep the one in force
                log.error("stored routing table unusable; keeping version=%d: %s", self.routes.version, exc)

    def statistics(self) -> dict[str, int]:
        return {"held_reports": len(self._grace), "channels_up": sum(1 for c in self.channels if c.up)}

