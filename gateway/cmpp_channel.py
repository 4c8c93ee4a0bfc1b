"""A ``[[cmpp]]`` account as a gateway channel: ``connections`` CMPP links sharing one rate.

The adapter between :mod:`gateway.cmpp` (which knows nothing of the gateway) and the channel
interface of :mod:`gateway.channel`. Each part of a message becomes one SUBMIT; the operator's
Msg_Id (as a decimal string) is the part's ref, persisted by the dispatcher so that a status
report arriving on any link, or on another node, finds its message.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import trio

from .channel import (
    ChannelEvent,
    DeliveryReport,
    LinkState,
    MoReceived,
    OutboundMessage,
    Status,
    Submitted,
    SubmitFailed,
)
from .cmpp import (
    CmppLink,
    CmppLinkConfig,
    LinkDown,
    LinkEvent,
    LinkUp,
    StatusReport,
    SubmitAcked,
    SubmitRejected,
    SubmitRequest,
)
from .cmpp import MoReceived as CmppMo
from .cmpp.client import INPUT_QUEUE_SIZE
from .cmpp.longsms import split_long
from .cmpp.pdus import VERSION_2_0, VERSION_3_0, MsgFmt
from .config import CmppConfig
from .text import Encoding, national_or_raw

log = logging.getLogger(__name__)

LINK_EVENT_BUFFER = 4096

# Status report Stat → SPEC status. ACCEPTD is not final (the SMSC still holds the message);
# anything else that is not a known word is an operator error code: undeliverable.
_STAT_STATUS = {
    "DELIVRD": Status.DELIVERED,
    "EXPIRED": Status.EXPIRED,
    "UNDELIV": Status.UNDELIVERABLE,
    "REJECTD": Status.REJECTED,
    "DELETED": Status.UNDELIVERABLE,
    "UNKNOWN": Status.UNDELIVERABLE,
}
_NOT_FINAL = frozenset({"ACCEPTD", "ENROUTE"})

PART_RETRIES = 3
"""Times one part of a long message rejected with a transient Result is tried again on its
link (same concatenation reference) before the whole message is given back for retry."""
PART_RETRY_DELAY = 1.0
"""Seconds before the first such retry; doubled each time."""

ASCII_MAX = 159
"""Msg_Fmt 0 carries fewer than 160 octets (the SUBMIT Msg_Length rule for ASCII)."""


def stat_status(stat: str) -> Status | None:
    """The final status a Stat means, or None for an intermediate one."""
    stat = stat.strip().upper()
    if stat in _NOT_FINAL:
        return None
    return _STAT_STATUS.get(stat, Status.UNDELIVERABLE)


def encode_parts(message: OutboundMessage, ref: int) -> list[tuple[int, int, bytes]]:
    """(msg_fmt, udhi, content) for each SUBMIT of ``message``.

    A GSM 7-bit text made only of ASCII goes as Msg_Fmt 0 (the ISMG packs it), any other text
    as UCS2 (Msg_Fmt 8); both are cut by cmpp.md's limits: Msg_Content of at most 140 bytes,
    134 after the 6-byte concatenation UDH, never inside a character. That can take another
    number of SUBMITs than the GSM 7-bit plan made at acceptance (160 ASCII characters are one
    GSM part but two SUBMITs; an "é" turns the text into UCS2 at 70 characters a part): the
    channel reports the number it sent with each part (:attr:`Submitted.total`).
    """
    text = "".join(message.parts)
    fmt = MsgFmt.ASCII if message.encoding == Encoding.GSM7 and text.isascii() else MsgFmt.UCS2
    return [(int(fmt), part.udhi, part.content) for part in split_long(text, fmt, ref)]


class CmppChannel:
    """One ISMG account as one channel; its links share the configured rate."""

    def __init__(self, config: CmppConfig, *, wall_clock=time.time,
                 part_retry_delay: float = PART_RETRY_DELAY) -> None:
        self.name = config.name
        self.operators = frozenset(config.operators)
        self._config = config
        self._send, self._receive = trio.open_memory_channel[LinkEvent](LINK_EVENT_BUFFER)
        version = VERSION_3_0 if config.version == "3.0" else VERSION_2_0
        self.links = [
            CmppLink(
                CmppLinkConfig(
                    sp_id=config.sp_id, secret=config.secret, host=config.host, port=config.port,
                    version=version, name=f"{config.name}#{i}" if config.connections > 1 else config.name,
                    window=config.window, rate=config.rate / config.connections,
                ),
                self._send.clone(),
                wall_clock=wall_clock,
            )
            for i in range(config.connections)
        ]
        self._next_ref = 0
        self._was_up = False
        # Parts of long messages in flight: (message id, part) → (request, link, retries so far).
        # A transient rejection of one part is retried alone, so that the parts the handset
        # already has are not sent again with the whole message.
        self._long_parts: dict[tuple[int, int], tuple[SubmitRequest, CmppLink, int]] = {}
        self._nursery: trio.Nursery | None = None
        self._part_retry_delay = part_retry_delay

    @property
    def up(self) -> bool:
        return any(link.up for link in self.links)

    def capacity(self) -> int:
        free = 0
        for link in self.links:
            if link.up:
                free += max(0, INPUT_QUEUE_SIZE - link.queued)
        return free // 2  # leave room for the parts of long messages

    def statistics(self) -> dict[str, dict[str, float]]:
        """Per link: up (0/1), window slots in use, its size, queued SUBMITs, counters."""
        out = {}
        for link in self.links:
            st = link.statistics()
            out[link.config.name] = {
                "up": float(st.up), "window_used": float(st.window_used), "window": float(link.config.window),
                "queued": float(st.input_queue + st.retry_queue), "submitted": float(st.submitted),
                "acked": float(st.acked), "flow_controlled": float(st.flow_controlled),
                "resubmitted": float(st.resubmitted), "reports": float(st.reports), "mo": float(st.mo),
                "connects": float(st.connects), "rate": float(link.config.rate),
            }
        return out

    def _pick(self) -> CmppLink:
        """The up link with the fewest SUBMITs waiting (the first of equals), or the first link
        when none is up (it keeps what it is given until it reconnects)."""
        links = self.links
        if len(links) == 1:
            return links[0]
        best = None
        best_queued = 0
        for link in links:
            if not link.up:
                continue
            queued = link.queued
            if best is None or queued < best_queued:
                best, best_queued = link, queued
        return best or links[0]

    async def submit(self, message: OutboundMessage) -> None:
        self._next_ref = (self._next_ref + 1) % 256
        link = self._pick()  # all parts on one link, in order
        parts = encode_parts(message, self._next_ref)
        src_id = (self._config.service_number + message.sender)[:21]
        for number, (fmt, udhi, content) in enumerate(parts, start=1):
            request = SubmitRequest(
                ref=(message.id, number, len(parts)), dest=message.dest, src_id=src_id, content=content, msg_fmt=fmt,
                udhi=udhi, pk_total=len(parts), pk_number=number, registered_delivery=1,
                service_id=self._config.service_id,
            )
            if len(parts) > 1:
                self._long_parts[request.ref] = (request, link, 0)
            try:  # no scheduler round trip while the link's input queue has room
                link.submit_nowait(request)
            except trio.WouldBlock:
                await link.submit(request)

    async def run(self, events: trio.MemorySendChannel[ChannelEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links:
                await nursery.start(link.run)
            self._nursery = nursery
            task_status.started()
            receive = self._receive
            async for event in receive:
                while True:
                    await self._pass_on(event, events)
                    try:  # what the links queued meanwhile, in the same step
                        event = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break

    async def _pass_on(self, event: LinkEvent, events: trio.MemorySendChannel[ChannelEvent]) -> None:
        if self._long_parts and isinstance(event, (SubmitAcked, SubmitRejected)):
            if self._part_retried(event):
                return
        out = self._translate(event)
        if out is not None:
            try:  # no scheduler round trip while the dispatcher's buffer has room
                events.send_nowait(out)
            except trio.WouldBlock:
                await events.send(out)

    def _part_retried(self, event: SubmitAcked | SubmitRejected) -> bool:
        """Forget an acknowledged part; retry a transiently rejected one (True) while it may."""
        entry = self._long_parts.pop(event.ref, None)
        if entry is None or isinstance(event, SubmitAcked) or not event.transient:
            return False
        request, link, retries = entry
        if retries >= PART_RETRIES or self._nursery is None:
            return False
        self._long_parts[event.ref] = (request, link, retries + 1)
        log.info("cmpp part retry channel=%s message_id=%d part=%d result=%d retry=%d", self.name,
                 event.ref[0], event.ref[1], event.result, retries + 1)
        self._nursery.start_soon(self._resubmit, request, link, self._part_retry_delay * 2 ** retries)
        return True

    async def _resubmit(self, request: SubmitRequest, link: CmppLink, delay: float) -> None:
        await trio.sleep(delay)
        # The link keeps what it was given across reconnects; if it is down for good, the
        # lease on the message runs out and the dispatcher claims it again.
        await link.submit(request)

    def _translate(self, event: LinkEvent) -> ChannelEvent | None:
        if isinstance(event, SubmitAcked):
            message_id, part, total = event.ref
            return Submitted(channel=self.name, message_id=message_id, part=part, ref=str(event.msg_id),
                             total=total)
        if isinstance(event, StatusReport):
            status = stat_status(event.stat)
            if status is None:
                return None
            code = "" if status is Status.DELIVERED else event.stat.strip()
            return DeliveryReport(channel=self.name, ref=str(event.msg_id), status=status, error_code=code)
        if isinstance(event, SubmitRejected):
            message_id, part, _ = event.ref
            return SubmitFailed(channel=self.name, message_id=message_id, transient=event.transient,
                                reason=f"SUBMIT_RESP Result={event.result} (part {part})",
                                error_code=str(event.result))
        if isinstance(event, CmppMo):
            return MoReceived(channel=self.name, sender=national_or_raw(event.src), service_number=event.dest, text=event.text,
                              received_at=datetime.fromtimestamp(event.received_at, timezone.utc))
        if isinstance(event, (LinkUp, LinkDown)):
            up = self.up
            if up != self._was_up:
                self._was_up = up
                detail = f"link={event.link}" + (f" reason={event.reason}" if isinstance(event, LinkDown) else "")
                return LinkState(channel=self.name, up=up, detail=detail)
        return None
