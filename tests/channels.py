"""A test-double channel: takes messages, reports what the test tells it to.

It implements the channel interface of ``gateway/channel.py`` the way a real channel does —
through ``run`` with an event stream — but its "operator" is the test: submitted messages are
kept in ``submitted`` and the test decides when each part is acknowledged or reported.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import trio

from gateway.channel import DeliveryReport, LinkState, MoReceived, OutboundMessage, Status, Submitted, SubmitFailed


class ScriptedChannel:
    def __init__(self, name: str = "fake", operators=("cmcc", "cucc", "ctcc"), *, room: int = 100,
                 auto_ack: bool = True) -> None:
        self.name = name
        self.operators = frozenset(operators)
        self.room = room
        self.auto_ack = auto_ack
        self.up = False
        self.submitted: list[OutboundMessage] = []
        self.got_message = trio.Event()
        self._events: trio.MemorySendChannel | None = None
        self._seq = 0

    def capacity(self) -> int:
        return max(0, self.room - len(self.submitted))

    async def submit(self, message: OutboundMessage) -> None:
        self.submitted.append(message)
        self.got_message.set()
        if self.auto_ack:
            for part in range(1, len(message.parts) + 1):
                await self.ack(message, part)

    async def ack(self, message: OutboundMessage, part: int) -> str:
        self._seq += 1
        ref = f"{self.name}-{self._seq}"
        await self._events.send(Submitted(channel=self.name, message_id=message.id, part=part, ref=ref))
        return ref

    async def report(self, ref: str, status: Status = Status.DELIVERED, error_code: str = "") -> None:
        await self._events.send(DeliveryReport(channel=self.name, ref=ref, status=status, error_code=error_code))

    async def fail(self, message: OutboundMessage, *, transient: bool, reason: str = "test") -> None:
        await self._events.send(SubmitFailed(channel=self.name, message_id=message.id, transient=transient,
                                             reason=reason))

    async def mo(self, sender: str, text: str, service_number: str = "10658888") -> None:
        await self._events.send(MoReceived(channel=self.name, sender=sender, service_number=service_number,
                                           text=text, received_at=datetime.now(timezone.utc)))

    async def run(self, events, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._events = events
        self.up = True
        await events.send(LinkState(channel=self.name, up=True, detail="scripted"))
        task_status.started()
        try:
            await trio.sleep(math.inf)
        finally:
            self.up = False
