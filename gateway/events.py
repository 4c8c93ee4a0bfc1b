"""The event bus: every state change, fanned out in process to whoever watches.

ARCHITECTURE.md, principle 7: every state change is an event — counted in Prometheus, streamed
to the admin socket, kept in the message's history. The history is the store's; this bus is the
live part. It is in-process and bounded: :meth:`EventBus.publish` never blocks and never fails.
Each subscriber has its own bounded buffer; when a subscriber falls behind, new events are
dropped *for that subscriber only* and counted, and the count is handed over with the next
events it receives, so a slow viewer learns what it missed and never slows the gateway.

Publishing costs one attribute test when nobody listens (:attr:`EventBus.active`); producers
on hot paths check it before building events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from types import TracebackType

import msgspec
import trio

SUBSCRIBER_BUFFER = 10_000
"""Events a subscriber may have waiting before new ones are dropped for it."""


class MtEvent(msgspec.Struct, frozen=True, kw_only=True, tag="mt"):
    """A message moved to ``status`` (SPEC: accepted → queued → submitted → a final state)."""

    id: int
    account_id: int
    to: str
    status: str
    channel: str = ""
    parts: int = 0
    msg_class: str = ""
    detail: str = ""
    error_code: str = ""
    at: float = 0.0


class MoEvent(msgspec.Struct, frozen=True, kw_only=True, tag="mo"):
    """A consumer's message reached the gateway (stored as inbound message ``id``)."""

    id: int
    channel: str
    sender: str
    service_number: str
    text: str
    merchant_id: int | None = None
    command: str = ""
    at: float = 0.0


class LinkEvent(msgspec.Struct, frozen=True, kw_only=True, tag="link"):
    """A channel (CMPP link, modem pool) or one of its parts went up or down."""

    channel: str
    up: bool
    detail: str = ""
    at: float = 0.0


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True, tag="webhook"):
    """One delivery attempt of a callback (delivery webhook, Kannel dlr-url, MO callback)."""

    message_id: int | None
    kind: str
    attempt: int
    ok: bool
    status_code: int = 0
    detail: str = ""
    at: float = 0.0


class LimitEvent(msgspec.Struct, frozen=True, kw_only=True, tag="limit"):
    """Something waited or was refused because of a rate limit or quota."""

    scope: str
    """``account``, ``channel``, ``recipient``, ``quiet_hours``."""
    name: str
    wait_s: float = 0.0
    count: int = 1
    at: float = 0.0


Event = MtEvent | MoEvent | LinkEvent | WebhookEvent | LimitEvent


class Subscription:
    """One subscriber's bounded view of the bus. Use as a context manager (it unsubscribes)."""

    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self._size = size
        self._queue: deque[Event] = deque()
        self._dropped = 0
        self._lot = trio.lowlevel.ParkingLot()
        self.received = 0
        self.dropped_total = 0

    def _offer(self, event: Event) -> None:
        if len(self._queue) >= self._size:
            self._dropped += 1
            self.dropped_total += 1
            return
        self._queue.append(event)
        if self._lot:
            self._lot.unpark_all()

    async def receive(self, max_events: int = 1000) -> tuple[list[Event], int]:
        """Wait for events; returns up to ``max_events`` of them and how many were dropped
        since the last call (before the first of them)."""
        while not self._queue and not self._dropped:
            await self._lot.park()
        n = min(max_events, len(self._queue))
        events = [self._queue.popleft() for _ in range(n)]
        dropped, self._dropped = self._dropped, 0
        self.received += n
        return events, dropped

    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self._bus.active = bool(self._bus._subscribers)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EventBus:
    """In-process fan-out; see the module docstring."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self.active = False
        """True while anyone listens: producers may skip building events otherwise."""
        self.published = 0

    def subscribe(self, size: int = SUBSCRIBER_BUFFER) -> Subscription:
        sub = Subscription(self, size)
        self._subscribers.add(sub)
        self.active = True
        return sub

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; never blocks. Safe from any Trio task."""
        if not self._subscribers:
            return
        self.published += 1
        for sub in tuple(self._subscribers):
            sub._offer(event)

    def publish_many(self, events: Iterable[Event]) -> None:
        if not self._subscribers:
            return
        for event in events:
            self.publish(event)

    def statistics(self) -> dict[str, int]:
        return {"subscribers": len(self._subscribers), "published": self.published}


def now() -> float:
    """Event time: seconds since the epoch."""
    return time.time()
