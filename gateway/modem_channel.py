"""The GSM modem pool as one gateway channel (ARCHITECTURE: channels; SPEC: modem routes).

Pool events become :mod:`gateway.channel` events: each part sent is ``Submitted`` with the
ref ``"{modem}:{tp_mr}:{dest}"``, the key a status report is correlated by; a final report
is a ``DeliveryReport`` under the same ref; an MO is ``MoReceived`` and is acknowledged to
the pool (so deleted from the SIM) once the dispatcher's event queue has taken it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
from gateway.modem_pool.pdu import Alphabet, StatusClass
from gateway.modem_pool.pool import (
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

__all__ = ["ModemChannel", "part_ref"]


def part_ref(modem: str, tp_mr: int, destination: str) -> str:
    """The ref of one part sent by a modem, as reports are correlated (TS 23.040 §9.2.3.6)."""
    return f"{modem}:{tp_mr}:{destination}"


class ModemChannel:
    """A :class:`gateway.channel.Channel` over a :class:`ModemPool`."""

    def __init__(self, modems: Sequence[ModemConfig], *, name: str = "modems", **pool_options) -> None:
        self.name = name
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
                )
                for m in modems
            ],
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
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pool.run)
            task_status.started()
            async for event in self.pool.events:
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
