"""MO dispatch: every stored inbound message answered once, even across crashes.

Issue 5, "MO dispatch". The dispatcher stores each MO (``inbound_messages``) and notifies
:attr:`MoDispatcher.listener`; the notification only wakes the service, which works from the
table: it claims undispatched rows by lease (``FOR UPDATE SKIP LOCKED``), decides what each
means (:mod:`gateway.router.mo_dispatch`), acts, and marks the row dispatched. An MO stored
just before a crash is claimed after the restart (or by another node once the lease runs
out); a dispatch done twice sends nothing twice, because every reply carries the
``client_ref`` ``mo-<mo_id>-<n>`` (the n-th reply to that MO) and the intake is idempotent by
``client_ref``, and MO callbacks are queued in the same transaction that marks the MO done.

Order per MO: the merchant by service number; ``TD``/``T``/``退订`` unsubscribes and confirms;
else each command handler in turn; else the subscribed apps' MO callbacks; else a help reply.
MOs of one sender are dispatched in order; different senders' concurrently.

A claim is worked as a batch, for throughput: its merchants in one query, the handlers'
look-ups prepared for the whole claim (an optional ``prepare(commands)``), and every MO of it
marked dispatched, with its callbacks, in one statement (:meth:`Store.finish_mos`). An MO
whose handler or database work fails is deferred alone (``RETRY_DELAY``); the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import msgspec
import trio

from .compliance import MerchantDirectory
from .errors import GatewayError, StoreError
from .events import EventBus, MoEvent
from .events import now as events_now
from .intake import Intake
from .metrics import Metrics
from .router.commands import CommandHandler, InboundCommand, parse_command
from .router.compliance import MARKETING, with_signature
from .router.mo_dispatch import (
    FirstStep,
    Outcome,
    command_label,
    default_help,
    first_step,
    matching_subscriptions,
    reply_ref,
    sender_extension,
    unsubscribe_confirmation,
)
from .store import AcceptRequest, InboundMo, Merchant, MoFinish, MoSubscription, NewMessage, Store
from .text import TextError, InvalidNumber, mask_msisdn, national_or_raw, normalize_msisdn, operator_of, plan

log = logging.getLogger(__name__)

NOTIFY_BUFFER = 1024
"""MO notifications waiting to be read; each only wakes the claim loop."""
CLAIM_BATCH = 100
"""MOs claimed at a time (and marked dispatched in one statement)."""
LEASE = 30.0
"""Seconds a claimed MO is reserved; a node that dies holding it loses it after this (a node
that stops cleanly gives its claims back at once)."""
RELEASE_TIMEOUT = 5.0
"""Seconds a stopping service may spend giving back the MOs it holds."""
POLL = 2.0
"""Seconds between claims when no notification comes (MOs stored by other nodes, leases run out)."""
CONCURRENCY = 100
"""Senders whose MOs are dispatched at once: a whole claim, so that its replies share the
intake's group commits. Database connections are bounded by the pool, not by this."""
MAX_ATTEMPTS = 5
"""Claims of an MO whose command handler raises before it is answered without the handler."""
RETRY_DELAY = 5.0
"""Seconds before an MO whose dispatch hit a database error or a failing handler is tried again."""
STORE_RETRY = 1.0
MAX_COMMAND = 64
"""Characters of the first word kept in ``inbound_messages.command``."""
REPLY_PRIORITY = 2
"""Replies overtake bulk traffic: the consumer is waiting."""
REPLY_VALIDITY_S = 86_400
REPLY_TIMEOUT = 10.0


