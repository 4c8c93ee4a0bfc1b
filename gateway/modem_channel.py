"""The GSM modem pool as one gateway channel (ARCHITECTURE: channels; SPEC: modem routes).

Pool events become :mod:`gateway.channel` events: each part sent is ``Submitted`` with the
ref ``"{modem}:{tp_mr}:{dest}"``, the key a status report is correlated by; a final report
is a ``DeliveryReport`` under the same ref; an MO is ``MoReceived`` and is acknowledged to
the pool (so deleted from the SIM) once the dispatcher's event queue has taken it.

Daily quotas count per local day in ``timezone`` (the dispatcher's, default Asia/Shanghai).
With a ``quota_store`` (the :class:`gateway.store.Store`, or anything with its two
``modem quotas`` methods) the counts survive a restart: they are loaded before the first
send and the parts sent are added to them every :data:`QUOTA_SAVE_INTERVAL` seconds and at
stop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from typing import Protocol

import trio

from gateway.channel import (
    ChannelEvent,
    DeliveryReport,
    LinkState,
    MoReceived,
    OutboundMessage,
    Status,
    Submitted,
    SubmitFailed,
)
from gateway.config import ModemConfig
from gateway.errors import StoreError
from gateway.modem_pool.pdu import Alphabet, StatusClass
from gateway.modem_pool.pool import (
    DEFAULT_TIMEZONE,
    ModemDown,
    ModemMo,
    ModemPool,
    ModemReport,
    ModemSpec,
    ModemUp,
    PartSent,
    SendFailed,
    SendRequest,
)
from gateway.text import Encoding

logger = logging.getLogger(__name__)

__all__ = ["QUOTA_SAVE_INTERVAL", "ModemChannel", "QuotaStore", "part_ref"]

#: Seconds between writes of the parts sent to the quota store (at most this much of a
#: day's count is forgotten if the process is killed outright).
QUOTA_SAVE_INTERVAL = 1.0
#: Seconds the last write of the counts may take when the channel stops.
QUOTA_SAVE_TIMEOUT = 5.0


class QuotaStore(Protocol):
    """Where SIM daily counts persist (:class:`gateway.store.Store` has these methods)."""

    async def modem_sent_counts(self, day: date) -> dict[str, int]: ...

    async def add_modem_sent(self, counts: Sequence[tuple[str, date, int]]) -> None: ...


def part_ref(modem: str, tp_mr: int, destination: str) -> str:
    """The ref of one part sent by a modem, as reports are correlated (TS 23.040 §9.2.3.6)."""
    return f"{modem}:{tp_mr}:{destination}"


class ModemChannel:
    """A :class:`gateway.channel.Channel` over a :class:`ModemPool`."""

    def __init__(
        self,
        modems: Sequence[ModemConfig],
        *,
        name: str = "modems",
        timezone: str = DEFAULT_TIMEZONE,
        quota_store: QuotaStore | None = None,
        **pool_options,
    ) -> None:
        self.name = name
        self.quota_store = quota_store
        self._unsaved: dict[tuple[str, str], int] = {}
        self._configs = {m.name: m for m in modems}
        self.pool = ModemPool(
            [
                ModemSpec(
                    name=m.name,
                    device=m.device,
                    operators=frozenset(m.operators),
                    rate_per_minute=m.rate_per_minute,
                    daily_quota=m.daily_quota,
                    pin=m.pin or None,
                    baudrate=m.baudrate,
                    direct_routing=m.direct_routing,
                )
                for m in modems
            ],
            timezone=timezone,
            **pool_options,
        )
        self.operators = self.pool.operators
        self._own_numbers: dict[str, str] = {}
        self._was_up = False

    @property
    def up(self) -> bool:
        return self.pool.usable > 0

    def capacity(self) -> int:
        return self.pool.capacity()

    def modem_statistics(self) -> dict[str, dict[str, float | str | None]]:
        """Per modem, for metrics and the admin board: up (0/1), state, rssi (+CSQ, None when
        unknown), registered (0/1), sent_today, queued, errors (consecutive)."""
        out: dict[str, dict[str, float | str | None]] = {}
        for m in self.pool.statistics():
            out[m.name] = {
                "up": 1.0 if m.state == "up" else 0.0, "state": str(m.state),
                "rssi": float(m.rssi) if m.rssi is not None and m.rssi != 99 else None,
                "registered": 1.0 if m.registered else 0.0, "sent_today": float(m.sent_today),
                "queued": float(m.queued), "errors": float(m.consecutive_errors),
            }
        return out

    async def submit(self, message: OutboundMessage) -> None:
        """Hand the message's parts to the pool; waits for a modem with room."""
        alphabet = Alphabet.UCS2 if message.encoding == Encoding.UCS2 else Alphabet.GSM7
        await self.pool.send(
            SendRequest(
                ref=message.id,
                destination=message.dest,
                operator=message.operator,
                parts=message.parts,
                alphabet=alphabet,
            )
        )

    async def run(
        self,
        events: trio.MemorySendChannel[ChannelEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self.quota_store is not None:
            await self._load_counts(self.quota_store)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pool.run)
                if self.quota_store is not None:
                    nursery.start_soon(self._save_counts_every, self.quota_store)
                task_status.started()
                await self._forward(events)
        finally:
            if self.quota_store is not None:
                with trio.move_on_after(QUOTA_SAVE_TIMEOUT, shield=True):
                    await self._save_counts(self.quota_store)

    def attach_quota_store(self, store: QuotaStore) -> None:
        """Persist daily counts in ``store`` (call before :meth:`run`)."""
        self.quota_store = store

    async def _load_counts(self, store: QuotaStore) -> None:
        day = self.pool.today()
        try:
            counts = await store.modem_sent_counts(date.fromisoformat(day))
        except StoreError as exc:
            logger.warning("modem quota counts not loaded; counting from 0 day=%s error=%s", day, exc)
            return
        self.pool.seed_counts(day, counts)
        logger.info("modem quota counts loaded day=%s modems=%d sent=%d", day, len(counts), sum(counts.values()))

    async def _save_counts_every(self, store: QuotaStore) -> None:
        while True:
            await trio.sleep(QUOTA_SAVE_INTERVAL)
            await self._save_counts(store)

    async def _save_counts(self, store: QuotaStore) -> None:
        if not self._unsaved:
            return
        batch, self._unsaved = self._unsaved, {}
        try:
            await store.add_modem_sent(
                [(modem, date.fromisoformat(day), n) for (modem, day), n in batch.items()]
            )
        except StoreError as exc:
            for key, n in batch.items():  # kept for the next try
                self._unsaved[key] = self._unsaved.get(key, 0) + n
            logger.warning("modem quota counts not saved, will retry parts=%d error=%s",
                           sum(batch.values()), exc)

    async def _forward(self, events: trio.MemorySendChannel[ChannelEvent]) -> None:
        async for event in self.pool.events:
            if isinstance(event, PartSent) and event.day:
                key = (event.modem, event.day)
                self._unsaved[key] = self._unsaved.get(key, 0) + 1
            for out in self._translate(event):
                await events.send(out)
            if isinstance(event, ModemMo):
                event.ack()
            if self.up != self._was_up:
                self._was_up = self.up
                await events.send(
                    LinkState(channel=self.name, up=self._was_up,
                              detail=f"{self.pool.usable} modem(s) usable")
                )

    def _translate(self, event) -> list[ChannelEvent]:
        if isinstance(event, PartSent):
            return [
                Submitted(
                    channel=self.name,
                    message_id=event.ref,
                    part=event.part,
                    ref=part_ref(event.modem, event.tp_mr, event.destination),
                )
            ]
        if isinstance(event, SendFailed):
            return [
                SubmitFailed(
                    channel=self.name,
                    message_id=event.ref,
                    transient=event.transient,
                    reason=event.reason,
                    error_code=f"CMS {event.cms_code}" if event.cms_code is not None else "",
                )
            ]
        if isinstance(event, ModemReport):
            if event.status is StatusClass.TEMPORARY:
                logger.debug("modem report not final modem=%s mr=%d", event.modem, event.tp_mr)
                return []
            status = Status.DELIVERED if event.status is StatusClass.DELIVERED else Status.UNDELIVERABLE
            return [
                DeliveryReport(
                    channel=self.name,
                    ref=part_ref(event.modem, event.tp_mr, event.recipient),
                    status=status,
                    error_code="" if status is Status.DELIVERED else f"TP-ST {event.tp_status}",
                    at=event.at,
                )
            ]
        if isinstance(event, ModemMo):
            config = self._configs.get(event.modem)
            service = (config.service_number if config is not None else "") or event.own_number or ""
            return [
                MoReceived(
                    channel=self.name,
                    sender=event.sender,
                    service_number=service,
                    text=event.text,
                    received_at=event.received_at,
                )
            ]
        if isinstance(event, (ModemUp, ModemDown)):
            logger.info("modem channel modem=%s state=%s", event.modem,
                        "up" if isinstance(event, ModemUp) else "down")
        return []
