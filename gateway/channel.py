"""What a channel is, to the rest of the gateway.

A channel is anything that can submit an MT and reports what happens to it: CMPP links and
GSM modems today, SMPP or SGIP tomorrow. The dispatcher hands a channel an
:class:`OutboundMessage` with ``submit``; the channel reports :data:`ChannelEvent` values on the
send side of a bounded memory channel it was given. Protocol packages do not import this
module: an adapter at the assembly point turns their own events into these.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Protocol

import msgspec
import trio


class Status(StrEnum):
    """A message's status (SPEC: accepted → queued → submitted → a final state)."""

    ACCEPTED = "accepted"
    QUEUED = "queued"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {Status.DELIVERED, Status.UNDELIVERABLE, Status.EXPIRED, Status.REJECTED, Status.FAILED}
)


class OutboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted MT, as a channel sees it; ``parts`` already split as the handset will."""

    id: int
    account_id: int
    dest: str
    operator: str
    encoding: str
    parts: tuple[str, ...]
    priority: int
    msg_class: str
    sender: str
    expires_at: datetime
    attempts: int = 1


class Submitted(msgspec.Struct, frozen=True, kw_only=True, tag="submitted"):
    """The operator or modem took part ``part`` (1-based) and named it ``ref``."""

    channel: str
    message_id: int
    part: int
    ref: str
    total: int = 0
    """How many parts the channel sends the message in, when that is not the number planned
    at acceptance (a CMPP link cuts by bytes, not by GSM septets); 0 means as planned."""


class SubmitFailed(msgspec.Struct, frozen=True, kw_only=True, tag="submit_failed"):
    """The channel could not submit the message. Transient failures are retried."""

    channel: str
    message_id: int
    transient: bool
    reason: str
    error_code: str = ""


class DeliveryReport(msgspec.Struct, frozen=True, kw_only=True, tag="report"):
    """A status report for the part the channel called ``ref``."""

    channel: str
    ref: str
    status: Status
    error_code: str = ""
    at: datetime | None = None


class MoReceived(msgspec.Struct, frozen=True, kw_only=True, tag="mo"):
    """A consumer's message, reassembled when it came in parts."""

    channel: str
    sender: str
    service_number: str
    text: str
    received_at: datetime


class LinkState(msgspec.Struct, frozen=True, kw_only=True, tag="link"):
    channel: str
    up: bool
    detail: str = ""


ChannelEvent = Submitted | SubmitFailed | DeliveryReport | MoReceived | LinkState


class Channel(Protocol):
    """The interface the dispatcher drives (structural: channels need not import it)."""

    name: str
    operators: frozenset[str]

    @property
    def up(self) -> bool:
        """Connected and able to send now."""

    def capacity(self) -> int:
        """How many more messages ``submit`` would take without waiting."""

    async def submit(self, message: OutboundMessage) -> None:
        """Take the message; its outcome arrives later as events. May wait for room."""

    async def run(
        self,
        events: trio.MemorySendChannel[ChannelEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled, reporting on ``events``."""