class ReplyOutbox:
    """The :class:`~gateway.router.commands.Outbox` handed to command handlers for one MO.

    Every send without a ``client_ref`` gets ``mo-<mo_id>-<n>`` (n counting this MO's sends
    from 1), so a dispatch repeated after a crash sends the same replies once; a handler that
    passes its own ``client_ref`` must derive it from ``mo_id`` likewise. Replies come from the
    merchant's service number (the link's number plus the merchant's extension); marketing
    texts get the merchant's signature as at the API.
    """

    def __init__(self, intake: Intake, directory: MerchantDirectory, *, mo_id: int, sender: str,
                 max_parts: int = 10) -> None:
        self._intake = intake
        self._directory = directory
        self._mo_id = mo_id
        self._sender = sender
        self._max_parts = max_parts
        self.sent = 0

    async def send(self, *, account_id: int, to: str, text: str, msg_class: str = "transactional",
                   priority: int = REPLY_PRIORITY, client_ref: str | None = None) -> list[int]:
        """Raises :class:`~gateway.text.InvalidNumber`, :class:`~gateway.text.EmptyText` or
        :class:`~gateway.text.TooLong` for what the API would refuse."""
        self.sent += 1
        ref = client_ref if client_ref is not None else reply_ref(self._mo_id, self.sent)
        if msg_class == MARKETING:
            text = with_signature(text, await self._directory.signature_for(account_id), msg_class)
        dest = normalize_msisdn(to)
        segments = plan(text, max_parts=self._max_parts)
        request = AcceptRequest(
            account_id=account_id, client_ref=ref, priority=priority, msg_class=msg_class,
            validity_s=REPLY_VALIDITY_S, sender=self._sender,
            messages=(NewMessage(dest=dest, operator=str(operator_of(dest).value), body=text,
                                 encoding=segments.encoding, parts=len(segments.parts)),))
        result = await self._intake.accept(request, timeout=REPLY_TIMEOUT)
        return [m.id for m in result.messages]


class _HandlerFailed(GatewayError):
    pass


class _Decided(msgspec.Struct, frozen=True, kw_only=True):
    """One MO decided and answered, waiting to be marked dispatched with its batch."""

    mo: InboundMo
    merchant: Merchant | None
    phone: str
    keyword: str
    outcome: Outcome
    callbacks: list[MoSubscription]


class MoDispatcher:
    """Dispatches stored MOs; see the module docstring.

    ``handlers`` are asked in order (crm_lite is one, given at assembly). A handler must be
    idempotent per ``mo_id``: after a crash an MO may be dispatched again, and the handler
    asked again; its replies through the given outbox are deduplicated by ``client_ref``.
    ``base_numbers`` are the links' service numbers, to reply from the merchant's own number.
    ``on_callbacks`` is called when MO callbacks were queued (to wake the webhook sender).
    """

    def __init__(self, store: Store, intake: Intake, metrics: Metrics, directory: MerchantDirectory, *,
                 bus: EventBus | None = None, handlers: Sequence[CommandHandler] = (),
                 base_numbers: Sequence[str] = (), node: str = "", lease: float = LEASE, poll: float = POLL,
                 max_parts: int = 10, on_callbacks: Callable[[], None] | None = None) -> None:
        self._store = store
        self._intake = intake
        self._metrics = metrics
        self._directory = directory
        self._bus = bus
        self._handlers = tuple(handlers)
        self._base_numbers = tuple(base_numbers)
        self._node = node or "mo"
        self._lease = lease
        self._poll = poll
        self._max_parts = max_parts
        self._on_callbacks = on_callbacks
        self._wake = trio.Event()
        self.listener, self._notifications = trio.open_memory_channel[object](NOTIFY_BUFFER)
        """Give this to ``Dispatcher.mo_listeners``: each stored MO's notification wakes the service."""
        self.dispatched = 0
        self._in_hand: set[int] = set()
        """MOs claimed by this service and not yet finished."""

    def wake(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_notifications)
                nursery.start_soon(self._claim_loop)
                task_status.started()
        finally:
            # Stopping: what this node holds is claimable again now, not after the lease.
            if self._in_hand:
                with trio.move_on_after(RELEASE_TIMEOUT) as scope:
                    scope.shield = True
                    try:
                        await self._store.release_mo(sorted(self._in_hand))
                    except StoreError as exc:
                        log.warning("giving back claimed MOs failed; their leases will run out: %s", exc)

    async def _read_notifications(self) -> None:
        async with self._notifications:
            async for _ in self._notifications:
                self._wake.set()

    async def _claim_loop(self) -> None:
        while True:
            self._wake = trio.Event()  # reset before claiming: a notice during the claim is kept
            try:
                batch = await self._store.claim_mo(self._node, CLAIM_BATCH, self._lease)
            except StoreError as exc:
                log.warning("claiming inbound messages failed: %s", exc)
                await trio.sleep(STORE_RETRY)
                continue
            if batch:
                self._in_hand.update(mo.id for mo in batch)
                await self._dispatch_batch(batch)
            if len(batch) < CLAIM_BATCH:
                with trio.move_on_after(self._poll):
                    await self._wake.wait()

    async def _dispatch_batch(self, batch: Sequence[InboundMo]) -> dict[int, Outcome | None]:
        """Dispatch claimed MOs: their merchants in one query, the handlers' own look-ups
        prepared for the whole batch, the MOs decided concurrently (one sender's in order),
        and all of them marked dispatched in one statement. Returns each MO's outcome, or
        ``None`` for one left for a later claim or finished elsewhere."""
        results: dict[int, Outcome | None] = {mo.id: None for mo in batch}
        try:
            merchants = await self._store.merchants_for_numbers([mo.service_number for mo in batch])
        except StoreError as exc:
            log.warning("looking up merchants failed; the MOs will be tried again count=%d error=%s", len(batch), exc)
            await self._retry_later([mo.id for mo in batch])
            self._in_hand.difference_update(results)
            return results
        await self._prepare(batch, merchants)
        by_sender: dict[str, list[InboundMo]] = {}
        for mo in batch:
            by_sender.setdefault(mo.sender, []).append(mo)
        decided: list[_Decided] = []
        failed: list[int] = []
        limiter = trio.Semaphore(CONCURRENCY)

        async def one_sender(mos: list[InboundMo]) -> None:
            async with limiter:
                for mo in mos:
                    d = await self._decide_one(mo, merchants.get(mo.service_number))
                    if d is None:
                        failed.append(mo.id)
                    else:
                        decided.append(d)

        async with trio.open_nursery() as nursery:
            for mos in by_sender.values():
                nursery.start_soon(one_sender, mos)
        if failed:
            await self._retry_later(failed)
        finished: set[int] = set()
        if decided:
            decided.sort(key=lambda d: d.mo.id)
            try:
                finished = await self._store.finish_mos([
                    MoFinish(mo_id=d.mo.id, merchant_id=d.merchant.id if d.merchant else None,
                             command=d.keyword[:MAX_COMMAND], outcome=str(d.outcome), callbacks=tuple(d.callbacks))
                    for d in decided])
            except StoreError as exc:
                log.warning("marking MOs dispatched failed; they will be tried again count=%d error=%s",
                            len(decided), exc)
                await self._retry_later([d.mo.id for d in decided])
                decided = []
        callbacks = 0
        for d in decided:
            if d.mo.id in finished:
                results[d.mo.id] = d.outcome
                callbacks += len(d.callbacks)
                self._record(d)
            else:
                log.info("MO already dispatched elsewhere mo_id=%d", d.mo.id)
        self._in_hand.difference_update(results)  # not when cancelled: a stopping service gives them back
        if callbacks and self._on_callbacks is not None:
            self._on_callbacks()
        return results

    async def dispatch(self, mo: InboundMo) -> Outcome | None:
        """Dispatch one claimed MO; returns its outcome, or ``None`` when it is left for a
        later claim (a database error, a failing handler) or was finished elsewhere."""
        return (await self._dispatch_batch([mo]))[mo.id]

    async def _retry_later(self, mo_ids: list[int]) -> None:
        try:
            await self._store.retry_mos_later(mo_ids, RETRY_DELAY)
        except StoreError as exc:
            log.warning("deferring MOs failed; their leases will run out instead count=%d error=%s", len(mo_ids), exc)

    async def _prepare(self, batch: Sequence[InboundMo], merchants: dict[str, Merchant]) -> None:
        """Let handlers that offer ``prepare(commands)`` look up what the batch's commands need
        at once. Only an optimization: a handler whose preparation fails looks things up itself."""
        commands = []
        for mo in batch:
            merchant = merchants.get(mo.service_number)
            if merchant is None or mo.attempts >= MAX_ATTEMPTS:
                continue
            keyword, args = parse_command(mo.body)
            if first_step(merchant, keyword) is FirstStep.HANDLERS:
                commands.append(self._command(mo, merchant, keyword, args))
        if not commands:
            return
        for handler in self._handlers:
            prepare = getattr(handler, "prepare", None)
            if prepare is None:
                continue
            try:
                await prepare(commands)
            except Exception as exc:  # the handler then does its own look-ups, one MO at a time
                log.warning("command handler's preparation failed handler=%s error=%s", type(handler).__name__, exc)

    @staticmethod
    def _command(mo: InboundMo, merchant: Merchant, keyword: str, args: tuple[str, ...]) -> InboundCommand:
        return InboundCommand(mo_id=mo.id, merchant=merchant, phone=national_or_raw(mo.sender), keyword=keyword,
                              args=args, text=mo.body, channel=mo.channel, received_at=mo.received_at)

    async def _decide_one(self, mo: InboundMo, merchant: Merchant | None) -> _Decided | None:
        keyword, args = parse_command(mo.body)
        phone = national_or_raw(mo.sender)
        try:
            outcome, callbacks = await self._decide(mo, merchant, phone, keyword, args)
        except (StoreError, _HandlerFailed) as exc:
            log.warning("dispatching an MO failed; it will be tried again mo_id=%d attempt=%d error=%s",
                        mo.id, mo.attempts, exc)
            return None
        return _Decided(mo=mo, merchant=merchant, phone=phone, keyword=keyword, outcome=outcome, callbacks=callbacks)

    def _record(self, d: _Decided) -> None:
        mo, merchant = d.mo, d.merchant
        self.dispatched += 1
        self._metrics.mo_dispatched.labels(command_label(d.keyword), str(d.outcome)).inc()
        log.info("MO dispatched mo_id=%d from=%s to=%s merchant=%s command=%s outcome=%s callbacks=%d",
                 mo.id, mask_msisdn(d.phone), mo.service_number, merchant.name if merchant else "-",
                 command_label(d.keyword), d.outcome, len(d.callbacks))
        if self._bus is not None:
            self._bus.publish(MoEvent(id=mo.id, channel=mo.channel, sender=mo.sender, service_number=mo.service_number,
                                      text=mo.body, merchant_id=merchant.id if merchant else None,
                                      command=d.keyword[:MAX_COMMAND], at=events_now()))

    async def _decide(self, mo: InboundMo, merchant: Merchant | None, phone: str, keyword: str,
                      args: tuple[str, ...]) -> tuple[Outcome, list[MoSubscription]]:
        step = first_step(merchant, keyword)
        if step is FirstStep.CALLBACKS_ONLY:
            subs = matching_subscriptions(await self._store.mo_subscriptions_for(mo.service_number),
                                          service_number=mo.service_number, keyword=keyword, merchant=None)
            return (Outcome.CALLBACK, subs) if subs else (Outcome.NO_MERCHANT, [])
        assert merchant is not None
        outbox = ReplyOutbox(self._intake, self._directory, mo_id=mo.id, max_parts=self._max_parts,
                             sender=sender_extension(merchant.service_number, self._base_numbers))
        if step is FirstStep.UNSUBSCRIBE:
            await self._store.unsubscribe(merchant.id, phone, mo.id)
            await self._reply(outbox, merchant, phone, unsubscribe_confirmation(merchant))
            return Outcome.UNSUBSCRIBED, []
        command = self._command(mo, merchant, keyword, args)
        give_up_handlers = mo.attempts >= MAX_ATTEMPTS
        if not give_up_handlers:
            for handler in self._handlers:
                if await self._ask(handler, command, outbox):
                    return Outcome.HANDLED, []
        subs = matching_subscriptions(await self._store.mo_subscriptions_for(mo.service_number),
                                      service_number=mo.service_number, keyword=keyword, merchant=merchant)
        if subs:
            return Outcome.CALLBACK, subs
        help_text = default_help(merchant)
        if self._handlers and not give_up_handlers:
            help_text = await self._help(self._handlers[0], merchant)
        await self._reply(outbox, merchant, phone, help_text)
        return (Outcome.FAILED if give_up_handlers and self._handlers else Outcome.HELP), []

    async def _ask(self, handler: CommandHandler, command: InboundCommand, outbox: ReplyOutbox) -> bool:
        try:
            return await handler.handle(command, outbox)
        except StoreError:
            raise
        except Exception as exc:  # a handler's bug must not stop every other consumer's MOs
            log.exception("command handler failed mo_id=%d handler=%s", command.mo_id, type(handler).__name__)
            raise _HandlerFailed(f"{type(handler).__name__}: {type(exc).__name__}: {exc}") from exc

    async def _help(self, handler: CommandHandler, merchant: Merchant) -> str:
        try:
            return await handler.help_text(merchant)
        except StoreError:
            raise
        except Exception as exc:
            log.exception("command handler's help failed merchant=%s handler=%s", merchant.name,
                          type(handler).__name__)
            raise _HandlerFailed(f"{type(handler).__name__}.help_text: {exc}") from exc

    async def _reply(self, outbox: ReplyOutbox, merchant: Merchant, phone: str, text: str) -> None:
        try:
            await outbox.send(account_id=merchant.account_id, to=phone, text=text)
        except (InvalidNumber, TextError) as exc:  # a sender we cannot text back (not a mobile number)
            log.info("no reply possible merchant=%s from=%s reason=%s", merchant.name, mask_msisdn(phone), exc)
